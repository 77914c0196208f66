"""Packing through the tokenizer seam with a checkpoint's BPE ``tokenizer.json`` (SmolLM2), BOS per
the checkpoint's convention or the ``tokenize.add_bos`` override; every example read back and
compared with ``transformers``' own tokenizer, one text at a time."""

import collections
import json

import pytest

from flanpipe.core.config import PackSlice, parse_config
from flanpipe.core.tokens.shards import PackedShards, unpack_row
from flanpipe.stages.pack import tokenize_and_pack
from tests.unit.test_tokenizer import write_mixture
from tests.unit.test_tokenizer_seam import real_texts

LI, LT = 48, 16


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    """150 examples of the demo data's real texts: passages and dialogues (many cut at 48 tokens)
    shared by several questions, short answers, and some long answers."""
    texts = real_texts()
    passages = sorted(texts, key=len)[-50:]
    inputs = [f"{passages[i % 50]}\n\nQuestion {i}: what happens next?\nOPTIONS:\n- yes\n- no"
              for i in range(150)]
    targets = [texts[i] if i % 5 == 0 else "yes" for i in range(150)]
    shards = write_mixture(tmp_path_factory.mktemp("hfpack") / "mixture", inputs, targets, rows_per_shard=60)
    return shards, inputs, targets


def pack(mixture, tokenizer, out, **tokenize):
    shards, _, _ = mixture
    cfg = parse_config({"seed": 5, "train": {"steps": 2, "tokens_per_batch": 64},
                        "tokenize": {"max_input_tokens": LI, "max_target_tokens": LT, "pack_window": 64,
                                     "rows_per_shard": 16, **tokenize}})
    manifest = tokenize_and_pack("m", shards, tokenizer, out, PackSlice.of(cfg), threads=2)
    rows = PackedShards(out)
    got = collections.Counter((tuple(a.tolist()), tuple(b.tolist()))
                              for i in range(len(rows)) for a, b in unpack_row(rows[i]))
    return manifest, got


def expected(mixture, peer, eos, bos=None, left=False):
    """The examples as ``transformers`` tokenizes them, cut and framed by hand."""
    _, inputs, targets = mixture
    out = collections.Counter()
    for x, y in zip(inputs, targets, strict=True):
        ids_in = peer(x, add_special_tokens=False)["input_ids"]
        ids_tg = peer(y, add_special_tokens=False)["input_ids"]
        head = [bos] if bos is not None else []
        room = LI - 1 - len(head)
        ids_in = ids_in[len(ids_in) - room:] if left and len(ids_in) > room else ids_in[:room]
        out[tuple(head + ids_in + [eos]), tuple(ids_tg[:LT - 1] + [eos])] += 1
    return out


@pytest.fixture(scope="module")
def peer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_dir), local_files_only=True)


def test_a_checkpoint_tokenizer_packs_as_transformers_tokenizes(mixture, smollm2_dir, peer, tmp_path):
    manifest, got = pack(mixture, smollm2_dir / "tokenizer.json", tmp_path / "p")
    assert got == expected(mixture, peer, eos=peer.eos_token_id)  # SmolLM2 adds no BOS
    tok = manifest["tokenizer"]
    assert tok["kind"] == "hf" and tok["vocab_size"] == 49152 and tok["bos_added"] is False
    assert tok["special_ids"]["eos_id"] == 2 and manifest["fields"]["tokens"]["dtype"] == "<u2"
    assert json.loads((tmp_path / "p/manifest.json").read_text())["tokenizer"] == tok


@pytest.mark.parametrize("truncate", ["right", "left"])
def test_the_bos_override_puts_bos_first_and_keeps_it_through_truncation(mixture, smollm2_dir, peer, tmp_path,
                                                                        truncate):
    manifest, got = pack(mixture, smollm2_dir, tmp_path / truncate, add_bos=True, truncate_inputs=truncate)
    assert got == expected(mixture, peer, eos=2, bos=peer.bos_token_id, left=truncate == "left")
    assert all(inputs[0] == 1 for inputs, _ in got)  # <|im_start|>, SmolLM2's BOS
    assert manifest["tokenizer"]["bos_added"] is True
    assert manifest["packing"]["truncated_inputs"] > 0  # long passages were cut, BOS kept


def test_a_tokenizer_without_bos_refuses_the_override(mixture, tmp_path):
    (tmp_path / "ckpt").mkdir()
    from tokenizers import Tokenizer, models, pre_tokenizers

    rust = Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "</s>": 2}, merges=[]))
    rust.pre_tokenizer = pre_tokenizers.Whitespace()
    rust.save(str(tmp_path / "ckpt/tokenizer.json"))
    (tmp_path / "ckpt/tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    with pytest.raises(ValueError, match="tokenize.add_bos: true, but the tokenizer .* has no BOS token"):
        pack(mixture, tmp_path / "ckpt", tmp_path / "nobos", add_bos=True)
