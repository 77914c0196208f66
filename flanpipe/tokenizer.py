"""Stage 4a, the tokenizer: a SentencePiece model shared by every mixture (or one per mixture).

Either trained on a seeded sample of a mixture's text, or copied from a given ``.model`` file (a
fine-tuning run must use its checkpoint's own tokenizer). Trained models follow Llama's recipe:
unigram, byte fallback (no ``<unk>`` for unseen characters), digits split, identity normalisation
and whitespace kept, so ``decode(encode(text)) == text``; newlines, which FLAN's OPTIONS suffix uses,
become byte pieces. Special ids are fixed: pad 0, eos 1, unk 2, bos 3.

Output: ``models/tokenizer/spm.model`` and ``models/tokenizer/manifest.json`` (special ids, the size
asked for and the size trained, the sample, hashes).
"""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sentencepiece as spm

from flanpipe.config import TokenizerConfig
from flanpipe.io import atomic_path, code_version, derive_seed, sha256_file, utc_now, write_json_atomic

STAGE_VERSION = "1"
log = logging.getLogger(__name__)

SPECIAL_IDS = {"pad_id": 0, "eos_id": 1, "unk_id": 2, "bos_id": 3}
_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")


class TokenizerError(ValueError):
    """The tokenizer cannot be trained or loaded; the message says what to change."""


def mixture_shards(shard_dir: str | Path) -> list[Path]:
    """The Parquet shards of a mixture, in order."""
    shards = sorted(Path(shard_dir).glob("part-*.parquet"))
    if not shards:
        raise FileNotFoundError(f"no part-*.parquet shards in {shard_dir}")
    return shards


def sample_sentences(shards: list[Path], n: int, seed: int, max_chars: int) -> tuple[list[str], int]:
    """A seeded sample of ``n`` lines of the mixture's distinct examples (inputs and targets, split at
    newlines, empty lines left out, each cut to ``max_chars``), in mixture order; and the number of
    lines there were to sample from.

    Rows of a later epoch repeat earlier ones, so only epoch-0 rows are read.
    """
    texts = []
    for path in shards:
        table = pq.read_table(path, columns=["inputs", "targets", "epoch"])
        table = table.filter(pc.equal(table.column("epoch"), 0))
        texts += [table.column("inputs"), table.column("targets")]
    if not texts:
        return [], 0
    lines = pc.list_flatten(pc.split_pattern(pa.chunked_array(
        [c for col in texts for c in col.chunks], pa.string()), "\n"))
    lines = lines.filter(pc.greater(pc.utf8_length(lines), 0))
    available = len(lines)
    if available > n:
        rng = np.random.default_rng(derive_seed(seed, "tokenizer/sample"))
        lines = lines.take(pa.array(np.sort(rng.choice(available, n, replace=False))))
    lines = pc.utf8_slice_codeunits(lines, 0, max_chars)
    return lines.to_pylist(), available


def train_spm(sentences: list[str], cfg: TokenizerConfig, seed: int, threads: int = 1) -> tuple[bytes, int]:
    """Train a SentencePiece model on ``sentences``; returns (serialized model, vocabulary size).

    A corpus too small for ``cfg.vocab_size`` gets the largest vocabulary it supports, with a
    warning that states both sizes.
    """
    if not sentences:
        raise TokenizerError("no text to train the tokenizer on (the mixture is empty)")
    size = cfg.vocab_size
    for _ in range(4):
        try:
            return _train_once(sentences, cfg, size, seed, threads), size
        except RuntimeError as err:
            m = _TOO_HIGH.search(str(err))
            if m is None:
                raise TokenizerError(f"SentencePiece could not train a {size}-piece {cfg.model_type} "
                                     f"model on {len(sentences)} sentences: {err}. Check "
                                     "tokenize.tokenizer.vocab_size and character_coverage") from None
            supported = int(m.group(2))
            log.warning("tokenize.tokenizer.vocab_size asks for %d pieces, but the %d sampled "
                        "sentences support at most %d: training a %d-piece model instead",
                        cfg.vocab_size, len(sentences), supported, supported)
            size = supported
    raise TokenizerError(f"SentencePiece kept refusing vocabulary sizes down to {size}")


