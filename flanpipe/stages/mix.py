"""Stage 3c, cap and mix: one training mixture per held-out cluster (leave-one-cluster-out) plus `all`.

For each dataset the mixture trains on, the pool rows that are neither duplicates nor contaminated
(for this mixture's held-out clusters) are capped at ``mix.cap`` by their seeded priority (a
consistent sample, :func:`flanpipe.stages.dedupe.priorities`). Rates follow seqio's rule
``rate_i = min(n_i, K) ** (1 / T)``, normalised, within each submixture (``mix.submixtures``: its own
cap and K), scaled by the submixtures' weights. The mixture holds enough examples for the training
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
import shutil
import tempfile
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flanpipe.core.config import PROMPT_TYPES, MixSlice, SubmixtureConfig
from flanpipe.core.config.registry import load_registry
from flanpipe.core.io import (
    ParquetReader,
    atomic_dir,
    code_version,
    iter_parquet,
    lookup,
    read_parquet_metadata,
    read_table,
    sha256_file,
    utc_now,
    verify_sha256,
    write_json_atomic,
    write_parquet_atomic,
)
from flanpipe.core.logs import progress
from flanpipe.core.text.keys import derive_seed
from flanpipe.core.text.schemas import (
    CONTAMINATION_SCHEMA,
    FATE_SCHEMA,
    MIXTURE_SCHEMA,
    MIXTURE_STATS_SCHEMA,
    TEMPLATIZED_SCHEMA,
)
from flanpipe.core.text.sources import SOURCE_MATCH_PREFIX
from flanpipe.core.versions import STAGE_VERSIONS

# 3: reads only the wanted renderings, shuffles through on-disk buckets (memory flat in the budget)
STAGE_VERSION = STAGE_VERSIONS["mix"]
GATHER_ROWS = 8_192
"""Templatized rows read at a time."""
log = logging.getLogger(__name__)



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


def submixture_rates(sizes: np.ndarray, submixture: list[str], groups: dict[str, SubmixtureConfig],
                     temperature: float) -> np.ndarray:
    """Each dataset's rate: examples-proportional within its submixture (:func:`mixing_rates` with
    the group's ``rate_max``), times the group's weight over the weights of the groups that have
    examples here. One group gives :func:`mixing_rates` exactly.

    >>> g = {"flan2021": SubmixtureConfig(rate_max=3000), "mine": SubmixtureConfig(rate_max=10, weight=0.25)}
    >>> submixture_rates(np.array([100, 300, 50]), ["flan2021", "flan2021", "mine"], g, 1.0).tolist()
    [0.2, 0.6000000000000001, 0.2]
    """
    rates = np.zeros(len(sizes), np.float64)
    member = np.asarray(submixture, object)
    present = [g for g in dict.fromkeys(submixture) if sizes[member == g].sum() > 0]
    total = sum(groups[g].weight for g in present)
    for g in present:
        mine = member == g
        rates[mine] = mixing_rates(sizes[mine], groups[g].rate_max, temperature) * (groups[g].weight / total)
    return rates


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


@dataclass(frozen=True)
class Pool:
    """One dataset's pool rows (the rows dedup and decontamination examined), in source order."""

    name: str
    row_index: np.ndarray
    example_id: np.ndarray
    priority: np.ndarray
    exact: np.ndarray  # (n, 2) uint64, the normalised exact hash
    contaminated: np.ndarray  # bool: shares an n-gram with an eval set this mixture removes against


# Bits for the row index in a (dataset, row) key: 2**40 rows per dataset.
ROW_BITS = 40


def _keys(dataset_index: int | np.ndarray, row_index: np.ndarray) -> np.ndarray:
    return (np.asarray(dataset_index, np.int64) << ROW_BITS) | row_index.astype(np.int64)


