"""Training a T5 on packed encoder_decoder rows with DeepSpeed (CPU, gloo): the first step's loss is
the mean target-token loss of the step's examples through the model's own unpacked forward, ZeRO-3
on 2 ranks gives the weights of 1 rank, and the export reloads with `AutoModelForSeq2SeqLM`."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flanpipe.core.config import ModelSpec, PackSlice, TokenizerSource
from flanpipe.core.model.checkpoint import build_model
from flanpipe.core.text.keys import derive_seed
from flanpipe.core.tokens.shards import PackedShards, unpack_row
from flanpipe.core.tokens.tokenizers import load_tokenizer, train_spm
from flanpipe.stages.pack import tokenize_and_pack
from flanpipe.stages.train import BatchPlan, step_rows
from tests.conftest import REPO
from tests.unit import seq2seq_train
from tests.unit.test_tokenizer import corpus, write_mixture


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """120 examples (inputs of 1..4 words, a third with OPTIONS; targets "yes" or up to 6 words)
    packed into paired rows of 64 and 16 tokens, several examples a row."""
    tmp = tmp_path_factory.mktemp("t5")
    inputs = [" ".join(t.split()[:1 + i % 4]) + ("\nOPTIONS:\n- yes\n- no" if i % 3 == 0 else "")
              for i, t in enumerate(corpus(120))]
    targets = [" ".join(t.split()[:6]) if i % 4 == 0 else "yes" for i, t in enumerate(corpus(120, seed=1))]
    shards = write_mixture(tmp / "mixture", inputs, targets, rows_per_shard=50)
    model, _ = train_spm(corpus(400) + inputs, TokenizerSource(vocab_size=300), seed=1)
    (tmp / "spm.model").write_bytes(model)
    tokenize_and_pack("m", shards, tmp / "spm.model", tmp / "packed", PackSlice.of(seq2seq_train.config()))
    return tmp


def launch(packed, world: int, out, pretrained=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
           f"--nproc-per-node={world}", "-m", "tests.unit.seq2seq_train", str(packed / "packed"),
           str(packed / "spm.model"), str(out), *([str(pretrained)] if pretrained else [])]
    env = os.environ | {"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(packed, tmp_path_factory):
    """The same 3 steps on 1 rank (4 micro-batches) and on 2 ranks (2 each), both ZeRO-3."""
    out = tmp_path_factory.mktemp("t5-runs")
    return {world: (launch(packed, world, out / f"w{world}"), out / f"w{world}") for world in (1, 2)}


def first_step_loss(packed, model) -> tuple[float, int]:
    """The mean target-token loss of the first step's examples, each run alone through
    transformers' own forward of ``model``, and their target tokens."""
    cfg = seq2seq_train.config()
    data = PackedShards(packed / "packed")
    assert data.model_kind == "encoder_decoder"
    plan = BatchPlan.from_tokens(cfg.train.tokens_per_batch, seq2seq_train.LI + seq2seq_train.LT, 1, 1)
    rows = data.take(step_rows(0, plan, len(data), cfg.seed))
    examples = [pair for row in rows for pair in unpack_row(row)]
    assert len(examples) > len(rows)  # rows hold several examples
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in examples:
            x, y = torch.as_tensor(x.astype(np.int64))[None], torch.as_tensor(y.astype(np.int64))[None]
            logits = model(input_ids=x, labels=y).logits[0]
            total += F.cross_entropy(logits.double(), y[0], reduction="sum").item()
            count += y.shape[1]
    return total / count, count


def test_the_first_steps_loss_is_the_examples_own_loss(packed, runs):
    """Step 1's logged loss against an independent computation: the step's rows unpacked into
    examples, each run alone through transformers' own T5 forward (the initial weights rebuilt
    from the run's seed), the summed target cross-entropy over all of them / their target tokens."""
    tokenizer = load_tokenizer(packed / "spm.model")
    loss, count = first_step_loss(packed, initial_model(tokenizer.vocab_size, tokenizer.special_ids()))
    for world in (1, 2):
        metrics, _ = runs[world]
        assert int(metrics[0]["target_tokens"]) == count
        assert float(metrics[0]["loss"]) == pytest.approx(loss, rel=1e-5)


def test_a_pretrained_t5_loads_partitioned_and_trains_from_its_own_weights(packed, tmp_path):
    """A T5 checkpoint folder (`source: pretrained`) with an output projection of its own, as T5
    v1.1's, FLAN-T5's and mT5's are, loaded partitioned under ZeRO-3 on 2 ranks: the first step's
    loss is the checkpoint's own loss on the step's examples, as `transformers` loads it."""
    from transformers import AutoModelForSeq2SeqLM

    from flanpipe.core.model.checkpoint import save_checkpoint

    tokenizer = load_tokenizer(packed / "spm.model")
    torch.manual_seed(99)  # other weights than a new model's
    model = build_model(ModelSpec(**seq2seq_train.MODEL), tokenizer.vocab_size, 32,
                        special_ids=tokenizer.special_ids())
    shared = model.get_input_embeddings().weight
    model.set_output_embeddings(torch.nn.Linear(shared.shape[1], shared.shape[0], bias=False))
    save_checkpoint(model, tokenizer, tmp_path / "ckpt", max_shard_bytes=50_000)
    metrics = launch(packed, 2, tmp_path / "run", pretrained=tmp_path / "ckpt")
    reference = AutoModelForSeq2SeqLM.from_pretrained(str(tmp_path / "ckpt"), local_files_only=True).eval()
    assert not torch.equal(reference.get_output_embeddings().weight, reference.get_input_embeddings().weight)
    loss, count = first_step_loss(packed, reference)
    assert int(metrics[0]["target_tokens"]) == count
    assert float(metrics[0]["loss"]) == pytest.approx(loss, rel=1e-5)


def initial_model(vocab_size: int, special_ids: dict):
    """The run's initial weights, rebuilt from its seed as the trainer builds them."""
    torch.manual_seed(derive_seed(seq2seq_train.config().seed, "train/init"))
    return build_model(ModelSpec(**seq2seq_train.MODEL), vocab_size, 32, special_ids=special_ids).eval()


def test_zero3_on_two_ranks_gives_the_weights_of_one_rank(packed, runs):
    from safetensors.torch import load_file

    one, two = (load_file(str(runs[w][1] / "hf/model.safetensors")) for w in (1, 2))
    assert one.keys() == two.keys() and "shared.weight" in one
    for name in one:
        scale = one[name].abs().max()
        assert float((one[name] - two[name]).abs().max() / scale) <= 1e-5, name
    losses = [[float(r["loss"]) for r in runs[w][0]] for w in (1, 2)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5) and len(losses[0]) == seq2seq_train.STEPS
    # the weights moved from the initial ones far more than 1e-5
    tokenizer = load_tokenizer(packed / "spm.model")
    start = initial_model(tokenizer.vocab_size, tokenizer.special_ids()).state_dict()
    moved = max(float((one[n] - start[n]).abs().max() / start[n].abs().max()) for n in one)
    assert moved > 1e-3


def test_the_trained_model_reloads_as_a_seq2seq_lm(packed, runs):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    folder = runs[2][1] / "hf"
    model = AutoModelForSeq2SeqLM.from_pretrained(str(folder), local_files_only=True).eval()
    assert model.config.model_type == "t5"
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    text = "the cat sat\nOPTIONS:\n- yes\n- no"
    ours = load_tokenizer(packed / "spm.model").encode(text)
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == ours
    assert (folder.parent / "run.json").exists()
