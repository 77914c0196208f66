"""LoRA adapters (`train.adapter.kind: lora`) against `peft` and `transformers` themselves.

- Two steps of flanpipe's path (peft LoRA injected by :func:`add_lora`, packed rows through
  :class:`PackedCausalLM`, AdamW over the parameters that train) equal `peft.get_peft_model` with
  the architecture's projections named by hand, each example run alone through the model's own
  forward, the same seed for the adapter's init: losses, every adapter gradient and weight (float64,
  1e-6), on tiny random Llama, Qwen2 and Gemma 2 and on SmolLM2-135M;
- the merged export (Qwen2, T5) loads in plain `transformers` with the logits of the adapter model
  that `PeftModel.from_pretrained` builds;
- DeepSpeed ZeRO-3 on 2 ranks (a pretrained checkpoint loaded partitioned, the base frozen) gives the
  adapter and losses of 1 rank, where the 1-rank run was killed after step 2 and resumed; the
  DeepSpeed optimizer steps exactly the adapters' parameters; the evaluator scores both export forms
  alike.
"""

import copy
import csv
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from flanpipe.core.config import AdapterConfig, ConfigError, parse_config
from flanpipe.core.model.adapter import add_lora
from flanpipe.core.model.causal import PackedCausalLM
from flanpipe.core.model.checkpoint import attention_for, save_adapter, save_checkpoint
from flanpipe.core.train.optim import build_optimizer
from tests.conftest import REPO
from tests.unit import lora_train

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LR = 1e-2
SEED = 17
SMOLLM2_LAYERS = 2


def tiny(architecture: str, dtype=torch.float64):
    """A tiny random causal LM of ``architecture`` (Gemma 2 with a sliding window shorter than a row)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    sizes = {"vocab_size": 128, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8}
    extra = {"gemma2": {"sliding_window": 6, "query_pre_attn_scalar": 8},
             "qwen2": {"tie_word_embeddings": True}}
    config = AutoConfig.for_model(architecture, **sizes, **extra.get(architecture, {}))
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=dtype,
                                            attn_implementation=attention_for(config, "sdpa")).eval()


def examples_of(architecture: str, vocab: int):
    """(input ids, target ids) pairs: SmolLM2's tokenizer on instruction text, or seeded ids."""
    if architecture == "smollm2":
        return None
    g = torch.Generator().manual_seed(1)
    return [(torch.randint(3, vocab, (int(n),), generator=g), torch.randint(3, vocab, (int(m),), generator=g))
            for n, m in [(5, 3), (7, 2), (4, 4), (6, 1), (3, 5), (8, 2), (5, 5), (6, 3)]]


