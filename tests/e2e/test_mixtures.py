"""The data half end to end on the embedded default: invariants of dedup, decontamination, caps and
mixtures, read back through the DuckDB catalog and the Parquet files themselves."""

import json
import subprocess

import duckdb
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from flanpipe.core.config import load_config
from flanpipe.core.config.registry import load_registry
from flanpipe.workflow.planner import Plan
from tests.conftest import BIN, REPO, open_catalog

pytestmark = pytest.mark.e2e
CFG = load_config(REPO / "config/config.yaml")
PLAN = Plan(CFG)


@pytest.fixture(scope="module")
def workdir(demo_run):
    return demo_run


@pytest.fixture(scope="module")
def con(workdir):
    with open_catalog(workdir) as c:
        yield c


def stats(con) -> list[dict]:
    return con.sql("SELECT * FROM mixture_stats").to_arrow_table().to_pylist()


def test_every_row_is_accounted_for(con):
    rows = stats(con)
    assert {r["mixture"] for r in rows} == set(PLAN.mixtures())
    for r in rows:
        lost = r["rejected"] + r["exact_dups"] + r["near_dups"] + r["contaminated"] + r["capped"]
        assert r["rows_raw"] == lost + r["kept"], r
        assert r["kept"] <= CFG.mix.cap


TERMS = ("rows_raw", "rejected", "exact_dups", "near_dups", "contaminated", "capped", "kept")


def count_terms(workdir, mixture: str, name: str) -> dict:
    """Each term of ``raw = rejected + exact + near + contaminated + capped + kept`` counted from its
    own stage file, and each checked against the files of the stages it depends on."""
    d = workdir / "data"
    spec = load_registry().datasets[name]
    rejected = pq.read_table(d / f"raw/{name}/rejected.parquet")
    rejected = pc.sum(pc.equal(rejected.column("split"), spec.splits.train)).as_py() or 0
    raw = pq.read_metadata(d / f"raw/{name}/train.parquet").num_rows
    pool = pq.read_table(d / f"dedup/fingerprints/{name}.parquet").to_pandas().set_index("row_index")
    fates = pq.read_table(d / f"mixtures/{mixture}/rows.parquet").to_pandas()
    everyone = fates.set_index(["dataset", "row_index"])
    mine = fates[fates.dataset == name].set_index("row_index")
    assert sorted(mine.index) == sorted(pool.index)
    # contaminated: the decontaminate stage's matches against this mixture's held-out eval sets
    matches = pq.read_table(d / f"decontam/{name}.parquet").to_pandas()
    dirty = set(matches[matches.eval_cluster.isin(PLAN.heldout_for(mixture))].row_index)
    assert set(mine.index[mine.fate == "contaminated"]) == dirty
    # duplicates: dropped by the dedupe stage, and their twin is kept in this mixture
    dedupe_dropped = set(pq.read_table(d / f"dedup/{name}.dropped.parquet").column("row_index").to_pylist())
    dups = mine[mine.fate.isin(["exact", "near"])]
    assert set(dups.index) <= dedupe_dropped
    for _, r in dups.iterrows():
        assert everyone.loc[(r.kept_dataset, int(r.kept_row_index)), "fate"] == "kept"
    # kept: the examples in the mixture's shards (every kept example is drawn: epochs >= 1 here)
    shards = pq.read_table(d / f"mixtures/{mixture}/shards").to_pandas()
    in_shards = set(shards[shards.dataset == name].row_index)
    assert set(mine.index[mine.fate == "kept"]) == in_shards
    # capped: rows outside the pool, and pool rows that rank after every kept row
    capped = mine.index[mine.fate == "capped"]
    if len(capped):
        assert len(in_shards) == CFG.mix.cap
        assert pool.loc[capped, "priority"].min() > pool.loc[sorted(in_shards), "priority"].max()
    return {"rows_raw": raw + rejected, "rejected": rejected, "exact_dups": int((dups.fate == "exact").sum()),
            "near_dups": int((dups.fate == "near").sum()), "contaminated": len(dirty),
            "capped": raw - len(pool) + len(capped), "kept": len(in_shards)}


def check_accounting(stats_row: dict, terms: dict) -> None:
    assert {k: stats_row[k] for k in TERMS} == terms, (stats_row["mixture"], stats_row["dataset"])
    assert terms["rows_raw"] == sum(terms[k] for k in TERMS[1:])


