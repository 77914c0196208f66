"""The packed shards store tokens and example lengths only; the segment ids, positions and loss
masks a reader gets equal the ones computed from scratch, example by example, from an independent
tokenization of the mixture's texts (real ones: passages shared by several questions, dialogues,
German news)."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from flanpipe.core.config import PackSlice, TokenizerSource, parse_config
from flanpipe.core.tokens.shards import PackedShards, spans
from flanpipe.core.tokens.tokenizers import load_processor, train_spm
from flanpipe.stages.pack import tokenize_and_pack
from tests.unit.test_tokenizer import write_mixture
from tests.unit.test_tokenizer_seam import real_texts

LI, LT = 40, 12
BOS = 3  # flanpipe's own SentencePiece models: pad 0, eos 1, unk 2, bos 3


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    """240 examples of the demo data's texts: a third ask about one of 30 long passages (cut at
    ``LI`` tokens), the rest are short questions; answers are yes/no, or every fourth a real text
    (some cut at ``LT`` tokens)."""
    tmp = tmp_path_factory.mktemp("packed")
    texts = real_texts()
    passages = sorted(texts, key=len)[-30:]
    short = [t for t in texts if 10 < len(t) < 60]
    inputs = [f"{passages[i % 30]}\n\nQuestion: {short[i % len(short)]}\nOPTIONS:\n- yes\n- no" if i % 3 == 0
              else short[(7 * i) % len(short)] for i in range(240)]
    targets = [texts[(13 * i) % len(texts)] if i % 4 == 0 else ("yes" if i % 3 else "no") for i in range(240)]
    shards = write_mixture(tmp / "mixture", inputs, targets, rows_per_shard=90)
    model, _ = train_spm(texts, TokenizerSource(vocab_size=600), seed=1)
    (tmp / "spm.model").write_bytes(model)
    return tmp, shards, inputs, targets


def pack(mixture, out, **tokenize):
    tmp, shards, _, _ = mixture
    model = {"architecture": "t5"} if tokenize.get("model_kind") == "encoder_decoder" else {}
    cfg = parse_config({"seed": 3, "train": {"steps": 1, "tokens_per_batch": 64, "model": model},
                        "tokenize": {"max_input_tokens": LI, "max_target_tokens": LT, "pack_window": 100,
                                     "rows_per_shard": 16, **tokenize}})
    manifest = tokenize_and_pack("m", shards, tmp / "spm.model", tmp / out, PackSlice.of(cfg))
    return manifest, PackedShards(tmp / out), pq.read_table(tmp / out / "index.parquet").to_pylist()


def reference_examples(mixture, bos=False, left=False):
    """Each example's (input ids, target ids), one text at a time, cut and framed by hand."""
    tmp, _, inputs, targets = mixture
    sp = load_processor(tmp / "spm.model")
    out = []
    for x, y in zip(inputs, targets, strict=True):
        head = [BOS] if bos else []
        ids_in, room = sp.encode(x), LI - 1 - len(head)
        ids_in = ids_in[len(ids_in) - room:] if left and len(ids_in) > room else ids_in[:room]
        out.append((head + ids_in + [1], sp.encode(y)[:LT - 1] + [1]))
    return out


def reference_decoder_only(index, examples, rows):
    """Segment ids, positions and loss masks of every row, slot by slot, from where the index says
    each example sits and the example's own token lists; checks the row holds those tokens there."""
    width = LI + LT
    seg, pos, mask = (np.zeros((rows, width), int) for _ in range(3))
    tokens = {}
    for e in index:
        inputs, targets = examples[e["position"]]
        start = e["input_offset"]
        for t, token in enumerate(inputs + targets):
            seg[e["row"], start + t] = e["segment"]
            pos[e["row"], start + t] = t
            mask[e["row"], start + t] = t >= len(inputs)
            tokens[e["row"], start + t] = token
    return seg, pos, mask, tokens


@pytest.mark.parametrize(("packer", "bos", "truncate"),
                         [("best_fit", False, "right"), ("best_fit", True, "left"), ("none", False, "right")])
def test_decoder_only_rows_rebuild_as_computed_from_scratch(mixture, packer, bos, truncate):
    manifest, shards, index = pack(mixture, f"dec-{packer}-{bos}-{truncate}", packer=packer, add_bos=bos,
                                   truncate_inputs=truncate)
    examples = reference_examples(mixture, bos, truncate == "left")
    seg, pos, mask, tokens = reference_decoder_only(index, examples, len(shards))
    rows = shards.take(np.arange(len(shards)))
    assert (rows["segment_ids"] == seg).all()
    assert (rows["positions"] == pos).all()
    assert (rows["loss_mask"] == mask).all()
    assert all(rows["tokens"][r, t] == token for (r, t), token in tokens.items())
    assert rows.dtype == shards.dtype
    assert [(name, rows.dtype[name].base.str) for name in rows.dtype.names] == [
        ("tokens", "<u2"), ("segment_ids", "<u2"), ("positions", "<u2"), ("loss_mask", "|u1")]

    # the cases that matter are there: single examples, full rows, cut inputs and cut targets
    per_row = np.bincount([e["row"] for e in index], minlength=len(shards))
    used = (seg > 0).sum(axis=1)
    assert (per_row == 1).any() and (used == LI + LT).any() and (per_row > 1).any() == (packer != "none")
    assert any(e["input_tokens_full"] > LI for e in index)
    assert any(e["target_tokens_full"] > LT for e in index)
    assert len(manifest["shards"]) > 1  # rows are read across shards


