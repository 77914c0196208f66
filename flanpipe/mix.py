"""Stage 3c, cap and mix: one training mixture per held-out cluster (leave-one-cluster-out) plus `all`.

For each dataset the mixture trains on, the pool rows that are neither duplicates nor contaminated
(for this mixture's held-out clusters) are capped at ``mix.cap`` by their seeded priority (a
consistent sample, :func:`flanpipe.dedup.priorities`). Rates follow seqio's rule
``rate_i = min(n_i, K) ** (1 / T)``, normalised. The mixture holds enough examples for the training
budget (``train.steps * train.tokens_per_batch`` over the rate-weighted mean of estimated tokens per
example), split over datasets by largest remainder (so each count is within one of ``N * rate_i``);
a dataset smaller than its share repeats (whole passes plus a seeded partial one) and its epochs are
recorded. The rows are shuffled together and written as Parquet shards:
``data/mixtures/{mixture}/shards/part-XXXXX-of-YYYYY.parquet``, plus ``stats.parquet``,
``contamination.parquet`` and ``manifest.json`` beside them.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from flanpipe.config import Config
from flanpipe.io import (
    atomic_dir,
    code_version,
    derive_seed,
    sha256_file,
    utc_now,
    write_json_atomic,
    write_parquet_atomic,
)
from flanpipe.registry import load_registry
from flanpipe.templatize import SCHEMA as TEMPLATIZED_SCHEMA

STAGE_VERSION = "1"
log = logging.getLogger(__name__)

MIXTURE_SCHEMA = TEMPLATIZED_SCHEMA.append(pa.field("epoch", pa.int32()))
STATS_SCHEMA = pa.schema([
    pa.field("mixture", pa.string()),
    pa.field("dataset", pa.string()),
    pa.field("cluster", pa.string()),
    pa.field("rows_raw", pa.int64()),
    pa.field("rejected", pa.int64()),
    pa.field("exact_dups", pa.int64()),
    pa.field("near_dups", pa.int64()),
    pa.field("contaminated", pa.int64()),
    pa.field("capped", pa.int64()),
    pa.field("kept", pa.int64()),
    pa.field("rate", pa.float64()),
    pa.field("sampled", pa.int64()),
    pa.field("epochs", pa.float64()),
    pa.field("mean_input_chars", pa.float64()),
    pa.field("mean_target_chars", pa.float64()),
    pa.field("mean_tokens_est", pa.float64()),
])
CONTAMINATION_SCHEMA = pa.schema([
    pa.field("mixture", pa.string()),
    pa.field("dataset", pa.string()),
    pa.field("eval_dataset", pa.string()),
    pa.field("eval_cluster", pa.string()),
    pa.field("rows", pa.int64()),  # pool rows sharing an n-gram with this eval set
    pa.field("removed", pa.int64()),  # of those, the rows not already dropped as duplicates
])


@dataclass(frozen=True)
class DatasetInputs:
    """One dataset's upstream files, as the mix rule lists them."""

    templatized: str
    fingerprints: str
    dropped: str
    decontam: str
    manifest: str


def mixing_rates(sizes: np.ndarray, rate_max: int, temperature: float) -> np.ndarray:
    """seqio's examples-proportional rates with a maximum: ``min(n, K) ** (1/T)``, normalised.

    >>> mixing_rates(np.array([100, 5000, 0]), rate_max=3000, temperature=1.0).round(4).tolist()
    [0.0323, 0.9677, 0.0]
    """
    raw = np.minimum(sizes, rate_max).astype(np.float64) ** (1.0 / temperature)
    raw[sizes == 0] = 0.0
    total = raw.sum()
    return raw / total if total > 0 else raw


def apportion(total: int, rates: np.ndarray) -> np.ndarray:
    """Split ``total`` into integer counts proportional to ``rates`` (largest remainder; ties go to
    the earlier dataset), each within one of ``total * rate``.

    >>> apportion(10, np.array([0.5, 0.25, 0.25])).tolist()
    [5, 3, 2]
    """
    quota = total * rates
    counts = np.floor(quota).astype(np.int64)
    short = total - int(counts.sum())
    if short > 0:
        order = np.lexsort((np.arange(len(rates)), -(quota - counts)))
        counts[order[:short]] += 1
    return counts


