"""The pool: the train rows that can pass the cap, chosen in one streamed pass before any other work.

Its precision is checked on realistic data (real English passages shared by several questions,
premises with several hypotheses, planted near and exact copies): the mixture built from the pool is
the mixture built from every row; and where dedup removes more than the pool's spare rows, the rows
the pool could not offer are counted, not silently lost.
"""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flanpipe.core.config import (
    DedupeSlice,
    FingerprintSlice,
    MixSlice,
    PoolSlice,
    SourceSpec,
    TemplatizeSlice,
    parse_config,
)
from flanpipe.core.config.registry import load_registry
from flanpipe.core.io import read_parquet_metadata
from flanpipe.core.text import hashing as fp
from flanpipe.core.text.keys import priorities
from flanpipe.stages.decontaminate import decontaminate_dataset
from flanpipe.stages.dedupe import dedupe
from flanpipe.stages.download import download_dataset
from flanpipe.stages.fingerprint import fingerprint_dataset
from flanpipe.stages.mix import DatasetInputs, build_mixture
from flanpipe.stages.pool import Lowest, write_pool
from flanpipe.stages.templatize import templatize_dataset
from flanpipe.workflow.planner import Plan
from tests.synthetic import load_passages, nli_shaped, squad_shaped

REG = load_registry()


def test_priorities_are_a_function_of_the_key_alone():
    a = priorities(np.arange(10), "rte", 1)
    b = priorities(np.array([3, 7]), "rte", 1)
    assert a[[3, 7]].tolist() == b.tolist()
    assert priorities(np.arange(10), "rte", 2).tolist() != a.tolist()
    assert priorities(np.arange(10), "cb", 1).tolist() != a.tolist()


@pytest.mark.parametrize("limit", [None, 5, 50])
def test_the_pool_is_the_lowest_priorities_in_source_order(tmp_path, limit):
    """Read three rows at a time: the pool is the ``limit`` rows whose priority (a draw from the
    row's id, worked out here row by row) sorts first, ties by row, written in source order."""
    ids = np.arange(20) * 7
    pq.write_table(pa.table({"idx": ids, "sentence": [f"s {i}" for i in range(20)],
                             "label": np.zeros(20, np.int64), "row_index": np.arange(20)}),
                   tmp_path / "train.parquet")
    meta = write_pool("sst2", tmp_path / "train.parquet", tmp_path / "pool.parquet",
                      PoolSlice(seed=1, pool_factor=None if limit is None else limit / 10, cap=10),
                      batch_rows=3)
    pool = pq.read_table(tmp_path / "pool.parquet")
    by_row = {i: priorities(np.array([fp.string_hashes(pa.array([str(7 * i)]), 0)[0]]), "sst2", 1)[0]
              for i in range(20)}
    expect = sorted(sorted(by_row, key=lambda r: (by_row[r], r))[:limit or 20])
    assert pool.column("row_index").to_pylist() == expect
    assert pool.column("priority").to_pylist() == [by_row[r] for r in expect]
    assert pool.column("sentence").to_pylist() == [f"s {r}" for r in expect]
    assert meta["pool_rows"] == read_parquet_metadata(tmp_path / "pool.parquet")["pool_rows"] == len(expect)
    assert meta["raw_rows"] == 20


def test_lowest_keeps_ties_by_row_across_batches():
    low = Lowest(3)
    for prio, rows in (([4, 2, 2], [0, 1, 2]), ([2, 1, 9], [3, 4, 5]), ([2, 0], [6, 7])):
        low.offer(np.array(prio, np.uint64), np.array(rows))
    by = np.argsort(low.rows)
    assert low.rows[by].tolist() == [1, 4, 7] and low.priority[by].tolist() == [2, 1, 0]


def test_a_split_out_of_row_order_writes_no_pool(tmp_path):
    pq.write_table(pa.table({"idx": [0, 1, 2], "sentence": ["a", "b", "c"], "label": [0, 1, 0],
                             "row_index": [0, 2, 1]}), tmp_path / "train.parquet")
    with pytest.raises(ValueError, match="row_index is not increasing"):
        write_pool("sst2", tmp_path / "train.parquet", tmp_path / "pool.parquet",
                   PoolSlice(seed=1, pool_factor=1.0, cap=2))
    assert not (tmp_path / "pool.parquet").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["train.parquet"]


