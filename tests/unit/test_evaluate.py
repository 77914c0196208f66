"""Pieces of the evaluate stage: token formats, references, the template summary; and a real
checkpoint (SmolLM2-135M-Instruct, BPE tokenizer.json) scored against lm-evaluation-harness."""

import json
from importlib import resources

import numpy as np
import pyarrow as pa
import pytest
import torch

from flanpipe.core.config.registry import load_registry
from flanpipe.core.eval.scoring import score_options
from flanpipe.core.text.templates import Template
from flanpipe.core.tokens.formats import Format, encode
from flanpipe.core.tokens.tokenizers import load_tokenizer
from flanpipe.stages.evaluate import eval_sample, load_for_scoring, references, stop_ids, summarize

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return load_for_scoring(smollm2_dir, "fp32")


def test_encode_cuts_like_the_packer_and_ends_with_eos(smollm2_dir):
    """``[BOS] text EOS`` in ``limit`` tokens, by hand from the tokenizer's own ids."""
    tok = load_tokenizer(smollm2_dir)
    text = "The quick brown fox jumps over the lazy dog"
    ids = tok.encode(text)
    assert len(ids) >= 6
    eos = tok.eos_id
    assert encode(tok, [text], limit=4, end=[eos]) == [ids[:3] + [eos]]
    assert encode(tok, [text], limit=4, end=[eos], left=True) == [ids[-3:] + [eos]]
    assert encode(tok, [text], limit=5, end=[eos], left=True, bos=7) == [[7] + ids[-3:] + [eos]]
    assert encode(tok, [text], limit=5, end=[eos], bos=7) == [[7] + ids[:3] + [eos]]
    assert encode(tok, [text, "fox"], limit=100, end=[eos]) == [ids + [eos], tok.encode("fox") + [eos]]
    assert encode(tok, [text], limit=5, end=[9, 8], left=True) == [ids[-3:] + [9, 8]]


def test_the_text_format_is_the_joined_text_for_a_byte_level_bpe(smollm2_dir):
    """``text``: prompt ``input SEP`` then option ``target EOS``; with SmolLM2's byte-level BPE a
    newline never merges, so the two are the tokens of ``input + "\\n" + target``, plus EOS. The
    prompt holds no EOS (the ``eos`` format's ends with it)."""
    from flanpipe.core.config import TokenizeConfig

    tok = load_tokenizer(smollm2_dir)
    fmt = Format.of(tok, TokenizeConfig(), name="text")
    prompts = ["Is the sky blue?\nOPTIONS:\n- yes\n- no", "Premise: it rained.  What happened next?"]
    options = [["yes", "no"], ["The ground got wet.", " the sun shone"]]
    for prompt, ptoks, opts, otoks in zip(prompts, fmt.inputs(prompts), options,
                                          fmt.options(prompts, options), strict=True):
        assert tok.eos_id not in ptoks
        for option, ids in zip(opts, otoks, strict=True):
            assert ptoks + ids == tok.encode(prompt + "\n" + option) + [tok.eos_id]
    assert fmt.counts(prompts).tolist() == [len(p) for p in fmt.inputs(prompts)]
    assert fmt.as_("eos").inputs(prompts[:1]) == [tok.encode(prompts[0]) + [tok.eos_id]]


def test_the_bos_follows_the_tokenizer_convention_unless_config_says(smollm2_dir):
    from flanpipe.core.config import TokenizeConfig

    tok = load_tokenizer(smollm2_dir)
    assert tok.add_bos is False and tok.bos_id is not None  # SmolLM2 puts no BOS before a text
    assert Format.of(tok, TokenizeConfig()).bos is None
    forced = Format.of(tok, TokenizeConfig(add_bos=True, max_input_tokens=64))
    assert forced.inputs(["Hello there"]) == [[tok.bos_id, *tok.encode("Hello there"), tok.eos_id]]
    assert forced.counts(["Hello there", ""]).tolist() == [len(tok.encode("Hello there")) + 2, 2]


def test_references_take_every_answer_of_every_target_field():
    """TriviaQA names two target fields: the answer's value and its aliases."""
    spec = load_registry().datasets["trivia_qa"]
    answer = pa.StructArray.from_arrays(
        [pa.array(["Paris", "4"]), pa.array([["paris, france", "Paris"], []])], ["value", "aliases"])
    table = pa.table({"answer": answer})
    plain = Template(id=0, input="{question}", target="{answer}")
    wrapped = Template(id=1, input="{question}", target="The answer is {answer}.")
    assert references(spec, plain, ["Paris", "4"], table) == [["Paris", "paris, france"], ["4"]]
    assert references(spec, wrapped, ["The answer is Paris.", "The answer is 4."], table) == [
        ["The answer is Paris."], ["The answer is 4."]]