def duplicate_components(dropped_paths: list[str | Path]) -> tuple[np.ndarray, np.ndarray]:
    """(member keys sorted, their component root keys) from every dataset's dedupe output.

    A dropped row names its kept twin, which may itself be dropped (an exact copy of a row that is a
    near copy of an earlier one); following twins to a row that is not dropped gives the component's
    root, its first row in the stable order. Keys are ``(registry index << 40) | row_index``.
    """
    order = {name: k for k, name in enumerate(load_registry().datasets)}
    src, dst = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for path in dropped_paths:
        name = Path(path).name.removesuffix(".dropped.parquet")
        t = read_table(path, columns=["row_index", "kept_dataset", "kept_row_index"])
        if t.num_rows == 0:
            continue
        twin_ds = np.array([order[d] for d in t.column("kept_dataset").to_pylist()], np.int64)
        src.append(_keys(order[name], t.column("row_index").to_numpy()))
        dst.append(_keys(twin_ds, t.column("kept_row_index").to_numpy()))
    src, dst = np.concatenate(src), np.concatenate(dst)
    by = np.argsort(src)
    src, root = src[by], dst[by]
    for _ in range(len(src) + 1):  # twins point to earlier rows, so chains end
        pos, chained = lookup(src, root)
        if not chained.any():
            break
        root = np.where(chained, root[pos], root)
    return src, root


@dataclass(frozen=True)
class Fates:
    """What happens to each pool row of a mixture (rows of all its datasets, in the stable order)."""

    dataset: np.ndarray  # index into the mixture's pools
    position: np.ndarray  # index into that pool's arrays
    fate: np.ndarray  # int8 Fate values
    twin: np.ndarray  # global index of the kept twin of a duplicate, else -1


class Fate(IntEnum):
    """What happens to a pool row in a mixture (stored as int8 in :class:`Fates`; by name in
    ``rows.parquet``)."""

    KEPT = 0
    EXACT = 1  # an exact duplicate of a kept row
    NEAR = 2  # a near duplicate of a kept row
    CONTAMINATED = 3  # shares an n-gram with a held-out eval set
    CAPPED = 4  # survived, but past the dataset's cap


FATES = tuple(f.name.lower() for f in Fate)
"""The fates' names, by value (``rows.parquet``'s ``fate`` column)."""


def resolve_mixture(pools: list[Pool], components: tuple[np.ndarray, np.ndarray],
                    cap: int | list[int]) -> Fates:
    """Dedupe, decontaminate and cap the pool rows of one mixture's datasets together.

    Duplicates are resolved within the mixture: each component of duplicates (over all datasets,
    from :func:`duplicate_components`) keeps its first row among those present here, not
    contaminated and not capped away. So a row dropped as the copy of a row from a held-out dataset,
    or of a row that is contaminated or capped away in this mixture, stays. Each dataset keeps its
    ``cap`` lowest-priority survivors (``cap``: one for all, or one per pool, its submixture's); a
    capped row that was a component's representative hands the role to the next member, which may
    change that member's dataset's survivors, so the two steps
    repeat until nothing more is capped (the capped set only grows, so this ends). Contaminated rows
    are counted as contaminated whatever else they are.
    """
    order = {name: k for k, name in enumerate(load_registry().datasets)}
    ds = np.concatenate([np.full(len(p.row_index), k, np.int64) for k, p in enumerate(pools)]) \
        if pools else np.zeros(0, np.int64)
    position = np.concatenate([np.arange(len(p.row_index)) for p in pools]) if pools else ds
    keys = np.concatenate([_keys(order[p.name], p.row_index) for p in pools]) if pools else ds
    stable = np.argsort(keys, kind="stable")  # registry order, then source order
    ds, position, keys = ds[stable], position[stable], keys[stable]
    cat = lambda f: np.concatenate([f(p) for p in pools]) if pools else np.zeros(0)  # noqa: E731
    priority = cat(lambda p: p.priority)[stable]
    row_index = cat(lambda p: p.row_index)[stable]
    contaminated = cat(lambda p: p.contaminated).astype(bool)[stable]
    exact = np.concatenate([p.exact for p in pools])[stable] if pools else np.zeros((0, 2), np.uint64)

    src, root = components
    at, member = lookup(src, keys)
    group = np.unique(np.where(member, root[at] if len(src) else keys, keys), return_inverse=True)[1]

    n = len(keys)
    caps = [cap] * len(pools) if isinstance(cap, int) else list(cap)
    excluded = np.zeros(n, bool)
    while True:
        candidate = ~contaminated & ~excluded
        cand = np.flatnonzero(candidate)
        _, first = np.unique(group[cand], return_index=True)  # rows are in the stable order
        rep_of = np.full(group.max() + 1 if n else 0, -1, np.int64)
        rep_of[group[cand[first]]] = cand[first]
        reps = cand[first]
        kept = np.zeros(n, bool)
        for k in range(len(pools)):
            mine = reps[ds[reps] == k]
            kept[mine[np.lexsort((row_index[mine], priority[mine]))[:caps[k]]]] = True
        newly = np.zeros(n, bool)
        newly[reps] = ~kept[reps]
        if not newly.any():
            break
        excluded |= newly

    twin = np.where(candidate & ~kept, rep_of[group], -1)
    dup = twin >= 0
    same = np.zeros(n, bool)
    same[dup] = (exact[dup] == exact[twin[dup]]).all(axis=1)
    fate = np.full(n, Fate.CAPPED, np.int8)
    fate[kept] = Fate.KEPT
    fate[dup & same] = Fate.EXACT
    fate[dup & ~same] = Fate.NEAR
    fate[contaminated] = Fate.CONTAMINATED
    return Fates(ds, position, fate, twin)