def test_encoder_decoder_rows_rebuild_as_computed_from_scratch(mixture):
    _, shards, index = pack(mixture, "encdec", model_kind="encoder_decoder")
    examples = reference_examples(mixture)
    expected = {name: np.zeros((len(shards), width), int) for name, width in (
        ("inputs_segment_ids", LI), ("inputs_positions", LI), ("targets_segment_ids", LT),
        ("targets_positions", LT), ("loss_mask", LT))}
    for e in index:
        inputs, targets = examples[e["position"]]
        for side, ids, start in (("inputs", inputs, e["input_offset"]),
                                 ("targets", targets, e["target_offset"])):
            for t in range(len(ids)):
                expected[f"{side}_segment_ids"][e["row"], start + t] = e["segment"]
                expected[f"{side}_positions"][e["row"], start + t] = t
        expected["loss_mask"][e["row"], e["target_offset"]:e["target_offset"] + len(targets)] = 1
    rows = shards.take(np.arange(len(shards)))
    for name, want in expected.items():
        assert (rows[name] == want).all(), name
    for e in index:
        inputs, targets = examples[e["position"]]
        row, a, b = e["row"], e["input_offset"], e["target_offset"]
        assert rows["inputs"][row, a:a + len(inputs)].tolist() == inputs
        assert rows["targets"][row, b:b + len(targets)].tolist() == targets


def test_any_rows_in_any_order_read_as_the_whole_table_says(mixture):
    _, shards, _ = pack(mixture, "order")
    everything = shards.take(np.arange(len(shards)))
    picks = np.random.default_rng(0).integers(0, len(shards), 50)  # across shards, some twice
    assert (shards.take(picks) == everything[picks]).all()
    assert shards[-1] == everything[-1] and shards[3] == everything[3]
    assert len(shards.take(np.array([], np.int64))) == 0
    with pytest.raises(IndexError):
        shards.take(np.array([len(shards)]))


def test_the_shards_hold_tokens_and_lengths_only(mixture):
    manifest, shards, index = pack(mixture, "disk")
    folder = mixture[0] / "disk/shards"
    files = sorted(p.name for p in folder.iterdir())
    assert files == sorted(f"part-{k:05d}.{kind}.npy" for k in range(len(manifest["shards"]))
                           for kind in ("tokens", "examples", "examples_per_row"))
    tokens = [np.load(folder / s["files"]["tokens"]) for s in manifest["shards"]]
    assert tokens[0].dtype.names == ("tokens",)
    stored = np.concatenate([np.load(folder / s["files"]["examples"]) for s in manifest["shards"]])
    assert sorted(stored.tolist()) == sorted((e["input_tokens"], e["target_tokens"]) for e in index)
    assert manifest["stored"]["bytes"] == sum(p.stat().st_size for p in folder.iterdir())
    data = sum(t.nbytes for t in tokens) + 4 * len(index) + 2 * len(shards)
    assert data < manifest["stored"]["bytes"] <= data + 512 * len(manifest["shards"])  # .npy headers
    assert manifest["fields"]["segment_ids"] == {"dtype": "<u2", "shape": [LI + LT]}


def test_a_directory_of_the_old_format_asks_for_a_rerun(tmp_path):
    (tmp_path / "shards").mkdir()
    np.save(tmp_path / "shards/part-00000.npy", np.zeros(1, [("tokens", "u2", (4,))]))
    (tmp_path / "manifest.json").write_text(json.dumps({
        "stage_version": "2", "layout": "decoder_only", "rows": 1,
        "shards": [{"file": "part-00000.npy", "rows": 1, "sha256": "x"}]}))
    with pytest.raises(ValueError, match="stage version 2, which stored segment ids.*rerun the pack rule"):
        PackedShards(tmp_path)


