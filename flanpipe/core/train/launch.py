"""Start ``flanpipe train`` on every rank: ``torchrun`` on one machine, ``srun`` across a Slurm
allocation, or a single process; and decide, before a workflow job starts it, whether the run
directory's checkpoints may be resumed.

>>> launch_command("torchrun", 1, 2, ["train", "--mixture", "nli"])[1:6]
['-m', 'torch.distributed.run', '--standalone', '--nnodes=1', '--nproc-per-node=2']
>>> launch_command("srun", 2, 8, ["train"])[:4]
['srun', '--nodes=2', '--ntasks-per-node=8', '--kill-on-bad-exit=1']
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import re
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from flanpipe.core.io import write_text_atomic

LAUNCHERS = ("torchrun", "srun", "none")
RUN_KEY = "run_key.json"  # in checkpoints/: what the checkpoints were trained on
COMPLETE_MARKER = "complete.json"  # in checkpoints/step<N>/: written once every rank's save returned
log = logging.getLogger(__name__)


def launch_command(launcher: str, nodes: int, tasks_per_node: int, args: list[str]) -> list[str]:
    """The command that runs ``flanpipe <args>`` as ``nodes x tasks_per_node`` ranks."""
    cli = [sys.executable, "-m", "flanpipe.cli", *args]
    if launcher == "torchrun":
        if nodes != 1:
            raise ValueError(f"torchrun here launches one node, not {nodes}: use launcher srun on Slurm")
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
                f"--nproc-per-node={tasks_per_node}", "-m", "flanpipe.cli", *args]
    if launcher == "srun":
        return ["srun", f"--nodes={nodes}", f"--ntasks-per-node={tasks_per_node}", "--kill-on-bad-exit=1",
                *cli]
    if launcher == "none":
        if nodes * tasks_per_node != 1:
            raise ValueError("launcher none runs one process: nodes and tasks_per_node must be 1")
        return cli
    raise ValueError(f"resources.launcher {launcher!r}; allowed: {', '.join(LAUNCHERS)}")


def ranks_per_node(nodes: int, tasks_per_node: int | None, tasks: int | None = None) -> int:
    """Ranks on each node, from the train rule's resources: ``tasks_per_node``, or ``tasks`` (all the
    ranks) spread evenly over ``nodes``. The second form is how a Slurm profile asks for one rank per
    node: the executor plugin refuses ``tasks_per_node`` 1 for an MPI-style job (``mpi``), and
    ``tasks_per_node`` together with ``tasks``, so such a profile sets ``tasks`` and
    ``tasks_per_node: 0``.

    >>> ranks_per_node(2, 8), ranks_per_node(2, 0, tasks=2), ranks_per_node(1, None, tasks=4)
    (8, 1, 4)
    >>> ranks_per_node(2, 0, tasks=3)
    Traceback (most recent call last):
    ...
    ValueError: resources.tasks 3 must be a multiple of resources.nodes 2 (the same ranks on every node)
    """
    if nodes < 1:
        raise ValueError(f"resources.nodes {nodes}; allowed: an integer >= 1")
    if tasks:
        if tasks % nodes:
            raise ValueError(f"resources.tasks {tasks} must be a multiple of resources.nodes {nodes} "
                             "(the same ranks on every node)")
        if tasks_per_node and tasks_per_node * nodes != tasks:
            raise ValueError(f"resources.tasks_per_node {tasks_per_node} x nodes {nodes} != resources.tasks "
                             f"{tasks}; set one of them (tasks_per_node: 0 with tasks)")
        return tasks // nodes
    if not tasks_per_node or tasks_per_node < 1:
        raise ValueError(f"resources.tasks_per_node {tasks_per_node}; allowed: an integer >= 1, or 0 with "
                         "resources.tasks set")
    return tasks_per_node


def checkpoint_step(ckpt_dir: str | Path) -> int | None:
    """The step of the newest checkpoint whose save finished (:func:`completed_checkpoint`), or None.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> checkpoint_step(d) is None
    True
    >>> mark_complete(d, "step0000010", 10)
    >>> _ = (d / "step0000020").mkdir()  # a save killed half way: no marker
    >>> checkpoint_step(d)
    10
    """
    found = completed_checkpoint(ckpt_dir)
    return None if found is None else found[1]


def completed_checkpoint(ckpt_dir: str | Path) -> tuple[str, int] | None:
    """``(tag, step)`` of the newest checkpoint folder (``step<N>``) holding the marker
    (:data:`COMPLETE_MARKER`) that :func:`mark_complete` writes once every rank's save returned; a
    folder without it (a save that was killed) is never resumed, whatever DeepSpeed's ``latest`` says."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    done = [(int(m.group(1)), p.name) for p in ckpt_dir.iterdir()
            if (m := re.fullmatch(r"step(\d+)", p.name)) and (p / COMPLETE_MARKER).is_file()]
    if not done:
        return None
    step, tag = max(done)
    return tag, step


def mark_complete(ckpt_dir: str | Path, tag: str, step: int) -> None:
    """Write the completion marker of checkpoint ``tag`` (call it after every rank's save returned)."""
    folder = Path(ckpt_dir) / tag
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / COMPLETE_MARKER, json.dumps({"tag": tag, "step": step}) + "\n")


