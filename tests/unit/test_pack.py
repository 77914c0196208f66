"""Tokenize and pack a small mixture: read the shards back and compare with an independent
tokenization, one text at a time."""

import collections
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from flanpipe.core.config import PackSlice, TokenizerSource, parse_config
from flanpipe.core.tokens.shards import PackedShards, unpack_row
from flanpipe.core.tokens.tokenizers import load_processor, train_spm
from flanpipe.stages.pack import tokenize_and_pack
from tests.unit.test_tokenizer import corpus, write_mixture

LI, LT = 24, 8


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    """200 examples with inputs of 3..120 words (many truncated at 24 tokens), some multi-line."""
    tmp = tmp_path_factory.mktemp("pack")
    rng = np.random.default_rng(0)
    inputs = [t + ("\nOPTIONS:\n- yes\n- no" if i % 3 == 0 else "") for i, t in enumerate(corpus(200))]
    inputs[5] = " ".join(corpus(8, seed=9))  # long
    targets = [t if rng.random() < 0.3 else "yes" for t in corpus(200, seed=1)]
    shards = write_mixture(tmp / "mixture", inputs, targets, rows_per_shard=70)
    model, _ = train_spm(corpus(400) + inputs, TokenizerSource(vocab_size=300), seed=1)
    (tmp / "spm.model").write_bytes(model)
    return tmp, shards, inputs, targets


def run(mixture, out, **tokenize):
    tmp, shards, _, _ = mixture
    model = {"architecture": "t5"} if tokenize.get("model_kind") == "encoder_decoder" else {}
    cfg = parse_config({"seed": 5, "train": {"steps": 2, "tokens_per_batch": 64, "model": model},
                        "tokenize": {"max_input_tokens": LI, "max_target_tokens": LT, "pack_window": 64,
                                     "rows_per_shard": 7, **tokenize}})
    manifest = tokenize_and_pack("m", shards, tmp / "spm.model", tmp / out, PackSlice.of(cfg))
    return manifest, PackedShards(tmp / out)


def expected_examples(mixture, left=False, separator=None):
    """Each example as the packer should write it, from SentencePiece itself one text at a time:
    ``inputs EOS`` (or ``inputs`` + the separator's own tokens), ``targets EOS``."""
    tmp, _, inputs, targets = mixture
    sp = load_processor(tmp / "spm.model")
    sep = [1] if separator is None else sp.encode(separator)
    keep = LI - len(sep)
    out = []
    for x, y in zip(inputs, targets, strict=True):
        ids_in, ids_tg = sp.encode(x), sp.encode(y)
        ids_in = ids_in[len(ids_in) - keep:] if left and len(ids_in) > keep else ids_in[:keep]
        out.append((tuple(ids_in + sep), tuple(ids_tg[:LT - 1] + [1])))
    return out


def unpacked(shards):
    return collections.Counter((tuple(a.tolist()), tuple(b.tolist()))
                               for i in range(len(shards)) for a, b in unpack_row(shards[i]))


