"""Stage 3b, decontaminate: find training examples that share a long word n-gram with an evaluation
example of a held-out dataset.

The eval side (:func:`eval_ngrams`, run in each dataset's fingerprint job) stores the set of n-gram
hashes of the dataset's eval split. The n-gram is ``decontaminate.ngram`` words (13), shrunk for a
dataset whose eval texts are short to the 5th percentile of their word counts, but never below
``min_ngram`` (GPT-3's rule); eval texts shorter than that cannot match and are counted as
unchecked. The train side (:func:`decontaminate_dataset`, one job per dataset) hashes the n-grams of
every pool row (:mod:`flanpipe.stages.pool`) and records each (train row, eval dataset) pair that shares one:
``data/decontam/{dataset}.parquet``. Which matches remove a row depends on the mixture: the mixer
drops rows matching the eval sets of the mixture's held-out cluster (for `all`, of every held-out
cluster).

A dataset whose registry entry names a ``source_field`` (Super-NaturalInstructions' task Source) also
records each row whose source is a registry dataset (``flanpipe/data/registry/niv2_sources.yaml``) as
a match of that dataset's cluster, named ``source:<dataset>``, with ``ngram`` and ``matches`` 0: the
mixer removes such a row from the held-out model of that cluster as it removes a contaminated one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flanpipe.core.config.registry import load_registry
from flanpipe.core.io import (
    ParquetReader,
    iter_parquet,
    read_parquet_metadata,
    read_table,
    write_parquet_atomic,
)
from flanpipe.core.logs import progress
from flanpipe.core.text import hashing as fp
from flanpipe.core.text.keys import example_ids, pool_duplicate_ids
from flanpipe.core.text.schemas import MATCH_SCHEMA
from flanpipe.core.text.sources import source_matches
from flanpipe.core.text.templates import raw_texts
from flanpipe.core.versions import STAGE_VERSIONS

# 2: reads the pool file (data/pool) batch by batch
STAGE_VERSION = STAGE_VERSIONS["decontaminate"]
BATCH_ROWS = 4_096
"""Pool rows checked at a time (their n-gram hashes are ~8 bytes a word)."""
log = logging.getLogger(__name__)



def contaminated_rows(words: fp.Words, eval_sets: dict[str, tuple[int, np.ndarray]]
                      ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """For each eval set ``{name: (n, sorted hashes)}``: (rows with a shared n-gram, match counts)."""
    out = {}
    for n in sorted({n for n, _ in eval_sets.values()}):
        grams, starts = fp.ngram_hashes(words, n)
        doc = np.repeat(np.arange(len(starts) - 1), np.diff(starts))
        for name, (size, hashes) in eval_sets.items():
            if size != n:
                continue
            if len(hashes) == 0 or len(grams) == 0:
                out[name] = (np.zeros(0, np.int64), np.zeros(0, np.int64))
                continue
            pos = np.minimum(np.searchsorted(hashes, grams), len(hashes) - 1)
            counts = np.bincount(doc[hashes[pos] == grams], minlength=len(starts) - 1)
            rows = np.flatnonzero(counts)
            out[name] = (rows, counts[rows])
    return out


def _source_match_tables(sources: list[str | None], row_index: np.ndarray, ids: pa.Array,
                         clusters: dict[str, str]) -> list[pa.Table]:
    """Matches by source (:func:`~flanpipe.core.text.sources.source_matches`), in MATCH_SCHEMA."""
    out = []
    for rows, name, cluster in source_matches(sources, clusters):
        n = len(rows)
        out.append(pa.Table.from_arrays([
            pa.array(row_index[rows], pa.int64()), ids.take(pa.array(rows)),
            pa.array([name] * n, pa.string()),
            pa.array([cluster] * n, pa.string()), pa.array(np.zeros(n, np.int32)),
            pa.array(np.zeros(n, np.int32))], schema=MATCH_SCHEMA))
    return out


def decontaminate_dataset(name: str, pool: str | Path, fingerprints: str | Path,
                          ngram_paths: dict[str, str | Path], out_path: str | Path,
                          batch_rows: int = BATCH_ROWS) -> dict:
    """Record every (pool row of ``name``, held-out eval dataset) pair sharing an n-gram; the pool
    (``data/pool/{dataset}.parquet``) is read ``batch_rows`` rows at a time, so a long-document set
    costs one batch of n-gram hashes, not the pool's."""
    registry = load_registry()
    spec = registry.datasets[name]
    pool_rows = ParquetReader(pool).metadata.num_rows
    fingerprinted = ParquetReader(fingerprints).metadata.num_rows
    if pool_rows != fingerprinted:
        raise ValueError(f"{name}: {fingerprinted} fingerprints for {pool_rows} pool rows; rerun fingerprint")
    eval_sets = {}
    for eval_name, path in ngram_paths.items():
        meta = read_parquet_metadata(path)
        eval_sets[eval_name] = (int(meta["ngram"]), read_table(path).column("hash").to_numpy())
    parts = []
    clusters = {d: s.cluster for d, s in registry.datasets.items()}
    dups = pool_duplicate_ids(read_parquet_metadata(pool))
    for table in progress(iter_parquet(pool, batch_rows), pool_rows, f"{name}: decontaminate"):
        found = contaminated_rows(fp.word_hashes(raw_texts(spec, table)), eval_sets)
        row_index = table.column("row_index").to_numpy()
        ids = example_ids(spec, table, "train", dups)
        for eval_name, (rows, counts) in found.items():
            if not len(rows):
                continue
            parts.append(pa.Table.from_arrays([
                pa.array(row_index[rows], pa.int64()), ids.take(pa.array(rows)),
                pa.array([eval_name] * len(rows), pa.string()),
                pa.array([registry.datasets[eval_name].cluster] * len(rows), pa.string()),
                pa.array([eval_sets[eval_name][0]] * len(rows), pa.int32()),
                pa.array(counts, pa.int32())], schema=MATCH_SCHEMA))
        if spec.source_field:
            parts += _source_match_tables(table.column(spec.source_field).to_pylist(), row_index, ids,
                                          clusters)
    table = pa.concat_tables(parts) if parts else MATCH_SCHEMA.empty_table()
    table = table.sort_by([("row_index", "ascending"), ("eval_dataset", "ascending")])
    for eval_name in sorted(eval_sets):
        found = int(pc.sum(pc.equal(table.column("eval_dataset"), eval_name)).as_py() or 0)
        if found:
            log.info("%s: %d pool rows share a %d-gram with %s eval", name, found, eval_sets[eval_name][0],
                     eval_name)
    meta = {"stage": "decontaminate", "stage_version": STAGE_VERSION, "dataset": name,
            "eval_datasets": sorted(ngram_paths), "pool_rows": pool_rows,
            "contaminated_rows": int(len(np.unique(table.column("row_index").to_numpy())))}
    write_parquet_atomic(table, out_path, meta)
    return meta
