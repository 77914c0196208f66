"""One train job on two Slurm nodes: `snakemake --profile` on a two-node cluster on this machine
(tests/slurm_cluster.py brings it up and always stops it; each node is a network namespace with its
own address and hostname), one DeepSpeed rank on each node, started by `srun` inside the job.

Run alone with `pytest -m slurm tests/e2e/test_slurm_multinode.py`. Needs root (it installs Debian's
slurmctld, slurmd and munge with apt-get if missing, and makes network namespaces) and 2 CPUs; skips
otherwise (fails under CI). Its time: docs/slurm.md, The CI tests.

The data, tokenizer and packed rows are made locally (the one-node test, test_slurm.py, runs those
stages through Slurm); then the same workdir, copied, trains twice: on Slurm across the two nodes,
and locally with torchrun's 2 ranks on one machine. The checks:
- the two ranks run on different nodes and meet at the first node of the job's node list, on the
  port derived from the job id; a rank told to meet at its own localhost instead never finds the
  other (the nodes do not share a network stack, so the rendezvous address matters);
- Slurm ran one 2-node job with one task on each node, through the project's profile;
- the weights and losses equal the one-node run's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import BIN, REPO, run_snakemake
from tests.e2e.test_slurm import FAST, SUBMITTED, _job_name, read_metrics, write_config
from tests.slurm_cluster import (
    NODES,
    SCRIPTS,
    cannot_run,
    multinode_cluster,
    multinode_env,
    on_node,
    profile_one_rank_per_node,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slurm]

SUBSET = ["copa"]  # one dataset and the `all` mixture: the fewest local jobs before the train job
MIXTURE = "all"
TRAIN_STEPS = 6
NODE_COUNT = 2
FAKE_GPUS = 1
TARGET = f"models/{MIXTURE}/run.json"
LOSS_COLUMNS = ("step", "loss", "lr", "grad_norm", "target_tokens", "tokens")
# One line per rank, logged by flanpipe.core.train.distributed.DistEnv.export.
RANK_LINE = re.compile(r"rank (\d+) of (\d+) on node (\S+) \(local rank (\d+) of (\d+)\), "
                       r"rendezvous (\S+):(\d+) \((\w+)\)")

# One rank of a gloo group, as the trainer makes it (flanpipe.core.train.distributed), that gathers every
# rank's node and hostname. A short timeout: a rank that cannot reach the rendezvous fails fast.
PROBE = """
import datetime, json, socket, torch.distributed as td
from flanpipe.core.train.distributed import dist_env, rank_nodes
d = dist_env(); d.export()
td.init_process_group("gloo", timeout=datetime.timedelta(seconds=5))
hosts = [None] * d.world_size
td.all_gather_object(hosts, socket.gethostname())
probe = {"rank": d.rank, "master": d.master_addr, "nodes": rank_nodes(d), "hosts": hosts}
print("PROBE " + json.dumps(probe))
td.destroy_process_group()
"""


@pytest.fixture(scope="module")
def cluster():
    cpus = len(os.sched_getaffinity(0))
    if cpus < NODE_COUNT:
        cannot_run(f"the train job runs {NODE_COUNT} ranks on this machine; it has {cpus} CPU")
    with multinode_cluster(fake_gpus=FAKE_GPUS) as state_dir:
        yield state_dir


@pytest.fixture(scope="module")
def slurm_env(cluster) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FLANPIPE_SLURM_", "SNAKEMAKE_PROFILE", "SLURM_"))}
    env.update(FLANPIPE_SLURM_PARTITION="debug", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return env


def srun(env: dict[str, str], *args: str, timeout: int = 90) -> subprocess.CompletedProcess:
    """`srun --nodes=2 --ntasks-per-node=1 ...` from the first node."""
    return subprocess.run(on_node(NODES[0], "srun", f"--nodes={NODE_COUNT}", "--ntasks-per-node=1",
                                  "--kill-on-bad-exit=1", *args),
                          env=env, capture_output=True, text=True, timeout=timeout)


def test_ranks_meet_at_the_first_node_of_the_job(slurm_env):
    proc = srun(slurm_env, str(BIN / "python"), "-c", PROBE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    probes = sorted((json.loads(line.split(" ", 1)[1]) for line in proc.stdout.splitlines()
                     if line.startswith("PROBE ")), key=lambda p: p["rank"])
    assert [p["rank"] for p in probes] == [0, 1], proc.stdout
    for p in probes:
        # Slurm's node name and the machine's hostname, per rank: the two ranks are on two nodes
        assert p["nodes"] == p["hosts"] == list(NODES), p
        assert p["master"] == NODES[0], p
    # A rank told to meet at its own localhost finds nobody: the nodes are separate hosts on the
    # network, so only the first node's address works.
    wrong = srun({**slurm_env, "MASTER_ADDR": "127.0.0.1"}, str(BIN / "python"), "-c", PROBE)
    assert wrong.returncode != 0 and "PROBE" not in wrong.stdout, wrong.stdout + wrong.stderr


@pytest.fixture(scope="module")
def runs(slurm_env, tmp_path_factory) -> dict[str, Path]:
    """The model trained twice on the same packed data: on two Slurm nodes (one rank each) and
    locally (torchrun, 2 ranks). Returns the two workdirs and the Slurm run's output."""
    config = write_config(tmp_path_factory.mktemp("config") / "config.yaml", datasets=SUBSET,
                          heldout_clusters=[], train__steps=TRAIN_STEPS,
                          train__checkpoint_every=TRAIN_STEPS, ablations={"enabled": False})
    slurm_dir = tmp_path_factory.mktemp("two_nodes")
    run_snakemake(slurm_dir, TARGET, "--omit-from", "train", config_file=config)
    local_dir = tmp_path_factory.mktemp("one_node") / "wd"
    shutil.copytree(slurm_dir, local_dir, symlinks=True)

    profile = tmp_path_factory.mktemp("profile")
    (profile / "config.yaml").write_text(
        profile_one_rank_per_node(NODE_COUNT, cpus=len(os.sched_getaffinity(0)), mem_mb=3000))
    # The local run trains while the Slurm run waits for its job (same data; ranks seed from it).
    local: dict = {}
    thread = threading.Thread(target=lambda: local.update(
        proc=run_snakemake(local_dir, TARGET, config_file=config, check=False)))
    thread.start()
    cmd = on_node(NODES[0], str(BIN / "snakemake"), "--profile", str(profile), "--snakefile",
                  str(REPO / "Snakefile"), "--directory", str(slurm_dir), "--configfile", str(config),
                  *FAST, TARGET)
    proc = subprocess.run(cmd, cwd=slurm_dir, env=slurm_env, capture_output=True, text=True, timeout=300)
    thread.join(timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    assert local["proc"].returncode == 0, local["proc"].stdout + local["proc"].stderr
    return {"slurm": slurm_dir, "local": local_dir, "text": text}


def test_one_train_job_on_two_nodes_through_the_profile(runs, slurm_env):
    text, workdir = runs["text"], runs["slurm"]
    jobs = dict(SUBMITTED.findall(text))
    assert [_job_name(Path(log)) for log in jobs.values()] == [f"train:{MIXTURE}"], text
    [job_id] = jobs
    job = subprocess.run(on_node(NODES[0], "scontrol", "show", "job", job_id), capture_output=True,
                         text=True, check=True, timeout=30).stdout
    assert "JobState=COMPLETED" in job, job
    assert f"NumNodes={NODE_COUNT} " in job and f"NumTasks={NODE_COUNT} " in job, job
    assert re.search(rf"\bNodeList=fpn\[1-{NODE_COUNT}\]", job), job
    train_log = (workdir / f"logs/train/{MIXTURE}.log").read_text()
    launch = f"srun --nodes={NODE_COUNT} --ntasks-per-node=1 "
    assert train_log.startswith(f"checkpoints: fresh\n{launch}"), train_log
    # each rank logged its node and the rendezvous: the first node, the port from the job id
    ranks = sorted(RANK_LINE.findall(train_log))
    port = str(20000 + int(job_id) % 20000)
    assert ranks == [(str(r), str(NODE_COUNT), node, "0", "1", NODES[0], port, "srun")
                     for r, node in enumerate(NODES)], train_log
    manifest = json.loads((workdir / f"models/{MIXTURE}/run.json").read_text())
    assert manifest["launcher"] == "srun" and manifest["world_size"] == NODE_COUNT, manifest
    assert manifest["steps"] == TRAIN_STEPS and manifest["resumed_from_step"] == 0
    if "nodes" in manifest:  # once the trainer records flanpipe.core.train.distributed.rank_nodes in run.json
        assert manifest["nodes"] == list(NODES), manifest


def test_two_nodes_train_the_weights_of_one_node(runs):
    local = json.loads((runs["local"] / f"models/{MIXTURE}/run.json").read_text())
    assert local["launcher"] == "torchrun" and local["world_size"] == NODE_COUNT
    weights = {name: load_file(runs[name] / f"models/{MIXTURE}/hf/model.safetensors")
               for name in ("slurm", "local")}
    assert weights["slurm"].keys() == weights["local"].keys()
    # One rank per node has both CPUs for its threads, two ranks on one node one each: float32 sums
    # in the CPU kernels may then be ordered differently, a few units in the last place apart.
    for k in weights["local"]:
        torch.testing.assert_close(weights["slurm"][k], weights["local"][k], rtol=1e-6, atol=1e-6)

    def losses(root: Path) -> list[tuple]:
        rows = read_metrics(root / f"models/{MIXTURE}/metrics.csv")
        return [tuple(float(r[k]) for k in LOSS_COLUMNS) for r in rows]

    for slurm, local in zip(losses(runs["slurm"]), losses(runs["local"]), strict=True):
        assert slurm == pytest.approx(local, rel=1e-6), (slurm, local)
    assert len(losses(runs["local"])) == TRAIN_STEPS


def test_the_cluster_start_waits_for_a_controller_that_does_not_answer_yet(cluster):
    """start_multinode.sh waits for both nodes while slurmctld does not answer, as on a loaded machine
    in its first moments (CI once failed so: the script's first sinfo found no node state and the
    wait loop exited 1 at once). Here the running controller is stopped (SIGSTOP) for longer than one
    sinfo's 10 s MessageTimeout while the script runs again (idempotent: it starts nothing), then
    let go; the script must go on asking and succeed."""
    controller = int((cluster / "run/slurmctld.pid").read_text())
    os.kill(controller, signal.SIGSTOP)
    try:
        start = subprocess.Popen(["bash", str(SCRIPTS / "start_multinode.sh")], env=multinode_env(FAKE_GPUS),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(12)
    finally:
        os.kill(controller, signal.SIGCONT)
    out, err = start.communicate(timeout=150)
    assert start.returncode == 0, out + err
    assert "nodes: fpn1 idle fpn2 idle" in err, err
    assert "starting" not in err, err  # nothing was restarted: the nodes answered again by themselves