def _load_pool(name: str, files: DatasetInputs, removes: set[str],
               source_removes: set[str] = frozenset()) -> tuple[Pool, pa.Table]:
    """A dataset's pool rows, with the rows this mixture removes as contaminated, and its matches.

    ``source_removes``: the held-out clusters whose matches by source (``source:<dataset>``, a NIv2
    task built on a held-out dataset) are removed too, whether n-gram decontamination is on or not."""
    fps = read_table(files.fingerprints, columns=["row_index", "example_id", "priority", "exact_hi",
                                                  "exact_lo"])
    row_index = fps.column("row_index").to_numpy()
    matches = read_table(files.decontam)
    by_source = pc.starts_with(matches.column("eval_dataset"), SOURCE_MATCH_PREFIX)
    removing = np.union1d(
        _in_clusters(matches.filter(pc.invert(by_source)), removes).column("row_index").to_numpy(),
        _in_clusters(matches.filter(by_source), set(source_removes)).column("row_index").to_numpy())
    pool = Pool(name=name, row_index=row_index,
                example_id=fps.column("example_id").to_numpy(zero_copy_only=False),
                priority=fps.column("priority").to_numpy(),
                exact=np.stack([fps.column("exact_hi").to_numpy(), fps.column("exact_lo").to_numpy()], 1),
                contaminated=np.isin(row_index, removing))
    return pool, matches


def _dataset_counts(name: str, files: DatasetInputs, pool: Pool, fate: np.ndarray) -> dict:
    """Every term of ``raw = rejected + exact + near + contaminated + capped + kept``, each counted:
    raw and rejected from the download manifest, the rest from the rows' fates; rows outside the pool
    (which can never pass the cap) are capped. Fails if they do not add up."""
    manifest = json.loads(Path(files.manifest).read_text(encoding="utf-8"))["splits"]["train"]
    tally = np.bincount(fate, minlength=len(FATES))
    counts = {"rows_raw": int(manifest["rows_read"]), "rejected": int(manifest["rejected"]),
              "exact_dups": int(tally[Fate.EXACT]), "near_dups": int(tally[Fate.NEAR]),
              "contaminated": int(tally[Fate.CONTAMINATED]),
              "capped": int(manifest["rows"]) - len(pool.row_index) + int(tally[Fate.CAPPED]),
              "kept": int(tally[Fate.KEPT])}
    lost = sum(v for k, v in counts.items() if k not in ("rows_raw", "kept"))
    if counts["rows_raw"] != lost + counts["kept"] or len(fate) != len(pool.row_index):
        raise ValueError(f"{name}: row counts do not add up ({counts}, raw train rows {manifest['rows']}); "
                         "rerun the dataset's upstream jobs")
    return counts


def _duplicate_id_rows(files: DatasetInputs) -> int:
    """Raw train rows whose source id another row also holds (the download manifest's count)."""
    manifest = json.loads(Path(files.manifest).read_text(encoding="utf-8"))["splits"]["train"]
    return int(manifest.get("duplicate_ids", {}).get("rows", 0))