def text_examples(tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    pairs = [("Premise: A man plays a guitar.\nHypothesis: A person makes music.\nOPTIONS:\n- yes\n- no\n",
              "yes"),
             ("Translate to French: good morning\n", "bonjour"),
             ("What is the capital of Italy?\n", "Rome is the capital."),
             ("Is this review positive? The film was dull.\n", "no"),
             ("Summarize: the committee met on Monday and approved the budget.\n", "Budget approved."),
             ("Q: 2 + 3 = ?\n", "5"),
             ("Sentence: The cat sat.\nRewrite it in the past perfect tense.\n", "The cat had sat."),
             ("Which is larger, a mouse or an elephant?\n", "an elephant")]
    return [(torch.tensor(tok.encode(x)), torch.tensor(tok.encode(y))) for x, y in pairs]


def pack(examples, per_row: int = 2):
    """Rows of ``per_row`` examples each (inputs then targets), zero-padded to one length, with their
    segment ids, restarting positions and target masks."""
    groups = [examples[i:i + per_row] for i in range(0, len(examples), per_row)]
    length = max(sum(len(x) + len(y) for x, y in g) for g in groups) + 2
    batch = {k: torch.zeros(len(groups), length, dtype=torch.long)
             for k in ("tokens", "positions", "segment_ids", "loss_mask")}
    for r, group in enumerate(groups):
        at = 0
        for s, (x, y) in enumerate(group, start=1):
            n = len(x) + len(y)
            batch["tokens"][r, at:at + n] = torch.cat([x, y])
            batch["positions"][r, at:at + n] = torch.arange(n)
            batch["segment_ids"][r, at:at + n] = s
            batch["loss_mask"][r, at + len(x):at + n] = 1
            at += n
    return batch


def lora_grads(model):
    return {n.replace("base_model.model.", ""): p.grad.clone() for n, p in model.named_parameters()
            if "lora_" in n}


def lora_weights(model):
    return {n.replace("base_model.model.", ""): p.detach().clone() for n, p in model.named_parameters()
            if "lora_" in n}


def ours_two_steps(base, steps):
    """flanpipe's path: add_lora, PackedCausalLM on packed rows, AdamW over what trains."""
    model = copy.deepcopy(base).train()
    add_lora(model, AdapterConfig(kind="lora", rank=4, alpha=8.0), seed=SEED)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer("adafactor", trained, LR, 0.0, (0.9, 0.95))  # the paper's, the default
    wrapped = PackedCausalLM(model)
    out = []
    for batch in steps:
        nll = wrapped(**pack(batch))
        loss = nll.sum() / nll.numel()
        loss.backward()
        out.append((loss.item(), lora_grads(model)))
        optimizer.step()
        optimizer.zero_grad()
    return out, lora_weights(model), trained, model


def reference_two_steps(base, steps):
    """peft + transformers: get_peft_model with the projections by name, each example alone."""
    from peft import LoraConfig, get_peft_model
    from transformers.optimization import Adafactor

    torch.manual_seed(SEED)
    model = get_peft_model(copy.deepcopy(base).train(),
                           LoraConfig(r=4, lora_alpha=8.0, target_modules=PROJECTIONS))
    optimizer = Adafactor([p for p in model.parameters() if p.requires_grad], lr=LR, scale_parameter=False,
                          relative_step=False, warmup_init=False, decay_rate=-0.8, clip_threshold=1.0)
    out = []
    for batch in steps:
        total, count = 0.0, 0
        for x, y in batch:
            # (the logits of the last len(y) + 1 positions: those predicting the targets, then one more)
            logits = model(input_ids=torch.cat([x, y])[None], logits_to_keep=len(y) + 1).logits[0]
            total = total + F.cross_entropy(logits[:-1].double(), y, reduction="sum")
            count += len(y)
        loss = total / count
        loss.backward()
        out.append((loss.item(), lora_grads(model)))
        optimizer.step()
        optimizer.zero_grad()
    return out, lora_weights(model)


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "gemma2", "smollm2"])
def test_two_steps_equal_peft_and_transformers(architecture, request):
    if architecture == "smollm2":
        from flanpipe.core.model.checkpoint import load_model

        folder = request.getfixturevalue("smollm2_dir")
        base = load_model(folder)
        del base.model.layers[SMOLLM2_LAYERS:]  # its first layers' real weights (float64 on CPU is slow)
        base.config.num_hidden_layers = SMOLLM2_LAYERS
        base = base.double()
        examples = text_examples(folder)[:4]
    else:
        base = tiny(architecture)
        examples = examples_of(architecture, base.config.vocab_size)
    half = len(examples) // 2
    steps = [examples[:half], examples[half:]]
    ours, ours_final, trained, model = ours_two_steps(base, steps)
    ref, ref_final = reference_two_steps(base, steps)
    # auto adapted every attention and MLP projection of every layer, and the optimizer holds only those
    layers = base.config.num_hidden_layers
    assert len(ours_final) == 2 * len(PROJECTIONS) * layers and ours_final.keys() == ref_final.keys()
    assert {id(p) for p in trained} == {id(p) for n, p in model.named_parameters() if "lora_" in n}
    # (float64 throughout, but Gemma's RMSNorm runs in float32: 1e-6 of the whole adapter's largest
    # gradient / weight, not of each tensor's)
    for (loss, grads), (ref_loss, ref_grads) in zip(ours, ref, strict=True):
        assert loss == pytest.approx(ref_loss, rel=1e-6)
        assert relative_difference(grads, ref_grads) <= 1e-6
    assert any(float(g.abs().max()) > 0 for n, g in ours[1][1].items() if "lora_A" in n)  # A learns in step 2
    assert relative_difference(ours_final, ref_final) <= 1e-6
    moved = relative_difference(ours_final, lora_weights(add_lora(copy.deepcopy(base), AdapterConfig(
        kind="lora", rank=4, alpha=8.0), seed=SEED)))
    assert moved > 1e-3  # the two steps moved the adapter far more than the tolerance