def test_summary_is_mean_best_and_spread_over_templates():
    scores = [(0, 50.0), (3, 70.0), (5, 60.0)]
    per = [{"template_id": t, "variants": {"v": {"accuracy": a}}} for t, a in scores]
    s = summarize(per, "v", "accuracy")
    assert s == {"mean": 60.0, "best": 70.0, "best_template": 3, "worst": 50.0,
                 "std": pytest.approx(8.164966, abs=1e-6), "templates": 3}


def test_eval_sample_is_seeded_and_keeps_source_order():
    table = pa.table({"x": list(range(100))})
    a = eval_sample(table, 10, seed=1, name="rte").column("x").to_pylist()
    assert a == sorted(a) and len(set(a)) == 10
    assert a == eval_sample(table, 10, seed=1, name="rte").column("x").to_pylist()
    assert a != eval_sample(table, 10, seed=2, name="rte").column("x").to_pylist()
    assert eval_sample(table, None, seed=1, name="rte").num_rows == 100


def arc_requests(n: int) -> tuple[list[str], list[list[str]]]:
    """ARC-Easy questions from the embedded demo data, as lm-eval's arc_easy task poses them."""
    path = resources.files("flanpipe").joinpath("data/embedded/arc_easy/test.jsonl")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:n]]
    return ([f"Question: {r['question']}\nAnswer:" for r in rows],
            [[f" {c}" for c in r["choices"]["text"]] for r in rows])


def test_smollm2_option_scores_equal_lm_eval_hflm(smollm2_dir, smollm2):
    """The same (context, continuation) requests: ours through the tokenizer seam and the shared
    prompt cache, lm-eval's HFLM through its public ``loglikelihood`` (its own tokenizer, one
    sequence per request)."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tok = smollm2
    assert type(model).__name__ == "LlamaForCausalLM" and tok.kind == "hf"
    contexts, choices = arc_requests(5)
    prompts = [tok.encode(c) for c in contexts]
    options = [[tok.encode(x) for x in opts] for opts in choices]
    ours = score_options(model, prompts, options, max_batch_tokens=400)

    torch.manual_seed(0)
    peer = HFLM(pretrained=str(smollm2_dir), device="cpu", dtype="float32", batch_size=8)
    pairs = [(c, x) for c, opts in zip(contexts, choices, strict=True) for x in opts]
    requests = [Instance("loglikelihood", {}, pair, k) for k, pair in enumerate(pairs)]
    peer_ll = np.array([ll for ll, _ in peer.loglikelihood(requests, disable_tqdm=True)])
    # both split each request into the same tokens
    for c, opts, p, o in zip(contexts, choices, prompts, options, strict=True):
        for x, ox in zip(opts, o, strict=True):
            assert peer._encode_pair(c, x) == (p, ox)
    ours_flat = np.concatenate(ours)
    assert np.abs(ours_flat - peer_ll).max() < 1e-4
    bounds = np.cumsum([0] + [len(o) for o in options])
    for k, scores in enumerate(ours):
        assert int(np.argmax(scores)) == int(np.argmax(peer_ll[bounds[k]:bounds[k + 1]]))
    assert len(set(np.round(ours_flat, 3))) == len(ours_flat)  # real, distinct scores
    assert stop_ids(model, tok)[0] == tok.eos_id


# --- fair evaluation: formats, fitting, PMI, intervals ----------------------------------------------

def _embedded_rows(dataset: str, n: int) -> pa.Table:
    spec = load_registry().datasets[dataset]
    name = f"data/embedded/{dataset}/{spec.splits.eval}.jsonl"
    text = resources.files("flanpipe").joinpath(name).read_text(encoding="utf-8")
    return pa.Table.from_pylist([json.loads(line) for line in text.splitlines()[:n]])


def test_base_scores_equal_lm_eval_on_rendered_flan_prompts(smollm2_dir, smollm2):
    """The untuned base in the continuation format: FLAN-rendered ARC-Easy prompts and their
    options, tokenized by us (joint encoding at the boundary) and scored with the shared prompt
    cache, against lm-eval's HFLM.loglikelihood on the same (context, " " + option) strings, which
    it tokenizes itself."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from flanpipe.core.text.templates import load_bank, render_template

    model, tok = smollm2
    bank = load_bank()["arc_easy"]
    rows = _embedded_rows("arc_easy", 4)
    fmt = Format(tok, None, 1024, 256, False, name="continuation", target_delimiter=" ")
    contexts, choices = [], []
    for template in bank.eval_templates[:2]:
        rendered = render_template(bank, template, rows, "dash")
        contexts += rendered.inputs.to_pylist()
        choices += rendered.options.to_pylist()
    ours = score_options(model, fmt.inputs(contexts), fmt.options(contexts, choices),
                         max_batch_tokens=2048)

    torch.manual_seed(0)
    peer = HFLM(pretrained=str(smollm2_dir), device="cpu", dtype="float32", batch_size=8)
    pairs = [(c, " " + x) for c, opts in zip(contexts, choices, strict=True) for x in opts]
    requests = [Instance("loglikelihood", {}, pair, k) for k, pair in enumerate(pairs)]
    peer_ll = np.array([ll for ll, _ in peer.loglikelihood(requests, disable_tqdm=True)])
    ours_flat = np.concatenate(ours)
    assert len(ours_flat) == len(peer_ll) >= 16
    assert np.abs(ours_flat - peer_ll).max() < 1e-4
    bounds = np.cumsum([0] + [len(o) for o in choices])
    for k, scores in enumerate(ours):
        assert int(np.argmax(scores)) == int(np.argmax(peer_ll[bounds[k]:bounds[k + 1]]))