def _removed(matches: pa.Table, removes: set[str], source_removes: set[str]) -> pa.Array:
    """Whether this mixture removes each match: an n-gram match of a cluster in ``removes``, a match
    by source of one in ``source_removes``."""
    cluster = matches.column("eval_cluster")
    return pc.if_else(pc.starts_with(matches.column("eval_dataset"), SOURCE_MATCH_PREFIX),
                      pc.is_in(cluster, pa.array(sorted(source_removes), pa.string())),
                      pc.is_in(cluster, pa.array(sorted(removes), pa.string())))


def _in_clusters(matches: pa.Table, clusters: set[str]) -> pa.Table:
    return matches.filter(pc.is_in(matches.column("eval_cluster"), pa.array(sorted(clusters), pa.string())))


def _passes(files: DatasetInputs) -> int:
    """How many renderings per train example the dataset's templatized table holds."""
    return int(read_parquet_metadata(files.templatized).get("passes", 1))


def _gather(path: str | Path, passes: int, rows: np.ndarray, epoch: np.ndarray,
            columns: list[str] | None = None) -> tuple[pa.Table, np.ndarray]:
    """The templated rendering of each (train row index, epoch): pass ``epoch % passes``, as
    ``(renderings, at)``: request ``i`` is row ``at[i]`` of ``renderings``, which holds each wanted
    rendering once (a repeated example's renderings are not copied). The table is read batch by
    batch and only the wanted renderings are kept, so memory follows the rows asked for, not the
    table."""
    columns = columns or TEMPLATIZED_SCHEMA.names
    want = rows.astype(np.int64) * passes + epoch % passes
    wanted = np.unique(want)
    pieces, keys = [], []
    read = sorted({*columns, "split", "row_index", "pass"})
    for t in iter_parquet(path, GATHER_ROWS, read):
        key = t.column("row_index").to_numpy() * passes + t.column("pass").to_numpy()
        hit = lookup(wanted, key)[1] & pc.equal(t.column("split"), "train").to_numpy(zero_copy_only=False)
        if hit.any():
            pieces.append(t.filter(pa.array(hit)).select(columns))
            keys.append(key[hit])
    schema = pa.schema([TEMPLATIZED_SCHEMA.field(c) for c in columns])
    table = pa.concat_tables(pieces).cast(schema) if pieces else schema.empty_table()
    key = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    order = np.argsort(key, kind="stable")
    at, found = lookup(key[order], want)
    pos = order[at] if len(key) else at
    if not found.all():
        raise ValueError(f"{path}: kept rows missing from the templatized table; rerun templatize")
    return table, pos


def _estimated_tokens(rows: pa.Table, cfg: MixSlice) -> tuple[float, float, float]:
    """(mean input chars, mean target chars, mean estimated tokens after truncation)."""
    if rows.num_rows == 0:
        return 0.0, 0.0, 0.0
    chars_in = pc.utf8_length(rows.column("inputs")).to_numpy().astype(np.float64)
    chars_out = pc.utf8_length(rows.column("targets")).to_numpy().astype(np.float64)
    cpt = cfg.mix.chars_per_token
    tokens = (np.minimum(np.ceil(chars_in / cpt) + 1, cfg.max_input_tokens)
              + np.minimum(np.ceil(chars_out / cpt) + 1, cfg.max_target_tokens))
    return float(chars_in.mean()), float(chars_out.mean()), float(tokens.mean())


@dataclass(frozen=True)
class DatasetPart:
    """One dataset's part of a mixture: its stats row (sampling fills in the rest), its kept train
    rows in priority order, its renderings per example, and its contamination and fate rows."""

    stats: dict
    kept: np.ndarray
    passes: int
    contamination: list[dict]
    fates: pa.Table


@dataclass(frozen=True)
class Sampling:
    """How many examples the mixture draws from each dataset, and why: the rates, the token budget
    and the mean estimated tokens per example that turn the budget into examples."""

    rates: np.ndarray
    budget: int
    mean_tokens: float
    sampled: np.ndarray


