"""Encoder-decoders (T5 v1.1 / FLAN-T5 shape, mT5), each checked against the model's own unpacked
`transformers` forward: packed examples keep apart on both sides (and leak without the masks), the
shared-encoder option scores equal one forward per option, generation equals `model.generate`, and
the export reloads with `AutoModelForSeq2SeqLM` / `AutoTokenizer` with identical logits and ids."""

import pytest
import torch
import torch.nn.functional as F

from flanpipe.core.config import ModelSpec, TokenizerSource
from flanpipe.core.eval.scoring import generate, score_options
from flanpipe.core.model.checkpoint import build_model, save_checkpoint
from flanpipe.core.model.seq2seq import PackedSeq2SeqLM, decoder_inputs

VOCAB = 97
SPECIAL = {"pad_id": 0, "eos_id": 1, "unk_id": 2, "bos_id": 3}
FAMILIES = ("t5", "mt5", "umt5")


def tiny(architecture: str, attention: str = "sdpa", seed: int = 0, dtype=torch.float32, **hf_config):
    spec = ModelSpec(architecture=architecture, hidden_size=32, num_layers=2, num_heads=4,
                     hf_config=hf_config)
    torch.manual_seed(seed)
    return build_model(spec, VOCAB, 64, special_ids=SPECIAL, attention=attention, dtype=dtype).eval()


