"""Training seeds (``experiment.seeds``): Snakemake plans one training and one evaluation per (model,
seed) on one mixture, and leaves every other job (and, with no seeds, every job) as it was; a
scaled-down run trains two seeds on byte-identical data into different weights, and its report's
spread over seeds is the one worked out here from the per-seed results."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import yaml

from flanpipe.core.config import load_config, parse_config
from flanpipe.core.text.keys import derive_seed
from flanpipe.workflow.planner import Plan
from tests.conftest import REPO, run_snakemake
from tests.e2e.test_experiment import EXPERIMENT, tiny_pretrained

pytestmark = pytest.mark.e2e
DEMO = REPO / "config/config.yaml"


def planned_jobs(dry_run: str) -> set[tuple[str, tuple[str, ...]]]:
    """(rule, outputs) of every job a dry run lists (targets without outputs left out)."""
    out = set()
    for block in re.split(r"^(?=(?:local)?rule \w+:)", dry_run, flags=re.M)[1:]:
        rule = re.match(r"(?:local)?rule (\w+):", block).group(1)
        found = re.search(r"^\s+output: (.*)$", block, re.M)
        if found:
            out.add((rule, tuple(found.group(1).split(", "))))
    return out


def with_seeds(tmp_path, seeds) -> str:
    """An overlay config that sets ``experiment.seeds``."""
    overlay = tmp_path / f"seeds_{'_'.join(map(str, seeds))}.yaml"
    overlay.write_text(yaml.safe_dump({"experiment": {"seeds": seeds}}))
    return str(overlay)


def test_the_experiments_dry_run_plans_a_training_and_an_evaluation_per_model_and_seed(tmp_path, smollm2_dir):
    (tmp_path / "models/pretrained").mkdir(parents=True)
    (tmp_path / "models/pretrained/smollm2").symlink_to(smollm2_dir)
    proc = run_snakemake(tmp_path, "all", "-n", "--configfile", str(EXPERIMENT), with_seeds(tmp_path, [1, 2]),
                         config_file=EXPERIMENT)
    jobs = planned_jobs(proc.stdout)
    plan = Plan(load_config(EXPERIMENT))
    trained = {re.fullmatch(r"models/(\w+)/seed-(\d+)/hf", outputs[0]).groups()
               for rule, outputs in jobs if rule == "train_seed"}
    assert len(plan.mixtures()) >= 2 and "all" not in plan.mixtures()
    assert trained == {(m, s) for m in plan.mixtures() for s in ("1", "2")}
    # an ablation's own models (if any) train once, with the root seed
    assert {outputs[0] for rule, outputs in jobs if rule == "train"} == {
        f"models/{m}/hf" for m in plan.ablation_mixtures()}
    scored = {outputs for rule, outputs in jobs if rule == "evaluate_seed"}
    heldout = [(c, d) for c in plan.cfg.heldout_clusters for d in plan.datasets_in([c])]
    assert scored == {(f"results/eval/{c}/seed-{s}/{d}.json",) for c, d in heldout for s in (1, 2)}
    assert not any(rule == "evaluate" for rule, _ in jobs)
    report = re.search(r"^rule report:\n\s+input: (.*)$", proc.stdout, re.M).group(1).split(", ")
    assert "results/eval/commonsense/seed-2/copa.json" in report
    assert "results/eval/commonsense/seed-1/copa.json" in report


def test_without_seeds_the_plan_is_the_one_before_seeds_and_seeds_change_only_their_own_jobs(tmp_path):
    """The embedded default with ``experiment.seeds`` null plans no seed job or path, its held-out
    models at ``models/<mixture>/``; with seeds [1, 2] every job but the main models' trainings and
    evaluations (and the report that reads them) is the same job, and those become one per seed."""
    plain = planned_jobs(run_snakemake(tmp_path / "plain", "all", "-n").stdout)
    seeded = planned_jobs(run_snakemake(tmp_path / "seeded", "all", "-n", "--configfile", str(DEMO),
                                        with_seeds(tmp_path, [1, 2])).stdout)
    plan = Plan(parse_config(yaml.safe_load(DEMO.read_text())))
    assert not any("seed" in rule or "seed-" in " ".join(outputs) for rule, outputs in plain)
    assert {outputs[0] for rule, outputs in plain if rule == "train"} == {
        f"models/{m}/hf" for m in plan.all_mixtures()}
    main = {"train", "evaluate", "evaluate_few_shot"}
    per_seed = {"train_seed", "evaluate_seed", "evaluate_seed_few_shot"}
    ablation_only = {j for j in plain if j[0] == "train" and j[1][0].split("/")[1] not in plan.mixtures()}
    assert ablation_only and {j for j in seeded if j[0] == "train"} == ablation_only
    unchanged = {j for j in seeded if j[0] not in per_seed}
    assert {j for j in plain if j[0] not in main} | ablation_only == unchanged
    # every main model's training and evaluation, once per seed (few-shot: the first seed's alone)
    moved = {(rule, tuple(p.replace(f"/{m}/", f"/{m}/seed-{s}/", 1) for p in outputs))
             for rule, outputs in plain if rule in main for m in plan.mixtures()
             for s in ((1, 2) if rule != "evaluate_few_shot" else (1,))
             if outputs[0].startswith((f"models/{m}/", f"results/eval/{m}/"))}
    assert len(moved) == 2 * len(plan.mixtures()) + 2 * 2 + 2  # 3 models; rte and copa; few-shot once
    assert {(rule.replace("_seed", ""), outputs) for rule, outputs in seeded if rule in per_seed} == moved


def test_a_scaled_down_run_trains_two_seeds_on_the_same_data_and_reports_their_spread(tmp_path, smollm2_dir):
    """The experiment's config, scaled down (2 steps, 6 rows, 1 template, one held-out cluster, no
    ablation) on the embedded data, under seeds [1, 5]: the two trainings read the same packed data
    into different weights; the report's spread is recomputed from the per-seed result files."""
    from safetensors.numpy import load_file

    from flanpipe.stages.train import BatchPlan, step_rows

    cfg = yaml.safe_load(EXPERIMENT.read_text())
    cfg["datasets"] = ["boolq", "copa"]  # copa held out, the mixture on boolq alone: few jobs
    cfg["download"] = {"default_source": "embedded"}
    cfg["templatize"]["few_shot"]["max_tokens"] = None
    cfg["tokenize"].update(max_input_tokens=128, max_target_tokens=16)
    checkpoint = tiny_pretrained(tmp_path / "tiny", smollm2_dir)
    # a rate at which 2 steps move the tiny model's answers; every eval row (COPA's 20), one template
    cfg["train"].update(steps=2, tokens_per_batch=288, checkpoint_every=2, log_every=1, precision="fp32",
                        lr=0.01, model={"source": "pretrained", "path": str(checkpoint)},
                        eval_every=1, eval_rows=8)  # and the held-out curve, per seed
    cfg["evaluate"].update(max_examples=20, max_templates=1, bootstrap=50, precision="fp32",
                           cross_formats=False)
    cfg["heldout_clusters"] = ["commonsense"]
    cfg["ablations"] = {"enabled": False}
    cfg["experiment"] = {"seeds": [1, 5]}
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    proc = run_snakemake(run, "all", "--set-resources", "train_seed:tasks_per_node=1", config_file=config)
    counts = {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", proc.stdout + proc.stderr, re.M)}
    assert counts["train_seed"] == 2 and "train" not in counts and counts["mix"] == counts["pack"] == 1
    assert counts["evaluate_seed"] == 2 and counts["evaluate_base"] == 1

    # the same packed data, the seed alone told apart; different weights. A pretrained model without
    # LoRA or dropout differs by data order alone: the seeds are chosen so that the first step's rows
    # differ (seeds 1 and 2 split a 4-row epoch into the same two steps)
    runs = {s: json.loads((run / f"models/commonsense/seed-{s}/run.json").read_text()) for s in (1, 5)}
    assert (runs[1]["seed"], runs[5]["seed"]) == (1, 5)
    packed = [{k: r["packed"][k] for k in ("path", "rows", "manifest_sha256")} for r in runs.values()]
    assert packed[0] == packed[1] and packed[0]["path"] == "data/packed/commonsense"
    batch = BatchPlan(0, 1, 1, runs[1]["batch"]["accumulation"])
    first = {s: set(step_rows(0, batch, packed[0]["rows"], s).tolist()) for s in (1, 5)}
    assert first[1] != first[5]
    weights = {s: load_file(run / f"models/commonsense/seed-{s}/hf/model.safetensors") for s in (1, 5)}
    assert weights[1].keys() == weights[5].keys()
    assert any(not np.array_equal(weights[1][k], weights[5][k]) for k in weights[1])
    metrics = {s: list(csv.DictReader((run / f"models/commonsense/seed-{s}/metrics.csv").open()))
               for s in (1, 5)}
    losses = {s: next(r["loss"] for r in rows if r["loss"]) for s, rows in metrics.items()}
    assert losses[1] != losses[5]  # the first step's loss, on other rows
    # the held-out curve of each seed: COPA at steps 0, 1 and 2; step 0 is the same base on the same
    # 8 rows under either seed, so its score is the same
    curves = {s: {int(r["step"]): float(r["eval_score"]) for r in rows
                  if r["eval_split"] == "heldout" and r["eval_dataset"] == "copa"}
              for s, rows in metrics.items()}
    assert sorted(curves[1]) == sorted(curves[5]) == [0, 1, 2] and curves[1][0] == curves[5][0]
    assert json.loads((run / "data/mixtures/commonsense/manifest.json").read_text())["seed"] == 1234

    # the spread over seeds, worked out from the per-seed result files: each seed's tuned minus base
    # on the same rows, and its paired bootstrap over rows (resampled here in NumPy)
    base = json.loads((run / "results/eval/base/copa.json").read_text())
    b = np.mean(np.array(base["by_format"][base["format"]]["example_scores"], np.float64), axis=0)
    deltas, intervals, answers = [], [], []
    for s in (1, 5):
        tuned = json.loads((run / f"results/eval/commonsense/seed-{s}/copa.json").read_text())
        a = np.mean(np.array(tuned["by_format"][tuned["format"]]["example_scores"], np.float64), axis=0)
        assert len(a) == len(b) == 20
        deltas.append(float(a.mean() - b.mean()))
        rng = np.random.default_rng(derive_seed(cfg["seed"], f"report/seeds/copa/{s}"))
        draws = [a[rows].mean() - b[rows].mean() for rows in (rng.integers(0, 20, 20) for _ in range(50))]
        intervals.append(list(np.quantile(draws, [0.025, 0.975])))
        answers.append(a)
    assert not np.array_equal(*answers)  # the two trainings answer some row differently
    assert deltas[0] != deltas[1]  # and differ in accuracy: a spread over seeds that is not zero
    (row,) = json.loads((run / "results/report/seeds.json").read_text())
    assert (row["cluster"], row["dataset"]) == ("commonsense", "copa")
    assert [p["delta"] for p in row["seeds"]] == pytest.approx(deltas, abs=1e-9)
    assert [p["row_interval"] for p in row["seeds"]] == [pytest.approx(i, abs=1e-9) for i in intervals]
    halves = [(high - low) / 2 for low, high in intervals]
    assert row["row_half_width"] == pytest.approx(np.mean(halves), abs=1e-9)
    assert row["mean"] == pytest.approx(np.mean(deltas), abs=1e-9)
    assert row["sd"] == pytest.approx(np.std(deltas, ddof=1), abs=1e-9)
    assert (row["min"], row["max"]) == pytest.approx((min(deltas), max(deltas)), abs=1e-9)
    report = (run / "results/report/index.md").read_text()
    assert "## Tuned against base, over training seeds" in report
    assert (run / "results/report/heldout_curve.png").stat().st_size > 0
    for s in (1, 5):
        points = ", ".join(f"{step}: {score:.1f}" for step, score in sorted(curves[s].items()))
        assert f"| commonsense seed-{s} | copa | {curves[s][0]:.1f} |" in report and points in report
    spread = f"{np.std(deltas, ddof=1):.1f} | {min(deltas):+.1f} to {max(deltas):+.1f}"
    assert f"| {np.mean(deltas):+.1f} | {spread} |" in report
    assert re.search(r"^- copa: spread over seeds \(sd [\d.]+, ±[\d.]+\) is (smaller than|larger than|"
                     r"as wide as) the row interval \(±[\d.]+\)", report, re.M)

    # another seed adds its own training and evaluation: the data, and the other seeds', stay done
    more = run_snakemake(run, "all", "-n", "--configfile", str(config), with_seeds(tmp_path, [1, 5, 3]),
                         config_file=config)
    jobs = planned_jobs(more.stdout)
    assert {rule for rule, _ in jobs} == {"train_seed", "evaluate_seed", "report"}, more.stdout
    assert {outputs[0] for rule, outputs in jobs if rule != "report"} == {
        "models/commonsense/seed-3/hf", "results/eval/commonsense/seed-3/copa.json"}