def build(tmp_path, tables: dict[str, pa.Table], cap: int, pool_factor: float | None,
          rows_per_shard: int = 300, extra: dict | None = None) -> tuple:
    """Download (local files), pool, templatize, fingerprint, dedupe, decontaminate and mix
    ``tables`` (train rows per dataset; the first 20 also serve as eval rows) with the real stage
    functions. Returns the `all` mixture's directory and its inputs. ``extra``: more config
    (its `mix` section joins the one built here)."""
    names = list(tables)
    extra = dict(extra or {})
    cfg = parse_config({"datasets": names, "heldout_clusters": [], "seed": 1,
                        "download": {"default_source": "hub"},  # not read: downloaded below
                        "dedupe": {"pool_factor": pool_factor},
                        "mix": {"cap": cap, "rows_per_shard": rows_per_shard, **extra.pop("mix", {})},
                        "train": {"steps": 40, "tokens_per_batch": 2048}, **extra})
    inputs = []
    for name, table in tables.items():
        spec = REG.datasets[name]
        src = tmp_path / "src" / name
        src.mkdir(parents=True)
        splits = spec.split_roles
        pq.write_table(table, src / f"{splits['train']}.parquet")
        pq.write_table(table.slice(0, 20), src / f"{splits['eval']}.parquet")
        raw = tmp_path / "raw" / name
        download_dataset(name, SourceSpec(kind="local", path=str(src)), raw, seed=1)
        pool = tmp_path / "pool" / f"{name}.parquet"
        write_pool(name, raw / "train.parquet", pool, PoolSlice.of(cfg), batch_rows=97)
        templatize_dataset(name, pool, raw / "eval.parquet", tmp_path / "tmpl" / f"{name}.parquet",
                           TemplatizeSlice.of(cfg, dataset=name, max_input_tokens=None), batch_rows=50)
        fingerprint_dataset(name, pool, raw / "eval.parquet", tmp_path / "fp" / f"{name}.parquet",
                            tmp_path / "ng" / f"{name}.parquet", FingerprintSlice.of(cfg))
        decontaminate_dataset(name, pool, tmp_path / "fp" / f"{name}.parquet", {},
                              tmp_path / "decontam" / f"{name}.parquet")
        inputs.append(DatasetInputs(
            templatized=str(tmp_path / "tmpl" / f"{name}.parquet"),
            fingerprints=str(tmp_path / "fp" / f"{name}.parquet"),
            dropped=str(tmp_path / "dedup" / f"{name}.dropped.parquet"),
            decontam=str(tmp_path / "decontam" / f"{name}.parquet"),
            manifest=str(raw / "manifest.json")))
    dedupe(names, [tmp_path / "fp" / f"{n}.parquet" for n in names], tmp_path / "dedup", DedupeSlice.of(cfg))
    build_mixture("all", names, Plan(cfg).heldout_for("all"), inputs, tmp_path / "mix", MixSlice.of(cfg))
    return tmp_path / "mix", inputs, cfg


def mixture_rows(out) -> pa.Table:
    shards = sorted((out / "shards").glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(s).replace_schema_metadata(None) for s in shards])


def fates(out) -> dict:
    rows = pq.read_table(out / "rows.parquet").to_pylist()
    return {(r["dataset"], r["row_index"]): r["fate"] for r in rows}


def without_row_index(shaped) -> pa.Table:
    return shaped.table.drop_columns(["row_index"])


def test_the_mixture_from_the_pool_is_the_mixture_from_every_row(tmp_path):
    """SQuAD-shaped (passages shared by five questions) and MNLI-shaped (premises with three
    hypotheses) rows of real English with planted case-only and near copies; the cap (120) needs
    well under the pool (240 of 840 to 1,200 rows). Every row the full run keeps, the pool run keeps; the
    shards are the same rows in the same order; the rows outside the pool are counted as capped."""
    passages = load_passages()[:200]
    tables = {"squad_v1": without_row_index(squad_shaped(passages, seed=4)),
              "mnli": without_row_index(nli_shaped(passages, seed=5))}
    full, _, _ = build(tmp_path / "full", tables, cap=120, pool_factor=None)
    pooled, inputs, cfg = build(tmp_path / "pooled", tables, cap=120, pool_factor=2.0)
    kept = lambda f: {k for k, v in f.items() if v == "kept"}  # noqa: E731
    assert len(kept(fates(full))) == 240 and kept(fates(pooled)) == kept(fates(full))
    assert mixture_rows(pooled).equals(mixture_rows(full))
    for stats in (pq.read_table(pooled / "stats.parquet").to_pylist()):
        pool_file = tmp_path / "pooled/pool" / f"{stats['dataset']}.parquet"
        assert pq.ParquetFile(pool_file).metadata.num_rows == 240 and stats["rows_raw"] >= 3 * 240
        assert stats["kept"] == 120 and stats["pool_short"] == 0
        assert stats["rows_raw"] == (stats["rejected"] + stats["exact_dups"] + stats["near_dups"]
                                     + stats["contaminated"] + stats["capped"] + stats["kept"])
    # templatize and fingerprint saw the pool only
    assert pq.read_table(inputs[0].fingerprints).num_rows == 240
    # the shards hold the same rows in the same order whatever their size
    build_mixture("all", ["squad_v1", "mnli"], Plan(cfg).heldout_for("all"), inputs,
                  tmp_path / "small_shards",
                  MixSlice.of(cfg, mix=cfg.mix.model_copy(update={"rows_per_shard": 7})))
    assert len(list((tmp_path / "small_shards/shards").iterdir())) > 20
    assert mixture_rows(tmp_path / "small_shards").equals(mixture_rows(pooled))


