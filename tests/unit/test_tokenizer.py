"""The SentencePiece tokenizer: training on a small corpus, a given model file, the sample."""

import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sentencepiece as spm

from flanpipe.core.config import TokenizerSource
from flanpipe.core.text.keys import derive_seed
from flanpipe.core.tokens.tokenizers import TokenizerError, load_processor, train_spm
from flanpipe.stages.tokenizer import build_tokenizer, sample_sentences

WORDS = ("the a movie review sentence premise hypothesis answer question options yes no maybe "
         "entailment contradiction neutral positive negative because river city 2026 café naïve").split()


def corpus(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(3, 30))) for _ in range(n)]


def write_mixture(directory, inputs, targets, epochs=None, rows_per_shard=50, datasets=None):
    """Mixture shards with the columns the tokenizer and the packer read."""
    n = len(inputs)
    table = pa.table({
        "inputs": inputs, "targets": targets,
        "dataset": datasets or [f"d{i % 3}" for i in range(n)],
        "example_id": [f"ex{i}" for i in range(n)],
        "template_id": pa.array([i % 4 for i in range(n)], pa.int32()),
        "epoch": pa.array(epochs or [0] * n, pa.int32()),
    })
    directory.mkdir(parents=True, exist_ok=True)
    for k, start in enumerate(range(0, n, rows_per_shard)):
        pq.write_table(table.slice(start, rows_per_shard), directory / f"part-{k:05d}-of-x.parquet")
    return directory


def test_a_small_corpus_trains_the_largest_vocabulary_it_supports(caplog):
    cfg = TokenizerSource(vocab_size=32000)
    with caplog.at_level(logging.WARNING):
        model, size = train_spm(corpus(300), cfg, seed=1)
    sp = load_processor(model)
    assert size == sp.get_piece_size() < 32000
    assert "asks for 32000 pieces" in caplog.text and f"support at most {size}" in caplog.text
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, 3)


def test_training_is_deterministic_and_lossless():
    cfg = TokenizerSource(vocab_size=400)
    one, _ = train_spm(corpus(500), cfg, seed=7, threads=2)
    two, _ = train_spm(corpus(500), cfg, seed=7, threads=2)
    assert one == two
    sp = load_processor(one)
    for text in ["OPTIONS:\n- yes\n- no", "  two  spaces and a tab\there", "in 2026, 12345 cafés",
                 "emoji 🙂 and 漢字 never seen", ""]:
        assert sp.decode(sp.encode(text)) == text
    assert sp.unk_id() not in sp.encode("漢字 🙂")  # byte fallback, never <unk>


def test_sample_reads_distinct_examples_and_is_seeded(tmp_path):
    inputs = [f"line {i}\nsecond {i}" for i in range(40)]
    shards = sorted(write_mixture(tmp_path / "m", inputs, ["yes"] * 40,
                                  epochs=[0] * 30 + [1] * 10).glob("*.parquet"))
    every, available = sample_sentences(shards, 10_000, seed=1, max_chars=100)
    assert available == 30 * 3  # two input lines and a target line per epoch-0 row
    assert "line 35" not in every and "line 29" in every
    some, _ = sample_sentences(shards, 20, seed=1, max_chars=4)
    assert some == sample_sentences(shards, 20, seed=1, max_chars=4)[0] != sample_sentences(
        shards, 20, seed=2, max_chars=4)[0]
    assert len(some) == 20 and all(len(s) <= 4 for s in some)


def test_the_sample_read_shard_by_shard_is_the_sample_of_all_lines_at_once(tmp_path):
    """sample_sentences reads one shard at a time; its sample is the one drawn from every shard's
    epoch-0 lines put together (worked out here the simple way, all in memory)."""
    inputs = [f"{text}\n\nOPTIONS:\n- yes" if i % 3 else text for i, text in enumerate(corpus(150))]
    shard_dir = write_mixture(tmp_path / "m", inputs, corpus(150, seed=2), rows_per_shard=40,
                              epochs=[i % 4 // 3 for i in range(150)])
    shards = sorted(shard_dir.glob("*.parquet"))
    lines = []
    for path in shards:
        rows = [r for r in pq.read_table(path).to_pylist() if r["epoch"] == 0]
        lines += [x for r in rows for x in r["inputs"].split("\n") if x]
        lines += [x for r in rows for x in r["targets"].split("\n") if x]
    rng = np.random.default_rng(derive_seed(7, "tokenizer/sample"))
    expect = [lines[i][:30] for i in np.sort(rng.choice(len(lines), 100, replace=False))]
    assert len(shards) == 4 and sample_sentences(shards, 100, seed=7, max_chars=30) == (expect, len(lines))


def test_build_trains_on_the_mixture_and_writes_a_manifest(tmp_path):
    inputs, targets = corpus(200), corpus(200, seed=1)
    shard_dir = write_mixture(tmp_path / "m", inputs, targets)
    cfg = TokenizerSource(vocab_size=300, sample_sentences=1000)
    manifest = build_tokenizer(cfg, tmp_path / "tok/spm.model", seed=3, mixture_shard_dir=shard_dir,
                               mixture="all")
    saved = json.loads((tmp_path / "tok/manifest.json").read_text())
    assert saved["vocab_size"] == manifest["vocab_size"] == 300
    # 1000 asked for, 400 lines (one line each, shorter than max_sentence_chars): the sample is all
    # of them, and its size is their UTF-8 bytes (café and naïve take two bytes a letter)
    utf8_bytes = sum(len(line.encode()) for line in inputs + targets)
    assert utf8_bytes > sum(len(line) for line in inputs + targets)
    assert saved["sample"] == {"sentences": 400, "available": 400, "bytes": utf8_bytes}
    assert saved["special_ids"] == {"pad_id": 0, "eos_id": 1, "unk_id": 2, "bos_id": 3}
    assert not list((tmp_path / "tok").glob(".*tmp"))


def test_a_given_model_file_is_used_as_is(tmp_path):
    model, size = train_spm(corpus(300), TokenizerSource(vocab_size=300), seed=1)
    given = tmp_path / "given.model"
    given.write_bytes(model)
    cfg = TokenizerSource(source="file", path=str(given))
    manifest = build_tokenizer(cfg, tmp_path / "tok/spm.model", seed=0)
    assert (tmp_path / "tok/spm.model").read_bytes() == model
    assert manifest["source"]["file"] == str(given) and manifest["vocab_size"] == size


def test_a_model_without_eos_or_not_a_model_is_refused(tmp_path):
    import io

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus(300)), model_writer=out, vocab_size=50,
                                   eos_id=-1, minloglevel=2)
    (tmp_path / "noeos.model").write_bytes(out.getvalue())
    with pytest.raises(TokenizerError, match="no EOS"):
        build_tokenizer(TokenizerSource(source="file", path=str(tmp_path / "noeos.model")),
                        tmp_path / "tok/spm.model", seed=0)
    (tmp_path / "bad.model").write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="not a SentencePiece model"):
        build_tokenizer(TokenizerSource(source="file", path=str(tmp_path / "bad.model")),
                        tmp_path / "tok/spm.model", seed=0)
    assert not (tmp_path / "tok/spm.model").exists()