def test_continuation_tokens_follow_the_joined_text(smollm2_dir):
    """The option's tokens are what encoding the whole text adds after the context's tokens, with
    the context's trailing space moved onto the option (lm-eval's rule); no EOS anywhere."""
    tok = load_tokenizer(smollm2_dir)
    fmt = Format(tok, None, 1024, 256, False, name="continuation", target_delimiter="")
    context, option = "Is the sky blue?\nAnswer: ", "yes"
    [prompt] = fmt.inputs([context])
    [[tokens]] = fmt.options([context], [[option]])
    assert prompt == tok.encode("Is the sky blue?\nAnswer:")
    whole = tok.encode("Is the sky blue?\nAnswer: yes")
    assert prompt + tokens == whole and tok.eos_id not in prompt + tokens
    eos = fmt.as_("eos")
    assert eos.inputs([context])[0] == tok.encode(context) + [tok.eos_id]
    assert eos.options([context], [[option]])[0][0] == tok.encode(option) + [tok.eos_id]


def test_a_model_is_scored_in_the_format_flanpipe_trained_it_in(tmp_path):
    from flanpipe.stages.evaluate import model_format

    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert model_format(folder) == ("continuation", "untrained", None)  # a checkpoint flanpipe did not train
    (folder / "flanpipe.json").write_text(json.dumps({"format": "eos"}))
    assert model_format(tmp_path) == ("eos", "trained", None)
    assert model_format(folder, "continuation") == ("continuation", "override", None)
    with pytest.raises(ValueError, match="allowed: eos, text, chat, continuation"):
        model_format(folder, "dialogue")
    (folder / "flanpipe.json").write_text(json.dumps({"format": "text", "separator": "\nA:"}))
    assert model_format(folder) == ("text", "trained", "\nA:")
    # a folder trained before the record said `format` (train stage version 6) names it `layout`
    (folder / "flanpipe.json").write_text(json.dumps({"layout": "text", "separator": "\nA:"}))
    assert model_format(folder) == ("text", "trained", "\nA:")
    (folder / "flanpipe.json").write_text(json.dumps({"format": "continuation"}))
    with pytest.raises(ValueError, match="allowed: eos, text, chat"):  # no model is trained as a continuation
        model_format(folder)
    t5 = tmp_path / "t5"  # an encoder-decoder flanpipe did not train (FLAN-T5): inputs EOS, targets EOS
    t5.mkdir()
    (t5 / "config.json").write_text(json.dumps({"model_type": "t5", "is_encoder_decoder": True}))
    assert model_format(t5) == ("eos", "encoder_decoder", None)


def test_an_over_long_eval_input_keeps_its_instruction_and_options(smollm2_dir):
    """A BoolQ passage of ~3,000 tokens against a budget of 160: the fitted prompt cuts the
    passage's end, and keeps the question, the instruction after it and every OPTIONS line, in
    both formats, within the budget. Right truncation of the rendered prompt (the old path) keeps
    the passage's start and loses the question and the OPTIONS."""
    from flanpipe.core.text.templates import load_bank, long_field, render_template
    from flanpipe.stages.evaluate import prompts_for

    tok = load_tokenizer(smollm2_dir)
    bank = load_bank()["boolq"]
    rows = _embedded_rows("boolq", 2)
    long = " ".join(["The blue whale is a marine mammal that feeds on krill."] * 300)
    rows = rows.set_column(rows.schema.get_field_index("passage"), "passage",
                           pa.array([long, rows.column("passage")[1].as_py()]))
    field = long_field(load_registry().datasets["boolq"], rows)
    assert field == "passage"
    budget = 160
    for name in ("eos", "continuation"):
        fmt = Format(tok, None, budget, 16, False, name=name)
        for template in bank.eval_templates:
            if "{passage}" not in template.input:
                continue
            whole = render_template(bank, template, rows, "dash").inputs.to_pylist()[0]
            prompts = prompts_for(bank, template, rows, None, "dash", fmt.counts, field, budget)
            ids = fmt.inputs(prompts)[0]
            assert len(ids) <= budget
            text = tok.decode([i for i in ids if i != tok.eos_id])
            tail = whole[whole.index(long) + len(long):]  # the template's text after the passage
            assert tail.strip() and text.rstrip().endswith(tail.strip()[-40:]), (template.id, text[-200:])
            assert "OPTIONS:\n- no\n- yes" in text or "OPTIONS:\n- yes\n- no" in text
            assert rows.column("question")[0].as_py() in text
            old = tok.decode(encode(tok, [whole], budget, [tok.eos_id])[0])
            assert "OPTIONS" not in old


