"""Row keys and seeded draws: every per-row random choice of the pipeline, on one scrambler.

A row's key (:func:`stable_keys`) is its id, or its content, never its position; every draw is
:func:`~flanpipe.core.text.hashing.mix64` of (key, a salt derived from the one config seed and a stable
name), so adding or removing one row changes no other row's draw.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flanpipe.core.config.registry import DatasetSpec, load_registry  # noqa: F401 (doctests)
from flanpipe.core.text.hashing import GOLDEN, exact_hashes, mix64, string_hashes
from flanpipe.core.text.templates import DatasetTemplates, plain_template, raw_texts, render_template


def derive_seed(seed: int, name: str) -> int:
    """A stage's or dataset's own seed: ``seed + crc32(name)``, kept in 32 bits.

    >>> derive_seed(1234, "rte")
    3737080027
    """
    return (seed + zlib.crc32(name.encode())) % 2**32


def id_hashes(spec: DatasetSpec, table: pa.Table) -> np.ndarray | None:
    """The 64-bit hash of each row's id (the dataset's scalar id field), or None without one."""
    if spec.id_field and spec.id_field in table.column_names and not pa.types.is_nested(
            table.schema.field(spec.id_field).type):
        return string_hashes(table.column(spec.id_field).cast(pa.string()), seed=0)
    return None


def pool_duplicate_ids(meta: dict) -> np.ndarray:
    """The split's duplicated id hashes a pool file's metadata carries (empty: none, or no ids)."""
    return np.array([int(h, 16) for h in meta.get("duplicate_id_hashes", [])], np.uint64)


def duplicated(hashes: np.ndarray) -> np.ndarray:
    """The sorted distinct values that occur more than once in ``hashes``.

    >>> duplicated(np.array([5, 3, 5, 1, 3, 5], np.uint64)).tolist()
    [3, 5]
    """
    values, counts = np.unique(hashes, return_counts=True)
    return values[counts > 1]


def duplicate_id_hashes(spec: DatasetSpec, tables: Iterable[pa.Table]) -> np.ndarray:
    """The hashes of the ids that more than one row of a split holds (the split given as batches,
    e.g. ``iter_parquet(path, n, [id_field])``); empty for a dataset without ids."""
    hashes = [h for t in tables if (h := id_hashes(spec, t)) is not None]
    return duplicated(np.concatenate(hashes)) if hashes else np.zeros(0, np.uint64)


def _colliding(spec: DatasetSpec, table: pa.Table,
               duplicate_ids: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray]:
    """Each row's id hash (None without ids) and a mask of the rows whose id another row also holds
    (``duplicate_ids``: the split's, from :func:`duplicate_id_hashes`; None: found in ``table``)."""
    ids = id_hashes(spec, table)
    if ids is None:
        return None, np.zeros(table.num_rows, bool)
    dups = duplicated(ids) if duplicate_ids is None else np.asarray(duplicate_ids, np.uint64)
    return ids, (np.isin(ids, dups) if len(dups) else np.zeros(len(ids), bool))


def content_hashes(table: pa.Table) -> np.ndarray:
    """A 64-bit hash of each row's whole content (every column but ``row_index``, exactly as it is).
    A Python loop: it runs only on the rows whose source id collides.

    >>> t = pa.table({"idx": [0, 0], "text": ["a", "b"], "row_index": [0, 1]})
    >>> h = content_hashes(t)
    >>> bool(h[0] != h[1]), bool(h[0] == content_hashes(t.slice(0, 1))[0])
    (True, True)
    """
    rows = table.drop_columns([c for c in ("row_index", "priority") if c in table.column_names])
    texts = [json.dumps(r, sort_keys=True, ensure_ascii=False, default=str) for r in rows.to_pylist()]
    return string_hashes(pa.array(texts, pa.string()), seed=1)


def stable_keys(spec: DatasetSpec, table: pa.Table, duplicate_ids: np.ndarray | None = None) -> np.ndarray:
    """A 64-bit key per raw row that does not depend on where the row sits: the hash of its id field,
    or, for a dataset without ids, of its content (all raw text fields and the plain target). Every
    per-row draw (template, cap priority, few-shot exemplars) derives from it.

    Rows whose id is not unique in their split (``duplicate_ids``, from :func:`duplicate_id_hashes`;
    None: the ids repeated within ``table``, which must then be the whole split) get the id's hash
    mixed with their content's (:func:`content_hashes`), so they draw apart; a row with a unique id
    keeps the hash of its id.

    >>> t = pa.table({"sentence": ["a", "b"], "label": [0, 1], "idx": [7, 3], "row_index": [0, 1]})
    >>> k = stable_keys(load_registry().datasets["sst2"], t)
    >>> bool(k[1] == stable_keys(load_registry().datasets["sst2"], t.slice(1))[0])
    True
    >>> twins = pa.table({"sentence": ["a", "b"], "label": [0, 1], "idx": [7, 7], "row_index": [0, 1]})
    >>> k2 = stable_keys(load_registry().datasets["sst2"], twins)
    >>> bool(k2[0] != k2[1]), bool(k2[0] != k[0])
    (True, True)
    """
    ids, colliding = _colliding(spec, table, duplicate_ids)
    if ids is not None:
        if colliding.any():
            with np.errstate(over="ignore"):
                ids = ids.copy()
                ids[colliding] ^= content_hashes(table.filter(pa.array(colliding))) * GOLDEN
        return ids
    bank = DatasetTemplates(dataset=spec.name, templates=())
    targets = render_template(bank, plain_template(spec, "no_template"), table, "none").targets
    hashes = exact_hashes(raw_texts(spec, table), targets)
    return hashes[:, 0] ^ (hashes[:, 1] * GOLDEN)


def example_ids(spec: DatasetSpec, table: pa.Table, role: str,
                duplicate_ids: np.ndarray | None = None) -> pa.Array:
    """``{dataset}:{split}:{id}``, the id from the dataset's id field or the raw row position; a row
    whose id is not unique in its split (``duplicate_ids`` as in :func:`stable_keys`) gets ``~`` and
    the hex of its content's hash after it (``rte:train:0~5d1c...``).

    >>> twins = pa.table({"sentence": ["a", "b"], "label": [0, 1], "idx": [7, 7], "row_index": [0, 1]})
    >>> ids = example_ids(load_registry().datasets["sst2"], twins, "train").to_pylist()
    >>> ids[0] != ids[1], ids[0].startswith("sst2:train:7~")
    (True, True)
    """
    if spec.id_field and not pa.types.is_nested(table.schema.field(spec.id_field).type):
        ids = table.column(spec.id_field).cast(pa.string())
    else:
        ids = table.column("row_index").cast(pa.string())
    out = pc.binary_join_element_wise(f"{spec.name}:{role}:", ids, "")
    _, colliding = _colliding(spec, table, duplicate_ids)
    if colliding.any():
        rows = np.flatnonzero(colliding)
        tags = [f"~{h:016x}" for h in content_hashes(table.take(pa.array(rows))).tolist()]
        values = out.combine_chunks().to_pylist() if isinstance(out, pa.ChunkedArray) else out.to_pylist()
        for i, tag in zip(rows.tolist(), tags, strict=True):
            values[i] += tag
        out = pa.array(values, pa.string())
    return out


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


def uniforms(keys: np.ndarray, salt_name: str, seed: int) -> np.ndarray:
    """A seeded draw in [0, 1) per row, a function of (seed, ``salt_name``, the row's key) only.

    >>> u = uniforms(np.arange(4, dtype=np.uint64), "prompt_type/rte/0", 1)
    >>> alone = uniforms(np.array([2], np.uint64), "prompt_type/rte/0", 1)
    >>> bool(((0 <= u) & (u < 1)).all()), bool(u[2] == alone[0])
    (True, True)
    """
    return (scramble(keys, derive_seed(seed, salt_name)) >> np.uint64(11)).astype(np.float64) / 2.0**53


def prompt_type_draws(keys: np.ndarray, rates: tuple[float, ...], passes: int, name: str,
                      seed: int) -> np.ndarray:
    """``(passes, n)`` prompt type per row and pass: the index ``i`` of ``rates`` (zs_opt, zs_noopt,
    fs_opt, fs_noopt) whose cumulative interval holds the row's draw from (seed, dataset, key, pass).
    A rate of 1 gives every row its type; a rate of 0 none.

    >>> prompt_type_draws(np.arange(6, dtype=np.uint64), (1.0, 0.0, 0.0, 0.0), 2, "rte", 1).tolist()
    [[0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]]
    """
    bounds = np.cumsum(rates, dtype=np.float64)
    bounds[np.flatnonzero(np.asarray(rates) > 0)[-1]:] = np.inf  # the last type takes what rounding leaves
    draws = [np.searchsorted(bounds, uniforms(keys, f"prompt_type/{name}/{p}", seed), side="right")
             for p in range(passes)]
    return np.stack(draws) if draws else np.zeros((0, len(keys)), np.int64)


def shot_draws(keys: np.ndarray, k: int, passes: int, name: str, seed: int) -> np.ndarray:
    """``(passes, n)`` exemplars a few-shot rendering asks for: uniform in 1..``k`` per row and
    pass, from (seed, dataset, key, pass).

    >>> d = shot_draws(np.arange(1000, dtype=np.uint64), 3, 1, "rte", 1)
    >>> sorted(set(d[0].tolist()))
    [1, 2, 3]
    """
    return np.stack([1 + (uniforms(keys, f"shots/{name}/{p}", seed) * k).astype(np.int64)
                     for p in range(passes)]) if passes else np.zeros((0, len(keys)), np.int64)


def template_draws_inverted(keys: np.ndarray, inverted: np.ndarray, rate: float, passes: int, name: str,
                            seed: int) -> np.ndarray:
    """Like :func:`template_draws`, with turned-around templates (``inverted``: a mask over the
    templates) drawn at ``rate``: per row and pass, a seeded draw picks the turned-around group or
    the rest, then the row's seeded first template of that group moves on by one each pass. A
    dataset without one of the groups draws from the other.

    >>> inv = np.array([False, False, True])
    >>> d = template_draws_inverted(np.arange(4000, dtype=np.uint64), inv, 0.25, 1, "rte", 1)
    >>> bool(abs((d[0] == 2).mean() - 0.25) < 0.03), sorted(set(d[0].tolist()))
    (True, [0, 1, 2])
    """
    z = scramble(keys, derive_seed(seed, f"template/{name}"))
    turned, plain = np.flatnonzero(inverted), np.flatnonzero(~inverted)
    out = np.empty((passes, len(keys)), np.int64)
    for p in range(passes):
        use = uniforms(keys, f"inverted/{name}/{p}", seed) < rate
        if not len(turned):
            use[:] = False
        elif not len(plain):
            use[:] = True
        for group, mask in ((turned, use), (plain, ~use)):
            if len(group):
                out[p, mask] = group[((z[mask] % np.uint64(len(group))).astype(np.int64) + p) % len(group)]
    return out


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
