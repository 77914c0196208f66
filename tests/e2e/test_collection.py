"""The Flan 2022 Collection end to end, scaled down: a mixture of the four new kinds of data (a
dataset from a user's registry file, chain-of-thought TSV files, Super-NaturalInstructions task
files and a published collection dump) beside the embedded demo, through Snakemake to the mixtures
and the DuckDB catalog; each count checked against the files it comes from (fixtures:
tests/data/collection/README.md)."""

import math

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from flanpipe.core.config import parse_config
from flanpipe.core.config.registry import use_extra_registries
from flanpipe.workflow.planner import Plan
from tests.conftest import REPO, open_catalog, run_snakemake

pytestmark = pytest.mark.e2e
DATA = REPO / "tests/data/collection"
CONFIG = {
    "seed": 1234,
    "registry": {"extra": [str(DATA / "registry.yaml"), "cot", "niv2", "flan_dump"]},
    "datasets": ["rte", "copa", "sst2", "recipes", "cot_gsm8k", "cot_creak", "cot_esnli", "niv2",
                 "dump_t0", "dump_dialog"],
    "heldout_clusters": ["nli", "cooking"],
    "download": {"sources": {
        "recipes": {"kind": "local", "path": str(DATA / "recipes")},
        "cot_gsm8k": {"kind": "cot", "path": str(DATA / "cot_data")},
        "cot_creak": {"kind": "cot", "path": str(DATA / "cot_data")},
        "cot_esnli": {"kind": "cot", "path": str(DATA / "cot_data"), "optional": True},  # absent
        "niv2": {"kind": "niv2", "path": str(DATA / "niv2_tasks"), "per_task_cap": 10},
        "dump_t0": {"kind": "flan_dump", "path": str(DATA / "dump"), "per_task_cap": 9},
        "dump_dialog": {"kind": "flan_dump", "path": str(DATA / "dump")}}},
    "templatize": {"mix": {"zs_opt": 0.5, "zs_noopt": 0.0, "fs_opt": 0.5, "fs_noopt": 0.0},
                   "few_shot": {"k": 2, "max_tokens": 512}},
    "mix": {"cap": 20, "rows_per_shard": 400, "submixtures": {
        "flan2021": {"datasets": "all", "cap": 20, "weight": 0.40},
        "t0_sf": {"datasets": ["dump_t0"], "cap": 20, "weight": 0.32},
        "niv2": {"datasets": ["niv2"], "cap": 200, "weight": 0.20},
        "cot": {"datasets": ["cot_gsm8k", "cot_creak", "cot_esnli"], "cap": 15, "weight": 0.05},
        "dialog": {"datasets": ["dump_dialog"], "cap": 8, "weight": 0.03}}},
    "tokenize": {"max_input_tokens": 512, "max_target_tokens": 128},
    "train": {"steps": 6, "tokens_per_batch": 4096},
    "ablations": {"enabled": False},
    "evaluate": {"base_model": False},
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    wd = tmp_path_factory.mktemp("collection")
    config = wd / "collection.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    run_snakemake(wd, "data/catalog.duckdb", config_file=config)
    return wd


@pytest.fixture(scope="module")
def plan():
    yield Plan(parse_config(CONFIG))
    use_extra_registries([])


@pytest.fixture(scope="module")
def con(workdir):
    with open_catalog(workdir) as c:
        yield c


def table(workdir, path):
    return pq.read_table(workdir / "data" / path)


def test_the_plan_leaves_out_the_absent_file_and_holds_out_the_new_cluster(plan):
    assert "cot_esnli" not in plan.dataset_names()
    assert plan.mixtures() == ["nli", "cooking", "all"]
    assert "recipes" not in plan.mixture_datasets("cooking")
    assert "rte" not in plan.mixture_datasets("nli")
    assert plan.heldout_datasets() == ["rte", "recipes"]


def test_every_row_of_every_kind_is_accounted_for(workdir, plan):
    for mixture in plan.mixtures():
        for s in table(workdir, f"mixtures/{mixture}/stats.parquet").to_pylist():
            lost = s["rejected"] + s["exact_dups"] + s["near_dups"] + s["contaminated"] + s["capped"]
            assert s["rows_raw"] == lost + s["kept"], s
            assert s["submixture"] == plan.cfg.mix.submixture_of(s["dataset"])
            assert s["kept"] <= plan.cfg.mix.groups()[s["submixture"]].cap
    creak = table(workdir, "raw/cot_creak/rejected.parquet").to_pylist()
    assert [r["kind"] for r in creak] == ["ragged_row"]  # the fixture's one short line


def test_each_pool_follows_its_own_groups_cap(workdir, plan):
    for name in plan.dataset_names():
        group = plan.cfg.mix.groups()[plan.cfg.mix.submixture_of(name)]
        raw_rows = pq.read_metadata(workdir / f"data/raw/{name}/train.parquet").num_rows
        pool_rows = pq.read_metadata(workdir / f"data/pool/{name}.parquet").num_rows
        assert pool_rows == min(raw_rows, math.ceil(plan.cfg.dedupe.pool_factor * group.cap)), name


def test_niv2_tasks_mmlu_skipped_and_heldout_sources_removed(workdir):
    raw = table(workdir, "raw/niv2/train.parquet")
    tasks = set(raw.column("task").to_pylist())
    assert tasks == {"task1344_glue_entailment_classification",
                     "task751_svamp_subtraction_question_answering",
                     "task363_sst2_polarity_classification"}  # MMLU's task698 skipped
    counts = pc.value_counts(raw.column("task")).to_pylist()
    assert all(c["counts"] == 10 for c in counts)  # per_task_cap
    from_rte = set(np.asarray(raw.column("row_index"))[pc.equal(raw.column("source"), "rte").to_numpy(
        zero_copy_only=False)])
    pool = set(table(workdir, "pool/niv2.parquet").column("row_index").to_pylist())
    for mixture, removed in (("nli", True), ("cooking", False), ("all", False)):
        rows = table(workdir, f"mixtures/{mixture}/rows.parquet").to_pandas()
        niv2 = rows[rows.dataset == "niv2"].set_index("row_index")
        dirty = set(niv2.index[niv2.fate == "contaminated"])
        if removed:  # every RTE-built task row leaves the nli model's mixture
            assert from_rte & pool <= dirty
        elif mixture == "cooking":  # kept where RTE is not held out (`all` may match RTE's n-grams)
            assert not from_rte & pool & dirty
        # the report lists matches against the clusters a mixture is kept clear of (nli for `nli` and
        # `all`, not for `cooking`), each with how many it removed
        report = table(workdir, f"mixtures/{mixture}/contamination.parquet").to_pylist()
        by_source = [(r["rows"], r["removed"]) for r in report
                     if r["dataset"] == "niv2" and r["eval_dataset"].startswith("source:")]
        n = len(from_rte & pool)
        assert by_source == {"nli": [(n, n)], "cooking": [], "all": [(n, 0)]}[mixture]


def test_dump_rows_keep_their_prompt_type_and_task_source(workdir):
    for name, source in (("dump_t0", "T0"), ("dump_dialog", "Dialog")):
        raw = table(workdir, f"raw/{name}/train.parquet").to_pandas().set_index("row_index")
        assert set(raw.task_source) == {source}
        shards = table(workdir, "mixtures/all/shards").to_pandas()
        mine = shards[shards.dataset == name]
        assert len(mine)
        assert (mine.prompt_type.values == raw.loc[mine.row_index, "template_type"].values).all()
        assert (mine.inputs.values == raw.loc[mine.row_index, "inputs"].values).all()
    manifest = __import__("json").loads((workdir / "data/raw/dump_dialog/manifest.json").read_text())
    assert manifest["splits"]["train"]["flan_dump"]["unknown_template_type"] == {"cot_fs": 1}


def test_cot_targets_carry_rationale_then_answer(workdir):
    raw = table(workdir, "raw/cot_gsm8k/train.parquet").to_pandas().set_index("row_index")
    shards = table(workdir, "mixtures/all/shards").to_pandas()
    rows = shards[(shards.dataset == "cot_gsm8k") & ~shards.inverted]
    assert len(rows)
    for r in rows.itertuples():
        source = raw.loc[r.row_index]
        assert 0 <= r.targets.find(source.rationale) < r.targets.rfind(source.answer)


def test_collection_mix_counts_the_shards(con, workdir, plan):
    for mixture in plan.mixtures():
        shards = table(workdir, f"mixtures/{mixture}/shards").to_pandas()
        expected = shards.groupby(["submixture", "prompt_type"]).size().to_dict()
        got = {(s, t): n for s, t, n in con.execute(
            "SELECT submixture, prompt_type, sum(rows)::BIGINT FROM collection_mix WHERE mixture = ? "
            "GROUP BY ALL", [mixture]).fetchall()}
        assert got == expected
    # NIv2 rows by task and source, joined back to the raw rows
    shards = table(workdir, "mixtures/all/shards").to_pandas()
    raw = table(workdir, "raw/niv2/train.parquet").to_pandas().set_index("row_index")
    niv2 = shards[shards.dataset == "niv2"]
    expected = niv2.assign(task=raw.loc[niv2.row_index, "task"].values,
                           source=raw.loc[niv2.row_index, "source"].values).groupby(["task", "source"]).size()
    got = {(t, s): n for t, s, n in con.execute(
        "SELECT task, source, sum(rows)::BIGINT FROM collection_mix "
        "WHERE mixture = 'all' AND dataset = 'niv2' GROUP BY ALL").fetchall()}
    assert got == expected.to_dict()
    # the docs' query: the submixtures' shares of the `all` mixture
    shares = dict(con.execute(
        "SELECT submixture, round(100.0 * sum(rows) / sum(sum(rows)) OVER (), 1) FROM collection_mix "
        "WHERE mixture = 'all' GROUP BY submixture").fetchall())
    weights = {g: sub.weight for g, sub in plan.cfg.mix.groups().items()}  # they sum to 1 here
    assert set(shares) == set(weights)
    for group, weight in weights.items():  # each group its weight, up to a row of rounding
        assert abs(shares[group] - 100 * weight) <= 1.0, (group, shares)
