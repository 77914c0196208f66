"""The tokenizer seam: both backends behind one interface, and exports that encode exactly as the
tokenizer used in training (SentencePiece unigram and BPE, a checkpoint's BPE ``tokenizer.json``),
checked with ``transformers``' ``AutoTokenizer`` on 1,000+ texts of real data with newlines, tabs,
digits, accents, emoji, characters the vocabulary never saw and text that looks like byte pieces."""

import json
import random
from pathlib import Path

import numpy as np
import pytest

from flanpipe.core.config import TokenizerSource
from flanpipe.core.tokens.tokenizers import (
    HFTokenizer,
    SentencePieceTokenizer,
    TokenizerError,
    load_tokenizer,
    train_spm,
)

EMBEDDED = Path(__file__).resolve().parents[2] / "flanpipe/data/embedded"
INSERTS = ["\t", "  ", "\n", "\n\n", "\r\n", " 2026 ", "123456789", "3.14", "café", "naïve", "Ærøskøbing",
           "e\u0301", "🙂", "👩\u200d👩\u200d👧", "漢字", "ﬁ", "\u200b", "\x00", "<0x0A>", "\u2581", "  lead",
           "Ω≈ç√", "<b>bold</b>", "a < b > c", "ÄÖÜß", "Привет"]


def real_texts() -> list[str]:
    """Every text field of the embedded demo data (dialogues, passages, questions, German news)."""
    texts = []
    for path in sorted(EMBEDDED.glob("*/*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            texts += [v for v in json.loads(line).values() if isinstance(v, str) and len(v) > 3]
    return texts


def adversarial(texts: list[str], n: int = 1200, seed: int = 0) -> list[str]:
    """Real texts with up to four odd strings inserted at random places, some cut short, plus the
    odd strings alone and the empty text."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        text = rng.choice(texts)
        for _ in range(rng.randint(0, 4)):
            at = rng.randint(0, len(text))
            text = text[:at] + rng.choice(INSERTS) + text[at:]
        out.append(text[:rng.randint(0, len(text))] if i % 7 == 0 else text)
    return [*out, *INSERTS, "", " ", "  two leading spaces", "trailing  "]


@pytest.fixture(scope="module")
def texts():
    return real_texts()


@pytest.fixture(scope="module", params=["unigram", "bpe"])
def spm_model(request, texts, tmp_path_factory):
    """A SentencePiece model of each type, trained the pipeline's way on the demo data's lines
    (with some markup, so that `<` and `>` are in the vocabulary as in any real corpus)."""
    lines = [line for t in texts for line in t.split("\n") if line]
    lines += ["if a < b and c > d: <b>bold</b>"] * 300
    model, _ = train_spm(lines, TokenizerSource(vocab_size=2000, model_type=request.param), seed=0, threads=2)
    path = tmp_path_factory.mktemp(request.param) / "spm.model"
    path.write_bytes(model)
    return path


def test_sentencepiece_backend_interface(spm_model):
    tok = load_tokenizer(spm_model)
    assert isinstance(tok, SentencePieceTokenizer) and tok.kind == "sentencepiece"
    assert tok.special_ids() == {"pad_id": 0, "eos_id": 1, "unk_id": 2, "bos_id": 3}
    assert tok.vocab_size == 2000 and tok.add_bos is False
    batch = tok.encode_batch(["OPTIONS:\n- yes\n- no", "", "naïve 漢字"], threads=2)
    assert [b.dtype for b in batch] == [np.int32] * 3 and len(batch[1]) == 0
    assert [b.tolist() for b in batch] == [tok.encode(t) for t in ["OPTIONS:\n- yes\n- no", "", "naïve 漢字"]]
    assert tok.decode(batch[2]) == "naïve 漢字" and tok.unk_id not in batch[2].tolist()
    assert 1 not in batch[0].tolist() and 3 not in batch[0].tolist()  # no EOS/BOS added


def test_sentencepiece_export_encodes_exactly_as_sentencepiece(spm_model, texts, tmp_path):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    tok = load_tokenizer(spm_model)
    tok.save_pretrained(tmp_path / "hf")
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "hf"), local_files_only=True)
    reference = spm.SentencePieceProcessor(model_file=str(spm_model))  # the peer: SentencePiece itself
    cases = adversarial(texts)
    assert len(cases) > 1000
    ours = hf(cases, add_special_tokens=False)["input_ids"]
    wrong = [t for t, ids in zip(cases, ours, strict=True) if ids != reference.encode(t)]
    assert not wrong, f"{len(wrong)} of {len(cases)} differ, e.g. {wrong[:3]}"
    for text in cases[:200]:
        ids = reference.encode(text)
        assert hf.decode(ids) == reference.decode(ids)
    assert (hf.eos_token_id, hf.pad_token_id, hf.bos_token_id) == (1, 0, 3)
    assert hf("a cat")["input_ids"] == reference.encode("a cat")  # no BOS: flanpipe's convention
    # the reloaded export is the same tokenizer again
    again = load_tokenizer(tmp_path / "hf")
    assert isinstance(again, HFTokenizer) and again.special_ids() == tok.special_ids()
    assert [a.tolist() for a in again.encode_batch(cases[:300])] == [reference.encode(t) for t in cases[:300]]


def test_a_checkpoint_tokenizer_json_backend(smollm2_dir):
    from transformers import AutoTokenizer

    tok = load_tokenizer(smollm2_dir)
    assert isinstance(tok, HFTokenizer) and tok.kind == "hf" and tok.path.name == "tokenizer.json"
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert tok.vocab_size == config["vocab_size"] == 49152
    assert (tok.eos_id, tok.bos_id, tok.pad_id) == (config["eos_token_id"], config["bos_token_id"],
                                                   config["pad_token_id"])
    assert tok.add_bos is False  # SmolLM2's tokenizer puts nothing before a text
    peer = AutoTokenizer.from_pretrained(str(smollm2_dir), local_files_only=True)
    cases = ["OPTIONS:\n- yes\n- no", "naïve 🙂 漢字\t2026", ""]
    assert [a.tolist() for a in tok.encode_batch(cases, threads=2)] == peer(
        cases, add_special_tokens=False)["input_ids"]
    assert tok.decode(tok.encode(cases[1])) == cases[1]


def test_a_checkpoint_tokenizer_json_exports_exactly(smollm2_dir, texts, tmp_path):
    from transformers import AutoTokenizer

    tok = load_tokenizer(smollm2_dir / "tokenizer.json")
    tok.save_pretrained(tmp_path / "hf")
    assert (tmp_path / "hf/tokenizer.json").read_bytes() == (smollm2_dir / "tokenizer.json").read_bytes()
    exported = AutoTokenizer.from_pretrained(str(tmp_path / "hf"), local_files_only=True)
    peer = AutoTokenizer.from_pretrained(str(smollm2_dir), local_files_only=True)
    cases = adversarial(texts, seed=1)
    assert exported(cases, add_special_tokens=False)["input_ids"] == peer(
        cases, add_special_tokens=False)["input_ids"] == [a.tolist() for a in tok.encode_batch(cases)]
    assert exported.eos_token_id == peer.eos_token_id == tok.eos_id


def test_a_llama2_style_folder_adds_bos_and_its_export_does_too(spm_model, tmp_path):
    """A folder with ``tokenizer.model`` and ``add_bos_token: true`` (Llama-2's convention)."""
    folder = tmp_path / "llama2ish"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(spm_model.read_bytes())
    (folder / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True}))
    tok = load_tokenizer(folder)
    assert tok.kind == "sentencepiece" and tok.add_bos is True
    assert tok.encode("a cat")[0] != tok.bos_id  # encode never adds it
    tok.save_pretrained(tmp_path / "hf")
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tmp_path / "hf"), local_files_only=True)
    assert hf("a cat")["input_ids"] == [tok.bos_id, *tok.encode("a cat")]


def test_what_is_not_a_tokenizer_is_refused(tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer.json or tokenizer.model"):
        load_tokenizer(tmp_path)
    with pytest.raises(TokenizerError, match="no such tokenizer"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(TokenizerError, match="not a Hugging Face tokenizer.json"):
        load_tokenizer(tmp_path)
