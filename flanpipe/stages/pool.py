"""Stage 2a, pool: the train rows of a dataset that can ever reach a mixture, chosen before any work.

Every train row gets a seeded 64-bit priority from its stable key (:func:`priorities`); the cap keeps
a dataset's ``mix.cap`` surviving rows of lowest priority. Dedup and decontamination remove only a
small share of a dataset, so the ``dedupe.pool_factor * mix.cap`` rows of lowest priority (the
*pool*) hold every row the cap can keep; the rest are counted as capped and never templatized,
fingerprinted or mixed. The raw rows were all checked by download's row validator already.

:func:`write_pool` reads the raw train split twice, batch by batch: once for the keys (only the
columns the key needs), keeping a running set of the ``limit`` lowest priorities, and once to copy
the chosen rows, in source order, with their ``priority`` column, to ``data/pool/{dataset}.parquet``.
Memory holds a batch and the pool's (priority, row) pairs, whatever the split's size.
``dedupe.pool_factor: null`` makes the pool every row (a streamed copy), for those who want every row
checked.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from flanpipe.core.config import PoolSlice
from flanpipe.core.config.registry import DatasetSpec, load_registry
from flanpipe.core.io import ParquetReader, iter_parquet, lookup, parquet_stream, read_schema
from flanpipe.core.logs import progress
from flanpipe.core.text.keys import duplicate_id_hashes, priorities, stable_keys
from flanpipe.core.versions import STAGE_VERSIONS

STAGE_VERSION = STAGE_VERSIONS["pool"]
BATCH_ROWS = 16_384
"""Raw rows read at a time."""
log = logging.getLogger(__name__)


def pool_limit(pool_factor: float | None, cap: int) -> int | None:
    """Rows in a dataset's pool: ``ceil(pool_factor * cap)``, or None (every row).

    >>> pool_limit(4.0, 30_000), pool_limit(None, 30_000)
    (120000, None)
    """
    return None if pool_factor is None else math.ceil(pool_factor * cap)


def key_columns(spec: DatasetSpec, schema: pa.Schema) -> list[str] | None:
    """The raw columns :func:`stable_keys` reads: the id field and ``row_index``, or None (every
    column) for a dataset keyed by its content."""
    if spec.id_field and spec.id_field in schema.names and not pa.types.is_nested(
            schema.field(spec.id_field).type):
        return [spec.id_field, "row_index"]
    return None


class Lowest:
    """The ``limit`` (priority, row) pairs that sort first, over batches offered one at a time.

    >>> low = Lowest(2)
    >>> low.offer(np.array([5, 1, 9], np.uint64), np.array([0, 1, 2]))
    >>> low.offer(np.array([1, 7], np.uint64), np.array([3, 4]))
    >>> low.rows.tolist(), low.priority.tolist()
    ([1, 3], [1, 1])
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.priority = np.zeros(0, np.uint64)
        self.rows = np.zeros(0, np.int64)

    def offer(self, priority: np.ndarray, rows: np.ndarray) -> None:
        if len(self.rows) == self.limit:  # only rows that sort before the worst kept can enter
            worst = np.uint64(self.priority.max())
            enter = priority <= worst
            priority, rows = priority[enter], rows[enter]
            if not len(rows):
                return
        p = np.concatenate([self.priority, priority])
        r = np.concatenate([self.rows, rows.astype(np.int64)])
        keep = np.lexsort((r, p))[:self.limit]
        self.priority, self.rows = p[keep], r[keep]


def write_pool(name: str, train: str | Path, out_path: str | Path, cfg: PoolSlice,
               batch_rows: int = BATCH_ROWS) -> dict:
    """Write the pool of ``train`` (a raw train split, rows in source order) to ``out_path``: the
    ``ceil(cfg.pool_factor * cfg.cap)`` rows of lowest priority, or every row."""
    pool_factor, cap, seed = cfg.pool_factor, cfg.cap, cfg.seed
    spec = load_registry().datasets[name]
    train = Path(train)
    schema = read_schema(train)
    limit = pool_limit(pool_factor, cap)
    raw_rows = ParquetReader(train).metadata.num_rows
    started = time.monotonic()
    columns = key_columns(spec, schema)
    dups = duplicate_id_hashes(spec, iter_parquet(train, batch_rows, columns[:1])) if columns \
        else np.zeros(0, np.uint64)
    chosen = None
    if limit is not None and raw_rows > limit:
        lowest = Lowest(limit)
        # rows whose id collides are keyed by their content too: read every column then
        for table in progress(iter_parquet(train, batch_rows, None if len(dups) else columns), raw_rows,
                              f"{name}: pool keys"):
            lowest.offer(priorities(stable_keys(spec, table, dups), name, seed),
                         table.column("row_index").to_numpy())
        by_row = np.argsort(lowest.rows, kind="stable")
        chosen = (lowest.rows[by_row], lowest.priority[by_row])
    meta = {"stage": "pool", "stage_version": STAGE_VERSION, "dataset": name, "seed": seed,
            "pool_factor": pool_factor, "cap": cap, "limit": limit, "raw_rows": raw_rows}
    if len(dups):  # only then: a clean dataset's pool keeps its bytes
        meta["duplicate_id_hashes"] = [f"{h:016x}" for h in dups.tolist()]
        log.warning("%s: %d ids are held by more than one train row; those rows are keyed by their "
                    "content too", name, len(dups))
    written, last = 0, -1
    out_schema = schema.remove_metadata().append(pa.field("priority", pa.uint64()))
    with parquet_stream(out_path, out_schema, {**meta, "pool_rows": raw_rows if chosen is None else
                                               len(chosen[0])}) as writer:
        for table in progress(iter_parquet(train, batch_rows), raw_rows, f"{name}: pool rows"):
            rows = table.column("row_index").to_numpy()
            if len(rows) and (rows[0] <= last or (np.diff(rows) <= 0).any()):
                raise ValueError(f"{train}: row_index is not increasing (row {int(rows[0])} after "
                                 f"{last}); rerun download for {name}")
            last = int(rows[-1]) if len(rows) else last
            if chosen is None:
                prio = priorities(stable_keys(spec, table, dups), name, seed)
            else:
                at, mine = lookup(chosen[0], rows)
                table, prio = table.filter(pa.array(mine)), chosen[1][at[mine]]
            writer.write(table.replace_schema_metadata(None).append_column(
                "priority", pa.array(prio, pa.uint64())))
            written += table.num_rows
        if chosen is not None and written != len(chosen[0]):
            raise ValueError(f"{train}: {len(chosen[0])} pool rows chosen, {written} found on the second "
                             "read; the file changed while it was read")
    meta["pool_rows"] = written
    log.info("%s: %d of %d train rows in the pool (limit %s) in %.1f s", name, written, raw_rows, limit,
             time.monotonic() - started)
    return meta
