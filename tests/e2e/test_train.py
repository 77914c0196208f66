"""Stage 5 end to end: DeepSpeed ZeRO-3 with 2 CPU processes (gloo), through Snakemake and directly."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from flanpipe.core.config import load_config
from flanpipe.workflow.planner import Plan
from tests.conftest import BIN, REPO

pytestmark = pytest.mark.e2e
CFG = load_config(REPO / "config/config.yaml")
PLAN = Plan(CFG)


def ours_vocab(demo_run) -> int:
    return json.loads((demo_run / "data/packed/nli/manifest.json").read_text())["tokenizer"]["vocab_size"]


def read_metrics(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_one_model_per_mixture_trained_with_zero3_on_two_ranks(demo_run):
    for mixture in PLAN.mixtures():
        out = demo_run / "models" / mixture
        run = json.loads((out / "run.json").read_text())
        assert run["world_size"] == 2 and run["deepspeed"]["zero_optimization"]["stage"] == 3
        assert run["precision"] == "fp32" and run["optimizer"] == "adafactor"
        rows = read_metrics(out / "metrics.csv")
        assert [int(r["step"]) for r in rows] == list(range(1, CFG.train.steps + 1))
        losses = [float(r["loss"]) for r in rows]
        assert all(np.isfinite(losses)) and losses[-1] < losses[0]
        assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert list((out / "tensorboard").glob("events.out.tfevents.*"))
        assert json.loads((out / "ds_config.json").read_text()) == run["deepspeed"]


def test_the_saved_model_loads_in_transformers_alone(demo_run):
    """No flanpipe code: transformers loads the folder and its tokenizer, which encodes as ours; the
    trained model keeps the examples of a real packed row apart (each scores as it does alone)."""
    import pyarrow.parquet as pq
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flanpipe.core.model.causal import PackedCausalLM, predicted
    from flanpipe.core.tokens.shards import PackedShards
    from flanpipe.core.tokens.tokenizers import load_tokenizer

    folder = demo_run / "models/nli/hf"
    hf = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    run = json.loads((demo_run / "models/nli/run.json").read_text())
    assert hf.config.model_type == run["model"]["model_type"] == "llama"
    assert hf.config.vocab_size % 128 == 0 and hf.config.vocab_size >= ours_vocab(demo_run)
    row = PackedShards(demo_run / "data/packed/nli")[0]
    batch = {k: torch.from_numpy(row[k].astype(np.int64))[None]
             for k in ("tokens", "positions", "segment_ids", "loss_mask")}
    seg = batch["segment_ids"]
    with torch.no_grad():
        nll = PackedCausalLM(hf)(batch["tokens"], batch["positions"], seg, batch["loss_mask"])
        owner = seg[:, 1:][predicted(seg, batch["loss_mask"])]
        for s in range(1, int(seg.max()) + 1):
            ids, targets = batch["tokens"][seg == s], batch["loss_mask"][seg == s].bool()
            logits = hf(input_ids=ids[None]).logits[0, :-1]
            alone = F.cross_entropy(logits[targets[1:]], ids[1:][targets[1:]], reduction="sum")
            assert nll[owner == s].sum().item() == pytest.approx(alone.item(), rel=1e-5, abs=1e-5)
    ours = load_tokenizer(demo_run / "models/tokenizer/spm.model")
    texts = pq.read_table(sorted((demo_run / "data/mixtures/nli/shards").glob("*.parquet"))).column("inputs")
    for text in texts.to_pylist()[:200]:
        assert tok(text, add_special_tokens=False)["input_ids"] == ours.encode(text)


def _train(demo_run, out, steps, env=None, check=True):
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    cfg["train"].update(steps=steps, checkpoint_every=2, log_every=1)
    config = out.parent / f"{out.name}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    cmd = [str(BIN / "flanpipe"), "launch", "--tasks-per-node", "2", "--", "train", "--mixture", "nli",
           "--config", str(config), "--packed", str(demo_run / "data/packed/nli"),
           "--tokenizer", str(demo_run / "models/tokenizer/spm.model"), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_a_killed_run_resumes_with_the_same_losses(demo_run, tmp_path):
    _train(demo_run, tmp_path / "straight", steps=4)
    killed = _train(demo_run, tmp_path / "resumed", steps=4, env={"FLANPIPE_FAIL_AT_STEP": "4"}, check=False)
    assert killed.returncode != 0
    assert (tmp_path / "resumed/checkpoints/latest").read_text().strip() == "step0000002"
    assert not (tmp_path / "resumed/hf").exists()
    _train(demo_run, tmp_path / "resumed", steps=4)
    assert json.loads((tmp_path / "resumed/run.json").read_text())["resumed_from_step"] == 2
    straight = read_metrics(tmp_path / "straight/metrics.csv")
    resumed = read_metrics(tmp_path / "resumed/metrics.csv")
    assert [int(r["step"]) for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(straight, resumed, strict=True):
        for key in ("loss", "grad_norm", "target_tokens"):
            assert a[key] == b[key], (key, a, b)
    assert ((tmp_path / "straight/hf/model.safetensors").read_bytes()
            == (tmp_path / "resumed/hf/model.safetensors").read_bytes())


def _weights(run_dir):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "hf/model.safetensors"))


def max_relative_difference(ours, reference):
    """The largest ``|ours - reference|`` of any tensor, relative to that tensor's largest ``|reference|``."""
    assert ours.keys() == reference.keys()
    return max(float((ours[k] - reference[k]).abs().max() / reference[k].abs().max()) for k in reference)