@pytest.mark.parametrize("model_kind", ["decoder_only", "encoder_decoder"])
@pytest.mark.parametrize("truncate", ["right", "left"])
def test_unpacking_gives_back_every_example_once(mixture, model_kind, truncate):
    manifest, shards = run(mixture, f"{model_kind}-{truncate}", model_kind=model_kind,
                           truncate_inputs=truncate)
    assert unpacked(shards) == collections.Counter(expected_examples(mixture, truncate == "left"))
    assert len(manifest["shards"]) == -(-manifest["rows"] // 7) > 1  # several shards and windows
    assert manifest["packing"]["windows"] == 4


@pytest.mark.parametrize("truncate", ["right", "left"])
def test_text_format_puts_the_separator_between_input_and_target(mixture, truncate):
    """``tokenize.format: text``: ``inputs SEP targets EOS``, no EOS after the input; the separator
    (three pieces here) survives truncation, and the loss mask covers exactly ``targets EOS``."""
    separator = "\nAnswer:"
    manifest, shards = run(mixture, f"text-{truncate}", format="text", separator=separator,
                           truncate_inputs=truncate)
    sep = load_processor(mixture[0] / "spm.model").encode(separator)
    assert len(sep) >= 2 and 1 not in sep
    assert manifest["format"] == "text" and manifest["separator"] == {"text": separator, "ids": sep}
    expected = expected_examples(mixture, truncate == "left", separator)
    assert unpacked(shards) == collections.Counter(expected)
    for i in range(len(shards)):
        row = shards[i]
        for segment in np.unique(row["segment_ids"][row["segment_ids"] > 0]):
            span = np.flatnonzero(row["segment_ids"] == segment)
            tokens, mask = row["tokens"][span].tolist(), row["loss_mask"][span].tolist()
            n_target = sum(mask)
            assert mask == [0] * (len(span) - n_target) + [1] * n_target
            assert tokens[-1] == 1 and 1 not in tokens[:-n_target]  # EOS ends the target only
            assert tokens[len(span) - n_target - len(sep):len(span) - n_target] == sep


def test_auto_format_follows_the_model_source():
    """``auto``: the paper's ``eos`` for a model trained from scratch, ``text`` for a checkpoint."""
    scratch = parse_config({})
    pretrained = parse_config({"train": {"model": {"source": "pretrained", "path": "/ckpt"}}})
    assert PackSlice.of(scratch).format == "eos" and PackSlice.of(pretrained).format == "text"
    forced = parse_config({"tokenize": {"format": "eos"}, "train": {"model": {"source": "pretrained",
                                                                            "path": "/ckpt"}}})
    assert PackSlice.of(forced).format == "eos"
    with pytest.raises(ValueError, match="tokenize.format: text needs tokenize.model_kind: decoder_only"):
        parse_config({"tokenize": {"format": "text", "model_kind": "encoder_decoder"}})


def test_index_points_at_each_example(mixture):
    _, shards = run(mixture, "index")
    index = pq.read_table(mixture[0] / "index/index.parquet").to_pylist()
    expected = expected_examples(mixture)
    assert sorted(e["position"] for e in index) == list(range(len(expected)))
    for e in index:
        row = shards[e["row"]]
        span = np.flatnonzero(row["segment_ids"] == e["segment"])
        inputs, targets = expected[e["position"]]
        assert span[0] == e["input_offset"] and e["target_offset"] == e["input_offset"] + len(inputs)
        assert tuple(row["tokens"][span].tolist()) == inputs + targets
        assert e["example_id"] == f"ex{e['position']}"


def test_encoder_decoder_segments_pair_inputs_with_their_targets(mixture):
    _, shards = run(mixture, "pairs", model_kind="encoder_decoder")
    expected = expected_examples(mixture)
    index = pq.read_table(mixture[0] / "pairs/index.parquet").to_pylist()
    for e in index:
        row = shards[e["row"]]
        got_in = row["inputs"][row["inputs_segment_ids"] == e["segment"]]
        got_tg = row["targets"][row["targets_segment_ids"] == e["segment"]]
        assert (tuple(got_in.tolist()), tuple(got_tg.tolist())) == expected[e["position"]]
        assert row["inputs_positions"][e["input_offset"]] == row["targets_positions"][e["target_offset"]] == 0
    rows = shards.take(np.arange(len(shards)))
    assert (rows["loss_mask"] == (rows["targets_segment_ids"] > 0)).all()


def test_truncations_are_counted_per_dataset(mixture):
    run(mixture, "counts")
    tmp, _, inputs, targets = mixture
    sp = load_processor(tmp / "spm.model")
    stats = {r["dataset"]: r for r in pq.read_table(tmp / "counts/stats.parquet").to_pylist()}
    for d in ("d0", "d1", "d2"):
        rows = [i for i in range(len(inputs)) if f"d{i % 3}" == d]
        assert stats[d]["examples"] == len(rows)
        assert stats[d]["truncated_inputs"] == sum(len(sp.encode(inputs[i])) > LI - 1 for i in rows) > 0
        assert stats[d]["truncated_targets"] == sum(len(sp.encode(targets[i])) > LT - 1 for i in rows)
    packing = pq.read_table(tmp / "counts/packing.parquet").to_pylist()[0]
    assert packing["truncated_inputs"] == sum(s["truncated_inputs"] for s in stats.values())


def test_packers_compare_as_expected(mixture):
    results = {p: run(mixture, p, packer=p, max_input_tokens=96, max_target_tokens=32)[0]["packing"]
               for p in ("best_fit", "next_fit", "none")}
    best, nxt, none = results["best_fit"], results["next_fit"], results["none"]
    assert best["rows_lower_bound"] <= best["rows"] < nxt["rows"] < none["rows"] == none["examples"] == 200
    assert best["rows_next_fit"] == nxt["rows"]
    assert none["efficiency"] == pytest.approx(best["efficiency_pad_to_max"])


def test_rerun_is_byte_identical(mixture):
    tmp = mixture[0]
    one, _ = run(mixture, "one")
    two, _ = run(mixture, "two")
    assert [s["sha256"] for s in one["shards"]] == [s["sha256"] for s in two["shards"]]
    for name in ("index.parquet", "stats.parquet", "packing.parquet"):
        assert (tmp / "one" / name).read_bytes() == (tmp / "two" / name).read_bytes()
    saved = json.loads((tmp / "one/manifest.json").read_text())
    assert saved["fields"]["tokens"] == {"dtype": "<u2", "shape": [LI + LT]}
    assert not list((tmp / "one").glob(".*tmp"))