def build_mixture(mixture: str, datasets: list[str], heldout: list[str], inputs: list[DatasetInputs],
                  out_dir: str | Path, cfg: MixSlice, dropped_paths: list[str | Path] | None = None) -> dict:
    """Dedupe, cap, rate, sample, shuffle and write one mixture; returns its manifest.

    ``heldout``: the clusters the mixture is decontaminated against and kept clear of
    (:meth:`flanpipe.workflow.planner.Plan.heldout_for`).

    ``dropped_paths``: every dataset's dedupe output (``data/dedup/{dataset}.dropped.parquet``), so a
    duplicate whose twin is in a dataset this mixture leaves out is recognised as such; by default
    the mixture's own datasets' files.
    """
    dropped_paths = list(dropped_paths if dropped_paths is not None else [f.dropped for f in inputs])
    out_dir = Path(out_dir)
    heldout = set(heldout)
    removes = heldout if cfg.decontaminate else set()  # matches are still reported
    by_source = heldout if mixture != "all" else set()  # `all` trains on the held-out datasets too
    _check_inputs(mixture, datasets, heldout, inputs)
    loaded = [_load_pool(n, f, removes, by_source) for n, f in zip(datasets, inputs, strict=True)]
    pools, matches = tuple(p for p, _ in loaded), [m for _, m in loaded]
    submixture = _submixtures(mixture, datasets, cfg)
    caps = [cfg.mix.groups()[g].cap for g in submixture]
    fates = resolve_mixture(list(pools), duplicate_components(dropped_paths), caps)
    parts = [_dataset_part(mixture, k, inputs[k], pools, fates, matches[k], caps[k], submixture[k], heldout,
                           removes, by_source, cfg) for k in range(len(datasets))]
    sampling = sample_sizes(parts, submixture, cfg)
    shards = _shuffle_into_shards(mixture, inputs, parts, submixture, sampling, out_dir, cfg)
    return _write_mixture(mixture, datasets, heldout, submixture, parts, sampling, shards, out_dir, cfg)


def _check_inputs(mixture: str, datasets: list[str], heldout: set[str], inputs: list[DatasetInputs]) -> None:
    """A mixture other than ``all`` trains on no held-out or excluded cluster, and the templatized
    tables are the ones templatize wrote."""
    registry = load_registry()
    if mixture != "all":
        excluded = {c for h in heldout for c in registry.excluded_clusters(h)}
        leaked = [d for d in datasets if not registry.trains_in(d, set(registry.clusters) - excluded)]
        if leaked:
            raise ValueError(f"mixture {mixture!r} must not train on {leaked} (held out or excluded)")
    for files in inputs:
        manifest = Path(files.templatized).with_suffix(".manifest.json")
        if manifest.is_file():
            verify_sha256(files.templatized, json.loads(manifest.read_text(encoding="utf-8")).get("sha256"),
                          manifest)


def _submixtures(mixture: str, datasets: list[str], cfg: MixSlice) -> list[str]:
    """Each dataset's submixture (``mix.submixtures``); a dataset in none is refused."""
    submixture = [cfg.mix.submixture_of(name) for name in datasets]
    unplaced = [d for d, g in zip(datasets, submixture, strict=True) if g is None]
    if unplaced:
        raise ValueError(f"mixture {mixture!r}: {unplaced} are in no submixture (mix.submixtures)")
    return submixture