def test_a_pool_emptied_by_duplicates_is_counted_short(tmp_path):
    """300 SST-2 rows that are 60 sentences five times each (same label): exact duplicates. A pool
    of 50 holds fewer than 40 distinct sentences, so the cap of 40 is not reached; the mixture says
    by how many rows at most (``pool_short``), and the run over every row keeps that many more."""
    passages = load_passages()
    sentences = [p.split(". ")[0][:200] for p in passages[:60]]
    n = 300
    table = pa.table({"sentence": [sentences[i % 60] for i in range(n)],
                      "label": [i % 60 % 2 for i in range(n)], "idx": np.arange(n)})
    pooled, _, _ = build(tmp_path / "pooled", {"sst2": table}, cap=40, pool_factor=1.25)
    full, _, _ = build(tmp_path / "full", {"sst2": table}, cap=40, pool_factor=None)
    short = pq.read_table(pooled / "stats.parquet").to_pylist()[0]
    whole = pq.read_table(full / "stats.parquet").to_pylist()[0]
    pool = pq.read_table(tmp_path / "pooled/pool/sst2.parquet")
    distinct_in_pool = len(set(pool.column("sentence").to_pylist()))
    assert short["kept"] == distinct_in_pool < 40 and whole["kept"] == 40
    assert short["pool_short"] == 40 - short["kept"] == whole["kept"] - short["kept"]
    assert whole["pool_short"] == 0


@pytest.mark.parametrize("pool_factor", [None, 4.0])
def test_rows_sharing_a_source_id_are_counted_and_keyed_apart(tmp_path, pool_factor):
    """Three different RTE rows with ``idx`` 0 (as an export with a broken id column has them) among
    57 rows with their own ids: counted in the download manifest and the mixture's stats; the three
    get distinct example ids, priorities and template draws, from their content; every other row keeps
    the key of its id, so clean rows draw as before."""
    premises = [f"The committee met on day {i} to discuss item {i * 7}." for i in range(60)]
    idx = [0, 0, 0, *range(3, 60)]
    table = pa.table({"premise": premises, "hypothesis": [f"Item {i * 7} was discussed." for i in range(60)],
                      "idx": idx, "label": [i % 2 for i in range(60)]})
    out, inputs, cfg = build(tmp_path, {"rte": table}, cap=15, pool_factor=pool_factor)
    raw = json.loads(Path(inputs[0].manifest).read_text())["splits"]
    assert raw["train"]["duplicate_ids"] == {"ids": 1, "rows": 3}
    assert raw["eval"]["duplicate_ids"] == {"ids": 1, "rows": 3}  # the eval split is the first 20 rows
    [stats] = json.loads((out / "manifest.json").read_text())["stats"]
    assert stats["duplicate_id_rows"] == 3
    assert pq.read_table(out / "stats.parquet").column("duplicate_id_rows").to_pylist() == [3]

    fps = pq.read_table(inputs[0].fingerprints).to_pylist()
    twins = [r for r in fps if r["row_index"] < 3]
    assert len(twins) == 3  # the pool (4 x 15 rows) holds every row
    assert len({r["example_id"] for r in twins}) == 3
    assert all(r["example_id"].startswith("rte:train:0~") for r in twins)
    assert len({r["priority"] for r in twins}) == 3
    for r in fps:
        if r["row_index"] >= 3:  # a unique id: the key of its id, as before
            key = fp.string_hashes(pa.array([str(r["row_index"])]), 0)
            assert r["example_id"] == f"rte:train:{r['row_index']}"
            assert r["priority"] == priorities(key, "rte", 1)[0]
    tmpl = pq.read_table(Path(inputs[0].templatized)).to_pylist()
    draws = {r["example_id"]: r["template_id"] for r in tmpl if r["row_index"] < 3 and r["pass"] == 0
             and r["example_id"].startswith("rte:train:")}
    assert len(draws) == 3 and len(set(draws.values())) > 1


def test_mix_refuses_a_templatized_table_that_is_not_the_one_templatize_wrote(tmp_path):
    """A corrupt or replaced `data/templatized/{dataset}.parquet` (a valid Parquet file of other rows)
    stops mix, naming the file, instead of mixing it."""
    table = pa.table({"sentence": [f"Sentence number {i} is fine." for i in range(30)],
                      "label": [i % 2 for i in range(30)], "idx": list(range(30))})
    out, inputs, cfg = build(tmp_path, {"sst2": table}, cap=10, pool_factor=None)
    templatized = Path(inputs[0].templatized)
    rows = pq.read_table(templatized)
    pq.write_table(rows.slice(1), templatized)  # one row fewer
    with pytest.raises(ValueError, match="sha256") as err:
        build_mixture("all", ["sst2"], [], inputs, tmp_path / "mix2", MixSlice.of(cfg))
    assert str(templatized) in str(err.value)
