"""Stage 3a, dedupe: exact and near-duplicate training examples, within and across datasets.

Two steps, so the heavy work runs one job per dataset and only small fingerprints meet:

1. :func:`fingerprint_dataset` (one job per dataset) reads the dataset's *pool* of train rows (see
   :mod:`flanpipe.pool`), batch by batch, and writes, per row, a 128-bit hash of its normalised
   inputs + targets before templating (:func:`plain_pairs`), a MinHash signature of its raw text
   fields and one of its registry ``distinct`` fields plus target (:func:`row_fingerprints`;
   ``data/dedup/fingerprints/{dataset}.parquet``). The same job writes the n-gram set of the
   dataset's eval split for decontamination (:mod:`flanpipe.decontaminate`).
2. :func:`dedupe` (one job) walks all fingerprints in the stable order (datasets in registry order,
   rows in source order): a row whose exact hash was seen before is an exact duplicate; of the rest,
   rows that LSH puts in a bucket with an earlier row (band keys over both signatures) and whose
   estimated Jaccard with it reaches the threshold on both signatures join its component, and every
   component keeps its first row. So questions that share a passage, or hypotheses that share a
   premise, are never near duplicates of each other. Every dropped row is written to
   ``data/dedup/{dataset}.dropped.parquet`` with the kept twin and the reason. Whether a dropped row
   leaves a given mixture is decided there (:func:`flanpipe.mix.resolve_mixture`): only if its twin
   is in that mixture.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flanpipe import fingerprint as fp
from flanpipe.config import DecontaminateConfig, DedupConfig
from flanpipe.decontaminate import eval_ngrams
from flanpipe.io import (
    code_version,
    derive_seed,
    iter_parquet,
    parquet_stream,
    read_parquet_metadata,
    sha256_file,
    utc_now,
    write_json_atomic,
    write_parquet_atomic,
)
from flanpipe.logs import progress
from flanpipe.registry import DatasetSpec, load_registry
from flanpipe.templates import (
    DatasetTemplates,
    distinct_texts,
    plain_template,
    raw_texts,
    render_template,
)
from flanpipe.templatize import example_ids

# 3: fingerprints the pool file (data/pool), batch by batch
STAGE_VERSION = "3"
BATCH_ROWS = 16_384
"""Pool rows fingerprinted at a time."""
log = logging.getLogger(__name__)

DROPPED_SCHEMA = pa.schema([
    pa.field("row_index", pa.int64()),
    pa.field("example_id", pa.string()),
    pa.field("reason", pa.string()),  # exact | near
    pa.field("kept_dataset", pa.string()),
    pa.field("kept_row_index", pa.int64()),
    pa.field("kept_example_id", pa.string()),
    pa.field("similarity", pa.float32()),  # 1 for exact; the estimated Jaccard for near
])


def fingerprint_schema(num_perm: int) -> pa.Schema:
    return pa.schema([
        pa.field("row_index", pa.int64()),
        pa.field("example_id", pa.string()),
        pa.field("priority", pa.uint64()),
        pa.field("exact_hi", pa.uint64()),
        pa.field("exact_lo", pa.uint64()),
        pa.field("words", pa.int32()),
        pa.field("signature", pa.list_(pa.uint32(), num_perm)),  # all raw text fields
        pa.field("distinct_signature", pa.list_(pa.uint32(), num_perm)),  # the `distinct` fields
    ])


def plain_pairs(spec: DatasetSpec, table: pa.Table) -> tuple[pa.Array, pa.Array]:
    """Each row's (inputs, targets) before templating: all raw text fields, and the target as the
    `no_template` format renders it. The exact hash is taken over these, so the template a train row
    happened to draw can never hide a duplicate."""
    bank = DatasetTemplates(dataset=spec.name, templates=())
    targets = render_template(bank, plain_template(spec, "no_template"), table, "none").targets
    return raw_texts(spec, table), targets


@dataclass(frozen=True)
class RowFingerprints:
    """What dedup compares, per row: the exact hash, the word count, and the MinHash signatures of
    all raw text fields and of the ``distinct`` fields."""

    exact: np.ndarray  # (n, 2) uint64
    words: np.ndarray  # (n,) words in all raw text fields
    signature: np.ndarray  # (n, num_perm) uint32
    distinct_signature: np.ndarray  # (n, num_perm) uint32; all SIG_EMPTY without distinct fields


def row_fingerprints(spec: DatasetSpec, table: pa.Table, cfg: DedupConfig, seed: int) -> RowFingerprints:
    """Fingerprint raw rows.

    With ``distinct`` fields in the registry, the example itself gets a second signature: of those
    fields plus the plain target for a generation task, and for a classification or multiple-choice
    task of those fields, scrambled by the label (each value XOR a hash of the label, so rows with
    different labels never agree). Two rows are near duplicates only if this is alike too: rows that
    share a passage but differ in question or answer, or a premise but differ in hypothesis or label,
    never are.
    """
    inputs, targets = plain_pairs(spec, table)
    words = fp.word_hashes(inputs)
    minhash_seed = derive_seed(seed, "minhash")
    signature = fp.minhash(words, cfg.near.shingle, cfg.near.num_perm, seed=minhash_seed)
    distinct = distinct_texts(spec, table)
    if distinct is None:
        distinct_signature = np.full_like(signature, fp.SIG_EMPTY)
    else:
        generation = spec.task.type == "generation"
        if generation:
            distinct = pc.binary_join_element_wise(distinct, pc.fill_null(targets, ""), " ")
        distinct_signature = fp.minhash(fp.word_hashes(distinct), cfg.near.shingle, cfg.near.num_perm,
                                        seed=minhash_seed)
        if not generation:
            label = fp.exact_hashes(targets, pa.array([""] * len(targets), pa.string()))[:, 0]
            distinct_signature ^= (label & np.uint64(0xFFFFFFFF)).astype(np.uint32)[:, None]
    return RowFingerprints(fp.exact_hashes(inputs, targets), words.counts, signature, distinct_signature)


def fingerprint_dataset(name: str, pool: str | Path, eval_split: str | Path, out_fingerprints: str | Path,
                        out_ngrams: str | Path, cfg: DedupConfig, decontam: DecontaminateConfig,
                        seed: int, batch_rows: int = BATCH_ROWS) -> dict:
    """Write the fingerprints of a dataset's pool (``data/pool/{dataset}.parquet``, read and written
    batch by batch) and its eval split's n-gram set."""
    spec = load_registry().datasets[name]
    pool_meta = read_parquet_metadata(pool)
    meta = {"stage": "fingerprint", "stage_version": STAGE_VERSION, "dataset": name, "seed": seed,
            "raw_rows": pool_meta["raw_rows"], "pool_rows": pool_meta["pool_rows"],
            "shingle": cfg.near.shingle, "num_perm": cfg.near.num_perm, "distinct": list(spec.distinct)}
    with parquet_stream(out_fingerprints, fingerprint_schema(cfg.near.num_perm), meta) as writer:
        batches = progress(iter_parquet(pool, batch_rows), pool_meta["pool_rows"], f"{name}: fingerprints")
        for table in batches:
            f = row_fingerprints(spec, table, cfg, seed)
            writer.write(pa.Table.from_arrays([
                table.column("row_index").cast(pa.int64()),
                example_ids(spec, table, "train"),
                table.column("priority"),
                pa.array(f.exact[:, 0]),
                pa.array(f.exact[:, 1]),
                pa.array(f.words.astype(np.int32)),
                pa.FixedSizeListArray.from_arrays(pa.array(f.signature.reshape(-1)), cfg.near.num_perm),
                pa.FixedSizeListArray.from_arrays(pa.array(f.distinct_signature.reshape(-1)),
                                                  cfg.near.num_perm),
            ], schema=fingerprint_schema(cfg.near.num_perm)))
    ngram_meta = eval_ngrams(spec, eval_split, out_ngrams, decontam)
    log.info("%s: %d of %d train rows fingerprinted; eval n-grams: %s", name, meta["pool_rows"],
             meta["raw_rows"], ngram_meta)
    return meta