def _dataset_part(mixture: str, k: int, files: DatasetInputs, pools: tuple[Pool, ...], fates: Fates,
                  matches: pa.Table, cap: int, submixture: str, heldout: set[str], removes: set[str],
                  by_source: set[str], cfg: MixSlice) -> DatasetPart:
    """Dataset ``k``'s fates, counts, kept rows, estimated tokens and contamination in this mixture."""
    pool = pools[k]
    name = pool.name
    mine = np.flatnonzero(fates.dataset == k)
    fate = np.empty(len(pool.row_index), np.int8)
    fate[fates.position[mine]] = fates.fate[mine]
    counts = _dataset_counts(name, files, pool, fate)
    kept = np.flatnonzero(fate == Fate.KEPT)
    kept = pool.row_index[kept[np.lexsort((pool.row_index[kept], pool.priority[kept]))]]
    passes = _passes(files)
    first = pa.Table.take(*_gather(files.templatized, passes, kept, np.zeros(len(kept), np.int32),
                                   ["inputs", "targets"]))
    chars_in, chars_out, tokens = _estimated_tokens(first, cfg)
    outside = counts["rows_raw"] - counts["rejected"] - len(pool.row_index)
    short = min(max(cap - len(kept), 0), outside)
    if short:
        log.warning("%s: %d rows kept, under the cap of %d, while %d train rows lie outside the pool: "
                    "dedup and decontamination removed more than the pool's spare rows; raise "
                    "dedupe.pool_factor (now %s) to keep up to %d more", name, len(kept), cap,
                    outside, cfg.pool_factor, short)
    stats = {"mixture": mixture, "dataset": name, "cluster": load_registry().datasets[name].cluster,
             "submixture": submixture,
             **counts, "mean_input_chars": chars_in, "mean_target_chars": chars_out,
             "mean_tokens_est": tokens, "pool_short": short,
             "duplicate_id_rows": _duplicate_id_rows(files)}
    found = _in_clusters(matches, heldout)
    removed = _removed(found, removes, by_source)
    contamination = _contamination_rows(mixture, name, found.append_column(
        "removed", pc.cast(removed, pa.int64())))
    return DatasetPart(stats, kept, passes, contamination, _fate_table(name, pool, fate, fates, mine, pools))


def sample_sizes(parts: list[DatasetPart], submixture: list[str], cfg: MixSlice) -> Sampling:
    """The rates (:func:`submixture_rates` over the kept rows), the examples the token budget buys
    at their rate-weighted mean of estimated tokens, and each dataset's share (:func:`apportion`)."""
    sizes = np.array([p.stats["kept"] for p in parts], np.int64)
    rates = submixture_rates(sizes, submixture, cfg.mix.groups(), cfg.mix.temperature)
    mean_tokens = float(np.dot(rates, [p.stats["mean_tokens_est"] for p in parts])) if sizes.any() else 0.0
    budget = cfg.steps * cfg.tokens_per_batch
    total = math.ceil(budget / mean_tokens) if mean_tokens > 0 else 0
    return Sampling(rates, budget, mean_tokens, apportion(total, rates))


def _shuffle_into_shards(mixture: str, inputs: list[DatasetInputs], parts: list[DatasetPart],
                         submixture: list[str], sampling: Sampling, out_dir: Path,
                         cfg: MixSlice) -> list[dict]:
    """Sample each dataset's rows (whole passes, then a seeded partial one), shuffle them together
    and write the shards; fills in each part's sampling stats. Returns the shards' records.

    The mixture is the datasets' sampled rows one after another, permuted; row g of that order lands
    at position where[g]. Each dataset's rows are gathered alone and bucketed by shard on disk; then
    each shard is read back from the buckets. Memory holds one dataset's sampled rows or one shard,
    never the mixture."""
    sampled, rates = sampling.sampled, sampling.rates
    total_rows = int(sampled.sum())
    perm = np.random.default_rng(derive_seed(cfg.seed, f"mix/{mixture}")).permutation(total_rows)
    where = np.empty(total_rows, np.int64)
    where[perm] = np.arange(total_rows)
    offsets = np.concatenate([[0], np.cumsum(sampled)])
    with _Buckets(out_dir, cfg.mix.rows_per_shard, total_rows) as buckets:
        for k, part in enumerate(parts):
            s, kept = part.stats, part.kept
            rng = np.random.default_rng(derive_seed(cfg.seed, f"mix/{mixture}/{s['dataset']}"))
            idx, epoch = repeat_sample(len(kept), int(sampled[k]), rng)
            s.update(rate=float(rates[k]), sampled=int(sampled[k]),
                     epochs=float(sampled[k] / len(kept)) if len(kept) else 0.0)
            # epoch e: its own rendering
            renderings, at = _gather(inputs[k].templatized, part.passes, kept[idx], epoch)
            cut = pc.greater(renderings.column("input_cut"), 0).to_numpy(zero_copy_only=False)
            s["inputs_cut"] = int(cut[at].sum())
            types = np.asarray(renderings.column("prompt_type").to_pylist(), object)[at]
            s.update({t: int((types == t).sum()) for t in PROMPT_TYPES})
            buckets.add(renderings, at, epoch, where[offsets[k]:offsets[k + 1]], submixture[k])
        return buckets.write_shards(out_dir / "shards", {"stage": "mix", "stage_version": STAGE_VERSION,
                                                         "mixture": mixture, "seed": cfg.seed})


