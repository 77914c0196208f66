"""The workflow through a real Slurm cluster: `snakemake --profile` on a one-node cluster on localhost
(tests/slurm_cluster.py brings it up and always stops it), from download to a model trained by 2
DeepSpeed ranks that `srun` starts.

Run alone with `pytest -m slurm tests/e2e/test_slurm.py`. Needs root (it installs Debian's slurmctld,
slurmd and munge with apt-get if missing) and 2 CPUs; skips otherwise (fails under CI). Its time:
docs/slurm.md, The CI tests.

Every Slurm job starts Snakemake twice (the job step, then the job itself): some 7 CPU-seconds, so
one job per dataset per stage on the embedded default's 13 datasets (58 jobs to one model) would take
longer than the rest of the test suite. The test therefore runs one model's whole chain (download,
templatize, dedupe, decontaminate, mix, tokenize, pack, train: 14 jobs) on two of the embedded
datasets, through the project's profile with its resources capped to what the node has (2 CPUs, 2
fake GPUs, 3 GB a job). The checks:
- a first run with one dataset pointed at a missing directory fails that job, names its Slurm log,
  and lets the others finish (keep-going); the rerun submits only what is left, each job once;
- every job went through sbatch and completed in Slurm; the train job ran 2 ranks through srun;
- the outputs (raw, templatized and packed tables, tokenizer, losses, weights) equal a local run's,
  where torchrun starts the 2 ranks;
- deleting one dataset's templatized table reruns exactly its downstream jobs, no others.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from flanpipe.core.config import load_config
from flanpipe.workflow.planner import Plan
from tests.conftest import BIN, REPO, run_snakemake
from tests.slurm_cluster import cannot_run, profile_for_cluster, slurm_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slurm]

SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (.+?)\)\.?$", re.M)
# The profile first polls after 40 s, as a real cluster wants. Then the plugin waits 10 s longer each
# time no job has finished, and starts over when one has: from 4 s the checks come at 4, 18 and 42 s,
# which catch a job of some 15 s (most of them here) at 18 s and the train job at 42 s.
FAST = ("--slurm-init-seconds-before-status-checks", "4")

# rte is in the nli cluster: the nli mixture leaves it out; the `all` mixture, on which the shared
# tokenizer is trained, has it. copa is in both.
SUBSET = ["rte", "copa"]
BROKEN = "rte"  # pointed at a missing directory in the first run
MIXTURE = "nli"
TRAIN_STEPS = 8
RANKS = 2


@dataclass
class SlurmRun:
    proc: subprocess.CompletedProcess
    text: str  # stdout + stderr
    jobs: dict[str, Path]  # Slurm job id -> its Slurm log

    def job_names(self) -> list[str]:
        """`rule:wildcards` (or `rule`) of each submitted job, from its Slurm log path
        .snakemake/slurm_logs/rule_<rule>/[<wildcards>/]<id>.log."""
        return sorted(_job_name(log) for log in self.jobs.values())

    def submitted(self) -> Counter:
        """Submitted jobs per rule."""
        return Counter(name.partition(":")[0] for name in self.job_names())

    def planned(self) -> Counter:
        """Jobs per rule in the table Snakemake prints before it runs (or in a dry run)."""
        return job_stats(self.text)


def _job_name(log: Path) -> str:
    if log.parent.name.startswith("rule_"):
        return log.parent.name.removeprefix("rule_")
    return f"{log.parent.parent.name.removeprefix('rule_')}:{log.parent.name}"


def job_stats(text: str) -> Counter:
    """The first `Job stats:` table of Snakemake's output, as {rule: count}."""
    table = re.search(r"^Job stats:\n.*\n-+\s+-+\n((?:\S+\s+\d+\n)+)", text, re.M)
    assert table, text
    rows = dict(line.split() for line in table.group(1).splitlines())
    total = int(rows.pop("total"))
    counts = Counter({rule: int(n) for rule, n in rows.items()})
    assert counts.total() == total
    return counts


@pytest.fixture(scope="module")
def cluster():
    with slurm_cluster(fake_gpus=RANKS) as state_dir:
        yield state_dir