def test_zero3_on_two_ranks_equals_transformers_adafactor_on_whole_tensors(demo_run):
    """The demo's nli model (``flanpipe launch`` of 2 gloo ranks, ZeRO-3, Adafactor, 20 steps) against
    transformers' Adafactor with the paper's settings stepping the whole tensors of the same model
    in one process, on the same rows per step: factored moments and update clipping per tensor."""
    from transformers.optimization import Adafactor as Reference

    from flanpipe.core.model.causal import PackedCausalLM, predicted
    from flanpipe.core.model.checkpoint import build_model
    from flanpipe.core.text.keys import derive_seed
    from flanpipe.core.tokens.shards import PackedShards
    from flanpipe.stages.train import BatchPlan, step_rows

    data = PackedShards(demo_run / "data/packed/nli")
    row_tokens = data.dtype["tokens"].shape[0]
    tcfg = CFG.train
    plan = BatchPlan.from_tokens(tcfg.tokens_per_batch, row_tokens, tcfg.micro_batch_rows, 2)
    torch.manual_seed(derive_seed(CFG.seed, "train/init"))
    tokenizer = data.manifest["tokenizer"]
    model = build_model(tcfg.model, tokenizer["vocab_size"], row_tokens, special_ids=tokenizer["special_ids"])
    packed = PackedCausalLM(model.train())
    opt = Reference(model.parameters(), lr=tcfg.lr, scale_parameter=False, relative_step=False,
                    warmup_init=False, decay_rate=-0.8, clip_threshold=1.0, beta1=None, weight_decay=0.0)
    for step in range(tcfg.steps):
        rows = data.take(step_rows(step, plan, len(data), CFG.seed))
        batch = {k: torch.from_numpy(rows[k].astype(np.int64)) for k in ("tokens", "segment_ids", "positions",
                                                                          "loss_mask")}
        summed = packed(batch["tokens"], batch["positions"], batch["segment_ids"], batch["loss_mask"]).sum()
        (summed / predicted(batch["segment_ids"], batch["loss_mask"]).sum()).backward()
        opt.step()
        opt.zero_grad()
    trained = _weights(demo_run / "models/nli")
    reference = {k: v.detach() for k, v in model.state_dict().items() if k in trained}
    assert max_relative_difference(trained, reference) <= 1e-5
    run = json.loads((demo_run / "models/nli/run.json").read_text())
    assert run["optimizer_partitions"] == "DeepSpeedZeroOptimizer_Stage3"
    assert run["optimizer_state_bytes_rank0"] < run["adamw_state_bytes_rank0"] / 20


def relative_l2_difference(ours, reference):
    """The largest ``||ours - reference|| / ||reference||`` of any tensor."""
    return max(float((ours[k] - reference[k]).norm() / reference[k].norm()) for k in reference)