def example(n_in: int, n_tg: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets, each ending with EOS (1), as pack stores them."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randint(4, VOCAB, (n_in,), generator=g), torch.randint(4, VOCAB, (n_tg,), generator=g)
    x[-1] = y[-1] = 1
    return x, y


# lengths past T5's 8 exact buckets (log buckets), one target of one token (EOS alone)
EXAMPLES = [example(14, 5, 1), example(21, 9, 2), example(3, 1, 3), example(9, 4, 4)]


def packed_rows(examples, input_width=56, target_width=24):
    """One encoder_decoder row (as PackedShards.take gives it) holding ``examples`` then padding."""
    row = {k: torch.zeros(1, input_width if k.startswith("inputs") else target_width, dtype=torch.long)
           for k in ("inputs", "inputs_segment_ids", "inputs_positions", "targets", "targets_segment_ids",
                     "targets_positions")}
    at = {"inputs": 0, "targets": 0}
    for s, pair in enumerate(examples, 1):
        for side, tokens in zip(("inputs", "targets"), pair, strict=True):
            o, n = at[side], len(tokens)
            row[side][0, o:o + n] = tokens
            row[f"{side}_segment_ids"][0, o:o + n] = s
            row[f"{side}_positions"][0, o:o + n] = torch.arange(n)
            at[side] += n
    row["loss_mask"] = row["targets_segment_ids"] > 0
    return row


def packed_losses(model, examples, **widths) -> list[float]:
    row = packed_rows(examples, **widths)
    with torch.no_grad():
        nll = PackedSeq2SeqLM(model)(row["inputs"], row["inputs_positions"], row["inputs_segment_ids"],
                                     row["targets"], row["targets_positions"], row["targets_segment_ids"],
                                     row["loss_mask"])
    owner = row["targets_segment_ids"][row["loss_mask"]]
    return [nll[owner == s].sum().item() for s in range(1, len(examples) + 1)]


def alone_losses(model, examples) -> list[float]:
    """Each example alone through the model's own forward (labels shifted by transformers itself),
    the summed cross-entropy computed here from its logits."""
    out = []
    with torch.no_grad():
        for x, y in examples:
            logits = model(input_ids=x[None], labels=y[None]).logits[0]
            out.append(F.cross_entropy(logits.float(), y, reduction="sum").item())
    return out


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_each_examples_loss_is_the_same_packed_or_alone(family, attention, one_thread):
    model = tiny(family, attention)
    assert model.config.model_type == family and model.config._attn_implementation == attention
    assert packed_losses(model, EXAMPLES) == pytest.approx(alone_losses(model, EXAMPLES), abs=1e-5, rel=1e-6)


def test_original_t5_output_scaling_is_applied(one_thread):
    """`tie_word_embeddings: true` builds original T5 (decoder output scaled by d_model ** -0.5)."""
    spec = ModelSpec(architecture="t5", hidden_size=32, num_layers=1, num_heads=4, tie_word_embeddings=True)
    torch.manual_seed(1)
    model = build_model(spec, VOCAB, 64, special_ids=SPECIAL).eval()
    assert model.config.scale_decoder_outputs
    assert packed_losses(model, EXAMPLES) == pytest.approx(alone_losses(model, EXAMPLES), abs=1e-5, rel=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_without_the_masks_packed_examples_leak(family, one_thread):
    """The same packed row through the model's own forward with no segment masks (each target
    still shifted behind the start token per segment, padding masked): every example after the
    first sees another's tokens, and its loss moves."""
    model = tiny(family)
    row = packed_rows(EXAMPLES)
    start = model.config.decoder_start_token_id
    with torch.no_grad():
        logits = model(input_ids=row["inputs"], attention_mask=(row["inputs_segment_ids"] > 0).long(),
                       decoder_input_ids=decoder_inputs(row["targets"], row["targets_positions"], start),
                       decoder_attention_mask=row["loss_mask"].long()).logits[0]
    nll = F.cross_entropy(logits.float(), row["targets"][0], reduction="none")
    seg = row["targets_segment_ids"][0]
    leaked = [nll[seg == s].sum().item() for s in range(1, len(EXAMPLES) + 1)]
    alone = alone_losses(model, EXAMPLES)
    assert all(abs(a - b) > 1e-3 for a, b in zip(leaked, alone, strict=True))
    assert packed_losses(model, EXAMPLES) == pytest.approx(alone, abs=1e-5, rel=1e-6)


def test_the_loss_counts_target_tokens_only_and_gradients_reach_the_relative_bias(one_thread):
    model = tiny("t5")
    row = packed_rows(EXAMPLES)
    nll = PackedSeq2SeqLM(model)(row["inputs"], row["inputs_positions"], row["inputs_segment_ids"],
                                 row["targets"], row["targets_positions"], row["targets_segment_ids"],
                                 row["loss_mask"])
    assert len(nll) == sum(len(y) for _, y in EXAMPLES)
    nll.sum().backward()
    for stack in (model.encoder, model.decoder):
        grad = stack.block[0].layer[0].SelfAttention.relative_attention_bias.weight.grad
        assert grad is not None and grad.abs().sum() > 0


# --- scoring -------------------------------------------------------------------------------------

PROMPTS = [[5, 9, 33, 1], [7, 1], [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 1]]
OPTIONS = [[[40, 41, 1], [42, 1], [43, 44, 45, 46, 1]], [[50, 1], [50, 51, 1]],
           [[60, 61, 62, 1], [63, 1], [64, 65, 1], [1]]]


def one_forward_per_option(model) -> list[list[float]]:
    """Each (prompt, option) through the model's own forward, unpadded."""
    out = []
    with torch.no_grad():
        for prompt, opts in zip(PROMPTS, OPTIONS, strict=True):
            scores = []
            for o in opts:
                labels = torch.tensor([o])
                logits = model(input_ids=torch.tensor([prompt]), labels=labels).logits[0]
                scores.append(torch.log_softmax(logits, -1).gather(-1, labels[0, :, None]).sum().item())
            out.append(scores)
    return out


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("method", "attention"),
                         [("auto", "sdpa"), ("auto", "eager"), ("per_option", "sdpa")])
def test_shared_encoder_scores_equal_one_forward_per_option(family, method, attention, one_thread):
    # the shared path: all options of a prompt in one decoder row, against the model's own
    # unpadded forward per (prompt, option) in float64
    model = tiny(family, attention=attention, dtype=torch.float64)
    # batches of two prompts: padding on the encoder and the decoder side
    got = score_options(model, PROMPTS, OPTIONS, max_batch_rows=2, method=method)
    for mine, theirs in zip(got, one_forward_per_option(model), strict=True):
        assert mine.tolist() == pytest.approx(theirs, abs=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generation_equals_transformers_generate(family, one_thread):
    model = tiny(family, seed=4)
    got = generate(model, PROMPTS, max_new_tokens=6, eos_id=1, max_batch_rows=2)
    for prompt, mine in zip(PROMPTS, got, strict=True):
        new = model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False, eos_token_id=1,
                             pad_token_id=1)[0, 1:].tolist()
        assert mine == new[:new.index(1) if 1 in new else len(new)]
        assert len(mine) <= 6 and 1 not in mine


def test_generation_stops_at_any_eos_and_keeps_to_the_vocabulary(one_thread):
    model = tiny("t5", seed=4)
    free = generate(model, PROMPTS, max_new_tokens=6, eos_id=1)
    stop = free[0][0]  # its first token, made an EOS: that output becomes empty
    assert generate(model, PROMPTS[:1], max_new_tokens=6, eos_id=[1, stop]) == [[]]
    limited = generate(model, PROMPTS, max_new_tokens=6, eos_id=1, vocab_limit=20)
    assert all(t < 20 for row in limited for t in row)


# --- export --------------------------------------------------------------------------------------

def spm_tokenizer():
    from flanpipe.core.tokens.tokenizers import SentencePieceTokenizer, train_spm

    words = "premise hypothesis question answer options yes no maybe the cat sat on a mat".split()
    text = [" ".join(words[(i * 7 + j) % len(words)] for j in range(12)) + f" {i}." for i in range(400)]
    model, _ = train_spm(text, TokenizerSource(vocab_size=300), seed=1)
    return SentencePieceTokenizer(model)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_export_reloads_with_auto_classes_and_identical_logits(family, tmp_path, one_thread):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = spm_tokenizer()
    spec = ModelSpec(architecture=family, hidden_size=32, num_layers=2, num_heads=4)
    torch.manual_seed(3)
    model = build_model(spec, tokenizer.vocab_size, 64, special_ids=tokenizer.special_ids()).eval()
    save_checkpoint(model, tokenizer, tmp_path / "hf", max_shard_bytes=20_000)
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(str(tmp_path / "hf"), local_files_only=True).eval()
    assert type(reloaded) is type(model)
    g = torch.Generator().manual_seed(5)
    inputs = torch.randint(4, tokenizer.vocab_size, (2, 17), generator=g)
    targets = torch.randint(4, tokenizer.vocab_size, (2, 6), generator=g)
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=inputs, labels=targets).logits,
                           model(input_ids=inputs, labels=targets).logits)
    text = "Premise: the cat sat on a mat.\nOPTIONS:\n- yes\n- no"
    saved = AutoTokenizer.from_pretrained(str(tmp_path / "hf"), local_files_only=True)
    assert saved(text, add_special_tokens=False)["input_ids"] == tokenizer.encode(text)
    # generation defaults that transformers reads: the decoder starts from the pad id, stops at EOS
    generation = reloaded.generation_config
    assert (generation.decoder_start_token_id, generation.eos_token_id) == (0, 1)