@pytest.fixture(scope="module")
def profile_env(cluster, tmp_path_factory) -> dict[str, str]:
    """The environment of a user after scripts/setup.sh: `--profile slurm` resolves to profiles/slurm
    through the link scripts/slurm/link_profile.sh makes (in a temp XDG_CONFIG_HOME here)."""
    config_home = tmp_path_factory.mktemp("xdg")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FLANPIPE_SLURM_", "FLANPIPE_LINK_PROFILE", "SNAKEMAKE_PROFILE"))}
    env.update(XDG_CONFIG_HOME=str(config_home), FLANPIPE_SLURM_PARTITION="debug",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    subprocess.run(["bash", str(REPO / "scripts/slurm/link_profile.sh")], env=env, check=True, timeout=30)
    assert (config_home / "snakemake/slurm").resolve() == (REPO / "profiles/slurm").resolve()
    return env


@pytest.fixture(scope="module")
def node_profile(cluster, tmp_path_factory) -> Path:
    """The project's profile with its GPU train block scaled to the test node's 2 fake GPUs (one
    rank and one CPU each) and every rule's CPUs and memory capped to what the node has."""
    cpus = len(os.sched_getaffinity(0))
    if cpus < RANKS:
        cannot_run(f"the train job needs {RANKS} CPUs (one per rank); this machine has {cpus}")
    profile = tmp_path_factory.mktemp("profile")
    (profile / "config.yaml").write_text(profile_for_cluster(gpus=RANKS, cpus=cpus, mem_mb=3000))
    return profile


def run_slurm(env: dict[str, str], workdir: Path, *args: str, config_file: Path | None = None,
              profile: str | Path = "slurm", timeout: int = 300) -> SlurmRun:
    """`snakemake --profile slurm ...` on the project's Snakefile, outputs under `workdir`; a run
    that takes longer than `timeout` is killed (its Slurm jobs are cancelled when the cluster stops)."""
    cmd = [str(BIN / "snakemake"), "--profile", str(profile), "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(workdir), "--configfile", str(config_file or REPO / "config/config.yaml"),
           *FAST, *args]
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    text = proc.stdout + proc.stderr
    return SlurmRun(proc, text, {jid: Path(log) for jid, log in SUBMITTED.findall(text)})


def squeue(*job_ids: str) -> dict[str, dict[str, str]]:
    """Slurm's own record of jobs (finished ones stay visible: MinJobAge=600 in start_slurm.sh)."""
    out = subprocess.run(["squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-o", "%i|%j|%T|%P"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    rows = [line.split("|") for line in out.splitlines() if line.strip()]
    return {r[0]: {"name": r[1], "state": r[2], "partition": r[3]} for r in rows}


def write_config(path: Path, **changes) -> Path:
    """config/config.yaml with `section__key=value` (or `key=value`) changes."""
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    for key, value in changes.items():
        section, _, sub = key.partition("__")
        if sub:
            cfg[section][sub] = value
        else:
            cfg[key] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


def _manifest_counts(path: Path) -> dict:
    m = json.loads(path.read_text())
    keys = ("rows", "rows_read", "rejected", "rejected_by_kind", "sha256")
    return {"dataset": m["dataset"], "rejected": m["rejected"],
            "splits": {s: {k: v[k] for k in keys} for s, v in m["splits"].items()}}


def read_metrics(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def train_targets(config: Path) -> list[str]:
    """What `rule all` asks for on the way to one model: every templatized table and the model.
    (Naming the tables matters for the partial rerun: Snakemake does not remake a missing
    intermediate file whose consumers are up to date unless a target asks for it, as `all` does.)"""
    cfg = load_config(config)
    return [*(f"data/templatized/{d}.parquet" for d in cfg.dataset_names()), f"models/{MIXTURE}/run.json"]


def _outputs(workdir: Path) -> dict[str, int]:
    """Every file under data/ and models/, with its mtime."""
    return {str(p.relative_to(workdir)): p.stat().st_mtime_ns
            for top in ("data", "models") for p in (workdir / top).rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def train_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("train_config") / "config.yaml"
    write_config(path, datasets=SUBSET, heldout_clusters=[MIXTURE], train__steps=TRAIN_STEPS,
                 train__checkpoint_every=TRAIN_STEPS // 2)
    cfg = yaml.safe_load(path.read_text())
    if "ablations" in cfg:  # the ablation models need clusters these two datasets do not have
        cfg["ablations"]["enabled"] = False
        path.write_text(yaml.safe_dump(cfg))
    return path


@dataclass
class Chain:
    workdir: Path
    failed: SlurmRun  # with BROKEN's download pointed at a missing directory
    after_failure: dict[str, int]  # the outputs the failed run left, with their mtimes
    resumed: SlurmRun  # the same targets with the good config


@pytest.fixture(scope="module")
def chain(profile_env, node_profile, train_config, tmp_path_factory) -> Chain:
    workdir = tmp_path_factory.mktemp("slurm_wf")
    cfg = yaml.safe_load(train_config.read_text())
    cfg["download"]["sources"] = {BROKEN: {"kind": "local", "path": "/nonexistent"}}
    bad = train_config.parent / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    targets = train_targets(train_config)
    failed = run_slurm(profile_env, workdir, *targets, config_file=bad, profile=node_profile)
    assert failed.proc.returncode != 0, failed.text
    after_failure = _outputs(workdir)
    resumed = run_slurm(profile_env, workdir, *targets, config_file=train_config, profile=node_profile,
                        timeout=480)
    assert resumed.proc.returncode == 0, resumed.text
    return Chain(workdir, failed, after_failure, resumed)


def test_a_failed_job_is_reported_with_its_slurm_log(chain):
    failed = chain.failed
    [job_id] = [jid for jid, log in failed.jobs.items() if _job_name(log) == f"download:{BROKEN}"]
    slurm_log = failed.jobs[job_id]
    # Snakemake's error report names the failed job's Slurm log (and the rule's own log).
    error = re.search(r"^Error in rule download:\n(?:\s+.*\n)+", failed.text, re.M)
    assert error, failed.text
    assert str(slurm_log) in error.group(0) and f"SLURM-job '{job_id}' failed" in error.group(0)
    assert f"logs/download/{BROKEN}.log" in error.group(0)
    # The Slurm log holds the job's stderr: the reason it failed.
    assert "no file for split 'train' in /nonexistent" in slurm_log.read_text()
    assert squeue(job_id)[job_id]["state"] == "FAILED"
    # keep-going (profile): the other dataset's jobs that did not need the broken one ran and
    # finished; the broken one left nothing that looks complete.
    others = [d for d in SUBSET if d != BROKEN]
    assert failed.job_names() == sorted([f"download:{BROKEN}", *(f"{rule}:{d}" for d in others
                                         for rule in ("download", "pool", "templatize", "fingerprint"))]),\
        failed.text
    assert {j["state"] for jid, j in squeue(*failed.jobs).items() if jid != job_id} == {"COMPLETED"}
    assert f"data/raw/{BROKEN}/manifest.json" not in chain.after_failure


def test_the_rerun_resumes_and_every_job_went_through_sbatch(chain):
    failed, resumed = chain.failed, chain.resumed
    # Together the two runs submitted the plan of the first, each job once, except the one that
    # failed (twice): nothing ran locally, and nothing that had finished ran again.
    assert "localrule" not in failed.text + resumed.text
    assert set(failed.job_names()) & set(resumed.job_names()) == {f"download:{BROKEN}"}
    assert failed.submitted() + resumed.submitted() == failed.planned() + Counter(download=1)
    assert resumed.submitted() == resumed.planned(), resumed.text
    stages = {"download", "templatize", "dedupe", "decontaminate", "mix", "tokenizer", "pack", "train"}
    assert stages <= set(resumed.submitted())
    assert _outputs(chain.workdir).items() >= chain.after_failure.items()  # finished outputs untouched
    # Slurm ran them: completed, in the partition FLANPIPE_SLURM_PARTITION chose, one run name
    # (Snakemake's run id) per run; each job's Slurm log is where Snakemake said and ran the job step.
    slurm = squeue(*resumed.jobs)
    assert set(slurm) == set(resumed.jobs)
    assert {j["state"] for j in slurm.values()} == {"COMPLETED"}
    assert {j["partition"] for j in slurm.values()} == {"debug"}
    assert len({j["name"] for j in slurm.values()}) == 1
    for jid, log in resumed.jobs.items():
        assert log.stem == jid and "--executor slurm-jobstep" in log.read_text()
    # The rules' own logs and benchmarks are where they are on a local run.
    for name in SUBSET:
        assert (chain.workdir / f"logs/download/{name}.log").read_text().count("rows read") == 2
        assert (chain.workdir / f"benchmarks/templatize/{name}.tsv").exists()


def test_train_job_runs_two_deepspeed_ranks_under_srun(chain):
    workdir, run = chain.workdir, chain.resumed
    [job_id] = [jid for jid, log in run.jobs.items() if _job_name(log) == f"train:{MIXTURE}"]
    # Slurm gave the job 2 tasks and 2 GPUs (the profile's train block, scaled to the node) ...
    job = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    assert "JobState=COMPLETED" in job and f"NumTasks={RANKS}" in job, job
    assert f"TresPerNode=gres:gpu:{RANKS}" in job, job
    # ... the job ran the rule itself (not under `srun -n1`), and the rule started its ranks with
    # srun inside the job ...
    slurm_log = run.jobs[job_id].read_text()
    assert "--executor slurm-jobstep" in slurm_log and "srun -n1" not in slurm_log
    train_log = (workdir / f"logs/train/{MIXTURE}.log").read_text()
    assert train_log.startswith(f"checkpoints: fresh\nsrun --nodes=1 --ntasks-per-node={RANKS} "), train_log
    # ... and the ranks found each other from Slurm's variables: rank 0 of a 2-rank gloo group
    # wrote the manifest (a lone rank of 2 would wait for the other forever).
    out = workdir / "models" / MIXTURE
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["launcher"] == "srun" and manifest["world_size"] == RANKS, manifest
    assert manifest["device"] == "cpu" and manifest["deepspeed"]["zero_optimization"]["stage"] == 3
    assert manifest["resumed_from_step"] == 0 and manifest["steps"] == TRAIN_STEPS
    assert [int(r["step"]) for r in read_metrics(out / "metrics.csv")] == list(range(1, TRAIN_STEPS + 1))
    assert (out / "hf/model.safetensors").exists()


def _tables(root: Path) -> list[Path]:
    """Every Parquet table and packed token shard under data/."""
    return sorted(p.relative_to(root) for p in (root / "data").rglob("*") if p.suffix in (".parquet", ".npy"))


LOSS_COLUMNS = ("step", "loss", "lr", "grad_norm", "target_tokens", "tokens")


def test_outputs_equal_a_local_torchrun_run(chain, train_config, tmp_path):
    """The same targets run locally, where torchrun starts the 2 ranks: the same tables byte for
    byte, the same tokenizer, the same losses and the same weights."""
    workdir = chain.workdir
    run_snakemake(tmp_path, *train_targets(train_config), config_file=train_config)
    local = json.loads((tmp_path / f"models/{MIXTURE}/run.json").read_text())
    assert local["launcher"] == "torchrun" and local["world_size"] == RANKS
    assert _tables(workdir) == _tables(tmp_path)
    names = {str(t) for t in _tables(tmp_path)}
    assert {f"data/raw/{d}/train.parquet" for d in SUBSET} <= names
    assert {f"data/mixtures/{m}/stats.parquet" for m in (MIXTURE, "all")} <= names
    assert any(name.startswith(f"data/packed/{MIXTURE}/shards/") for name in names)
    for rel in _tables(tmp_path):
        assert (workdir / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel
    for name in SUBSET:
        rel = Path("data/raw") / name / "manifest.json"
        assert _manifest_counts(workdir / rel) == _manifest_counts(tmp_path / rel), name
    for rel in ("models/tokenizer/spm.model", f"models/{MIXTURE}/hf/model.safetensors"):
        assert (workdir / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel

    def losses(root: Path) -> list[tuple]:
        rows = read_metrics(root / f"models/{MIXTURE}/metrics.csv")
        return [tuple(r[k] for k in LOSS_COLUMNS) for r in rows]

    assert losses(workdir) == losses(tmp_path)


# Where each rule writes, to tell which outputs a rerun touched.
OUTPUTS = {"templatize": "data/templatized/{}.", "mix": "data/mixtures/{}/", "tokenizer": "models/tokenizer/",
           "pack": "data/packed/{}/", "train": "models/{}/"}


def downstream_of_templatized(config: Path, dataset: str) -> list[str]:
    """The jobs a deleted `data/templatized/<dataset>.parquet` must rerun on the way to the model,
    from the workflow's structure: its templatize job; the mix of each mixture (the model's, and
    `all`, on which the shared tokenizer is trained) that trains on the dataset; the tokenizer if
    `all` is among them; the model's pack and train if its mixture or the tokenizer is."""
    cfg = load_config(config)
    trains_tokenizer = cfg.tokenize.tokenizer.source == "train" or (
        cfg.tokenize.tokenizer.source == "auto" and cfg.train.model.source == "config")
    assert cfg.tokenize.tokenizer.shared and trains_tokenizer
    mixes = [m for m in (MIXTURE, "all") if dataset in Plan(cfg).mixture_datasets(m)]
    jobs = [f"templatize:{dataset}", *(f"mix:{m}" for m in mixes)]
    if "all" in mixes:
        jobs.append("tokenizer")
    if mixes:
        jobs += [f"pack:{MIXTURE}", f"train:{MIXTURE}"]
    return sorted(jobs)


def test_deleting_one_templatized_table_reruns_only_its_downstream_jobs(chain, train_config, profile_env,
                                                                         node_profile):
    workdir = chain.workdir
    dataset = "rte"  # left out of the nli mixture: its mix must not rerun, the `all` one must
    expected = downstream_of_templatized(train_config, dataset)
    assert f"mix:{MIXTURE}" not in expected and "mix:all" in expected
    model = workdir / f"models/{MIXTURE}/hf/model.safetensors"
    weights = model.read_bytes()
    before = _outputs(workdir)
    (workdir / f"data/templatized/{dataset}.parquet").unlink()
    targets = train_targets(train_config)

    # Snakemake's own plan, through the user's profile (`--profile slurm`, linked by setup.sh).
    dry = run_slurm(profile_env, workdir, "-n", *targets, config_file=train_config)
    assert dry.proc.returncode == 0 and not dry.jobs, dry.text
    rerun = run_slurm(profile_env, workdir, *targets, config_file=train_config, profile=node_profile)
    assert rerun.proc.returncode == 0, rerun.text
    # exactly the dataset's downstream jobs went to Slurm: what the structure says, and what the
    # dry run planned
    assert rerun.job_names() == expected, rerun.text
    assert Counter(name.partition(":")[0] for name in expected) == dry.planned() == rerun.planned()
    # nothing else was rewritten (the nli mixture, copa's tables, every raw, dedup, decontam file)
    after = _outputs(workdir)
    rewritten = tuple(OUTPUTS[rule].format(w) for rule, _, w in (j.partition(":") for j in expected))
    untouched = {p for p in before if not p.startswith(rewritten)}
    assert {f"data/mixtures/{MIXTURE}/manifest.json", "data/templatized/copa.parquet"} <= untouched
    assert {p: after.get(p) for p in untouched} == {p: before[p] for p in untouched}
    # the train job trained from step 0 again (its finished checkpoint is not resumed) and, on the
    # same data, made the same weights
    out = workdir / "models" / MIXTURE
    assert (workdir / f"logs/train/{MIXTURE}.log").read_text().startswith("checkpoints: cleared\n")
    assert json.loads((out / "run.json").read_text())["resumed_from_step"] == 0
    assert [int(r["step"]) for r in read_metrics(out / "metrics.csv")] == list(range(1, TRAIN_STEPS + 1))
    assert model.read_bytes() == weights
