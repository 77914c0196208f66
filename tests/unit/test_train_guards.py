"""The train loop's guards and resume, on a tiny Llama under torchrun (CPU, gloo, ZeRO-3): a loss
made non-finite on purpose stops the run before its update, naming the step and its examples,
with the checkpoint before it the last on disk; ``train.max_nonfinite_steps`` skips instead; and a
run killed inside its second epoch, then at that epoch's end, resumes each time and ends with the
losses and the weights of a run never killed."""

import csv
import json
import os
import re
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from flanpipe.core.config import PackSlice, TokenizerSource
from flanpipe.core.tokens.shards import PackedShards
from flanpipe.core.tokens.tokenizers import train_spm
from flanpipe.stages.pack import tokenize_and_pack
from flanpipe.stages.train import BatchPlan, step_rows
from tests.conftest import REPO
from tests.unit import guard_train
from tests.unit.test_tokenizer import corpus, write_mixture

EXAMPLES = 12  # one a row: an epoch is 3 steps of 4 rows


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("guards")
    inputs = [" ".join(t.split()[:2 + i % 5]) for i, t in enumerate(corpus(EXAMPLES))]
    targets = [" ".join(t.split()[:1 + i % 3]) for i, t in enumerate(corpus(EXAMPLES, seed=1))]
    shards = write_mixture(tmp / "mixture", inputs, targets, rows_per_shard=5)
    model, _ = train_spm(corpus(300) + inputs, TokenizerSource(vocab_size=300), seed=1)
    (tmp / "spm.model").write_bytes(model)
    tokenize_and_pack("m", shards, tmp / "spm.model", tmp / "packed", PackSlice.of(guard_train.config()))
    assert len(PackedShards(tmp / "packed")) == EXAMPLES
    return tmp


