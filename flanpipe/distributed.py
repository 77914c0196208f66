"""Ranks and the rendezvous address, from whichever launcher started this process.

- ``torchrun`` and the ``deepspeed`` launcher set ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
  ``MASTER_ADDR`` and ``MASTER_PORT``.
- ``srun`` sets ``SLURM_PROCID``, ``SLURM_LOCALID`` and ``SLURM_NTASKS``; the rendezvous host is the
  first node of ``SLURM_JOB_NODELIST`` (or the step's node list) and the port is derived from the job
  id, so every task of a multi-node job agrees on both without talking first.
- Otherwise: one process, rank 0 of 1, on localhost.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    master_addr: str
    master_port: int
    launcher: str

    def export(self) -> None:
        """Set the variables ``torch.distributed`` (env://) and DeepSpeed read."""
        os.environ.update(RANK=str(self.rank), LOCAL_RANK=str(self.local_rank),
                          WORLD_SIZE=str(self.world_size), LOCAL_WORLD_SIZE=str(self.local_world_size),
                          MASTER_ADDR=self.master_addr, MASTER_PORT=str(self.master_port))


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list.

    >>> first_host("gpu[017-020,031],login1")
    'gpu017'
    >>> first_host("node7")
    'node7'
    >>> first_host("a-[3,5]-b")
    'a-3-b'
    """
    first = re.split(r",(?![^\[]*\])", nodelist.strip())[0]
    m = re.match(r"^(.*?)\[([^\]]+)\](.*)$", first)
    if not m:
        return first
    prefix, ranges, suffix = m.groups()
    return prefix + ranges.split(",")[0].split("-")[0] + suffix


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dist_env(env: Mapping[str, str] | None = None) -> DistEnv:
    """This process's place in the job.

    >>> d = dist_env({"SLURM_PROCID": "9", "SLURM_LOCALID": "1", "SLURM_NTASKS": "16",
    ...               "SLURM_NTASKS_PER_NODE": "8", "SLURM_JOB_NODELIST": "gpu[04-05]", "SLURM_JOB_ID": "42"})
    >>> d.rank, d.local_rank, d.world_size, d.local_world_size, d.master_addr, d.master_port
    (9, 1, 16, 8, 'gpu04', 20042)
    """
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        world = int(env["WORLD_SIZE"])
        return DistEnv(int(env["RANK"]), int(env.get("LOCAL_RANK", 0)), world,
                       int(env.get("LOCAL_WORLD_SIZE", world)), env.get("MASTER_ADDR", "127.0.0.1"),
                       int(env.get("MASTER_PORT", 29500)), "torchrun")
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
        per_node = (env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_NTASKS_PER_NODE")
                    or env["SLURM_NTASKS"])
        port = int(env.get("MASTER_PORT") or 20000 + int(env.get("SLURM_JOB_ID", 0)) % 20000)
        return DistEnv(int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", 0)), int(env["SLURM_NTASKS"]),
                       int(re.match(r"\d+", per_node).group()),
                       env.get("MASTER_ADDR") or first_host(nodelist), port, "srun")
    return DistEnv(0, 0, 1, 1, "127.0.0.1", _free_port(), "single")