def _train_once(sentences: list[str], cfg: TokenizerConfig, size: int, seed: int, threads: int) -> bytes:
    spm.set_random_generator_seed(derive_seed(seed, "tokenizer/train"))
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=out,
        model_type=cfg.model_type, vocab_size=size, byte_fallback=cfg.byte_fallback,
        character_coverage=cfg.character_coverage, split_digits=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, max_sentence_length=4 * cfg.max_sentence_chars,
        input_sentence_size=0, shuffle_input_sentence=False, num_threads=max(1, threads),
        minloglevel=1, **SPECIAL_IDS)
    return out.getvalue()


def load_processor(model: str | Path | bytes) -> spm.SentencePieceProcessor:
    """A SentencePiece processor from a ``.model`` path or its bytes (clear error if it is not one)."""
    try:
        if isinstance(model, bytes):
            return spm.SentencePieceProcessor(model_proto=model)
        return spm.SentencePieceProcessor(model_file=str(model))
    except (OSError, RuntimeError) as err:
        raise TokenizerError(f"{model if not isinstance(model, bytes) else 'model bytes'}: not a "
                             f"SentencePiece model ({err})") from None


def special_ids(sp: spm.SentencePieceProcessor) -> dict[str, int | None]:
    """The model's special ids (None where it has none, as Llama's has no pad)."""
    ids = {"pad_id": sp.pad_id(), "eos_id": sp.eos_id(), "unk_id": sp.unk_id(), "bos_id": sp.bos_id()}
    return {k: (v if v >= 0 else None) for k, v in ids.items()}


def build_tokenizer(cfg: TokenizerConfig, out_model: str | Path, seed: int, mixture_shard_dir: str | Path
                    | None = None, mixture: str | None = None, threads: int = 1) -> dict:
    """Train (``cfg.source == 'train'``, on the mixture in ``mixture_shard_dir``) or copy
    (``'file'``) the tokenizer to ``out_model``, with ``manifest.json`` beside it; returns the
    manifest."""
    out_model = Path(out_model)
    manifest: dict = {"stage": "tokenizer", "stage_version": STAGE_VERSION, "seed": seed,
                      "config": cfg.model_dump(), "code": code_version("tokenizer", STAGE_VERSION)}
    if cfg.source == "file":
        model = Path(cfg.path).read_bytes()
        sp = load_processor(model)
        manifest.update(source={"file": str(cfg.path), "sha256": sha256_file(cfg.path)},
                        vocab_size_requested=None)
    else:
        shards = mixture_shards(mixture_shard_dir)
        sentences, available = sample_sentences(shards, cfg.sample_sentences, seed, cfg.max_sentence_chars)
        log.info("training a %s tokenizer on %d of %d lines of mixture %s", cfg.model_type,
                 len(sentences), available, mixture)
        model, _ = train_spm(sentences, cfg, seed, threads)
        sp = load_processor(model)
        manifest.update(source={"mixture": mixture, "shards": [
                            {"file": p.name, "sha256": sha256_file(p)} for p in shards]},
                        sample={"sentences": len(sentences), "available": available,
                                "bytes": sum(len(s.encode()) for s in sentences)},
                        vocab_size_requested=cfg.vocab_size)
    ids = special_ids(sp)
    if ids["eos_id"] is None:
        raise TokenizerError(f"{cfg.path}: the model has no EOS piece; packing needs one "
                             "(tokenize.tokenizer.path)")
    with atomic_path(out_model) as tmp:
        tmp.write_bytes(model)
    manifest.update(vocab_size=sp.get_piece_size(), special_ids=ids, model_sha256=sha256_file(out_model),
                    byte_fallback=bool(sp.piece_to_id("<0x0A>") != sp.unk_id()), created_at=utc_now())
    write_json_atomic(out_model.parent / "manifest.json", manifest)
    log.info("tokenizer %s: %d pieces, special ids %s", out_model, manifest["vocab_size"], ids)
    return manifest