def _load_fingerprints(paths: list[Path], num_perm: int) -> dict[str, np.ndarray]:
    """Every dataset's fingerprints in arrays allocated once, filled a file at a time (memory: the
    arrays and one file's table)."""
    sizes = [pq.ParquetFile(p).metadata.num_rows for p in paths]
    n = sum(sizes)
    out = {"dataset": np.repeat(np.arange(len(paths)), sizes), "row_index": np.empty(n, np.int64),
           "example_id": np.empty(n, object), "hi": np.empty(n, np.uint64), "lo": np.empty(n, np.uint64),
           "words": np.empty(n, np.int64), "signature": np.empty((n, num_perm), np.uint32),
           "distinct_signature": np.empty((n, num_perm), np.uint32)}
    start = 0
    for path, size in zip(paths, sizes, strict=True):
        t = pq.read_table(path)
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


def lsh_bands(cfg: DedupConfig) -> tuple[int, int]:
    """(bands, rows per band): the configured bands, or the best pair for the threshold."""
    bands = cfg.near.bands or fp.lsh_params(cfg.near.threshold, cfg.near.num_perm)[0]
    return bands, cfg.near.num_perm // bands


def find_duplicates(hi: np.ndarray, lo: np.ndarray, signature: np.ndarray, words: np.ndarray,
                    cfg: DedupConfig, distinct: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
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


def dedupe(names: list[str], fingerprint_paths: list[str | Path], out_dir: str | Path, cfg: DedupConfig,
           seed: int) -> dict:
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
    report = {"stage": "dedupe", "stage_version": STAGE_VERSION, "seed": seed, "config": cfg.model_dump(),
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