def launch(packed, out, check=True, env=None, **train_keys):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc-per-node=1",
           "-m", "tests.unit.guard_train", str(packed / "packed"), str(packed / "spm.model"), str(out),
           json.dumps(train_keys)]
    env = os.environ | {"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"} | (env or {})
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def metrics(out):
    with open(out / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_loss_made_non_finite_stops_the_run_naming_the_step_and_its_examples(packed, tmp_path):
    """AdamW at a learning rate of 1e30 sends every weight to about +-1e30 at step 1, and the
    forward pass of step 2 overflows: the run stops there, before step 2's update, and the last
    checkpoint on disk is step 1's."""
    out = tmp_path / "nan"
    proc = launch(packed, out, check=False, steps=4, optimizer="adamw", lr=1e30, checkpoint_every=1,
                  keep_checkpoints=5)
    assert proc.returncode != 0
    log = proc.stdout + proc.stderr
    assert "NonFiniteStep: train: step 2: the loss is nan, not finite (train.max_nonfinite_steps is 0)" in log
    plan = BatchPlan.from_tokens(guard_train.config().train.tokens_per_batch, guard_train.LI + guard_train.LT,
                                 2, 1)
    index = pq.read_table(packed / "packed/index.parquet").to_pylist()
    rows = set(step_rows(1, plan, EXAMPLES, guard_train.config().seed).tolist())
    named = log.split("the step's rows hold ")[1].splitlines()[0].split(", ")
    assert sorted(named) == sorted(f"{r['dataset']}/{r['example_id']}" for r in index if r["row"] in rows)
    assert len(named) == 4
    assert (out / "checkpoints/latest").read_text().strip() == "step0000001"
    assert sorted(p.name for p in (out / "checkpoints").glob("step*")) == ["step0000001"]
    assert [r["step"] for r in metrics(out)] == ["1"] and not (out / "hf").exists()


def test_max_nonfinite_steps_skips_the_steps_and_counts_them(packed, tmp_path):
    """The same run allowed 5 skips: every step after the first is skipped (its loss is nan, no
    update), the run ends, and run.json counts them."""
    out = tmp_path / "skip"
    launch(packed, out, steps=4, optimizer="adamw", lr=1e30, max_nonfinite_steps=5)
    run = json.loads((out / "run.json").read_text())
    assert run["nonfinite_steps_skipped"] == [2, 3, 4]
    assert [r["step"] for r in metrics(out)] == ["1"]


@pytest.fixture(scope="module")
def straight(packed, tmp_path_factory):
    """7 steps, never killed: epoch 1 is steps 1-3, epoch 2 steps 4-6, step 7 starts epoch 3."""
    out = tmp_path_factory.mktemp("straight")
    launch(packed, out, steps=7)
    return out


def test_a_run_killed_inside_epoch_2_then_at_its_end_resumes_to_the_straight_runs_losses(
        packed, straight, tmp_path):
    """One run, a checkpoint every 2 steps, killed twice: before step 5 (its latest checkpoint is
    step 4's, inside epoch 2), then, resumed from there, before step 7 (step 6's, the end of epoch 2);
    resumed again it ends with the losses, gradient norms and weights of the run never killed."""
    out = tmp_path / "run"
    for kill, resumed, latest in [(5, None, 4), (7, 4, 6)]:
        killed = launch(packed, out, check=False, env={"FLANPIPE_FAIL_AT_STEP": str(kill)}, steps=7,
                        checkpoint_every=2)
        assert killed.returncode != 0
        assert (out / "checkpoints/latest").read_text().strip() == f"step{latest:07d}"
        started = re.findall(r"resuming from \S+ at step (\d+)", killed.stderr)
        assert started == ([] if resumed is None else [str(resumed)]), killed.stderr[-3000:]
    launch(packed, out, steps=7, checkpoint_every=2)
    assert json.loads((out / "run.json").read_text())["resumed_from_step"] == 6
    a, b = metrics(straight), metrics(out)
    assert [int(r["step"]) for r in b] == list(range(1, 8))
    for x, y in zip(a, b, strict=True):
        for key in ("loss", "grad_norm", "target_tokens"):
            assert x[key] == y[key], (key, x, y)
    assert (straight / "hf/model.safetensors").read_bytes() == (out / "hf/model.safetensors").read_bytes()


def test_the_trained_models_card_loads_and_carries_the_held_out_table_once_it_exists(straight, tmp_path):
    """The card train wrote (no mixture manifest or evaluation beside this run), then the card
    refreshed with a mixture manifest and eval results shaped as the mix and evaluate stages write
    them: ``ModelCard.load`` reads its metadata back, the model-index holds each held-out score."""
    from huggingface_hub import ModelCard

    from flanpipe.core.model.card import write_card

    card = ModelCard.load(straight / "hf/README.md", ignore_metadata_errors=False)
    assert card.data.library_name == "transformers" and card.data.eval_results is None
    run = json.loads((straight / "run.json").read_text())
    assert f"| tokens seen | {7 * run['batch']['tokens_per_step']:,} " in card.text
    assert "Not evaluated yet" in card.text and "random" in card.text
    stats = [{"dataset": d, "cluster": c, "sampled": n, "zs_opt": n - 2, "zs_noopt": 2, "fs_opt": 0,
              "fs_noopt": 0} for d, c, n in [("copa", "commonsense", 107), ("sst2", "sentiment", 96)]]
    mixture = {"datasets": ["copa", "sst2"], "heldout_clusters": ["nli"], "examples": 203, "stats": stats}
    (tmp_path / "mixture.json").write_text(json.dumps(mixture))
    (tmp_path / "eval").mkdir()
    for dataset, shots, mean, low, high in [("rte", 0, 56.25, 31.2, 78.8), ("anli_r1", 3, 41.0, 30.5, 51.5)]:
        result = {"model": "m", "dataset": dataset, "paper_name": dataset.upper(), "cluster": "nli",
                  "few_shot": bool(shots), "shots": shots, "primary": "accuracy", "format": "eos",
                  "task": "classification", "eval_split": {"registry_split": "validation"},
                  "headline": {"mean": mean, "templates": 8, "interval": {"low": low, "high": high}}}
        (tmp_path / "eval" / f"{dataset}.json").write_text(json.dumps(result))
    write_card(straight, tmp_path / "mixture.json", tmp_path / "eval", hf_dir=tmp_path)
    card = ModelCard.load(tmp_path / "README.md", ignore_metadata_errors=False)
    scores = {(r.dataset_name, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert scores == {("RTE", "accuracy (zero-shot)"): 56.25, ("ANLI_R1", "accuracy (few-shot)"): 41.0}
    assert "| nli | rte | zero-shot | accuracy | eos | 56.2 | [31.2, 78.8] | 8 |" in card.text
    assert "| copa | commonsense | 107 | 105 | 2 | 0 | 0 |" in card.text
    assert card.data.datasets == sorted(card.data.datasets) and len(card.data.datasets) == 2
    assert "held out (and decontaminated against): nli" in card.text