def test_every_split_and_zero_stage_gives_the_same_weights(demo_run, tmp_path):
    """3 steps of the same 4 rows per step on 1 rank x 4 micro-batches, 2 ranks x 2 and 2 ranks x 1
    micro-batch of 2 rows, at ZeRO stages 0, 2 and 3, for Adafactor and AdamW: two launches
    (tests/e2e/split_grid.py), each running its grid in one process group. The reference is 1 rank
    without ZeRO, where the optimizer steps whole tensors."""
    from tests.e2e import split_grid

    for world in (1, 2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
               f"--nproc-per-node={world}", "-m", "tests.e2e.split_grid", str(demo_run / "data/packed/nli"),
               str(demo_run / "models/tokenizer/spm.model"), str(tmp_path)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folders = {(world, *point): tmp_path / f"w{world}-z{point[0]}-{point[1]}-mb{point[2]}"
               for world in (1, 2) for point in split_grid.grid(world)}
    assert len(folders) == 18
    runs = {key: _weights(folder) for key, folder in folders.items()}
    norms = {key: np.array([float(r["grad_norm"]) for r in read_metrics(folder / "metrics.csv")])
             for key, folder in folders.items()}
    for optimizer in split_grid.OPTIMIZERS:
        reference = (1, 0, optimizer, 1)
        for key in folders:
            if key[2] != optimizer:
                continue
            # the same gradient, not only up to a factor (to which both optimizers are blind); ZeRO-0
            # in fp32 logs no gradient norm
            assert np.isnan(norms[key]).all() if key[1] == 0 else not np.isnan(norms[key]).any()
            if key[1] != 0:
                np.testing.assert_allclose(norms[key], norms[1, 3, optimizer, 1], rtol=1e-5, err_msg=str(key))
            if optimizer == "adafactor":  # every element of every tensor
                assert max_relative_difference(runs[key], runs[reference]) <= 1e-5, key
            else:  # AdamW divides by sqrt(v) + 1e-8: an element whose gradient is ~1e-8 turns the
                # summation order's last bits into a visible difference, so per tensor in L2
                assert relative_l2_difference(runs[key], runs[reference]) <= 1e-5, key
                assert max_relative_difference(runs[key], runs[reference]) <= 1e-4, key
    # the first step's gradient does not depend on the optimizer; the weights after 3 steps are far
    # apart: a difference of 1e-5 would show
    assert norms[1, 3, "adamw", 1][0] == pytest.approx(norms[1, 3, "adafactor", 1][0], rel=1e-6)
    assert max_relative_difference(runs[1, 0, "adamw", 1], runs[1, 0, "adafactor", 1]) > 1e-2


def _processes_naming(text: str) -> list[str]:
    """The command lines of live processes that name ``text`` (a run's folder)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and text in cmdline and int(proc.name) != os.getpid():
            found.append(cmdline)
    return found


def test_a_killed_workflow_leaves_no_rank_and_its_rerun_equals_a_straight_run(demo_run, tmp_path):
    """`kill -KILL` of the snakemake process group while `train` runs: no training rank survives,
    the rerun (`--unlock`, then `--rerun-incomplete`) resumes from the last finished checkpoint, and
    its weights are the uninterrupted demo run's, byte for byte."""
    import shutil
    import signal
    import time

    wd = tmp_path / "wd"
    shutil.copytree(demo_run, wd, symlinks=True, ignore=shutil.ignore_patterns("results", "logs"))
    shutil.rmtree(wd / "models/nli")
    cmd = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(wd),
           "--configfile", str(REPO / "config/config.yaml"), "--cores", "2", "models/nli/run.json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    marker = wd / "models/nli/checkpoints/step0000010/complete.json"
    deadline = time.monotonic() + 600
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists() and proc.poll() is None, "the run ended before its first checkpoint"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (wd / "models/nli/run.json").exists()  # killed mid-train, not after
    deadline = time.monotonic() + 30
    while _processes_naming(str(wd)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_naming(str(wd)) == []
    run = ["--snakefile", str(REPO / "Snakefile"), "--directory", str(wd), "--configfile",
           str(REPO / "config/config.yaml"), "--cores", "2"]
    subprocess.run([str(BIN / "snakemake"), *run, "--unlock"], check=True, capture_output=True, timeout=120)
    subprocess.run([str(BIN / "snakemake"), *run, "--rerun-incomplete", "models/nli/run.json"], check=True,
                   capture_output=True, timeout=900)
    assert json.loads((wd / "models/nli/run.json").read_text())["resumed_from_step"] >= 10
    assert ((wd / "models/nli/hf/model.safetensors").read_bytes()
            == (demo_run / "models/nli/hf/model.safetensors").read_bytes())
    assert not list((wd / "models/nli").rglob("*.tmp*"))