def relative_difference(ours: dict, reference: dict) -> float:
    """The largest element difference over every tensor, over the largest reference element."""
    assert ours.keys() == reference.keys()
    scale = max(float(t.abs().max()) for t in reference.values())
    return max(float((ours[n] - reference[n]).abs().max()) for n in ours) / scale


@pytest.mark.parametrize("architecture", ["qwen2", "t5"])
def test_the_merged_export_has_the_adapter_models_logits(architecture, tmp_path):
    """A LoRA-adapted Qwen2 (biased q/k/v projections, tied embeddings) or T5 (encoder, decoder and
    cross-attention projections) with non-zero B: the merged folder, loaded by plain `transformers`,
    against `PeftModel.from_pretrained` on the base."""
    from peft import PeftModel

    from flanpipe.core.config import ModelSpec
    from flanpipe.core.model.checkpoint import auto_class, build_model

    if architecture == "t5":
        torch.manual_seed(0)
        base = build_model(ModelSpec(architecture="t5", hidden_size=32, num_layers=2, num_heads=4), 128, 32,
                           special_ids={"pad_id": 0, "eos_id": 1}).double()
    else:
        base = tiny(architecture)
    save_checkpoint(base, None, tmp_path / "base")
    model = copy.deepcopy(base)
    peft_model = add_lora(model, AdapterConfig(kind="lora", rank=4, alpha=8.0), seed=SEED,
                          base_path=str(tmp_path / "base"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    save_checkpoint(model, None, tmp_path / "merged")
    save_adapter(peft_model, None, tmp_path / "adapter")
    loader = auto_class(base.config)
    merged = loader.from_pretrained(str(tmp_path / "merged"), local_files_only=True,
                                    dtype=torch.float64).eval()
    assert not any("lora" in n or "base_layer" in n for n, _ in merged.named_parameters())
    reference = PeftModel.from_pretrained(
        loader.from_pretrained(str(tmp_path / "base"), local_files_only=True, dtype=torch.float64),
        str(tmp_path / "adapter")).eval()
    g = torch.Generator().manual_seed(3)
    inputs = {"input_ids": torch.randint(2, 128, (2, 12), generator=g)}
    if architecture == "t5":
        inputs["decoder_input_ids"] = torch.randint(2, 128, (2, 5), generator=g)
    with torch.no_grad():
        want = reference(**inputs).logits
        plain = base(**inputs).logits
        got = merged(**inputs).logits
    assert float((got - want).abs().max()) <= 1e-9 * float(want.abs().max())
    assert float((plain - want).abs().max()) > 1e-2  # the adapter changes the logits


def test_qlora_is_refused_naming_the_reason():
    with pytest.raises(ConfigError, match="ZeRO-3"):
        parse_config({"train": {"adapter": {"kind": "qlora"}}})
    assert parse_config({}).train.adapter.kind == "none"  # full fine-tuning by default


# --- DeepSpeed ZeRO-3, 1 and 2 ranks ---------------------------------------------------------------


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """120 examples (inputs of 3..11 words, targets of 1..5) packed into rows of 64 tokens, and a
    tiny Llama checkpoint with the SentencePiece vocabulary (train.model.source: pretrained)."""
    from flanpipe.core.config import ModelSpec, PackSlice, TokenizerSource
    from flanpipe.core.model.checkpoint import build_model
    from flanpipe.core.tokens.tokenizers import load_tokenizer, train_spm
    from flanpipe.stages.pack import tokenize_and_pack
    from tests.unit.test_tokenizer import corpus, write_mixture

    tmp = tmp_path_factory.mktemp("lora")
    inputs = [" ".join(t.split()[:3 + i % 9]) for i, t in enumerate(corpus(120))]
    targets = [" ".join(t.split()[:1 + i % 5]) for i, t in enumerate(corpus(120, seed=1))]
    shards = write_mixture(tmp / "mixture", inputs, targets, rows_per_shard=50)
    spm, _ = train_spm(corpus(400) + inputs, TokenizerSource(vocab_size=300), seed=1)
    (tmp / "spm.model").write_bytes(spm)
    tokenize_and_pack("m", shards, tmp / "spm.model", tmp / "packed", PackSlice.of(lora_train.config("x")))
    tokenizer = load_tokenizer(tmp / "spm.model")
    torch.manual_seed(3)
    model = build_model(ModelSpec(**lora_train.MODEL), tokenizer.vocab_size, 64,
                        special_ids=tokenizer.special_ids())
    save_checkpoint(model, tokenizer, tmp / "ckpt", max_shard_bytes=50_000)  # several shards
    return tmp


def launch(packed, world: int, out, fail_at: int = 0):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
           f"--nproc-per-node={world}", "-m", "tests.unit.lora_train", str(packed / "packed"),
           str(packed / "spm.model"), str(out), str(packed / "ckpt")]
    env = os.environ | {"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu",
                        "FLANPIPE_FAIL_AT_STEP": str(fail_at)}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO, env=env)


