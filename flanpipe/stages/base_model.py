"""Stage 6a, base_model: the untuned model every tuned model is compared with, as a checkpoint folder
(``models/base/hf``) that evaluate scores like any other.

It is the pretrained checkpoint itself (``train.model.source: pretrained``), or, for a model built
from config, a new model of the same architecture and sizes initialised by ``transformers`` from the
run's seed: not bit for bit the trained runs' initial weights (under ZeRO-3, rank 0 initialises module
by module, which draws the random numbers in another order), but the same distribution.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from flanpipe.core.checkpoint import build_model, parameter_count, save_checkpoint
from flanpipe.core.config import BaseModelSlice
from flanpipe.core.keys import derive_seed
from flanpipe.core.tokenizers import load_tokenizer

STAGE_VERSION = "3"  # the train stage's version when the base model moved here
log = logging.getLogger(__name__)


def export_base_model(cfg: BaseModelSlice, tokenizer: str | Path, out: str | Path) -> dict:
    """The untuned base model as a checkpoint folder, for evaluation beside the tuned ones: the
    pretrained checkpoint (``train.model.source: pretrained``), or a new model of the same
    architecture and sizes, initialised by ``transformers`` from the same seed. (Not bit for bit the
    trained runs' initial weights: under ZeRO-3, rank 0 initialises module by module, which draws
    the random numbers in another order.)"""
    model, row_tokens = cfg.model, cfg.max_input_tokens + cfg.max_target_tokens
    tok = load_tokenizer(tokenizer)
    torch.manual_seed(derive_seed(cfg.seed, "train/init"))
    built = build_model(model, tok.vocab_size, row_tokens, special_ids=tok.special_ids())
    save_checkpoint(built, tok, Path(out), dtype=torch.float32)
    n = parameter_count(built)
    log.info("base model (%s, %s parameters) -> %s", model.source, f"{n:,}", out)
    return {"source": model.source, "parameters": n, "out": str(out)}
