"""Stage 3a, dedupe: exact and near-duplicate training examples, within and across datasets.

Two steps, so the heavy work runs one job per dataset and only small fingerprints meet:

1. :func:`fingerprint_dataset` (one job per dataset) reads the dataset's *pool* of train rows (see
   :mod:`flanpipe.stages.pool`), batch by batch, and writes, per row, a 128-bit hash of its normalised
   inputs + targets before templating (:func:`plain_pairs`), a MinHash signature of its raw text
   fields and one of its registry ``distinct`` fields plus target (:func:`row_fingerprints`;
   ``data/dedup/fingerprints/{dataset}.parquet``). The same job writes the n-gram set of the
   dataset's eval split for decontamination (:mod:`flanpipe.stages.decontaminate`).
2. :func:`dedupe` (one job) walks all fingerprints in the stable order (datasets in registry order,
   rows in source order): a row whose exact hash was seen before is an exact duplicate; of the rest,
   rows that LSH puts in a bucket with an earlier row (band keys over both signatures) and whose
   estimated Jaccard with it reaches the threshold on both signatures join its component, and every
   component keeps its first row. So questions that share a passage, or hypotheses that share a
   premise, are never near duplicates of each other. Every dropped row is written to
   ``data/dedup/{dataset}.dropped.parquet`` with the kept twin and the reason. Whether a dropped row
   leaves a given mixture is decided there (:func:`flanpipe.stages.mix.resolve_mixture`): only if its twin
   is in that mixture.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa

from flanpipe.core.config import DedupeConfig, DedupeSlice
from flanpipe.core.io import (
    ParquetReader,
    code_version,
    read_table,
    sha256_file,
    utc_now,
    write_json_atomic,
    write_parquet_atomic,
)
from flanpipe.core.text import hashing as fp
from flanpipe.core.text.schemas import DROPPED_SCHEMA
from flanpipe.core.versions import STAGE_VERSIONS

# 3: fingerprints the pool file (data/pool), batch by batch
STAGE_VERSION = STAGE_VERSIONS["dedupe"]
BATCH_ROWS = 16_384
"""Pool rows fingerprinted at a time."""
log = logging.getLogger(__name__)





def _load_fingerprints(paths: list[Path], num_perm: int) -> dict[str, np.ndarray]:
    """Every dataset's fingerprints in arrays allocated once, filled a file at a time (memory: the
    arrays and one file's table)."""
    sizes = [ParquetReader(p).metadata.num_rows for p in paths]
    n = sum(sizes)
    out = {"dataset": np.repeat(np.arange(len(paths)), sizes), "row_index": np.empty(n, np.int64),
           "example_id": np.empty(n, object), "hi": np.empty(n, np.uint64), "lo": np.empty(n, np.uint64),
           "words": np.empty(n, np.int64), "signature": np.empty((n, num_perm), np.uint32),
           "distinct_signature": np.empty((n, num_perm), np.uint32)}
    start = 0
    for path, size in zip(paths, sizes, strict=True):
        t = read_table(path)
        if t.schema.field("signature").type.list_size != num_perm:
            raise ValueError(f"{path}: signatures have {t.schema.field('signature').type.list_size} "
                             f"permutations, the config asks for {num_perm}; rerun fingerprint")
        rows = slice(start, start + size)
        for key, column in (("row_index", "row_index"), ("hi", "exact_hi"), ("lo", "exact_lo"),
                            ("words", "words"), ("example_id", "example_id")):
            out[key][rows] = t.column(column).to_numpy(zero_copy_only=False)
        for key in ("signature", "distinct_signature"):
            out[key][rows] = t.column(key).combine_chunks().values.to_numpy().reshape(-1, num_perm)
        start += size
        del t
    return out


def lsh_bands(cfg: DedupeConfig) -> tuple[int, int]:
    """(bands, rows per band): the configured bands, or the best pair for the threshold."""
    bands = cfg.near.bands or fp.lsh_params(cfg.near.threshold, cfg.near.num_perm)[0]
    return bands, cfg.near.num_perm // bands


