"""Start ``flanpipe train`` on every rank: ``torchrun`` on one machine, ``srun`` across a Slurm
allocation, or a single process.

>>> launch_command("torchrun", 1, 2, ["train", "--mixture", "nli"])[1:6]
['-m', 'torch.distributed.run', '--standalone', '--nnodes=1', '--nproc-per-node=2']
>>> launch_command("srun", 2, 8, ["train"])[:4]
['srun', '--nodes=2', '--ntasks-per-node=8', '--kill-on-bad-exit=1']
"""

from __future__ import annotations

import sys

LAUNCHERS = ("torchrun", "srun", "none")


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