def test_counts_agree_with_the_stage_outputs(workdir, con):
    """Every term of every stats row against a count from its own stage file."""
    for r in stats(con):
        check_accounting(r, count_terms(workdir, r["mixture"], r["dataset"]))


def test_the_accounting_check_fails_when_one_term_is_off(workdir, con):
    r = next(r for r in stats(con) if r["mixture"] == "nli" and r["dataset"] == "sst2")
    terms = count_terms(workdir, "nli", "sst2")
    check_accounting(r, terms)
    for term in TERMS[2:]:  # one term off, the total kept right by another: still caught
        other = "capped" if term != "capped" else "kept"
        with pytest.raises(AssertionError):
            check_accounting({**r, term: r[term] + 1, other: r[other] - 1}, terms)
    with pytest.raises(AssertionError):  # and a term counted wrongly from its file
        check_accounting(r, {**terms, "near_dups": terms["near_dups"] + 1})


def test_the_demo_data_shows_each_kind_of_loss(con):
    by = {(r["mixture"], r["dataset"]): r for r in stats(con)}
    assert by[("nli", "sst2")]["exact_dups"] == 1 and by[("nli", "sst2")]["near_dups"] == 1
    # boolq quotes an RTE eval premise: removed where NLI is held out, kept elsewhere
    assert by[("nli", "boolq")]["contaminated"] == 1 and by[("all", "boolq")]["contaminated"] == 1
    assert by[("commonsense", "boolq")]["contaminated"] == 0
    report = con.sql("SELECT * FROM contamination_report WHERE mixture = 'nli'").to_arrow_table().to_pylist()
    assert [(r["dataset"], r["eval_dataset"], r["removed"]) for r in report] == [("boolq", "rte", 1)]


def test_heldout_clusters_never_appear_in_their_mixture(con):
    reg = load_registry()
    for mixture in CFG.heldout_clusters:
        query = f"SELECT DISTINCT cluster FROM mixtures WHERE mixture = '{mixture}'"
        clusters = {c for (c,) in con.sql(query).fetchall()}
        assert clusters and not clusters & set(reg.excluded_clusters(mixture)), (mixture, clusters)
    all_clusters = {c for (c,) in con.sql("SELECT DISTINCT cluster FROM mixtures WHERE mixture = 'all'")
                    .fetchall()}
    assert all_clusters == {reg.datasets[d].cluster for d in CFG.dataset_names()}


def test_dropped_and_contaminated_rows_never_reach_a_mixture(con):
    leaked = con.sql("""
        SELECT m.mixture, m.example_id FROM mixtures m
        JOIN mixture_rows d ON m.example_id = d.example_id AND m.mixture = d.mixture
        WHERE d.fate <> 'kept'""").fetchall()
    assert leaked == []
    # on the demo every dedupe drop has its twin in every mixture that holds the row's dataset
    leaked = con.sql("""
        SELECT m.mixture, m.example_id FROM mixtures m
        JOIN dedup_dropped d ON m.example_id = d.example_id""").fetchall()
    assert leaked == []
    leaked = con.sql("""
        SELECT m.mixture, m.example_id FROM mixtures m
        JOIN contamination_matches c ON m.example_id = c.example_id
        WHERE m.mixture = 'all' OR c.eval_cluster = m.mixture""").fetchall()
    assert leaked == []


def test_sampled_counts_follow_the_rates_and_fill_the_budget(workdir, con):
    for mixture in PLAN.mixtures():
        manifest = json.loads((workdir / f"data/mixtures/{mixture}/manifest.json").read_text())
        rows = [r for r in stats(con) if r["mixture"] == mixture]
        total = sum(r["sampled"] for r in rows)
        assert total == manifest["examples"]
        assert total * manifest["mean_tokens_est"] >= CFG.train.steps * CFG.train.tokens_per_batch
        kept = np.array([min(r["kept"], CFG.mix.rate_max) for r in rows], float)
        assert sum(r["rate"] for r in rows) == pytest.approx(1.0)
        for r, expect in zip(rows, kept / kept.sum(), strict=True):
            assert r["rate"] == pytest.approx(expect)
            assert abs(r["sampled"] - total * expect) < 1
            assert r["epochs"] == pytest.approx(r["sampled"] / r["kept"])
        in_shards = dict(con.sql(f"SELECT dataset, count(*) FROM mixtures WHERE mixture = '{mixture}' "
                                 "GROUP BY dataset").fetchall())
        assert in_shards == {r["dataset"]: r["sampled"] for r in rows if r["sampled"]}
        shards = sorted((workdir / f"data/mixtures/{mixture}/shards").glob("*.parquet"))
        assert [s.name for s in shards] == [s["file"] for s in manifest["shards"]]
        assert all(pq.read_metadata(s).num_rows <= CFG.mix.rows_per_shard for s in shards)


