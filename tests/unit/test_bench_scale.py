"""bench scale: the synthetic FLAN-shaped sources and the reading of Snakemake's benchmark files."""

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bench import scale
from flanpipe.core.config.registry import load_registry
from flanpipe.core.text.validate import check_split

REG = load_registry()


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    return root, scale.write_sources(root, 0.0002, seed=3)


def test_every_dataset_is_in_its_hub_schema_with_no_rejected_row(sources):
    """The registry's own row checks (a separate module) accept every generated row."""
    root, rows = sources
    assert sorted(rows) == sorted(scale.SHAPES)
    for name, counts in rows.items():
        spec = REG.datasets[name]
        assert set(counts) == set(spec.split_roles.values()), name
        for split, n in counts.items():
            table = pq.read_table(root / name / f"{split}.parquet")
            checked = check_split(table, spec, split)
            assert (table.num_rows, checked.rejected.num_rows) == (n, 0), (name, split)
    # Real sizes scaled, tiny sets whole: COPA keeps its 400 + 100 rows, WMT 0.02% of 4,548,885.
    assert rows["copa"] == {"train": 400, "validation": 100}
    assert rows["wmt16_de_en"]["train"] == 1000 and rows["gigaword"]["validation"] == 1000
    assert scale.scaled_rows(4_548_885, 1.0) == 4_548_885


def test_squad_answers_are_spans_of_shared_passages(sources):
    root, _ = sources
    rows = pq.read_table(root / "squad_v1/train.parquet").to_pylist()
    for row in rows:
        start, text = row["answers"]["answer_start"][0], row["answers"]["text"][0]
        assert row["context"][start:start + len(text)] == text  # Python's slicing, not our offsets
    questions_per_passage = Counter(r["context"] for r in rows)
    assert len(questions_per_passage) < len(rows) / 3 and max(questions_per_passage.values()) >= 5


def test_nli_premises_carry_one_hypothesis_per_label_and_texts_have_long_tails(sources):
    root, _ = sources
    mnli = pq.read_table(root / "mnli/train.parquet").to_pylist()
    by_premise = {}
    for row in mnli:
        by_premise.setdefault(row["premise"], []).append(row["label"])
    full = [labels for labels in by_premise.values() if len(labels) == 3]
    assert len(full) >= 300 and all(sorted(labels) == [0, 1, 2] for labels in full)
    articles = pq.read_table(root / "cnn_dailymail/train.parquet").column("article").to_pylist()
    words = [len(text.split()) for text in articles]
    assert sorted(words)[len(words) // 2] > 500 and max(words) > 1500
    wmt = pq.read_table(root / "wmt16_de_en/train.parquet").column("translation").to_pylist()
    assert sum("ä" in p["de"] for p in wmt) > 0.9 * len(wmt) and not any("ä" in p["en"] for p in wmt)


def test_sources_are_the_same_bytes_on_a_rerun(tmp_path):
    a = scale.write_split(scale.SHAPES["squad_v1"], "train", 1500, tmp_path / "a.parquet", seed=3)
    b = scale.write_split(scale.SHAPES["squad_v1"], "train", 1500, tmp_path / "b.parquet", seed=3)
    assert a == b and (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()



def test_the_runs_use_the_checkouts_snakefile_and_package():
    """``run_workflow`` runs the Snakefile beside bench/ with that checkout's package on the path."""
    assert scale.REPO == Path(__file__).resolve().parents[2]
    assert (scale.REPO / "Snakefile").is_file() and (scale.REPO / "flanpipe/__init__.py").is_file()


SNAKEFILE = """
rule all:
    input: expand("out/{n}.txt", n=["small", "big"])

rule grow:
    output: "out/{n}.txt"
    benchmark: "benchmarks/grow/{n}.tsv"
    log: "logs/grow/{n}.log"
    params: mb=lambda wc: {"small": 10, "big": 300}[wc.n]
    script: "grow.py"
"""
GROW = """
import time
block = bytearray(snakemake.params.mb << 20)
block[::4096] = b"x" * len(block[::4096])  # touch every page
del block  # gone before Snakemake's first sample at 0.5 s: only the job's own peak sees it
open(snakemake.output[0], "w").write("done")
"""


def test_a_real_snakemake_run_is_read_per_job_with_its_own_peak(tmp_path):
    """Real Snakemake benchmark files and the peak hook, against the bytes each job allocated."""
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    (tmp_path / "grow.py").write_text(GROW)
    hook = tmp_path / ".hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(scale.SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": str(hook),
           "FLANPIPE_BENCH_PEAKS": str(tmp_path / "bench_peaks.jsonl")}
    subprocess.run([str(Path(sys.executable).parent / "snakemake"), "--cores", "2", "-d", str(tmp_path),
                    "-s", str(tmp_path / "Snakefile")], env=env, check=True, capture_output=True, timeout=300)
    jobs = {j.job: j for j in scale.read_benchmarks(tmp_path)}
    assert set(jobs) == {"grow/small", "grow/big"}
    assert 300 <= jobs["grow/big"].max_rss_mb < 300 + 200
    assert jobs["grow/small"].max_rss_mb < 100 and jobs["grow/big"].wall_s > 0
    rules = scale.by_rule(list(jobs.values()))
    assert (rules["grow"].jobs, rules["grow"].worst_job) == (2, "grow/big")


def test_the_table_gives_per_rule_ratios_between_scales():
    """Hand-worked: download doubles in time, templatize stays flat; a rule only at one scale."""
    def run(s, rules):
        return {"scale": s, "rows": {"x": {"train": 10}}, "generate_s": 1.0, "workflow_s": 9.0,
                "rules": {r: scale.RuleCost(r, 2, w, m, f"{r}/x") for r, (w, m) in rules.items()}}

    text = scale.format_scale({"results": [
        run(0.1, {"download": (10.0, 400.0), "templatize": (20.0, 800.0)}),
        run(0.5, {"download": (20.0, 400.0), "templatize": (20.0, 900.0), "pack": (5.0, 100.0)})]})
    rows = {line.split()[0]: line.split() for line in text.splitlines()[3:]}
    assert rows["download"][-3:] == ["2.00", "1.00", "download/x"]
    assert rows["templatize"][-3:] == ["1.00", "1.12", "templatize/x"]
    assert rows["pack"][2:4] == ["-", "-"]
