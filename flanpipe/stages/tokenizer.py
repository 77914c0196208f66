"""Stage 4a, tokenizer: the pipeline's own SentencePiece model, trained on a seeded sample of a
mixture's text, or copied from a given ``.model`` file (a fine-tuning run uses its checkpoint's own
tokenizer, read in place by the seam :mod:`flanpipe.core.tokens.tokenizers`: ``tokenize.tokenizer.source:
auto``; nothing is built then).

Output: ``models/tokenizer/spm.model`` (a trained or given SentencePiece model) and
``models/tokenizer/manifest.json`` (special ids, the size asked for and the size trained, the sample,
hashes).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flanpipe.core.config import TokenizerSource
from flanpipe.core.io import (
    atomic_path,
    code_version,
    mixture_shards,
    read_table,
    sha256_file,
    utc_now,
    write_json_atomic,
)
from flanpipe.core.text.keys import derive_seed
from flanpipe.core.tokens.tokenizers import TokenizerError, load_processor, special_ids, train_spm
from flanpipe.core.versions import STAGE_VERSIONS

STAGE_VERSION = STAGE_VERSIONS["tokenizer"]
log = logging.getLogger(__name__)


def sample_sentences(shards: list[Path], n: int, seed: int, max_chars: int) -> tuple[list[str], int]:
    """A seeded sample of ``n`` lines of the mixture's distinct examples (inputs and targets, split at
    newlines, empty lines left out, each cut to ``max_chars``), in mixture order; and the number of
    lines there were to sample from.

    Rows of a later epoch repeat earlier ones, so only epoch-0 rows are read. The shards are read
    twice, one at a time (to count their lines, then to take the sampled ones), so memory holds one
    shard's lines and the sample, not the mixture's text.
    """
    counts = [len(_shard_lines(path)) for path in shards]
    available = sum(counts)
    chosen = None
    if available > n:
        rng = np.random.default_rng(derive_seed(seed, "tokenizer/sample"))
        chosen = np.sort(rng.choice(available, n, replace=False))
    sample: list[str] = []
    start = 0
    for path, count in zip(shards, counts, strict=True):
        mine = None if chosen is None else \
            chosen[np.searchsorted(chosen, start):np.searchsorted(chosen, start + count)] - start
        if count and (mine is None or len(mine)):
            lines = _shard_lines(path)
            lines = lines if mine is None else lines.take(pa.array(mine))
            sample += pc.utf8_slice_codeunits(lines, 0, max_chars).to_pylist()
        start += count
    return sample, available


def _shard_lines(path: Path) -> pa.Array:
    """The non-empty lines of a shard's epoch-0 rows: each row's inputs, then its targets."""
    table = read_table(path, columns=["inputs", "targets", "epoch"])
    table = table.filter(pc.equal(table.column("epoch"), 0))
    text = pa.chunked_array([*table.column("inputs").chunks, *table.column("targets").chunks], pa.string())
    lines = pc.list_flatten(pc.split_pattern(text, "\n"))
    return lines.filter(pc.greater(pc.utf8_length(lines), 0))


def build_tokenizer(cfg: TokenizerSource, out_model: str | Path, seed: int, mixture_shard_dir: str | Path
                    | None = None, mixture: str | None = None, threads: int = 1) -> dict:
    """Train (``cfg.source`` ``'train'`` or ``'auto'``, on the mixture in ``mixture_shard_dir``) or
    copy (``'file'``, a ``.model`` file) the SentencePiece model to ``out_model``, with
    ``manifest.json`` beside it; returns the manifest."""
    out_model = Path(out_model)
    manifest: dict = {"stage": "tokenizer", "stage_version": STAGE_VERSION, "seed": seed,
                      "config": cfg.model_dump(), "code": code_version("tokenizer", STAGE_VERSION)}
    if cfg.source == "file":
        if not str(cfg.path).endswith(".model"):
            raise TokenizerError(f"tokenize.tokenizer.path: {cfg.path} is read in place, not copied: pack "
                                 f"with it directly (flanpipe pack --tokenizer {cfg.path})")
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
