"""Pieces of the evaluate stage: token layout, references, the template summary."""

import pyarrow as pa
import pytest

from flanpipe.evaluate import encode, eval_sample, references, summarize
from flanpipe.registry import load_registry
from flanpipe.templates import Template


class WordPieces:
    """A stand-in tokenizer with SentencePiece's `encode(list)` shape: one id per word."""

    def encode(self, texts):
        return [[len(w) + 10 for w in t.split()] for t in texts]


def test_encode_cuts_like_the_packer_and_ends_with_eos():
    sp = WordPieces()
    assert encode(sp, ["a bb ccc dddd"], limit=3, eos=1) == [[11, 12, 1]]
    assert encode(sp, ["a bb ccc dddd"], limit=3, eos=1, left=True) == [[13, 14, 1]]
    assert encode(sp, ["a"], limit=3, eos=1) == [[11, 1]]


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
