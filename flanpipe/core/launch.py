"""Start ``flanpipe train`` on every rank: ``torchrun`` on one machine, ``srun`` across a Slurm
allocation, or a single process; and decide, before a workflow job starts it, whether the run
directory's checkpoints may be resumed.

>>> launch_command("torchrun", 1, 2, ["train", "--mixture", "nli"])[1:6]
['-m', 'torch.distributed.run', '--standalone', '--nnodes=1', '--nproc-per-node=2']
>>> launch_command("srun", 2, 8, ["train"])[:4]
['srun', '--nodes=2', '--ntasks-per-node=8', '--kill-on-bad-exit=1']
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sys
from pathlib import Path

LAUNCHERS = ("torchrun", "srun", "none")
RUN_KEY = "run_key.json"  # in checkpoints/: what the checkpoints were trained on
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
    """The step of the newest checkpoint (DeepSpeed's ``latest`` tag, ``step<N>``), or None.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> checkpoint_step(d) is None
    True
    >>> _ = (d / "latest").write_text("step0000010")
    >>> checkpoint_step(d)
    10
    """
    latest = Path(ckpt_dir) / "latest"
    if not latest.exists():
        return None
    m = re.fullmatch(r"step(\d+)", latest.read_text().strip())
    return int(m.group(1)) if m else None


def keep_or_clear_checkpoints(out_dir: str | Path, run_key: dict, steps: int) -> str:
    """Before a workflow job trains into ``out_dir``: keep ``checkpoints/`` when it holds an
    unfinished run of the same inputs (``run_key``: data, tokenizer, train config, ranks), so that
    the trainer resumes it (a job killed by a time limit or preemption, rerun by Snakemake's
    ``--rerun-incomplete``); otherwise remove it and ``tensorboard/``, so that the run starts at
    step 0. A job that Snakemake reruns because an input or param changed, or whose outputs were
    deleted, must not resume a finished (or another data's) checkpoint: it would train no step, or
    train on stale weights, and write an empty ``metrics.csv``. Records ``run_key`` for the next
    time. Returns ``"resume"``, ``"fresh"`` (nothing there) or ``"cleared"``.

    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp())
    >>> keep_or_clear_checkpoints(out, {"data": "a"}, steps=20)
    'fresh'
    >>> _ = (out / "checkpoints/latest").write_text("step0000010")  # killed at step 10
    >>> keep_or_clear_checkpoints(out, {"data": "a"}, steps=20)
    'resume'
    >>> keep_or_clear_checkpoints(out, {"data": "b"}, steps=20)  # new data: start over
    'cleared'
    >>> _ = (out / "checkpoints/latest").write_text("step0000020")  # finished, then rerun
    >>> keep_or_clear_checkpoints(out, {"data": "b"}, steps=20), (out / "checkpoints/latest").exists()
    ('cleared', False)
    """
    out_dir = Path(out_dir)
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