def test_pmi_of_a_hand_worked_two_option_example():
    """Option A: log p = -2.0 given the prompt, -0.5 given the answer prefix alone: PMI -1.5.
    Option B: -3.0 and -2.5: PMI -0.5. The sum picks A; PMI picks B, the option the prompt made
    likelier than it is on its own."""
    from flanpipe.stages.evaluate import normalized

    sums, uncond = np.array([-2.0, -3.0]), np.array([-0.5, -2.5])
    tokens, chars = np.array([2, 3]), np.array([4, 9])
    assert np.argmax(normalized("sum", sums, tokens, chars, uncond)) == 0
    assert np.allclose(normalized("pmi", sums, tokens, chars, uncond), [-1.5, -0.5])
    assert np.argmax(normalized("pmi", sums, tokens, chars, uncond)) == 1
    assert np.allclose(normalized("per_token", sums, tokens, chars), [-1.0, -1.0])
    assert np.allclose(normalized("per_char", sums, tokens, chars), [-0.5, -1 / 3])


def test_unconditional_scores_equal_a_plain_forward_pass(smollm2_dir):
    """PMI's unconditional term: each option after the format's prompt of the answer prefix,
    against log-softmax of one plain forward pass per (prefix + option) sequence."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from flanpipe.stages.evaluate import unconditional_scores

    tok = load_tokenizer(smollm2_dir)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                         attn_implementation="sdpa")).eval()
    for name in ("eos", "continuation"):
        fmt = Format(tok, None, 64, 16, False, name=name)
        prompts = ["Is it raining?\nOPTIONS:\n- yes\n- no", "Pick one.\nOPTIONS:\n- red\n- blue"]
        options = fmt.options(prompts, [["yes", "no"], ["red", "blue"]])
        got = unconditional_scores(model, fmt, options, "Answer:", 512)
        prefix = fmt.inputs(["Answer:"])[0]
        for opts, scores in zip(options, got, strict=True):
            for o, score in zip(opts, scores, strict=True):
                ids = torch.tensor([prefix + o])
                with torch.no_grad():
                    logp = torch.log_softmax(model(ids).logits[0].double(), -1)
                want = sum(float(logp[len(prefix) - 1 + i, t]) for i, t in enumerate(o))
                assert abs(score - want) < 1e-4


def test_bootstrap_interval_covers_a_bernoulli_mean_at_the_nominal_rate():
    """200 seeded samples of 150 Bernoulli(0.3) draws: the 95% percentile interval holds 0.3 in
    91-99% of them (the binomial spread of 200 trials around 95% is about +-3 points)."""
    from flanpipe.core.eval.metrics import bootstrap

    covered = 0
    trials = 200
    for seed in range(trials):
        sample = (np.random.default_rng(10_000 + seed).random(150) < 0.3).astype(float)
        ci = bootstrap(lambda rows, s=sample: float(s[rows].mean()), len(sample), 400, seed=seed)
        covered += ci["low"] <= 0.3 <= ci["high"]
    assert 0.91 <= covered / trials <= 0.99, covered


def test_paired_bootstrap_sees_a_gap_that_unpaired_intervals_miss():
    """Two models right on mostly the same rows, one on 8 more of 200: their own intervals overlap,
    the paired interval of the difference excludes zero."""
    from flanpipe.core.eval.metrics import bootstrap, paired_bootstrap

    rng = np.random.default_rng(0)
    b = (rng.random(200) < 0.6).astype(float)
    a = b.copy()
    a[np.flatnonzero(b == 0)[:8]] = 1.0
    ia = bootstrap(lambda r: a[r].mean(), 200, 1000, seed=1)
    ib = bootstrap(lambda r: b[r].mean(), 200, 1000, seed=1)
    assert ia["low"] < ib["high"]
    d = paired_bootstrap(lambda r: a[r].mean(), lambda r: b[r].mean(), 200, 1000, seed=1)
    assert d["low"] > 0 and abs(d["delta"] - 0.04) < 1e-12