def _write_mixture(mixture: str, datasets: list[str], heldout: set[str], submixture: list[str],
                   parts: list[DatasetPart], sampling: Sampling, shards: list[dict], out_dir: Path,
                   cfg: MixSlice) -> dict:
    """``stats.parquet``, ``contamination.parquet``, ``rows.parquet`` and ``manifest.json``."""
    stats = [p.stats for p in parts]
    meta = {"stage": "mix", "mixture": mixture}
    contamination = [row for p in parts for row in p.contamination]
    write_parquet_atomic(pa.Table.from_pylist(stats, schema=MIXTURE_STATS_SCHEMA), out_dir / "stats.parquet",
                         meta)
    write_parquet_atomic(pa.Table.from_pylist(contamination, schema=CONTAMINATION_SCHEMA),
                         out_dir / "contamination.parquet", meta)
    write_parquet_atomic(pa.concat_tables([p.fates for p in parts]) if parts else FATE_SCHEMA.empty_table(),
                         out_dir / "rows.parquet", meta)
    groups = cfg.mix.groups()
    total_rows = int(sampling.sampled.sum())
    manifest = {
        "stage": "mix", "stage_version": STAGE_VERSION, "mixture": mixture, "seed": cfg.seed,
        "heldout_clusters": sorted(heldout) if mixture != "all" else [],
        "decontaminated_against": sorted(heldout), "datasets": datasets,
        "submixtures": {g: {**groups[g].model_dump(exclude={"datasets"}),
                            "datasets": [d for d, h in zip(datasets, submixture, strict=True) if h == g]}
                        for g in dict.fromkeys(submixture)},
        "budget_tokens": sampling.budget, "mean_tokens_est": sampling.mean_tokens, "examples": total_rows,
        "config": cfg.model_dump(),
        "shards": shards, "stats": stats,
        "code": code_version("mix", STAGE_VERSION), "created_at": utc_now(),
    }
    write_json_atomic(out_dir / "manifest.json", manifest)
    log.info("%s: %d examples (%.0f est. tokens each) from %d datasets in %d shards", mixture,
             total_rows, sampling.mean_tokens, len(datasets), len(shards))
    return manifest


def _fate_table(name: str, pool: Pool, fate: np.ndarray, fates: Fates, mine: np.ndarray,
                pools: tuple[Pool, ...]) -> pa.Table:
    """One row per pool row of a dataset: what this mixture did with it, and a duplicate's twin."""
    twin = np.full(len(pool.row_index), -1, np.int64)
    twin[fates.position[mine]] = fates.twin[mine]
    has = twin >= 0
    t_ds, t_pos = fates.dataset[twin[has]], fates.position[twin[has]]
    names = np.full(len(twin), None, object)
    rows = np.zeros(len(twin), np.int64)
    ids = np.full(len(twin), None, object)
    names[has] = [pools[d].name for d in t_ds]
    rows[has] = [pools[d].row_index[q] for d, q in zip(t_ds, t_pos, strict=True)]
    ids[has] = [pools[d].example_id[q] for d, q in zip(t_ds, t_pos, strict=True)]
    return pa.Table.from_arrays([
        pa.array([name] * len(twin), pa.string()), pa.array(pool.row_index, pa.int64()),
        pa.array(pool.example_id, pa.string()), pa.array(np.asarray(FATES, object)[fate], pa.string()),
        pa.array(names, pa.string()), pa.array(rows, pa.int64(), mask=~has),
        pa.array(ids, pa.string())], schema=FATE_SCHEMA)