def repeat_sample(n: int, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(row positions, epoch) for ``count`` draws from ``n`` rows: whole passes, then a partial pass
    without replacement."""
    if n == 0 or count == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int32)
    full, rest = divmod(count, n)
    idx = np.concatenate([np.tile(np.arange(n), full), np.sort(rng.choice(n, rest, replace=False))])
    epoch = np.concatenate([np.repeat(np.arange(full, dtype=np.int32), n), np.full(rest, full, np.int32)])
    return idx, epoch


def _kept_rows(name: str, files: DatasetInputs, heldout: set[str], removes: set[str], cap: int
               ) -> tuple[dict, np.ndarray, pa.Table]:
    """Counts, the kept row indices (priority order) and the contamination matches (against the
    ``heldout`` clusters' eval sets) of one dataset; matches against ``removes`` are dropped."""
    fps = pq.read_table(files.fingerprints, columns=["row_index", "priority"])
    row_index = fps.column("row_index").to_numpy()
    priority = fps.column("priority").to_numpy()
    dropped = pq.read_table(files.dropped, columns=["row_index", "reason"])
    reasons = dropped.column("reason").to_numpy(zero_copy_only=False)
    dup_rows = dropped.column("row_index").to_numpy()
    dup = np.isin(row_index, dup_rows)
    matches = pq.read_table(files.decontam)
    matches = _in_clusters(matches, heldout)
    removing = _in_clusters(matches, removes)
    contaminated = np.isin(row_index, removing.column("row_index").to_numpy()) & ~dup
    survivors = np.flatnonzero(~dup & ~contaminated)
    order = np.lexsort((row_index[survivors], priority[survivors]))
    kept = row_index[survivors[order[:cap]]]

    manifest = json.loads(Path(files.manifest).read_text(encoding="utf-8"))["splits"]["train"]
    counts = {
        "rows_raw": int(manifest["rows_read"]), "rejected": int(manifest["rejected"]),
        "exact_dups": int((reasons == "exact").sum()), "near_dups": int((reasons == "near").sum()),
        "contaminated": int(contaminated.sum()), "kept": len(kept),
    }
    valid = counts["rows_raw"] - counts["rejected"]
    counts["capped"] = valid - counts["exact_dups"] - counts["near_dups"] - counts["contaminated"] - len(kept)
    if counts["capped"] < 0 or counts["rows_raw"] != int(manifest["rows"]) + counts["rejected"]:
        raise ValueError(f"{name}: row counts do not add up ({counts}, raw train rows {manifest['rows']}); "
                         "rerun the dataset's upstream jobs")
    removed = ~np.isin(matches.column("row_index").to_numpy(), dup_rows)
    removed &= pc.is_in(matches.column("eval_cluster"), pa.array(sorted(removes), pa.string())).to_numpy(
        zero_copy_only=False)
    matches = matches.append_column("removed", pa.array(removed.astype(np.int64)))
    return counts, kept, matches


def _in_clusters(matches: pa.Table, clusters: set[str]) -> pa.Table:
    return matches.filter(pc.is_in(matches.column("eval_cluster"), pa.array(sorted(clusters), pa.string())))


def _template_rows(files: DatasetInputs, kept: np.ndarray) -> pa.Table:
    """The templated train rows of the kept row indices, in ``kept`` order."""
    table = pq.read_table(files.templatized)
    train = table.filter(pc.equal(table.column("split"), "train"))
    t_rows = train.column("row_index").to_numpy()
    order = np.argsort(t_rows, kind="stable")
    pos = order[np.searchsorted(t_rows[order], kept)] if len(kept) else np.zeros(0, np.int64)
    out = train.take(pa.array(pos, pa.int64()))
    if not np.array_equal(out.column("row_index").to_numpy(), kept):
        raise ValueError(f"{files.templatized}: kept rows missing from the templatized table")
    return out.select(TEMPLATIZED_SCHEMA.names).cast(TEMPLATIZED_SCHEMA)


def _estimated_tokens(rows: pa.Table, cfg: Config) -> tuple[float, float, float]:
    """(mean input chars, mean target chars, mean estimated tokens after truncation)."""
    if rows.num_rows == 0:
        return 0.0, 0.0, 0.0
    chars_in = pc.utf8_length(rows.column("inputs")).to_numpy().astype(np.float64)
    chars_out = pc.utf8_length(rows.column("targets")).to_numpy().astype(np.float64)
    cpt = cfg.mix.chars_per_token
    tokens = (np.minimum(np.ceil(chars_in / cpt) + 1, cfg.tokenize.max_input_tokens)
              + np.minimum(np.ceil(chars_out / cpt) + 1, cfg.tokenize.max_target_tokens))
    return float(chars_in.mean()), float(chars_out.mean()), float(tokens.mean())


def build_mixture(mixture: str, datasets: list[str], inputs: list[DatasetInputs], out_dir: str | Path,
                  cfg: Config) -> dict:
    """Cap, rate, sample, shuffle and write one mixture; returns its manifest."""
    registry = load_registry()
    out_dir = Path(out_dir)
    heldout = set(cfg.heldout_for(mixture))
    removes = heldout if cfg.decontaminate.enabled else set()  # matches are still reported
    if mixture != "all":
        excluded = {c for h in heldout for c in registry.excluded_clusters(h)}
        leaked = [d for d in datasets if registry.datasets[d].cluster in excluded]
        if leaked:
            raise ValueError(f"mixture {mixture!r} must not train on {leaked} (held out or excluded)")
    stats, kept_tables, contamination = [], [], []
    for name, files in zip(datasets, inputs, strict=True):
        counts, kept, matches = _kept_rows(name, files, heldout, removes, cfg.mix.cap)
        rows = _template_rows(files, kept)
        chars_in, chars_out, tokens = _estimated_tokens(rows, cfg)
        stats.append({"mixture": mixture, "dataset": name, "cluster": registry.datasets[name].cluster,
                      **counts, "mean_input_chars": chars_in, "mean_target_chars": chars_out,
                      "mean_tokens_est": tokens})
        kept_tables.append(rows)
        contamination += _contamination_rows(mixture, name, matches)

    sizes = np.array([s["kept"] for s in stats], np.int64)
    rates = mixing_rates(sizes, cfg.mix.rate_max, cfg.mix.temperature)
    mean_tokens = float(np.dot(rates, [s["mean_tokens_est"] for s in stats])) if sizes.any() else 0.0
    budget = cfg.train.steps * cfg.train.tokens_per_batch
    total = math.ceil(budget / mean_tokens) if mean_tokens > 0 else 0
    sampled = apportion(total, rates)

    parts = []
    for k, (s, rows) in enumerate(zip(stats, kept_tables, strict=True)):
        rng = np.random.default_rng(derive_seed(cfg.seed, f"mix/{mixture}/{s['dataset']}"))
        idx, epoch = repeat_sample(rows.num_rows, int(sampled[k]), rng)
        s.update(rate=float(rates[k]), sampled=int(sampled[k]),
                 epochs=float(sampled[k] / rows.num_rows) if rows.num_rows else 0.0)
        parts.append(rows.take(pa.array(idx, pa.int64())).append_column("epoch", pa.array(epoch, pa.int32())))
    table = pa.concat_tables(parts) if parts else MIXTURE_SCHEMA.empty_table()
    perm = np.random.default_rng(derive_seed(cfg.seed, f"mix/{mixture}")).permutation(table.num_rows)
    shards = _write_shards(table, perm, out_dir / "shards", cfg.mix.rows_per_shard,
                           {"stage": "mix", "stage_version": STAGE_VERSION, "mixture": mixture,
                            "seed": cfg.seed})

    stats_table = pa.Table.from_pylist(stats, schema=STATS_SCHEMA)
    write_parquet_atomic(stats_table, out_dir / "stats.parquet", {"stage": "mix", "mixture": mixture})
    write_parquet_atomic(pa.Table.from_pylist(contamination, schema=CONTAMINATION_SCHEMA),
                         out_dir / "contamination.parquet", {"stage": "mix", "mixture": mixture})
    manifest = {
        "stage": "mix", "stage_version": STAGE_VERSION, "mixture": mixture, "seed": cfg.seed,
        "heldout_clusters": sorted(heldout) if mixture != "all" else [],
        "decontaminated_against": sorted(heldout), "datasets": datasets,
        "budget_tokens": budget, "mean_tokens_est": mean_tokens, "examples": int(table.num_rows),
        "config": {"mix": cfg.mix.model_dump(), "train": cfg.train.model_dump(),
                   "tokenize": cfg.tokenize.model_dump()},
        "shards": shards, "stats": stats,
        "code": code_version("mix", STAGE_VERSION), "created_at": utc_now(),
    }
    write_json_atomic(out_dir / "manifest.json", manifest)
    log.info("%s: %d examples (%.0f est. tokens each) from %d datasets in %d shards", mixture,
             table.num_rows, mean_tokens, len(datasets), len(shards))
    return manifest


def _contamination_rows(mixture: str, name: str, matches: pa.Table) -> list[dict]:
    """Per eval set: the pool rows that share an n-gram with it, and how many this mixture removes."""
    grouped = matches.group_by(["eval_dataset", "eval_cluster"]).aggregate(
        [("row_index", "count"), ("removed", "sum")]).sort_by("eval_dataset")
    return [{"mixture": mixture, "dataset": name, "eval_dataset": g["eval_dataset"],
             "eval_cluster": g["eval_cluster"], "rows": g["row_index_count"], "removed": g["removed_sum"]}
            for g in grouped.to_pylist()]


def _write_shards(table: pa.Table, perm: np.ndarray, shard_dir: Path, rows_per_shard: int,
                  meta: dict) -> list[dict]:
    """Write ``table.take(perm)`` as numbered shards into a temporary directory, then rename it onto
    ``shard_dir``: a killed job leaves no partial shard directory."""
    with atomic_dir(shard_dir) as tmp:
        count = max(1, math.ceil(len(perm) / rows_per_shard))
        shards = []
        for k in tqdm(range(count), desc=f"shards {meta['mixture']}", unit="shard", mininterval=5,
                      disable=count < 4):
            rows = table.take(pa.array(perm[k * rows_per_shard:(k + 1) * rows_per_shard], pa.int64()))
            path = tmp / f"part-{k:05d}-of-{count:05d}.parquet"
            write_parquet_atomic(rows, path, {**meta, "shard": k, "shards": count})
            shards.append({"file": path.name, "rows": rows.num_rows, "sha256": sha256_file(path)})
    return shards