# --- a run's processes: they die with their job, and one run at a time writes a model folder ------

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``).

    torchrun starts each rank in a session of its own, so a ``kill`` of the job's process group
    (Snakemake's, or a Slurm step's) does not reach the ranks: without this they train on as
    orphans. Called first thing by ``flanpipe train`` and, through ``preexec_fn``, for the launcher
    the workflow starts. If the parent died before the call, exits at once. A no-op off Linux.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
        return
    if os.getppid() != parent or parent == 1:  # orphaned before the call: the signal will never come
        os.kill(os.getpid(), sig)


class RunLocked(RuntimeError):
    """Another live process is training into the model folder."""


LOCK_NAME = "train.lock"
LOCK_FRESH_S = 600
"""A lock owned on another host counts as live while it was refreshed this recently (seconds)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a reused pid: the owner was a Python process
        return b"python" in Path(f"/proc/{pid}/cmdline").read_bytes() or not Path("/proc").is_dir()
    except OSError:
        return True


def lock_owner(out_dir: str | Path) -> dict | None:
    """The live owner of ``out_dir``'s training lock (``{"pid", "host", ...}``), or None if there is
    no lock or its owner is gone: on this host, its pid is not a live process; on another, the lock
    was not refreshed in the last :data:`LOCK_FRESH_S` seconds."""
    path = Path(out_dir) / LOCK_NAME
    try:
        owner = json.loads(path.read_text())
        age = time.time() - path.stat().st_mtime
    except (OSError, ValueError):
        return None
    if owner.get("host") == socket.gethostname():
        return owner if owner.get("pid") != os.getpid() and _alive(int(owner.get("pid", 0))) else None
    return owner if age < LOCK_FRESH_S else None


def refuse_if_locked(out_dir: str | Path) -> None:
    """Raise :class:`RunLocked` naming the owner if a live process holds ``out_dir``'s lock."""
    owner = lock_owner(out_dir)
    if owner is not None:
        raise RunLocked(f"{Path(out_dir) / LOCK_NAME}: process {owner['pid']} on {owner['host']} (started "
                        f"{owner.get('started')}) is still training into {out_dir}; stop it first (two "
                        "writers would race on one model folder). If it is gone, delete the lock file.")


@contextlib.contextmanager
def run_lock(out_dir: str | Path) -> Iterator[Path]:
    """Hold ``out_dir``'s training lock (a file with this process's pid and host) for the block;
    refuse (:class:`RunLocked`) while a live process holds it, take over one whose owner is gone."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_NAME
    refuse_if_locked(out_dir)
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_text_atomic(path, json.dumps(owner) + "\n")
    try:
        yield path
    finally:
        try:
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()
        except (OSError, ValueError):
            pass


def refresh_lock(path: Path) -> None:
    """Touch the lock, so that a run on another host sees it is live (:data:`LOCK_FRESH_S`)."""
    with contextlib.suppress(OSError):
        os.utime(path)


def keep_or_clear_checkpoints(out_dir: str | Path, run_key: dict, steps: int) -> str:
    """Before a workflow job trains into ``out_dir``: keep ``checkpoints/`` when it holds an
    unfinished run of the same inputs (``run_key``: data, tokenizer, train config, ranks), so that
    the trainer resumes it (a job killed by a time limit or preemption, rerun by Snakemake's
    ``--rerun-incomplete``); otherwise remove it and ``tensorboard/``, so that the run starts at
    step 0. A job that Snakemake reruns because an input or param changed, or whose outputs were
    deleted, must not resume a finished (or another data's) checkpoint: it would train no step, or
    train on stale weights, and write an empty ``metrics.csv``. Records ``run_key`` for the next
    time. Returns ``"resume"``, ``"fresh"`` (nothing there) or ``"cleared"``. Refuses
    (:class:`RunLocked`) while a live process still trains into ``out_dir``.

    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp())
    >>> keep_or_clear_checkpoints(out, {"data": "a"}, steps=20)
    'fresh'
    >>> mark_complete(out / "checkpoints", "step0000010", 10)  # killed after the save at step 10
    >>> keep_or_clear_checkpoints(out, {"data": "a"}, steps=20)
    'resume'
    >>> keep_or_clear_checkpoints(out, {"data": "b"}, steps=20)  # new data: start over
    'cleared'
    >>> mark_complete(out / "checkpoints", "step0000020", 20)  # finished, then rerun
    >>> keep_or_clear_checkpoints(out, {"data": "b"}, steps=20), checkpoint_step(out / "checkpoints")
    ('cleared', None)
    """
    out_dir = Path(out_dir)
    refuse_if_locked(out_dir)
    ckpt = out_dir / "checkpoints"
    step = checkpoint_step(ckpt)
    key_file = ckpt / RUN_KEY
    saved = json.loads(key_file.read_text()) if key_file.exists() else None
    state = "fresh" if step is None else "resume"
    if step is not None and (saved != run_key or step >= steps):
        why = "a finished run" if saved == run_key else "another run's inputs"
        log.info("%s holds %s (step %d): starting from step 0", ckpt, why, step)
        state = "cleared"
    if state != "resume":
        for stale in (ckpt, out_dir / "tensorboard"):
            shutil.rmtree(stale, ignore_errors=True)
    ckpt.mkdir(parents=True, exist_ok=True)
    key_file.write_text(json.dumps(run_key, sort_keys=True) + "\n")
    return state