def _contamination_rows(mixture: str, name: str, matches: pa.Table) -> list[dict]:
    """Per eval set: the pool rows that share an n-gram with it, and how many this mixture removes."""
    grouped = matches.group_by(["eval_dataset", "eval_cluster"]).aggregate(
        [("row_index", "count"), ("removed", "sum")]).sort_by("eval_dataset")
    return [{"mixture": mixture, "dataset": name, "eval_dataset": g["eval_dataset"],
             "eval_cluster": g["eval_cluster"], "rows": g["row_index_count"], "removed": g["removed_sum"]}
            for g in grouped.to_pylist()]


class _Buckets:
    """Rows of a mixture bucketed by the shard they land in, one temporary Parquet file per dataset
    (a row group per shard, rows in position order), beside the mixture's outputs; removed on exit,
    and a killed job's are removed by the next run."""

    def __init__(self, out_dir: Path, rows_per_shard: int, total_rows: int):
        self.out_dir, self.rows_per_shard = Path(out_dir), rows_per_shard
        self.count = max(1, math.ceil(total_rows / rows_per_shard))
        self.files: list[tuple[Path, dict[int, int]]] = []  # (file, shard -> row group)

    def __enter__(self) -> _Buckets:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.out_dir.glob(".buckets-*.tmp"):
            log.info("removing %s, left by a mix job that did not finish", stale)
            shutil.rmtree(stale, ignore_errors=True)
        self.dir = Path(tempfile.mkdtemp(prefix=".buckets-", suffix=".tmp", dir=self.out_dir))
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def add(self, renderings: pa.Table, at: np.ndarray, epoch: np.ndarray, positions: np.ndarray,
            submixture: str) -> None:
        """Bucket one dataset's sampled rows: row ``i`` is ``renderings`` row ``at[i]`` in epoch
        ``epoch[i]``, and lands at ``positions[i]`` of the shuffled mixture (the dataset's group in
        ``submixture``). Written a shard's rows
        at a time, so only the renderings and one shard's rows are in memory."""
        order = np.argsort(positions, kind="stable")
        shard = positions[order] // self.rows_per_shard
        bounds = np.flatnonzero(np.diff(shard)) + 1
        schema = pa.schema([*renderings.schema, pa.field("epoch", pa.int32()),
                            pa.field("submixture", pa.string()), pa.field("position", pa.int64())])
        path, groups = self.dir / f"{len(self.files):05d}.parquet", {}
        with pq.ParquetWriter(path, schema) as writer:
            for start, end in zip(np.r_[0, bounds], np.r_[bounds, len(shard)], strict=True):
                if end > start:
                    mine = order[start:end]
                    rows = renderings.take(pa.array(at[mine])).append_column(
                        "epoch", pa.array(epoch[mine], pa.int32())).append_column(
                        "submixture", pa.repeat(pa.scalar(submixture), end - start)).append_column(
                        "position", pa.array(positions[mine], pa.int64()))
                    groups[int(shard[start])] = len(groups)
                    writer.write_table(rows, row_group_size=end - start)
        self.files.append((path, groups))

    def write_shards(self, shard_dir: Path, meta: dict) -> list[dict]:
        """Write every shard (its rows from each bucket file, in position order) as numbered shards
        into a temporary directory, then rename it onto ``shard_dir``: a killed job leaves no
        partial shard directory."""
        readers = [(ParquetReader(path), groups) for path, groups in self.files]
        with atomic_dir(shard_dir) as tmp:
            shards = []
            for k in progress(range(self.count), self.count, f"{meta['mixture']}: shards", unit="shards"):
                parts = [f.read_row_group(groups[k]) for f, groups in readers if k in groups]
                rows = pa.concat_tables(parts) if parts else None
                if rows is None:
                    rows = MIXTURE_SCHEMA.empty_table()
                else:
                    rows = rows.take(pc.sort_indices(rows.column("position"))).drop_columns(["position"])
                path = tmp / f"part-{k:05d}-of-{self.count:05d}.parquet"
                write_parquet_atomic(rows.cast(MIXTURE_SCHEMA), path,
                                     {**meta, "shard": k, "shards": self.count})
                shards.append({"file": path.name, "rows": rows.num_rows, "sha256": sha256_file(path)})
        return shards
