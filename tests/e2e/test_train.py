"""Stage 5 end to end: DeepSpeed ZeRO-3 with 2 CPU processes (gloo), through Snakemake and directly."""

import csv
import json
import os
import subprocess

import numpy as np
import pytest
import torch
import yaml

from flanpipe.config import load_config
from tests.conftest import BIN, REPO

pytestmark = pytest.mark.e2e
CFG = load_config(REPO / "config/config.yaml")


def ours_vocab(demo_run) -> int:
    return json.loads((demo_run / "data/packed/nli/manifest.json").read_text())["tokenizer"]["vocab_size"]


def read_metrics(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_one_model_per_mixture_trained_with_zero3_on_two_ranks(demo_run):
    for mixture in CFG.mixtures():
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

    from flanpipe.model import PackedCausalLM, predicted
    from flanpipe.packed import PackedShards
    from flanpipe.tokenizer import load_tokenizer

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