def find_duplicates(hi: np.ndarray, lo: np.ndarray, signature: np.ndarray, words: np.ndarray,
                    cfg: DedupeConfig, distinct: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(twin, reason) per row in the stable order: ``twin[i]`` is the kept row that row ``i``
    duplicates (-1 if kept); ``reason[i]`` is 1 for exact, 2 for near, 0 if kept.

    Near duplicates must be alike in all their text (``signature``) and in the fields that tell
    examples apart (``distinct``; None or all ``SIG_EMPTY`` rows: no such fields)."""
    n = len(hi)
    twin = np.full(n, -1, np.int64)
    reason = np.zeros(n, np.int8)
    if cfg.exact and n:
        first = fp.first_occurrence(hi, lo, np.ones(n, np.bool_))
        exact = first >= 0
        twin[exact], reason[exact] = first[exact], 1
    if cfg.near.enabled and n:
        active = (reason == 0) & (words > 0)
        bands, rows = lsh_bands(cfg)
        if distinct is None:
            distinct = np.full_like(signature, fp.SIG_EMPTY)
        keys = fp.band_keys(signature, distinct, bands, rows)
        root = fp.lsh_components(keys, signature, distinct, active, cfg.near.threshold)
        near = active & (root != np.arange(n))
        twin[near], reason[near] = root[near], 2
    return twin, reason


def dedupe(names: list[str], fingerprint_paths: list[str | Path], out_dir: str | Path, cfg: DedupeSlice
           ) -> dict:
    """Find duplicates across all datasets and write ``{out_dir}/{dataset}.dropped.parquet`` each,
    plus ``{out_dir}/report.json``."""
    out_dir = Path(out_dir)
    fps = _load_fingerprints([Path(p) for p in fingerprint_paths], cfg.near.num_perm)
    twin, reason = find_duplicates(fps["hi"], fps["lo"], fps["signature"], fps["words"], cfg,
                                   fps["distinct_signature"])
    dropped = np.flatnonzero(twin >= 0)
    similarity = np.ones(len(dropped), np.float32)
    near = reason[dropped] == 2
    if near.any():
        a, b = dropped[near], twin[dropped[near]]
        for sig in (fps["signature"], fps["distinct_signature"]):  # the lower of the two estimates
            similarity[near] = np.minimum(similarity[near], (sig[a] == sig[b]).mean(axis=1))
    report = {"stage": "dedupe", "stage_version": STAGE_VERSION, "seed": cfg.seed,
              "config": cfg.model_dump(exclude={"seed"}),
              "rows": int(len(twin)), "datasets": {}}
    if cfg.near.enabled:
        bands, rows = lsh_bands(cfg)
        report["lsh"] = {"bands": bands, "rows_per_band": rows}
    for k, name in enumerate(names):
        mine = dropped[fps["dataset"][dropped] == k]
        sim = similarity[fps["dataset"][dropped] == k]
        kept = twin[mine]
        table = pa.Table.from_arrays([
            pa.array(fps["row_index"][mine]), pa.array(fps["example_id"][mine], pa.string()),
            pa.array(np.where(reason[mine] == 1, "exact", "near"), pa.string()),
            pa.array(np.asarray(names, dtype=object)[fps["dataset"][kept]] if len(kept) else [], pa.string()),
            pa.array(fps["row_index"][kept]), pa.array(fps["example_id"][kept], pa.string()),
            pa.array(sim, pa.float32()),
        ], schema=DROPPED_SCHEMA)
        write_parquet_atomic(table, out_dir / f"{name}.dropped.parquet",
                             {"stage": "dedupe", "stage_version": STAGE_VERSION, "dataset": name})
        across, exact = fps["dataset"][kept] != k, reason[mine] == 1
        report["datasets"][name] = {
            "fingerprinted": int((fps["dataset"] == k).sum()), "dropped": len(mine),
            "exact_within": int((exact & ~across).sum()), "exact_across": int((exact & across).sum()),
            "near_within": int((~exact & ~across).sum()), "near_across": int((~exact & across).sum())}
        log.info("%s: %s", name, report["datasets"][name])
    report["inputs"] = {str(p): sha256_file(p) for p in fingerprint_paths}
    report["code"] = code_version("dedupe", STAGE_VERSION)
    report["created_at"] = utc_now()
    write_json_atomic(out_dir / "report.json", report)
    return report
