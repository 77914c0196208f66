"""Stage 6a, base_model: the untuned model every tuned model is compared with, as a checkpoint folder
(``models/base/hf``) that evaluate scores like any other.

It is the pretrained checkpoint itself (``train.model.source: pretrained``, re-saved), or, for a
model built from config, a new model of the run's architecture and sizes, built whole by
:func:`~flanpipe.core.model.checkpoint.build_model` from the seed the trainer uses for its initial weights
(``train/init``). With the shared tokenizer and float32 (every CPU run) that is the trained runs'
starting point; a bf16 run, or a mixture with a tokenizer of its own, starts elsewhere.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from flanpipe.core.config import BaseModelSlice
from flanpipe.core.model.checkpoint import build_model, parameter_count, save_checkpoint
from flanpipe.core.text.keys import derive_seed
from flanpipe.core.tokens.tokenizers import load_tokenizer
from flanpipe.core.versions import STAGE_VERSIONS

STAGE_VERSION = STAGE_VERSIONS["base_model"]
log = logging.getLogger(__name__)


def export_base_model(cfg: BaseModelSlice, tokenizer: str | Path, out: str | Path) -> dict:
    """Write the untuned base model to ``out`` (a Hugging Face folder with ``tokenizer``'s files);
    returns its source and parameter count."""
    model, row_tokens = cfg.model, cfg.max_input_tokens + cfg.max_target_tokens
    tok = load_tokenizer(tokenizer)
    torch.manual_seed(derive_seed(cfg.seed, "train/init"))
    built = build_model(model, tok.vocab_size, row_tokens, special_ids=tok.special_ids())
    save_checkpoint(built, tok, Path(out), dtype=torch.float32)
    n = parameter_count(built)
    log.info("base model (%s, %s parameters) -> %s", model.source, f"{n:,}", out)
    return {"source": model.source, "parameters": n, "out": str(out)}