def test_a_kept_example_is_kept_in_every_mixture_it_can_be_in(con):
    """Consistent sampling: the cap picks the same rows in every setting where they survive."""
    per = con.sql("""
        SELECT dataset, mixture, list(DISTINCT example_id ORDER BY example_id) AS ids
        FROM mixtures GROUP BY ALL""").fetchall()
    ids = {}
    for dataset, mixture, rows in per:
        ids.setdefault(dataset, {})[mixture] = set(rows)
    for dataset, by_mixture in ids.items():
        if dataset != "boolq":  # boolq loses a contaminated row in some mixtures only
            assert len({frozenset(v) for v in by_mixture.values()}) == 1, dataset


def test_catalog_tables_and_stats_command(workdir, con):
    tables = {t for (t,) in con.sql("SELECT table_name FROM information_schema.tables").fetchall()}
    assert {"mixture_stats", "template_usage", "dedup_report", "contamination_report", "mixtures",
            "templatized", "dedup_dropped", "rejected", "rte_train"} <= tables
    usage = con.execute("SELECT sum(rows) FROM template_usage WHERE mixture = 'nli'").fetchone()[0]
    assert usage == con.execute("SELECT sum(sampled) FROM mixture_stats WHERE mixture = 'nli'").fetchone()[0]
    # the default template mix: every row zero-shot, in the one submixture flan2021
    mix = con.execute("SELECT submixture, prompt_type, sum(rows) FROM prompt_mix WHERE mixture = 'nli' "
                      "GROUP BY ALL").fetchall()
    assert {m for m, _, _ in mix} == {"flan2021"} and {t for _, t, _ in mix} <= {"zs_opt", "zs_noopt"}
    assert sum(n for _, _, n in mix) == usage
    proc = subprocess.run([str(BIN / "flanpipe"), "stats", "--mixture", "nli"], cwd=workdir,
                          capture_output=True, text=True, check=True)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("mixture nli: ")
    listed = {line.split()[0] for line in lines[3:] if line.strip()}
    assert listed == set(PLAN.mixture_datasets("nli")) | {"total"}


def test_readme_queries_run(workdir):
    """Every SQL block in the README and the docs runs against the demo catalog."""
    import re

    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    queries = [q for page in pages for q in re.findall(r"```sql\n(.*?)```", page.read_text(), re.S)]
    python = [b for page in pages for b in re.findall(r"```python\n(.*?)```", page.read_text(), re.S)]
    queries += [q for block in python for q in re.findall(r'con\.sql\("(.*?)"\)', block)]
    assert len(queries) >= 3
    c = duckdb.connect(str(workdir / "data/catalog.duckdb"), read_only=True)
    import os

    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        for q in queries:
            assert c.sql(q).fetchall(), q
    finally:
        os.chdir(cwd)
        c.close()


def test_a_repeated_example_changes_phrasing_each_epoch(con):
    """Epoch e of an example is its rendering of pass e % passes: a different template each epoch."""
    passes = CFG.templatize.passes
    rows = con.cursor().sql("""
        SELECT mixture, example_id, list(epoch ORDER BY epoch) AS epochs,
               list("pass" ORDER BY epoch) AS passes, list(template_id ORDER BY epoch) AS templates
        FROM mixtures WHERE format = 'instructions' GROUP BY ALL""").fetchall()
    repeated = 0
    for _, _, epochs, passes_, templates in rows:
        assert passes_ == [e % passes for e in epochs]
        if len(epochs) > 1 and max(epochs) < passes:
            assert len(set(templates)) == len(templates), (epochs, templates)
            repeated += 1
    assert repeated > 100