# --- the evaluate stage --------------------------------------------------------------------------

def test_evaluate_scores_an_encoder_decoder_as_transformers_does_per_option(tmp_path, one_thread):
    """`evaluate_dataset` on a T5 folder flanpipe did not train (RTE, 3 examples): scored in the
    `eos` format (inputs EOS to the encoder, option EOS from the decoder), one format only, and
    template 0's choices equal transformers' own T5, one full forward per (prompt, option)."""
    import json
    import subprocess

    import numpy as np
    import pyarrow.parquet as pq
    from transformers import AutoModelForSeq2SeqLM

    from flanpipe.core.config import EvaluateSlice, parse_config
    from flanpipe.core.text.templates import load_bank, render_template
    from flanpipe.stages.evaluate import eval_sample, evaluate_dataset
    from tests.conftest import BIN, REPO

    tokenizer = spm_tokenizer()
    torch.manual_seed(3)
    spec = ModelSpec(architecture="t5", hidden_size=32, num_layers=2, num_heads=4)
    save_checkpoint(build_model(spec, tokenizer.vocab_size, 64, special_ids=tokenizer.special_ids()),
                    tokenizer, tmp_path / "t5")
    raw = tmp_path / "raw/rte"
    subprocess.run([str(BIN / "flanpipe"), "download", "--dataset", "rte", "--out", str(raw)], check=True,
                   capture_output=True, cwd=REPO)
    cfg = parse_config({"evaluate": {"max_examples": 3}, "tokenize": {"model_kind": "encoder_decoder"},
                        "train": {"model": {"architecture": "t5"}}})
    result = evaluate_dataset("rte", tmp_path / "t5", raw, tmp_path / "rte.json", EvaluateSlice.of(cfg),
                              few_shot=False, model_name="t5")
    assert (result["format"], result["format_from"]) == ("eos", "encoder_decoder")
    assert list(result["by_format"]) == ["eos"]
    assert json.loads((tmp_path / "rte.json").read_text())["examples"] == 3

    model = AutoModelForSeq2SeqLM.from_pretrained(str(tmp_path / "t5"), local_files_only=True).eval()
    bank = load_bank()["rte"]
    table = eval_sample(pq.read_table(raw / "eval.parquet"), 3, cfg.seed, "rte")
    rendered = render_template(bank, bank.eval_templates[0], table, cfg.templatize.options)
    chosen = []
    for prompt, options in zip(rendered.inputs.to_pylist(), rendered.options.to_pylist(), strict=True):
        p = tokenizer.encode(prompt)[:cfg.tokenize.max_input_tokens - 1] + [tokenizer.eos_id]
        scores = []
        for option in options:
            labels = torch.tensor([tokenizer.encode(option) + [tokenizer.eos_id]])
            with torch.no_grad():
                logp = model(input_ids=torch.tensor([p]), labels=labels).logits.log_softmax(-1)[0]
            scores.append(float(logp.gather(-1, labels[0, :, None]).sum()))
        chosen.append(int(np.argmax(scores)))
    assert result["headline_variant"] == "with_options/sum"
    assert result["templates"][0]["predictions"] == chosen


