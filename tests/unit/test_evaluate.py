"""Pieces of the evaluate stage: token layout, references, the template summary; and a real
checkpoint (SmolLM2-135M-Instruct, BPE tokenizer.json) scored against lm-evaluation-harness."""

import json
from importlib import resources

import numpy as np
import pyarrow as pa
import pytest
import torch

from flanpipe.core.layout import Layout, encode
from flanpipe.core.registry import load_registry
from flanpipe.core.scoring import score_options
from flanpipe.core.templates import Template
from flanpipe.core.tokenizers import load_tokenizer
from flanpipe.stages.evaluate import eval_sample, load_model, references, stop_ids, summarize

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return load_model(smollm2_dir)


def test_encode_cuts_like_the_packer_and_ends_with_eos(smollm2_dir):
    """``[BOS] text EOS`` in ``limit`` tokens, by hand from the tokenizer's own ids."""
    tok = load_tokenizer(smollm2_dir)
    text = "The quick brown fox jumps over the lazy dog"
    ids = tok.encode(text)
    assert len(ids) >= 6
    eos = tok.eos_id
    assert encode(tok, [text], limit=4, eos=eos) == [ids[:3] + [eos]]
    assert encode(tok, [text], limit=4, eos=eos, left=True) == [ids[-3:] + [eos]]
    assert encode(tok, [text], limit=5, eos=eos, left=True, bos=7) == [[7] + ids[-3:] + [eos]]
    assert encode(tok, [text], limit=5, eos=eos, bos=7) == [[7] + ids[:3] + [eos]]
    assert encode(tok, [text, "fox"], limit=100, eos=eos) == [ids + [eos], tok.encode("fox") + [eos]]


def test_layout_follows_the_tokenizer_convention_unless_config_says(smollm2_dir):
    from flanpipe.core.config import TokenizeConfig

    tok = load_tokenizer(smollm2_dir)
    assert tok.add_bos is False and tok.bos_id is not None  # SmolLM2 puts no BOS before a text
    assert Layout.of(tok, TokenizeConfig()).bos is None
    forced = Layout.of(tok, TokenizeConfig(add_bos=True, max_input_tokens=64))
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
    pytest.importorskip("lm_eval")
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
