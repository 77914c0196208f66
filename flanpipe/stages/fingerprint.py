"""Stage 3a, fingerprint (one job per dataset): what dedupe and decontaminate compare.

Reads the dataset's *pool* of train rows (``data/pool/{dataset}.parquet``), batch by batch, and
writes, per row, a 128-bit hash of its normalised inputs + targets before templating
(:func:`plain_pairs`), a MinHash signature of its raw text fields and one of its registry
``distinct`` fields plus target (:func:`row_fingerprints`; ``data/dedup/fingerprints/{dataset}.parquet``).
The same job writes the n-gram set of the dataset's eval split (:func:`eval_ngrams`;
``data/decontam/ngrams/{dataset}.parquet``), which the decontaminate jobs check train rows against.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flanpipe.core.config import DecontaminateConfig, FingerprintSlice
from flanpipe.core.config.registry import DatasetSpec, load_registry
from flanpipe.core.io import (
    iter_parquet,
    parquet_stream,
    read_parquet_metadata,
    write_parquet_atomic,
)
from flanpipe.core.logs import progress
from flanpipe.core.text import hashing as fp
from flanpipe.core.text.keys import derive_seed, example_ids, pool_duplicate_ids
from flanpipe.core.text.schemas import NGRAM_SCHEMA, fingerprint_schema
from flanpipe.core.text.templates import (
    DatasetTemplates,
    distinct_texts,
    plain_template,
    raw_texts,
    render_template,
)
from flanpipe.core.versions import STAGE_VERSIONS

STAGE_VERSION = STAGE_VERSIONS["fingerprint"]
NGRAM_VERSION = "2"  # the eval n-gram files' own version (written by this stage, read by decontaminate)
BATCH_ROWS = 16_384
"""Pool rows fingerprinted at a time."""
NGRAM_BATCH_ROWS = 4_096
"""Eval rows hashed at a time (their n-gram hashes are ~8 bytes a word)."""
log = logging.getLogger(__name__)


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


def row_fingerprints(spec: DatasetSpec, table: pa.Table, cfg: FingerprintSlice) -> RowFingerprints:
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
    minhash_seed = derive_seed(cfg.seed, "minhash")
    signature = fp.minhash(words, cfg.shingle, cfg.num_perm, seed=minhash_seed)
    distinct = distinct_texts(spec, table)
    if distinct is None:
        distinct_signature = np.full_like(signature, fp.SIG_EMPTY)
    else:
        generation = spec.task.type == "generation"
        if generation:
            distinct = pc.binary_join_element_wise(distinct, pc.fill_null(targets, ""), " ")
        distinct_signature = fp.minhash(fp.word_hashes(distinct), cfg.shingle, cfg.num_perm,
                                        seed=minhash_seed)
        if not generation:
            label = fp.exact_hashes(targets, pa.array([""] * len(targets), pa.string()))[:, 0]
            distinct_signature ^= (label & np.uint64(0xFFFFFFFF)).astype(np.uint32)[:, None]
    return RowFingerprints(fp.exact_hashes(inputs, targets), words.counts, signature, distinct_signature)


def fingerprint_dataset(name: str, pool: str | Path, eval_split: str | Path, out_fingerprints: str | Path,
                        out_ngrams: str | Path, cfg: FingerprintSlice, batch_rows: int = BATCH_ROWS) -> dict:
    """Write the fingerprints of a dataset's pool (``data/pool/{dataset}.parquet``, read and written
    batch by batch) and its eval split's n-gram set."""
    spec = load_registry().datasets[name]
    pool_meta = read_parquet_metadata(pool)
    meta = {"stage": "fingerprint", "stage_version": STAGE_VERSION, "dataset": name, "seed": cfg.seed,
            "raw_rows": pool_meta["raw_rows"], "pool_rows": pool_meta["pool_rows"],
            "shingle": cfg.shingle, "num_perm": cfg.num_perm, "distinct": list(spec.distinct)}
    with parquet_stream(out_fingerprints, fingerprint_schema(cfg.num_perm), meta) as writer:
        batches = progress(iter_parquet(pool, batch_rows), pool_meta["pool_rows"], f"{name}: fingerprints")
        for table in batches:
            f = row_fingerprints(spec, table, cfg)
            writer.write(pa.Table.from_arrays([
                table.column("row_index").cast(pa.int64()),
                example_ids(spec, table, "train", pool_duplicate_ids(pool_meta)),
                table.column("priority"),
                pa.array(f.exact[:, 0]),
                pa.array(f.exact[:, 1]),
                pa.array(f.words.astype(np.int32)),
                pa.FixedSizeListArray.from_arrays(pa.array(f.signature.reshape(-1)), cfg.num_perm),
                pa.FixedSizeListArray.from_arrays(pa.array(f.distinct_signature.reshape(-1)),
                                                  cfg.num_perm),
            ], schema=fingerprint_schema(cfg.num_perm)))
    ngram_meta = eval_ngrams(spec, eval_split, out_ngrams, cfg)
    log.info("%s: %d of %d train rows fingerprinted; eval n-grams: %s", name, meta["pool_rows"],
             meta["raw_rows"], ngram_meta)
    return meta


def ngram_size(word_counts: np.ndarray, cfg: FingerprintSlice | DecontaminateConfig) -> int:
    """The dataset's n-gram: ``cfg.ngram``, or the 5th percentile of eval word counts if smaller, but
    at least ``cfg.min_ngram``.

    >>> ngram_size(np.array([5, 9, 30, 40]), DecontaminateConfig())
    8
    """
    if len(word_counts) == 0:
        return cfg.ngram
    p5 = int(np.percentile(word_counts, 5, method="lower"))
    return int(min(cfg.ngram, max(cfg.min_ngram, p5)))


def eval_ngrams(spec: DatasetSpec, eval_path: str | Path, out_path: str | Path,
                cfg: FingerprintSlice | DecontaminateConfig, batch_rows: int = NGRAM_BATCH_ROWS) -> dict:
    """Write the sorted, distinct n-gram hashes of a dataset's eval split. The split is read twice
    in batches (word counts for the n-gram size, then the n-grams), so memory holds a batch and the
    distinct hashes."""
    counts = [fp.word_hashes(raw_texts(spec, t)).counts for t in iter_parquet(eval_path, batch_rows)]
    word_counts = np.concatenate(counts) if counts else np.zeros(0, np.int64)
    n = ngram_size(word_counts, cfg)
    distinct = [np.zeros(0, np.uint64)]
    for t in iter_parquet(eval_path, batch_rows):
        hashes, _ = fp.ngram_hashes(fp.word_hashes(raw_texts(spec, t)), n)
        distinct.append(np.unique(hashes))
    distinct = [np.unique(np.concatenate(distinct))]
    meta = {"stage": "eval_ngrams", "stage_version": NGRAM_VERSION, "dataset": spec.name,
            "cluster": spec.cluster, "ngram": n, "eval_rows": len(word_counts),
            "unchecked_rows": int((word_counts < n).sum())}
    write_parquet_atomic(pa.table({"hash": distinct[0]}, schema=NGRAM_SCHEMA), out_path, meta)
    return meta