@pytest.fixture(scope="module")
def runs(packed, tmp_path_factory):
    """3 steps on 2 ranks; on 1 rank killed before step 3 (after the checkpoint of step 2), then resumed."""
    out = tmp_path_factory.mktemp("lora-runs")
    killed = launch(packed, 1, out / "w1", fail_at=3)
    assert killed.returncode != 0 and not (out / "w1/run.json").exists()
    for world in (1, 2):
        proc = launch(packed, world, out / f"w{world}")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {world: out / f"w{world}" for world in (1, 2)}


def test_two_ranks_under_zero3_equal_one_resumed_rank(runs):
    from safetensors.torch import load_file

    losses = []
    for world in (1, 2):
        with open(runs[world] / "metrics.csv", newline="") as f:
            losses.append([float(r["loss"]) for r in csv.DictReader(f)])
    assert len(losses[0]) == lora_train.STEPS and losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert json.loads((runs[1] / "run.json").read_text())["resumed_from_step"] == 2
    one, two = (load_file(str(runs[w] / "adapter/adapter_model.safetensors")) for w in (1, 2))
    assert one.keys() == two.keys() and any("lora_B" in n for n in one)
    for name in one:
        scale = float(one[name].abs().max())
        assert float((one[name] - two[name]).abs().max()) <= 1e-5 * scale, name
    assert max(float(t.abs().max()) for n, t in one.items() if "lora_B" in n) > 1e-3  # B moved from 0


def test_two_ranks_optimizer_holds_only_the_adapters(runs, packed):
    """run.json's counts against peft's own count on the unpartitioned checkpoint."""
    from peft import LoraConfig, get_peft_model

    from flanpipe.core.model.checkpoint import load_model

    model = get_peft_model(load_model(packed / "ckpt"),
                           LoraConfig(r=4, lora_alpha=8.0, target_modules=PROJECTIONS))
    trainable, total = model.get_nb_trainable_parameters()
    for world in (1, 2):
        run = json.loads((runs[world] / "run.json").read_text())
        assert run["trainable_parameters"] == run["optimized_parameters"] == trainable
        assert run["parameters"] == total and trainable < total / 5


def test_two_ranks_export_scores_alike_in_both_forms(runs):
    """The evaluator's loader on `hf/` (merged) and on `adapter/` (base + PeftModel): the same option
    log-likelihoods."""
    from flanpipe.core.eval.scoring import score_options
    from flanpipe.core.tokens.formats import Format
    from flanpipe.stages.evaluate import load_for_scoring, model_format

    prompts = ["the cat sat on", "a man and a", "dogs run in the"]
    choices = [["mat", "dog"], ["woman", "yes no"], ["park", "rain"]]
    scores = []
    for form in ("hf", "adapter"):
        model, tok = load_for_scoring(runs[2] / form, "fp32")
        assert model_format(runs[2] / form)[0] == "eos"
        fmt = Format(tok, None, 64, 16, False, name="eos")
        scores.append(score_options(model, fmt.inputs(prompts), fmt.options(prompts, choices)))
    for merged, adapted in zip(*scores, strict=True):
        assert merged == pytest.approx(adapted, rel=1e-5)