def test_a_manifest_that_names_the_model_kind_layout_asks_for_a_rerun(mixture):
    """Pack stage version 4 wrote the model kind as `layout`; a reader asks for a rerun, not a KeyError."""
    manifest, _, _ = pack(mixture, "old-key")
    folder = mixture[0] / "old-key"
    old = {("layout" if k == "model_kind" else k): v for k, v in manifest.items()} | {"stage_version": "4"}
    (folder / "manifest.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match="version 4, whose manifest names the model kind `layout`; rerun"):
        PackedShards(folder)


def test_spans_of_rows_with_padding_and_without():
    s = spans(np.array([[3, 1], [1, 1], [1, 1]]), np.array([1, 2, 0]), 4)  # full, full, empty
    assert s.segment_ids.tolist() == [[1, 1, 1, 1], [1, 1, 2, 2], [0, 0, 0, 0]]
    assert s.positions.tolist() == [[0, 1, 2, 3], [0, 1, 0, 1], [0, 0, 0, 0]]
    assert s.piece.tolist() == [[1, 1, 1, 2], [1, 2, 1, 2], [0, 0, 0, 0]]
    with pytest.raises(ValueError, match="examples_per_row counts 3 examples, pieces holds 2"):
        spans(np.array([[1, 1], [1, 1]]), np.array([3]), 8)
    with pytest.raises(ValueError, match="row 0: its examples hold more than 3 tokens"):
        spans(np.array([[2, 2]]), np.array([1]), 3)


def test_the_trainer_reads_each_micro_batch_of_a_step_in_order(mixture):
    """One take per step (every micro-batch of the rank at once), split as step_rows says."""
    import torch

    from flanpipe.stages.train import BatchPlan, load_step, step_rows

    _, shards, _ = pack(mixture, "trainer")
    everything = shards.take(np.arange(len(shards)))
    plan = BatchPlan(row_tokens=LI + LT, micro_batch_rows=2, world_size=2, accumulation=3)
    for step in (0, 7):  # 12 rows a step: step 7 crosses into the second epoch
        got = load_step(shards, plan, step, seed=1, rank=1, device=torch.device("cpu"))
        rows = step_rows(step, plan, len(shards), seed=1).reshape(3, 2, 2)[:, 1]
        assert len(got.batches) == 3
        for batch, idx in zip(got.batches, rows, strict=True):
            for name in ("tokens", "segment_ids", "positions", "loss_mask"):
                assert batch[name].dtype == torch.int64
                assert (batch[name].numpy() == everything[name][idx]).all()
        # every target token follows a token of its own example (at least the inputs' EOS)
        assert got.local_targets == int(everything["loss_mask"][rows.ravel()].sum()) > 0


def test_a_truncated_shard_names_its_file(mixture, tmp_path):
    """np.load of a cut .npy says `mmap length is greater than file size`; PackedShards names it."""
    import shutil

    from flanpipe.core.io import ReadError

    pack(mixture, "cut")
    packed = tmp_path / "cut"
    shutil.copytree(mixture[0] / "cut", packed)
    tokens = packed / "shards/part-00000.tokens.npy"
    tokens.write_bytes(tokens.read_bytes()[:-64])
    with pytest.raises(ReadError, match="packed shard") as err:
        PackedShards(packed)
    assert str(tokens) in str(err.value)


def _tampered(mixture, tmp_path, name):
    import shutil

    pack(mixture, "intact")
    packed = tmp_path / name
    shutil.copytree(mixture[0] / "intact", packed)
    return packed, packed / "shards/part-00001.tokens.npy"


def test_a_shard_overwritten_with_other_tokens_of_its_size_stops_train_before_the_first_step(mixture,
                                                                                              tmp_path):
    """The real `flanpipe train` (one process, DeepSpeed on CPU): it checks every shard against the
    pack manifest's sha256 and names the changed file, instead of training on it."""
    import os
    import subprocess
    import sys

    from flanpipe.core.tokens.shards import verify_shards

    packed, tokens = _tampered(mixture, tmp_path, "overwritten")
    verify_shards(packed)  # the untouched copy passes (it raises otherwise): train refuses the edit below
    size = tokens.stat().st_size
    array = np.load(tokens)
    array["tokens"] = array["tokens"][::-1]  # other tokens, the same size
    np.save(tokens, array)
    assert tokens.stat().st_size == size  # so the manifest's byte count cannot tell: only its sha256
    (tmp_path / "config.yaml").write_text("seed: 3\n")
    cmd = [sys.executable, "-m", "flanpipe.cli", "train", "--mixture", "m",
           "--config", str(tmp_path / "config.yaml"), "--packed", str(packed),
           "--tokenizer", str(mixture[0] / "spm.model"), "--out", str(tmp_path / "model")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "DS_ACCELERATOR": "cpu"})
    assert proc.returncode != 0
    assert f"{tokens}: sha256" in proc.stderr and f"{packed / 'manifest.json'} says" in proc.stderr
    assert not (tmp_path / "model/metrics.csv").exists()


def test_a_truncated_shard_is_named_with_its_size(mixture, tmp_path):
    from flanpipe.core.io import ArtifactMismatch
    from flanpipe.core.tokens.shards import verify_shards

    packed, tokens = _tampered(mixture, tmp_path, "truncated")
    tokens.write_bytes(tokens.read_bytes()[:-64])
    with pytest.raises(ArtifactMismatch, match="the pack manifest says") as err:
        verify_shards(packed)
    assert str(packed / "shards") in str(err.value) and tokens.name in str(err.value)
