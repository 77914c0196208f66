"""The workflow through a real Slurm cluster: `snakemake --profile slurm` on a one-node cluster on
localhost (tests/slurm_cluster.py brings it up and always stops it).

Run alone with `pytest -m slurm tests/e2e/test_slurm.py`. Needs root (it installs Debian's slurmctld,
slurmd and munge with apt-get if missing); skips otherwise. About 3.5 minutes on 2 CPUs.

It runs the download stage (`all --until download`, one Slurm job per dataset): the point is the
executor (sbatch, status polling, logs, failure, resume), not each stage, which the local end-to-end
tests cover; running every stage would grow with the workflow.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from flanpipe.registry import embedded_datasets
from tests.conftest import BIN, REPO, run_snakemake
from tests.slurm_cluster import profile_with_train_block, slurm_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slurm]

UNTIL = ("all", "--until", "download")
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (.+?)\)\.?$", re.M)
# The profile polls after 40 s, as a real cluster wants; here jobs take seconds.
FAST = ("--slurm-init-seconds-before-status-checks", "2")


@dataclass
class SlurmRun:
    proc: subprocess.CompletedProcess
    text: str  # stdout + stderr
    jobs: dict[str, Path]  # Slurm job id -> its Slurm log

    def datasets(self) -> list[str]:
        """The dataset of each submitted job (from its log path .../rule_download/<dataset>/<id>.log)."""
        return sorted(log.parent.name for log in self.jobs.values())


@pytest.fixture(scope="module")
def cluster():
    with slurm_cluster(fake_gpus=2) as state_dir:
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


def run_slurm(env: dict[str, str], workdir: Path, *args: str, config_file: Path | None = None,
              timeout: int = 300) -> SlurmRun:
    """`snakemake --profile slurm ...` on the project's Snakefile, outputs under `workdir`; a run
    that takes longer than `timeout` is killed (its Slurm jobs are cancelled when the cluster stops)."""
    cmd = [str(BIN / "snakemake"), "--profile", "slurm", "--snakefile", str(REPO / "Snakefile"),
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


@pytest.fixture(scope="module")
def slurm_run(profile_env, tmp_path_factory) -> tuple[Path, SlurmRun]:
    workdir = tmp_path_factory.mktemp("slurm_wf")
    run = run_slurm(profile_env, workdir, *UNTIL)
    assert run.proc.returncode == 0, run.text
    return workdir, run


def test_every_job_goes_through_sbatch(slurm_run):
    workdir, run = slurm_run
    datasets = sorted(embedded_datasets())
    assert re.search(rf"^download\s+{len(datasets)}$", run.text, re.M), run.text
    assert run.datasets() == datasets, run.text  # one Slurm job per dataset, no job run locally
    assert "localrule download" not in run.text
    # Slurm itself ran them: one run (job name = Snakemake's run id), all completed, in the partition
    # FLANPIPE_SLURM_PARTITION chose.
    slurm = squeue(*run.jobs)
    assert set(slurm) == set(run.jobs)
    assert {j["state"] for j in slurm.values()} == {"COMPLETED"}
    assert {j["partition"] for j in slurm.values()} == {"debug"}
    assert len({j["name"] for j in slurm.values()}) == 1
    # Each job's Slurm log (kept by the profile) is where Snakemake said, and the job ran the
    # Snakemake job step inside Slurm.
    logs = sorted((workdir / ".snakemake/slurm_logs/rule_download").glob("*/*.log"))
    assert sorted(p.stem for p in logs) == sorted(run.jobs, key=str)
    for jid, log in run.jobs.items():
        assert log.exists() and log.stem == jid
        assert "--executor slurm-jobstep" in log.read_text()
    # The rule's own logs and benchmarks are where they are on a local run.
    for name in datasets:
        assert (workdir / f"logs/download/{name}.log").read_text().count("rows read") == 2
        assert (workdir / f"benchmarks/download/{name}.tsv").exists()


def test_outputs_equal_a_local_run(slurm_run, tmp_path):
    workdir, _ = slurm_run
    run_snakemake(tmp_path, *UNTIL)
    raw_slurm, raw_local = workdir / "data/raw", tmp_path / "data/raw"
    parquet = sorted(p.relative_to(raw_local) for p in raw_local.rglob("*.parquet"))
    assert parquet == sorted(p.relative_to(raw_slurm) for p in raw_slurm.rglob("*.parquet"))
    assert len(parquet) == 3 * len(embedded_datasets())
    for rel in parquet:
        assert (raw_slurm / rel).read_bytes() == (raw_local / rel).read_bytes(), rel
    for name in embedded_datasets():
        rel = Path(name) / "manifest.json"
        assert _manifest_counts(raw_slurm / rel) == _manifest_counts(raw_local / rel), name


def test_deleting_one_output_submits_exactly_one_job(slurm_run, profile_env):
    workdir, _ = slurm_run
    target = workdir / "data/raw/rte/train.parquet"
    before = target.read_bytes()
    target.unlink()
    run = run_slurm(profile_env, workdir, *UNTIL)
    assert run.proc.returncode == 0, run.text
    assert run.datasets() == ["rte"], run.text
    assert target.read_bytes() == before


def test_failed_job_names_its_slurm_log_and_rerun_resumes(profile_env, tmp_path):
    subset = ["rte", "copa", "sst2"]
    good = write_config(tmp_path / "good.yaml", datasets=subset)
    bad = write_config(tmp_path / "bad.yaml", datasets=subset,
                       download__sources={"rte": {"kind": "local", "path": "/nonexistent"}})
    workdir = tmp_path / "wf"
    workdir.mkdir()

    failed = run_slurm(profile_env, workdir, *UNTIL, config_file=bad)
    assert failed.proc.returncode != 0, failed.text
    assert failed.datasets() == sorted(subset), failed.text
    (rte_job,) = [jid for jid, log in failed.jobs.items() if log.parent.name == "rte"]
    rte_log = failed.jobs[rte_job]
    # Snakemake's error report names the failed job's Slurm log (and the rule's own log).
    error = re.search(r"^Error in rule download:\n(?:\s+.*\n)+", failed.text, re.M)
    assert error, failed.text
    assert str(rte_log) in error.group(0) and f"SLURM-job '{rte_job}' failed" in error.group(0)
    assert "logs/download/rte.log" in error.group(0)
    # The Slurm log holds the job's stderr: the reason it failed.
    assert "no file for split 'train' in /nonexistent" in rte_log.read_text()
    assert squeue(rte_job)[rte_job]["state"] == "FAILED"
    # keep-going (profile): the other jobs finished; rte left nothing that looks complete.
    assert not (workdir / "data/raw/rte/manifest.json").exists()
    done = {n: (workdir / "data/raw" / n / "manifest.json").stat().st_mtime_ns for n in ("copa", "sst2")}

    resumed = run_slurm(profile_env, workdir, *UNTIL, config_file=good)
    assert resumed.proc.returncode == 0, resumed.text
    assert resumed.datasets() == ["rte"], resumed.text
    assert (workdir / "data/raw/rte/manifest.json").exists()
    assert {n: (workdir / "data/raw" / n / "manifest.json").stat().st_mtime_ns for n in done} == done


RANK_INFO = ("import json, os; print(json.dumps({k: os.environ.get(k) for k in ('SLURM_PROCID', "
             "'SLURM_NTASKS', 'SLURM_JOB_ID', 'SLURM_JOB_NODELIST', 'CUDA_VISIBLE_DEVICES')} "
             "| {'pid': os.getpid()}))")


def _ranks(stdout: str) -> list[dict]:
    return sorted((json.loads(line) for line in stdout.splitlines() if line.startswith("{")),
                  key=lambda r: r["SLURM_PROCID"])


def test_srun_two_tasks_see_distinct_ranks(cluster):
    """Groundwork for a multi-rank `flanpipe train` launch (no train stage yet): `srun -n 2` starts
    two processes in one job, ranks 0 and 1, on the same node list."""
    proc = subprocess.run(["srun", "-n", "2", sys.executable, "-c", RANK_INFO], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ranks = _ranks(proc.stdout)
    assert [r["SLURM_PROCID"] for r in ranks] == ["0", "1"], proc.stdout
    assert len({r["pid"] for r in ranks}) == 2
    assert len({r["SLURM_JOB_ID"] for r in ranks}) == 1
    assert len({r["SLURM_JOB_NODELIST"] for r in ranks}) == 1 and ranks[0]["SLURM_JOB_NODELIST"]
    assert {r["SLURM_NTASKS"] for r in ranks} == {"2"}


def test_profile_train_block_starts_one_rank_per_gpu(profile_env, tmp_path):
    """The profile's commented `train:` resources, enabled (scaled to the 2 fake GPUs the cluster
    declares), run a rule the way its comment says a train rule will launch DeepSpeed ranks."""
    profile = tmp_path / "profile"
    profile.mkdir()
    (profile / "config.yaml").write_text(profile_with_train_block(gpus=2))
    (tmp_path / "rank.py").write_text(RANK_INFO)
    (tmp_path / "Snakefile").write_text(
        "rule train:\n"
        "    output: 'ranks.jsonl'\n"
        "    shell: '{resources.mpi} --nodes={resources.nodes} --ntasks-per-node={resources.tasks_per_node}"
        f" {sys.executable} rank.py > {{output}}'\n")
    proc = subprocess.run([str(BIN / "snakemake"), "--profile", str(profile), *FAST], cwd=tmp_path,
                          env=profile_env, capture_output=True, text=True, timeout=180)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    [(job_id, _)] = SUBMITTED.findall(text)
    ranks = _ranks((tmp_path / "ranks.jsonl").read_text())
    assert [r["SLURM_PROCID"] for r in ranks] == ["0", "1"], ranks
    assert {r["SLURM_JOB_ID"] for r in ranks} == {job_id}
    assert {r["CUDA_VISIBLE_DEVICES"] for r in ranks} == {"0,1"}
    job = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    assert "TresPerNode=gres:gpu:2" in job and "NumTasks=2" in job, job
