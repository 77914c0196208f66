"""Real Slurm clusters on this machine for the tests (Debian's slurmctld, slurmd and munge), and the
project's Slurm profile with its commented GPU blocks enabled.

`slurm_cluster()` starts a one-node cluster on localhost with scripts/slurm/start_slurm.sh (which
apt-get installs the packages if they are missing); `multinode_cluster()` starts a two-node one, each
node a network namespace with its own address and hostname, with scripts/slurm/start_multinode.sh
(commands for it run on its first node: `on_node("fpn1", ...)`). Both always stop their cluster when
the block ends, whether the tests passed, failed or were interrupted. Where a cluster cannot be had
(not root, the packages are missing and cannot be installed, or, for two nodes, network namespaces
cannot be made) they skip, saying why; in CI (`CI` set, as CI services set it), which is meant to
run the Slurm tests, they fail instead (`cannot_run`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import pytest

from tests.conftest import REPO

SCRIPTS = REPO / "scripts/slurm"
PROFILE = REPO / "profiles/slurm/config.yaml"
STATE_DIR = Path(os.environ.get("SLURM_TEST_DIR", "/tmp/flanpipe-slurm"))
MULTINODE_DIR = Path(os.environ.get("SLURM_MULTINODE_DIR", "/tmp/flanpipe-slurm-multinode"))
NODES = ("fpn1", "fpn2")  # the two-node cluster's nodes (start_multinode.sh)
COMMANDS = ("slurmctld", "slurmd", "munged", "sbatch", "srun", "squeue")
PACKAGES_UNAVAILABLE = 3  # start_slurm.sh's exit status when apt-get cannot install the packages
NO_NAMESPACES = 4  # start_multinode.sh's exit status when network namespaces cannot be made


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _daemon_logs(state_dir: Path = STATE_DIR) -> str:
    out = []
    for path in sorted((state_dir / "log").glob("slurm*.log")):
        out.append(f"--- {path} (tail) ---\n{_tail(path.read_text(errors='replace'))}")
    return "\n".join(out)


def in_ci() -> bool:
    """Whether this is a CI run: `CI` set to anything but empty, `0` or `false` (scripts/test.sh
    reads it alike)."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def cannot_run(reason: str) -> NoReturn:
    """Skip a Slurm test that this machine cannot run, saying why (a developer without root); in CI,
    where the Slurm tests are meant to run, fail it instead: a skip there passes in silence."""
    if in_ci():
        pytest.fail(f"CI is set and the Slurm tests must run, but {reason}", pytrace=False)
    pytest.skip(reason)


def unavailable_reason() -> str | None:
    """Why no cluster can be started here, or None."""
    if os.geteuid() != 0:
        return "a local Slurm cluster needs root (to install packages and run slurmctld/slurmd/munged)"
    if not all(shutil.which(c) for c in COMMANDS) and not shutil.which("apt-get"):
        return "Slurm/munge are not installed and there is no apt-get to install them"
    return None


def _packages_missing() -> bool:
    return not all(shutil.which(c) for c in COMMANDS)


def install_slurm_commands() -> None:
    """Slurm's and munge's commands on this machine (`scontrol`, `sbatch`, ...), installed with
    apt-get where they are missing, as start_slurm.sh installs them (scripts/slurm/common.sh's
    `install_slurm`); `cannot_run` where they cannot be."""
    if not _packages_missing():
        return
    reason = unavailable_reason()
    if reason:
        cannot_run(reason)
    script = f'log() {{ echo "[install_slurm] $*" >&2; }}; . "{SCRIPTS}/common.sh"; install_slurm'
    try:
        proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        cannot_run("installing Slurm with apt-get took over 600 s")
    if proc.returncode == PACKAGES_UNAVAILABLE:
        cannot_run(f"Slurm packages unavailable: {_tail(proc.stderr, 5)}")
    if proc.returncode != 0:
        pytest.fail(f"installing Slurm failed ({proc.returncode}):\n{_tail(proc.stderr)}")


@contextmanager
def slurm_cluster(fake_gpus: int = 0, start_timeout: int = 600) -> Iterator[Path]:
    """Start the one-node cluster (idempotent), yield its state directory, always stop it afterwards."""
    env = {**os.environ, "SLURM_FAKE_GPUS": str(fake_gpus), "SLURM_TEST_DIR": str(STATE_DIR)}
    with _cluster("start_slurm.sh", "stop_slurm.sh", env, STATE_DIR, start_timeout):
        yield STATE_DIR


@contextmanager
def multinode_cluster(fake_gpus: int = 0, start_timeout: int = 600) -> Iterator[Path]:
    """Start the two-node cluster (nodes `NODES`, `fake_gpus` GPUs each), yield its state directory,
    always stop it afterwards (daemons, namespaces and their link)."""
    with _cluster("start_multinode.sh", "stop_multinode.sh", multinode_env(fake_gpus), MULTINODE_DIR,
                  start_timeout):
        yield MULTINODE_DIR


def multinode_env(fake_gpus: int = 0) -> dict[str, str]:
    """The environment start_multinode.sh runs in for a cluster of `fake_gpus` GPUs a node (run again
    with the same one, it leaves the running cluster as it is)."""
    return {**os.environ, "SLURM_FAKE_GPUS": str(fake_gpus), "SLURM_MULTINODE_DIR": str(MULTINODE_DIR)}


