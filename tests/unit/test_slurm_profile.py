"""The Slurm profile (profiles/slurm) as Snakemake reads it, and the link that lets
`snakemake --profile slurm` find it. No cluster needed (tests/e2e/test_slurm.py runs one)."""

import io
import os
import re
import subprocess

import pytest
from snakemake.profiles import ProfileConfigFileParser

from tests.conftest import REPO
from tests.slurm_cluster import PROFILE, profile_with_train_block

ENV_VARS = ("FLANPIPE_SLURM_PARTITION", "FLANPIPE_SLURM_ACCOUNT", "FLANPIPE_SLURM_GPU_TYPE")


def _parse(text: str) -> dict:
    """The profile's keys and values exactly as Snakemake turns them into command-line arguments."""
    stream = io.StringIO(text)
    stream.name = str(PROFILE)
    return dict(ProfileConfigFileParser().parse(stream))


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)


TARGET_RULES = {"evaluate_all", "ablation_few_shot", "ablation_clusters", "ablation_format"}


def test_profile_settings():
    p = _parse(PROFILE.read_text())
    assert p["executor"] == "slurm" and p["slurm-status-command"] == "squeue"
    assert int(p["jobs"]) > 1 and int(p["latency-wait"]) >= 10
    assert p["keep-going"] == p["rerun-incomplete"] == p["slurm-keep-successful-logs"] == "True"
    assert int(p["slurm-init-seconds-before-status-checks"]) >= 30  # sane for a real cluster
    resources = dict(r.split("=", 1) for r in p["default-resources"])
    assert resources == {"runtime": "60", "mem_mb": "4000", "cpus_per_task": "threads"}
    # every rule of the workflow gets its own CPU, memory and time
    pattern = re.compile(r"^(?:rule (\w+):|use rule \w+ as (\w+))", re.M)
    rules = {a or b for smk in (REPO / "rules").glob("*.smk") for a, b in pattern.findall(smk.read_text())}
    rules -= TARGET_RULES  # inputs only: no job is submitted for them
    assert {"download", "mix", "tokenizer", "tokenizer_per_mixture", "pack", "evaluate", "report"} <= rules
    keys = {rule: {"cpus_per_task", "mem_mb", "runtime"} for rule in rules}
    for rule in ("train", "train_seed"):  # a seed's training is the same job as train
        keys[rule] |= {"nodes", "gres", "tasks_per_node", "launcher", "mpi"}
    for rule in rules:
        if rule.startswith("evaluate"):
            keys[rule] |= {"nodes", "gres"}  # one GPU per evaluation
    expected = {f"{rule}:{k}" for rule in rules for k in keys[rule]}
    assert {r.split("=")[0] for r in p["set-resources"]} == expected
    assert "evaluate:gres=gpu:1" in p["set-resources"]


def test_partition_and_account_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("FLANPIPE_SLURM_PARTITION", "all")  # also a Python builtin: must stay a string
    monkeypatch.setenv("FLANPIPE_SLURM_ACCOUNT", "my-project")
    resources = _parse(PROFILE.read_text())["default-resources"]
    assert "slurm_partition='all'" in resources and "slurm_account='my-project'" in resources


def test_train_block_once_enabled(monkeypatch):
    p = _parse(profile_with_train_block())
    train = {r.split(":", 1)[1] for r in p["set-resources"] if r.startswith("train:")}
    assert train == {"nodes=1", "gres=gpu:8", "tasks_per_node=8", "launcher='srun'", "mpi='srun'",
                     "cpus_per_task=8", "mem_mb=400000", "runtime=2880"}
    monkeypatch.setenv("FLANPIPE_SLURM_GPU_TYPE", "a100")
    assert "train:gres=gpu:a100:8" in _parse(profile_with_train_block())["set-resources"]


def _link(config_home, **env):
    env = {**{k: v for k, v in os.environ.items() if k != "FLANPIPE_LINK_PROFILE"},
           "XDG_CONFIG_HOME": str(config_home), **env}
    return subprocess.run(["bash", str(REPO / "scripts/slurm/link_profile.sh")], capture_output=True,
                          text=True, timeout=30, env=env)


def test_link_profile_is_idempotent(tmp_path):
    link = tmp_path / "snakemake/slurm"
    first = _link(tmp_path)
    assert first.returncode == 0 and link.is_symlink() and "linked" in first.stderr
    assert link.resolve() == (REPO / "profiles/slurm").resolve()
    again = _link(tmp_path)
    assert again.returncode == 0 and again.stderr == "" and link.resolve() == (REPO / "profiles/slurm")


def test_link_profile_leaves_another_profile_alone(tmp_path):
    other = tmp_path / "snakemake/slurm"
    other.mkdir(parents=True)
    (other / "config.yaml").write_text("executor: slurm\n")
    proc = _link(tmp_path)
    assert proc.returncode == 0 and "warning" in proc.stderr and "left alone" in proc.stderr
    assert not other.is_symlink() and (other / "config.yaml").read_text() == "executor: slurm\n"


def test_link_profile_can_be_skipped(tmp_path):
    assert _link(tmp_path, FLANPIPE_LINK_PROFILE="0").returncode == 0
    assert not (tmp_path / "snakemake").exists()
