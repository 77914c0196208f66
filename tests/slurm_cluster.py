"""A real one-node Slurm cluster on localhost for the tests (Debian's slurmctld, slurmd and munge),
and the project's Slurm profile with its commented GPU blocks enabled.

`slurm_cluster()` starts it with scripts/slurm/start_slurm.sh (which apt-get installs the packages if
they are missing) and always stops it with scripts/slurm/stop_slurm.sh when the block ends, whether
the tests passed, failed or were interrupted. It skips only where a cluster cannot be had: not root,
or the packages are missing and cannot be installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPTS = REPO / "scripts/slurm"
PROFILE = REPO / "profiles/slurm/config.yaml"
STATE_DIR = Path(os.environ.get("SLURM_TEST_DIR", "/tmp/flanpipe-slurm"))
COMMANDS = ("slurmctld", "slurmd", "munged", "sbatch", "srun", "squeue")
PACKAGES_UNAVAILABLE = 3  # start_slurm.sh's exit status when apt-get cannot install the packages


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _daemon_logs() -> str:
    out = []
    for name in ("slurmctld.log", "slurmd.log"):
        path = STATE_DIR / "log" / name
        if path.exists():
            out.append(f"--- {path} (tail) ---\n{_tail(path.read_text(errors='replace'))}")
    return "\n".join(out)


def unavailable_reason() -> str | None:
    """Why no cluster can be started here, or None."""
    if os.geteuid() != 0:
        return "a local Slurm cluster needs root (to install packages and run slurmctld/slurmd/munged)"
    if not all(shutil.which(c) for c in COMMANDS) and not shutil.which("apt-get"):
        return "Slurm/munge are not installed and there is no apt-get to install them"
    return None


def _packages_missing() -> bool:
    return not all(shutil.which(c) for c in COMMANDS)


@contextmanager
def slurm_cluster(fake_gpus: int = 0, start_timeout: int = 600) -> Iterator[Path]:
    """Start the cluster (idempotent), yield its state directory, always stop it afterwards."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    env = {**os.environ, "SLURM_FAKE_GPUS": str(fake_gpus), "SLURM_TEST_DIR": str(STATE_DIR)}
    try:
        try:
            proc = subprocess.run(["bash", str(SCRIPTS / "start_slurm.sh")], env=env, capture_output=True,
                                  text=True, timeout=start_timeout)
        except subprocess.TimeoutExpired as e:
            if _packages_missing():
                pytest.skip(f"installing Slurm with apt-get took over {start_timeout} s")
            pytest.fail(f"start_slurm.sh timed out:\n{_tail(str(e.stderr or ''))}\n{_daemon_logs()}")
        if proc.returncode == PACKAGES_UNAVAILABLE:
            pytest.skip(f"Slurm packages unavailable: {_tail(proc.stderr, 5)}")
        if proc.returncode != 0:
            pytest.fail(f"start_slurm.sh failed ({proc.returncode}):\n{_tail(proc.stderr)}\n{_daemon_logs()}")
        yield STATE_DIR
    finally:
        subprocess.run(["bash", str(SCRIPTS / "stop_slurm.sh")], env=env, capture_output=True, timeout=120)


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


def _block(lines: list[str], header: str) -> range:
    """The line numbers of a `set-resources` entry: its header and its indented keys."""
    start = lines.index(header)
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith("    "))
    return range(start, end)
