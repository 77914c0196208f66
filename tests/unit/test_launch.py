"""A run's processes die with their job; one live run per model folder; resume only finished saves."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flanpipe.core.train.launch import (
    COMPLETE_MARKER,
    LOCK_NAME,
    RunLocked,
    completed_checkpoint,
    keep_or_clear_checkpoints,
    mark_complete,
    run_lock,
)
from tests.unit.test_shards import mixture, pack  # noqa: F401 (the packed-mixture fixture)

REPO = Path(__file__).resolve().parents[2]


def _pids_with(text: str) -> list[int]:
    """Live processes whose command line holds ``text``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = next(line for line in (proc / "status").read_text().splitlines()
                             if line.startswith("State:"))
            except (OSError, StopIteration):
                continue
            if text in cmdline and "zombie" not in state:
                pids.append(int(proc.name))
    return pids


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return predicate()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_killing_the_jobs_process_group_mid_train_leaves_no_training_rank(mixture, tmp_path):  # noqa: F811
    """The workflow's way in: a job process (here a Python parent in a process group of its own, as
    Snakemake's) starts torchrun with two ranks of the real `flanpipe train`; torchrun puts the ranks
    in sessions of their own. A SIGKILL of the job's group mid-train must take the ranks with it."""
    pack(mixture, "kill")
    out = tmp_path / "model-under-test"
    config = tmp_path / "config.yaml"
    config.write_text(textwrap.dedent("""
        seed: 3
        train:
          steps: 100000
          tokens_per_batch: 208
          checkpoint_every: 100000
          log_every: 1
          model: {source: config, architecture: llama, hidden_size: 32, num_layers: 1, num_heads: 2}
    """))
    job = textwrap.dedent(f"""
        import subprocess, sys
        from flanpipe.core.train.launch import die_with_parent, launch_command
        cmd = launch_command("torchrun", 1, 2, ["train", "--mixture", "m", "--config", {str(config)!r},
                             "--packed", {str(mixture[0] / "kill")!r}, "--tokenizer",
                             {str(mixture[0] / "spm.model")!r}, "--out", {str(out)!r}])
        subprocess.run(cmd, preexec_fn=die_with_parent, check=True)
    """)
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", job], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "job.log", "w"))
    try:
        assert _wait_for(lambda: (out / "metrics.csv").is_file()
                         and len((out / "metrics.csv").read_text().splitlines()) > 2, 300), \
            (tmp_path / "job.log").read_text()[-3000:]
        ranks = [p for p in _pids_with(str(out)) if p != proc.pid]
        assert len(ranks) >= 3  # torchrun and its two ranks
        lock = json.loads((out / LOCK_NAME).read_text())
        assert lock["host"] == socket.gethostname() and lock["pid"] in ranks
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert _wait_for(lambda: not _pids_with(str(out)), 30), _pids_with(str(out))
    finally:
        for pid in _pids_with(str(out)):
            os.kill(pid, signal.SIGKILL)
    # the killed run's lock names a dead process: the next run takes it over
    with run_lock(out):
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (out / LOCK_NAME).exists()


def test_a_second_run_is_refused_while_the_first_lives_on_the_folder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from flanpipe.core.train.launch import run_lock
        with run_lock({str(tmp_path)!r}):
            print("locked", flush=True)
            time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked, match=rf"process {holder.pid} on {socket.gethostname()}"):
            with run_lock(tmp_path):
                pass
        with pytest.raises(RunLocked):  # the workflow's check, before it would clear checkpoints
            keep_or_clear_checkpoints(tmp_path, {"data": "a"}, steps=20)
    finally:
        holder.kill()
        holder.wait()
    with run_lock(tmp_path):  # its owner is gone: taken over
        pass


def test_resume_skips_a_checkpoint_whose_save_was_killed(tmp_path):
    """DeepSpeed's `latest` names the newest save even when a kill cut it short; resume takes the
    newest one with a completion marker."""
    ckpt = tmp_path / "checkpoints"
    assert keep_or_clear_checkpoints(tmp_path, {"data": "a"}, steps=20) == "fresh"
    mark_complete(ckpt, "step0000002", 2)
    (ckpt / "step0000004").mkdir()
    (ckpt / "step0000004" / "mp_rank_00_model_states.pt").write_bytes(b"half")
    (ckpt / "latest").write_text("step0000004")
    assert completed_checkpoint(ckpt) == ("step0000002", 2)
    assert json.loads((ckpt / "step0000002" / COMPLETE_MARKER).read_text())["step"] == 2
    assert keep_or_clear_checkpoints(tmp_path, {"data": "a"}, steps=20) == "resume"
