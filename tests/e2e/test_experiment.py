"""The held-out experiment's config (config/experiments/heldout_smollm2.yaml) plans the paper's
protocol on a real checkpoint: a dry run, with SmolLM2 in place and no real data (the download jobs
read it; a dry run does not)."""

from __future__ import annotations

import re

import pytest

from flanpipe.core.config import load_config
from flanpipe.core.planner import Plan
from tests.conftest import REPO, run_snakemake

pytestmark = pytest.mark.e2e
EXPERIMENT = REPO / "config/experiments/heldout_smollm2.yaml"


def test_the_experiment_plans_leave_one_cluster_out_with_the_format_ablation(tmp_path, smollm2_dir):
    cfg = load_config(EXPERIMENT)
    assert cfg.train.model.source == "pretrained" and len(cfg.heldout_clusters) >= 2
    assert cfg.ablations.formats == ["instructions", "no_template", "dataset_name"]
    assert {cfg.download.source_for(d).path.rsplit("/", 1)[-1] for d in cfg.dataset_names()} == \
        set(cfg.dataset_names())
    (tmp_path / "models/pretrained").mkdir(parents=True)
    (tmp_path / "models/pretrained/smollm2").symlink_to(smollm2_dir)
    proc = run_snakemake(tmp_path, "all", "-n", config_file=EXPERIMENT)
    text = proc.stdout + proc.stderr
    counts = {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", text, re.M)}
    plan = Plan(cfg)
    assert counts["train"] == len(plan.all_mixtures())
    assert counts["download"] == len(cfg.dataset_names())
    assert "tokenizer" not in counts  # the checkpoint's own tokenizer, read in place
    heldout = plan.datasets_in(cfg.heldout_clusters)
    assert counts["evaluate"] == counts["evaluate_base"] == len(heldout) >= 3
    assert counts["evaluate_ablation_format"] == len(cfg.ablations.formats) * len(plan.datasets_in(
        cfg.ablations.heldout))
    assert "evaluate_few_shot" not in counts and counts["report"] == 1