def t5_style_tokenizer_folder(folder):
    """A T5-style `tokenizer.json` folder (as FLAN-T5 ships one): our SentencePiece model with 100
    `<extra_id_N>` sentinels added after its pieces, `<extra_id_0>` the last id, as T5's are."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    from flanpipe.core.tokens.tokenizers import spm_to_tokenizers

    rust = spm_to_tokenizers(spm_tokenizer().model_bytes)
    sentinels = [f"<extra_id_{i}>" for i in reversed(range(100))]
    rust.add_special_tokens([AddedToken(s, special=True) for s in sentinels])
    fast = PreTrainedTokenizerFast(tokenizer_object=rust, eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", additional_special_tokens=sentinels[::-1])
    fast.save_pretrained(str(folder))
    return folder


def test_a_t5_tokenizer_is_exported_exactly_with_its_sentinels(tmp_path, one_thread):
    """A pretrained T5's tokenizer (tokenizer.json with `<extra_id_N>` sentinels) goes through the
    seam into an export: `AutoTokenizer` on the exported folder gives the source's ids, sentinels
    included, and the model's embedding covers them."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from flanpipe.core.tokens.tokenizers import load_tokenizer

    source = t5_style_tokenizer_folder(tmp_path / "source")
    tok = load_tokenizer(source)
    assert (tok.kind, tok.eos_id, tok.pad_id, tok.bos_id, tok.add_bos) == ("hf", 1, 0, None, False)
    original = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    assert tok.vocab_size == len(original)
    assert original.convert_tokens_to_ids("<extra_id_0>") == len(original) - 1
    spec = ModelSpec(architecture="t5", hidden_size=32, num_layers=1, num_heads=4)
    torch.manual_seed(0)
    model = build_model(spec, tok.vocab_size, 64, special_ids=tok.special_ids())
    save_checkpoint(model, tok, tmp_path / "hf")
    exported = AutoTokenizer.from_pretrained(str(tmp_path / "hf"), local_files_only=True)
    texts = {"Fill in: the cat <extra_id_0> on the <extra_id_1>.": (0, 1),
             "premise: yes\nOPTIONS:\n- no <extra_id_99>": (99,)}
    for text, sentinels in texts.items():
        ids = original(text, add_special_tokens=False)["input_ids"]
        assert exported(text, add_special_tokens=False)["input_ids"] == ids == tok.encode(text)
        assert all(original.convert_tokens_to_ids(f"<extra_id_{k}>") in ids for k in sentinels)
    for k in (0, 1, 99):
        sentinel = f"<extra_id_{k}>"
        assert exported.convert_tokens_to_ids(sentinel) == original.convert_tokens_to_ids(sentinel)
    model = AutoModelForSeq2SeqLM.from_pretrained(str(tmp_path / "hf"), local_files_only=True)
    assert model.config.vocab_size >= len(exported)
