"""What the config reads of a checkpoint folder on disk, before any job runs: whether it is an
encoder-decoder and whether its tokenizer has a chat template. The one place that asks "is this an
encoder-decoder" of a folder or of a ``transformers`` config (the stages and the scorers ask it here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ENCODER_DECODER_ARCHITECTURES = frozenset({"t5", "mt5", "umt5"})
"""``train.model.architecture``s that are encoder-decoders (the checkpoint seam builds them)."""


def folder_is_encoder_decoder(folder: str | Path) -> bool | None:
    """Whether the checkpoint folder's ``config.json`` says ``is_encoder_decoder`` (T5, mT5, BART
    folders do); None where it cannot be read."""
    try:
        raw = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return is_encoder_decoder(raw)


def folder_has_chat_template(folder: str | Path) -> bool | None:
    """Whether the checkpoint folder's tokenizer has a chat template (the files
    :func:`flanpipe.core.tokens.chat.read_chat_template` reads); None where the folder has no
    ``config.json`` yet (the train stage names it)."""
    path = Path(folder)
    if not (path / "config.json").is_file():
        return None
    if (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
        return True
    try:
        raw = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(raw.get("chat_template"))


def is_encoder_decoder(config: Any) -> bool:
    """Whether a model config is an encoder-decoder's: a ``transformers`` config, or its ``config.json``
    as a dict.

    >>> is_encoder_decoder({"is_encoder_decoder": True}), is_encoder_decoder({"model_type": "llama"})
    (True, False)
    """
    value = config.get("is_encoder_decoder") if isinstance(config, dict) else getattr(
        config, "is_encoder_decoder", False)
    return bool(value)
