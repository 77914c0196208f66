"""The token layout: how an example's text becomes tokens, for pack (training rows) and evaluate
(prompts and options) alike. An example is ``[BOS] input EOS`` then ``target EOS``: BOS where
``tokenize.add_bos`` (or the tokenizer's own convention) asks for it, inputs cut to
``max_input_tokens`` and targets to ``max_target_tokens`` with BOS and EOS always kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flanpipe.core.config import EvaluateSlice, PackSlice, TokenizeConfig
from flanpipe.core.tokenizers import Tokenizer


def bos_token(tokenizer: Tokenizer, add_bos: bool | None) -> int | None:
    """The BOS id to put before each example's inputs, or None: ``tokenize.add_bos``, or where that
    is null, the tokenizer's own convention."""
    if add_bos is None:
        add_bos = tokenizer.add_bos
    if add_bos and tokenizer.bos_id is None:
        raise ValueError(f"tokenize.add_bos: true, but the tokenizer {tokenizer.path} has no BOS token; "
                         "allowed: false or null")
    return tokenizer.bos_id if add_bos else None


def encode(tokenizer: Tokenizer, texts: list[str], limit: int, eos: int, left: bool = False,
           bos: int | None = None, threads: int = 1) -> list[list[int]]:
    """Token lists as the packer builds them: ``[BOS] text EOS`` in at most ``limit`` tokens, the
    text cut from the right, or with ``left`` from the left (BOS and EOS always kept)."""
    keep = limit - 1 - (bos is not None)
    out = []
    for ids in tokenizer.encode_batch(texts, threads):
        ids = ids.tolist()
        kept = ids[-keep:] if left and len(ids) > keep else ids[:keep]
        out.append(([bos] if bos is not None else []) + kept + [eos])
    return out


@dataclass(frozen=True)
class Layout:
    """How evaluation turns text into tokens for one model: its tokenizer, the BOS to put before
    inputs (or None) and the packer's budgets."""

    tokenizer: Tokenizer
    bos: int | None
    max_input_tokens: int
    max_target_tokens: int
    truncate_left: bool
    threads: int = 1

    @classmethod
    def of(cls, tokenizer: Tokenizer, tcfg: TokenizeConfig | EvaluateSlice | PackSlice, threads: int = 1
           ) -> Layout:
        """The layout of ``tcfg``'s budgets, truncation side and BOS setting."""
        return cls(tokenizer, bos_token(tokenizer, tcfg.add_bos), tcfg.max_input_tokens,
                   tcfg.max_target_tokens, tcfg.truncate_inputs == "left", threads)

    def inputs(self, texts: list[str]) -> list[list[int]]:
        """``[BOS] input EOS`` per text (the prompt)."""
        return encode(self.tokenizer, texts, self.max_input_tokens, self.tokenizer.eos_id, self.truncate_left,
                      self.bos, self.threads)

    def targets(self, texts: list[str]) -> list[list[int]]:
        """``target EOS`` per text (an option)."""
        return encode(self.tokenizer, texts, self.max_target_tokens, self.tokenizer.eos_id,
                      threads=self.threads)

    def counts(self, texts: list[str]) -> np.ndarray:
        """The tokens each text takes as a prompt, before truncation (few-shot trimming)."""
        ids = self.tokenizer.encode_batch(texts, self.threads)
        return np.array([len(i) for i in ids], np.int64) + 1 + (self.bos is not None)
