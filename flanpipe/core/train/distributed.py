"""Ranks and the rendezvous address, from whichever launcher started this process.

- ``torchrun`` and the ``deepspeed`` launcher set ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
  ``MASTER_ADDR`` and ``MASTER_PORT``.
- ``srun`` sets ``SLURM_PROCID``, ``SLURM_LOCALID`` and ``SLURM_NTASKS``; the rendezvous host is the
  first host of the step's node list (``SLURM_STEP_NODELIST``, else ``SLURM_JOB_NODELIST``) as
  ``scontrol show hostnames`` expands it, and the port is derived from the job id, so every task of a
  multi-node job agrees on both without talking first.
- Otherwise: one process, rank 0 of 1, on localhost.

Each rank also knows its node (``SLURMD_NODENAME`` under Slurm, else the hostname), logs it with its
rank when it exports its variables, and :func:`rank_nodes` gathers every rank's node once
``torch.distributed`` is initialised. On CPU, :func:`disable_cpu_shm_op` spares gloo ranks the
build of DeepSpeed's shared-memory all-reduce.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)
PORT_BASE = 20000  # srun: MASTER_PORT = PORT_BASE + job id % PORT_SPAN, the same on every node
PORT_SPAN = 20000


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    master_addr: str
    master_port: int
    launcher: str
    node: str = "localhost"  # the node this rank runs on (Slurm's node name, else the hostname)

    def export(self) -> None:
        """Set the variables ``torch.distributed`` (env://) and DeepSpeed read, and log where this
        rank runs and where it meets the others."""
        os.environ.update(RANK=str(self.rank), LOCAL_RANK=str(self.local_rank),
                          WORLD_SIZE=str(self.world_size), LOCAL_WORLD_SIZE=str(self.local_world_size),
                          MASTER_ADDR=self.master_addr, MASTER_PORT=str(self.master_port))
        log.info("rank %d of %d on node %s (local rank %d of %d), rendezvous %s:%d (%s)", self.rank,
                 self.world_size, self.node, self.local_rank, self.local_world_size, self.master_addr,
                 self.master_port, self.launcher)


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list, parsed here (no ``scontrol`` needed).

    >>> first_host("gpu[017-020,031],login1")
    'gpu017'
    >>> first_host("node7")
    'node7'
    >>> first_host("a-[3,5]-b")
    'a-3-b'
    >>> first_host("rack[2-3]-gpu[08-09]")
    'rack2-gpu08'
    """
    first = re.split(r",(?![^\[]*\])", nodelist.strip())[0]
    return re.sub(r"\[([^\]]+)\]", lambda m: m.group(1).split(",")[0].split("-")[0], first)


def rendezvous_host(nodelist: str, scontrol: str | None = None) -> str:
    """The first host of a Slurm node list, as ``scontrol show hostnames`` expands it (Slurm's own
    parser: every node-list syntax a site may use); :func:`first_host` where there is no ``scontrol``
    (or it fails, e.g. with no slurm.conf). ``scontrol`` only parses the list here: it does not contact
    the controller.

    >>> rendezvous_host("gpu[017-020,031],login1", scontrol="/nonexistent/scontrol")
    'gpu017'
    """
    scontrol = scontrol or shutil.which("scontrol")
    if scontrol:
        try:
            # instant where slurm.conf is found; without one it may wait on DNS SRV lookups
            out = subprocess.run([scontrol, "show", "hostnames", nodelist], capture_output=True, text=True,
                                 timeout=5, check=True).stdout.split()
            if out:
                return out[0]
        except (OSError, subprocess.SubprocessError):
            pass
    return first_host(nodelist)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dist_env(env: Mapping[str, str] | None = None) -> DistEnv:
    """This process's place in the job.

    >>> d = dist_env({"SLURM_PROCID": "9", "SLURM_LOCALID": "1", "SLURM_NTASKS": "16",
    ...               "SLURM_NTASKS_PER_NODE": "8", "SLURM_JOB_NODELIST": "gpu[04-05]", "SLURM_JOB_ID": "42",
    ...               "SLURMD_NODENAME": "gpu05"})
    >>> d.rank, d.local_rank, d.world_size, d.local_world_size, d.master_addr, d.master_port, d.node
    (9, 1, 16, 8, 'gpu04', 20042, 'gpu05')
    """
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        world = int(env["WORLD_SIZE"])
        return DistEnv(int(env["RANK"]), int(env.get("LOCAL_RANK", 0)), world,
                       int(env.get("LOCAL_WORLD_SIZE", world)), env.get("MASTER_ADDR", "127.0.0.1"),
                       int(env.get("MASTER_PORT", 29500)), "torchrun", _node(env))
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
        per_node = (env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_NTASKS_PER_NODE")
                    or env["SLURM_NTASKS"])
        port = int(env.get("MASTER_PORT") or PORT_BASE + int(env.get("SLURM_JOB_ID", 0)) % PORT_SPAN)
        return DistEnv(int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", 0)), int(env["SLURM_NTASKS"]),
                       int(re.match(r"\d+", per_node).group()),
                       env.get("MASTER_ADDR") or rendezvous_host(nodelist), port, "srun", _node(env))
    return DistEnv(0, 0, 1, 1, "127.0.0.1", _free_port(), "single", _node(env))


def _node(env: Mapping[str, str]) -> str:
    return env.get("SLURMD_NODENAME") or socket.gethostname()


def rank_nodes(dist: DistEnv) -> list[str]:
    """Every rank's node, in rank order, gathered from all ranks (a collective: every rank calls it,
    after ``torch.distributed`` is initialised). For the run manifest: where the ranks ran."""
    import torch.distributed

    nodes: list = [None] * dist.world_size
    torch.distributed.all_gather_object(nodes, dist.node)
    return nodes


def disable_cpu_shm_op() -> None:
    """Keep DeepSpeed's CPU accelerator from JIT-compiling its shared-memory all-reduce op (~70 s on
    first use), which ranks that talk over gloo do not need; call it before DeepSpeed initialises.
    ``FLANPIPE_DS_SHM=1`` keeps the op."""
    if os.environ.get("FLANPIPE_DS_SHM") == "1":
        return
    import importlib

    # (`import deepspeed.comm.torch` would bind the PyTorch package, which deepspeed.comm also names torch)
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