def on_node(node: str, *command: str) -> list[str]:
    """`command` to run on a node of the two-node cluster (its network, hostname, /etc/hosts and
    /etc/slurm): the Slurm commands and `snakemake --profile` of the tests run on the first node."""
    return ["bash", str(SCRIPTS / "on_node.sh"), node, *command]


@contextmanager
def _cluster(start: str, stop: str, env: dict[str, str], state_dir: Path,
             start_timeout: int) -> Iterator[None]:
    reason = unavailable_reason()
    if reason:
        cannot_run(reason)
    try:
        try:
            proc = subprocess.run(["bash", str(SCRIPTS / start)], env=env, capture_output=True, text=True,
                                  timeout=start_timeout)
        except subprocess.TimeoutExpired as e:
            if _packages_missing():
                cannot_run(f"installing Slurm with apt-get took over {start_timeout} s")
            pytest.fail(f"{start} timed out:\n{_tail(str(e.stderr or ''))}\n{_daemon_logs(state_dir)}")
        if proc.returncode == PACKAGES_UNAVAILABLE:
            cannot_run(f"Slurm packages unavailable: {_tail(proc.stderr, 5)}")
        if proc.returncode == NO_NAMESPACES:
            cannot_run(f"no network namespaces here for a second node: {_tail(proc.stderr, 5)}")
        if proc.returncode != 0:
            pytest.fail(f"{start} failed ({proc.returncode}):\n{_tail(proc.stderr)}\n"
                        f"{_daemon_logs(state_dir)}")
        yield
    finally:
        subprocess.run(["bash", str(SCRIPTS / stop)], env=env, capture_output=True, timeout=120)


def profile_with_train_block(gpus: int | None = None) -> str:
    """profiles/slurm/config.yaml with its `train:` block scaled down by `gpus` (GPUs and ranks per
    node; 1 CPU and 1 GB per rank) to fit the test cluster."""
    lines = PROFILE.read_text().splitlines()
    train = _block(lines, "  train:")
    start, end = train.start, train.stop
    block = "\n".join(lines[start:end])
    if gpus is not None:
        block, n = re.subn(r'(gpu(?::\{[^}]*\})?):8"', rf'\1:{gpus}"', block)
        assert n == 2, block  # both branches of the gres expression
        for key, value in {"tasks_per_node": gpus, "cpus_per_task": 1, "mem_mb": 1000}.items():
            block, n = re.subn(rf"^(\s+{key}:) \d+", rf"\1 {value}", block, flags=re.M)
            assert n == 1, (key, block)
    return "\n".join(lines[:start] + block.splitlines() + lines[end:]) + "\n"


def profile_for_cluster(gpus: int, cpus: int, mem_mb: int) -> str:
    """The profile of `profile_with_train_block(gpus)` with every other rule's `cpus_per_task` and
    `mem_mb` capped at `cpus` and `mem_mb`, so that a one-node test cluster accepts every job (it
    rejects a job asking for more than the node has). Nothing else changes: the executor settings,
    the default resources and each rule's launcher are the project's."""
    lines = profile_with_train_block(gpus).splitlines()
    train = _block(lines, "  train:")
    caps = {"cpus_per_task": cpus, "mem_mb": mem_mb}
    for i in range(lines.index("set-resources:") + 1, len(lines)):
        m = re.match(r"^(    (\w+): )(\d+)(.*)$", lines[i])
        if m and m.group(2) in caps and i not in train:
            lines[i] = f"{m.group(1)}{min(int(m.group(3)), caps[m.group(2)])}{m.group(4)}"
    return "\n".join(lines) + "\n"


def profile_one_rank_per_node(nodes: int, cpus: int, mem_mb: int) -> str:
    """The profile of `profile_for_cluster(gpus=1, ...)` with its train block spread over `nodes`
    nodes, one rank (and one GPU) on each. The Slurm plugin refuses `tasks_per_node: 1` for a job
    with `mpi` set (and `tasks_per_node` together with `tasks`), so the block asks for all the ranks
    with `tasks`, `tasks_per_node: 0`, and `tasks_per_gpu: 1` (else the plugin would pass `tasks` as
    sbatch's --ntasks-per-gpu); the train rule spreads `tasks` evenly over the nodes."""
    lines = profile_for_cluster(gpus=1, cpus=cpus, mem_mb=mem_mb).splitlines()
    train = _block(lines, "  train:")
    block = "\n".join(lines[train.start:train.stop])
    block, n = re.subn(r"^(\s+nodes:) \d+", rf"\1 {nodes}", block, flags=re.M)
    assert n == 1, block
    block, n = re.subn(r"^(\s+)tasks_per_node: \d+.*$",
                       rf"\1tasks_per_node: 0\n\1tasks: {nodes}\n\1tasks_per_gpu: 1", block, flags=re.M)
    assert n == 1, block
    return "\n".join(lines[:train.start] + block.splitlines() + lines[train.stop:]) + "\n"


def _block(lines: list[str], header: str) -> range:
    """The line numbers of a `set-resources` entry: its header and its indented keys."""
    start = lines.index(header)
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith("    "))
    return range(start, end)
