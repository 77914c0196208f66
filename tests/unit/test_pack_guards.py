"""Pack's guards: every packed row's loss mask is its example's target tokens and EOS (also where
the pad id is the EOS id), no row starts with two BOS tokens, and a dataset whose targets are cut
too often stops the pack, naming it."""

import json

import numpy as np
import pytest

from flanpipe.core.config import PackSlice, parse_config
from flanpipe.core.tokens.shards import PackedShards
from flanpipe.stages.pack import PackCheckError, tokenize_and_pack
from tests.unit.test_chat import flan_rows, template_folder
from tests.unit.test_tokenizer import write_mixture

WORDS = "the cat sat on a mat yes no maybe dog ran far".split()


def pad_is_eos_tokenizer(folder):
    """A word-level ``tokenizer.json`` whose pad token is its EOS token (``</s>``, id 0): the
    convention of checkpoints that ship no pad token, where trainers set pad = EOS."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder.mkdir()
    vocab = {"</s>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    rust = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    rust.pre_tokenizer = pre_tokenizers.Whitespace()
    rust.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "pad_token": "</s>",
                                                              "unk_token": "<unk>"}))
    return folder, vocab


def pack(shards, tokenizer, out, **tokenize):
    cfg = parse_config({"seed": 5, "train": {"steps": 2, "tokens_per_batch": 64},
                        "tokenize": {"max_input_tokens": 16, "max_target_tokens": 6, "format": "eos",
                                     "pack_window": 64, "rows_per_shard": 16, **tokenize}})
    return tokenize_and_pack("m", shards, tokenizer, out, PackSlice.of(cfg))


def test_a_tokenizer_whose_pad_is_eos_keeps_eos_in_the_loss_mask(tmp_path):
    folder, vocab = pad_is_eos_tokenizer(tmp_path / "tok")
    rng = np.random.default_rng(0)
    inputs = [" ".join(rng.choice(WORDS, rng.integers(1, 10))) for _ in range(40)]
    targets = [" ".join(rng.choice(WORDS, rng.integers(1, 8))) for _ in range(40)]
    shards = write_mixture(tmp_path / "mixture", inputs, targets)
    manifest = pack(shards, folder / "tokenizer.json", tmp_path / "p")
    assert manifest["tokenizer"]["pad_fill"] == manifest["tokenizer"]["special_ids"]["eos_id"] == 0
    data = PackedShards(tmp_path / "p")
    expected = sorted(tuple([vocab[w] for w in t.split()][:5] + [0]) for t in targets)  # cut to 6 with EOS
    got, padded = [], 0
    for i in range(len(data)):
        row = data[i]
        for s in range(1, int(row["segment_ids"].max()) + 1):
            at = row["segment_ids"] == s
            got.append(tuple(row["tokens"][at & (row["loss_mask"] == 1)].tolist()))
        padding = row["segment_ids"] == 0
        assert (row["tokens"][padding] == 0).all() and not row["loss_mask"][padding].any()
        padded += int(padding.sum())
    assert sorted(got) == expected  # each target's EOS in its mask, the EOS-valued padding not
    assert padded > 0


@pytest.fixture(scope="module")
def chat_rows(tmp_path_factory):
    inputs, targets = flan_rows(per_dataset=2)
    return write_mixture(tmp_path_factory.mktemp("chat") / "mixture", inputs, targets)


def chat_pack(folder, shards, out):
    cfg = parse_config({"seed": 5, "train": {"steps": 2, "tokens_per_batch": 64,
                                             "model": {"source": "pretrained", "path": str(folder)}},
                        "tokenize": {"format": "chat", "max_input_tokens": 256, "max_target_tokens": 64,
                                     "pack_window": 512, "rows_per_shard": 64}})
    return tokenize_and_pack("m", shards, folder / "tokenizer.json", out, PackSlice.of(cfg))


def test_a_chat_row_never_starts_bos_bos(smollm2_dir, chat_rows, tmp_path):
    """SmolLM2's own template starts each example with one ``<|im_start|>`` (its BOS id); a template
    that writes ``{{ bos_token }}`` before that (as Llama 3's do, with a tokenizer that adds one
    more) starts it with two, and the pack stops naming the example."""
    chat_pack(smollm2_dir, chat_rows, tmp_path / "own")
    data = PackedShards(tmp_path / "own")
    bos = json.loads((smollm2_dir / "tokenizer_config.json").read_text())["bos_token"]
    assert bos == "<|im_start|>"
    for i in range(len(data)):
        row = data[i]
        real = row["segment_ids"] > 0
        firsts = row["tokens"][real & (row["positions"] == 0)]
        seconds = row["tokens"][real & (row["positions"] == 1)]
        assert (firsts == 1).all() and not (seconds == 1).any()
    template = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    folder = template_folder(smollm2_dir, tmp_path, template)
    (folder / "config.json").write_text((smollm2_dir / "config.json").read_text())
    with pytest.raises(PackCheckError, match=r"pack: \w+/\S+: it starts with BOS twice \(id 1\)"):
        chat_pack(folder, chat_rows, tmp_path / "double")
    assert not (tmp_path / "double/shards").exists()


def test_a_dataset_with_too_many_targets_cut_stops_the_pack_naming_it(tmp_path):
    folder, _ = pad_is_eos_tokenizer(tmp_path / "tok")
    inputs = ["the cat sat"] * 30
    targets = ["yes"] * 20 + ["the cat sat on a mat yes no maybe"] * 10  # 10 cut at 5 words + EOS
    datasets = ["short"] * 20 + ["long"] * 10
    shards = write_mixture(tmp_path / "mixture", inputs, targets, datasets=datasets)
    pack(shards, folder / "tokenizer.json", tmp_path / "fine", max_truncated_fraction=1.0)
    with pytest.raises(ValueError, match=r"pack: long: the targets of 10 of 10 examples \(1\) were cut, more "
                                         r"than tokenize.max_truncated_fraction 0.5"):
        pack(shards, folder / "tokenizer.json", tmp_path / "cut", max_truncated_fraction=0.5)
    assert not (tmp_path / "cut/shards").exists() and not (tmp_path / "cut/manifest.json").exists()
