"""Row keys and seeded draws: every per-row random choice of the pipeline, on one scrambler.

A row's key (:func:`stable_keys`) is its id, or its content, never its position; every draw is
:func:`~flanpipe.core.hashing.mix64` of (key, a salt derived from the one config seed and a stable
name), so adding or removing one row changes no other row's draw.
"""

from __future__ import annotations

import zlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flanpipe.core.hashing import GOLDEN, exact_hashes, mix64, string_hashes
from flanpipe.core.registry import DatasetSpec, load_registry  # noqa: F401 (doctests)
from flanpipe.core.templates import DatasetTemplates, plain_template, raw_texts, render_template


def derive_seed(seed: int, name: str) -> int:
    """A stage's or dataset's own seed: ``seed + crc32(name)``, kept in 32 bits.

    >>> derive_seed(1234, "rte")
    3737080027
    """
    return (seed + zlib.crc32(name.encode())) % 2**32


def stable_keys(spec: DatasetSpec, table: pa.Table) -> np.ndarray:
    """A 64-bit key per raw row that does not depend on where the row sits: the hash of its id field,
    or, for a dataset without ids, of its content (all raw text fields and the plain target). Every
    per-row draw (template, cap priority, few-shot exemplars) derives from it.

    >>> t = pa.table({"sentence": ["a", "b"], "label": [0, 1], "idx": [7, 3], "row_index": [0, 1]})
    >>> k = stable_keys(load_registry().datasets["sst2"], t)
    >>> bool(k[1] == stable_keys(load_registry().datasets["sst2"], t.slice(1))[0])
    True
    """
    if spec.id_field and not pa.types.is_nested(table.schema.field(spec.id_field).type):
        return string_hashes(table.column(spec.id_field).cast(pa.string()), seed=0)
    bank = DatasetTemplates(dataset=spec.name, templates=())
    targets = render_template(bank, plain_template(spec, "no_template"), table, "none").targets
    hashes = exact_hashes(raw_texts(spec, table), targets)
    return hashes[:, 0] ^ (hashes[:, 1] * GOLDEN)


def example_ids(spec: DatasetSpec, table: pa.Table, role: str) -> pa.Array:
    """``{dataset}:{split}:{id}``, the id from the dataset's id field or the raw row position."""
    if spec.id_field and not pa.types.is_nested(table.schema.field(spec.id_field).type):
        ids = table.column(spec.id_field).cast(pa.string())
    else:
        ids = table.column("row_index").cast(pa.string())
    return pc.binary_join_element_wise(f"{spec.name}:{role}:", ids, "")


def scramble(keys: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64 of each key XOR a salt: a seeded, well-spread 64-bit point per key."""
    with np.errstate(over="ignore"):
        return mix64(keys.astype(np.uint64) ^ np.uint64(salt % 2**64))



def template_draws(keys: np.ndarray, n_templates: int, passes: int, name: str, seed: int) -> np.ndarray:
    """``(passes, n)`` template index per row and pass, drawn from (seed, dataset, key, pass).

    Each row's first template is a seeded draw from its key; pass ``p`` moves it ``p`` templates on,
    so an example repeated over ``n_templates`` passes meets every template once, and every pass is
    as balanced as the first (each template's share is a binomial draw around ``n / T``).

    >>> d = template_draws(np.arange(5, dtype=np.uint64), 3, 4, "rte", 1)
    >>> d.shape, bool(((d[1] - d[0]) % 3 == 1).all()), bool((d[3] == d[0]).all())
    ((4, 5), True, True)
    """
    z = scramble(keys, derive_seed(seed, f"template/{name}"))
    first = (z % np.uint64(n_templates)).astype(np.int64)
    return (first[None, :] + np.arange(passes)[:, None]) % n_templates


def priorities(keys: np.ndarray, name: str, seed: int) -> np.ndarray:
    """A seeded 64-bit draw per row, a function of (seed, dataset, the row's stable key) only.

    The key (:func:`stable_keys`) is the row's id or content, never its position,
    so adding or removing a raw row changes no other row's draw. The cap keeps the rows with the
    lowest draws that survive dedup and decontamination, so a row kept in one held-out setting is
    kept in every setting where it survives: consistent sampling.
    """
    with np.errstate(over="ignore"):  # wrap-around is the point
        # the seed enters by addition (times the golden ratio), not by XOR as in scramble(): the
        # priorities, and so which rows every cap keeps, stay those of earlier releases
        return mix64(keys.astype(np.uint64) + np.uint64(derive_seed(seed, f"priority/{name}")) * GOLDEN)
