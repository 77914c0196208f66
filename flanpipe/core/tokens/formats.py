"""The token formats: how an example's text becomes tokens, for pack (training rows) and evaluate
(prompts and options) alike. This module owns them.

Formats (:data:`FORMATS`); all but ``continuation`` are training formats (``tokenize.format``,
:data:`TRAIN_FORMATS`):

- ``eos``, the paper's training format: ``[BOS] input EOS`` then ``target EOS``. Inputs are cut to
  ``max_input_tokens`` and targets to ``max_target_tokens``, BOS and EOS always kept.
- ``text``, how pretrained decoders are fine-tuned today: ``[BOS] input SEP`` then ``target EOS``,
  with ``SEP`` the tokens of ``tokenize.separator`` (a newline by default) encoded on their own, and
  no EOS between input and target: a pretrained model reads an EOS as the end of its document.
  With a byte-level BPE (SmolLM2, GPT-2, Llama 3, Qwen) a newline never merges with its
  neighbours, so these are the tokens of the joined text.
- ``continuation``, how lm-evaluation-harness scores a pretrained model: ``[BOS] context`` then the
  option's own tokens, no EOS anywhere. The context is the input and the option is
  ``target_delimiter + target``. As in lm-eval's ``HFLM._encode_pair``, the context's trailing spaces
  move to the option, and the option's tokens are those that encoding the joined text adds after
  the context's, so the merges at the boundary are the model's own. An untuned base model, and any
  folder that flanpipe did not train, is scored in it: the ``eos`` format would end its document
  before the answer.

- ``chat``, for instruct checkpoints: the tokenizer's chat template with the input as the user
  turn (prompt: the rendering with the generation prompt) and the option or target as the
  assistant turn, its end-of-turn tokens included; the template places every special token, so
  no BOS is added (:mod:`flanpipe.core.tokens.chat`). Inputs are cut inside the user's content, the
  template's tokens kept.

A model flanpipe trained is scored in the format it was trained in, which its folder's
:data:`RECORD` names.

BOS goes first where ``tokenize.add_bos`` (or, where that is null, the tokenizer's own convention)
asks for it. lm-eval adds none by default; the two agree for tokenizers that add none (SmolLM2,
GPT-2, Qwen), and differ by that one token for those that do (Llama).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from flanpipe.core.config import EvaluateSlice, PackSlice, TokenizeConfig
from flanpipe.core.tokens.chat import ChatTemplate, chat_template
from flanpipe.core.tokens.tokenizers import Tokenizer

FormatName = Literal["eos", "text", "chat", "continuation"]
FORMATS: tuple[FormatName, ...] = ("eos", "text", "chat", "continuation")
TRAIN_FORMATS: tuple[FormatName, ...] = ("eos", "text", "chat")
"""The formats a model is trained in (``tokenize.format``)."""
RECORD = "flanpipe.json"
"""In a model folder flanpipe trained: the format it was trained in and its separator
(``{"format": "text", "separator": "\\n", ...}``)."""


def bos_token(tokenizer: Tokenizer, add_bos: bool | None) -> int | None:
    """The BOS id to put before each example's inputs, or None: ``tokenize.add_bos``, or where that
    is null, the tokenizer's own convention."""
    if add_bos is None:
        add_bos = tokenizer.add_bos
    if add_bos and tokenizer.bos_id is None:
        raise ValueError(f"tokenize.add_bos: true, but the tokenizer {tokenizer.path} has no BOS token; "
                         "allowed: false or null")
    return tokenizer.bos_id if add_bos else None


def separator_ids(tokenizer: Tokenizer, name: str, separator: str) -> list[int]:
    """The tokens between an input and its target in format ``name``: EOS (``eos``), the
    separator's own tokens (``text``), none (``continuation``)."""
    if name == "eos":
        return [tokenizer.eos_id]
    if name == "text":
        return tokenizer.encode_batch([separator])[0].tolist() if separator else []
    if name in ("continuation", "chat"):
        return []
    raise ValueError(f"format {name!r}; allowed: {', '.join(FORMATS)}")


def encode(tokenizer: Tokenizer, texts: list[str], limit: int, end: list[int], left: bool = False,
           bos: int | None = None, threads: int = 1) -> list[list[int]]:
    """Token lists as the packer builds them: ``[BOS] text END`` in at most ``limit`` tokens (END:
    EOS, or a ``text`` format's separator), the text cut from the right, or with ``left`` from the
    left (BOS and END always kept)."""
    keep = limit - len(end) - (bos is not None)
    if keep < 0:
        raise ValueError(f"{limit} tokens cannot hold BOS and the {len(end)} tokens after the text")
    out = []
    for ids in tokenizer.encode_batch(texts, threads):
        ids = ids.tolist()
        kept = (ids[-keep:] if keep else []) if left and len(ids) > keep else ids[:keep]
        out.append(([bos] if bos is not None else []) + kept + end)
    return out


def split_pair(context: str, continuation: str) -> tuple[str, str]:
    """lm-eval's rule: the context's trailing whitespace goes to the start of the continuation.

    >>> split_pair("Question: 2+2?\\nAnswer: ", "4")
    ('Question: 2+2?\\nAnswer:', ' 4')
    """
    spaces = len(context) - len(context.rstrip())
    if spaces:
        return context[:-spaces], context[-spaces:] + continuation
    return context, continuation


@dataclass(frozen=True)
class Format:
    """How evaluation turns text into tokens for one model: its tokenizer, the format's name, the
    BOS to put before inputs (or None), the packer's budgets, the text between a context and its
    option (``continuation``) and the separator of a ``text`` format."""

    tokenizer: Tokenizer
    bos: int | None
    max_input_tokens: int
    max_target_tokens: int
    truncate_left: bool
    threads: int = 1
    name: FormatName = "eos"
    target_delimiter: str = " "
    separator: str = "\n"

    @classmethod
    def of(cls, tokenizer: Tokenizer, tcfg: TokenizeConfig | EvaluateSlice | PackSlice, threads: int = 1,
           name: FormatName = "eos", separator: str | None = None) -> Format:
        """The format ``name`` with ``tcfg``'s budgets, truncation side, BOS setting and separator
        (``separator`` replaces it: a trained model's own), and from an evaluate slice its target
        delimiter."""
        if name not in FORMATS:
            raise ValueError(f"format {name!r}; allowed: {', '.join(FORMATS)}")
        evaluate = getattr(tcfg, "evaluate", None)
        delimiter = evaluate.target_delimiter if evaluate is not None else " "
        if separator is None:
            separator = getattr(tcfg, "separator", "\n")
        return cls(tokenizer, bos_token(tokenizer, tcfg.add_bos), tcfg.max_input_tokens,
                   tcfg.max_target_tokens, tcfg.truncate_inputs == "left", threads, name, delimiter,
                   separator)

    def as_(self, name: FormatName) -> Format:
        """The same tokenizer, budgets and separator in another format."""
        if name not in FORMATS:
            raise ValueError(f"format {name!r}; allowed: {', '.join(FORMATS)}")
        return replace(self, name=name)

    @property
    def chat(self) -> ChatTemplate:
        """The tokenizer's checked chat template (the ``chat`` format)."""
        return chat_template(self.tokenizer)

    @property
    def _end(self) -> list[int]:
        return separator_ids(self.tokenizer, self.name, self.separator)

    def _cut(self, ids: list[int], keep: int) -> list[int]:
        return ids[-keep:] if self.truncate_left and len(ids) > keep else ids[:keep]

    def inputs(self, texts: list[str]) -> list[list[int]]:
        """The prompt per text: ``[BOS] input EOS`` (``eos``), ``[BOS] input SEP`` (``text``) or
        ``[BOS] context`` (``continuation``, the context's trailing spaces left for the option). A
        context of no tokens is BOS alone, or where there is none EOS, as lm-eval scores an empty
        context. ``chat``: the user turn and the generation prompt, the content cut to fit."""
        if self.name == "chat":
            chat = self.chat
            return [chat.cut_prompt(ids, self.max_input_tokens, self.truncate_left).tolist()
                    for ids in chat.prompt_ids(texts, self.threads)]
        if self.name != "continuation":
            return encode(self.tokenizer, texts, self.max_input_tokens, self._end, self.truncate_left,
                          self.bos, self.threads)
        contexts = [split_pair(t, "")[0] for t in texts]
        keep = self.max_input_tokens - (self.bos is not None)
        out = []
        for ids in self.tokenizer.encode_batch(contexts, self.threads):
            body = ([self.bos] if self.bos is not None else []) + self._cut(ids.tolist(), keep)
            out.append(body or [self.tokenizer.eos_id])
        return out

    def targets(self, texts: list[str]) -> list[list[int]]:
        """``target EOS`` per text (an option, ``eos`` and ``text``), on its own; in
        ``continuation`` use :meth:`options`, whose tokens depend on the context."""
        if self.name in ("continuation", "chat"):
            raise ValueError(f"a {self.name} option's tokens depend on its context: use Format.options")
        return encode(self.tokenizer, texts, self.max_target_tokens, [self.tokenizer.eos_id],
                      threads=self.threads)

    def options(self, contexts: list[str], options: list[list[str]]) -> list[list[list[int]]]:
        """Each context's options as token lists: ``target EOS`` (``eos``, ``text``), the assistant
        turn after the context's user turn (``chat``: the option and the end-of-turn tokens), or
        (``continuation``) the tokens that ``context + delimiter + option``, encoded whole, has after
        the context's own, at most ``max_target_tokens`` (at least one: an option that merges wholly
        into the context keeps the joined text's last token)."""
        flat = [o for opts in options for o in opts]
        if self.name == "chat":
            users = [c for c, opts in zip(contexts, options, strict=True) for _ in opts]
            replies = self.chat.encode(users, flat, self.threads).replies
            encoded = [self.chat.cut_reply(r, self.max_target_tokens).tolist() for r in replies]
        elif self.name != "continuation":
            encoded = self.targets(flat)
        else:
            pairs = [split_pair(c, self.target_delimiter + o)
                     for c, opts in zip(contexts, options, strict=True) for o in opts]
            whole = self.tokenizer.encode_batch([c + o for c, o in pairs], self.threads)
            unique = list(dict.fromkeys(c for c, _ in pairs))
            context_len = {c: len(ids) for c, ids in zip(
                unique, self.tokenizer.encode_batch(unique, self.threads), strict=True)}
            encoded = []
            for (c, _), ids in zip(pairs, whole, strict=True):
                ids = ids.tolist()
                tail = ids[context_len[c]:] or ids[-1:]
                encoded.append(tail[:self.max_target_tokens])
        out, at = [], 0
        for opts in options:
            out.append(encoded[at:at + len(opts)])
            at += len(opts)
        return out

    def counts(self, texts: list[str]) -> np.ndarray:
        """The tokens each text takes as a prompt, before truncation (few-shot trimming, fitting)."""
        if self.name == "chat":
            return np.array([len(i) for i in self.chat.prompt_ids(texts, self.threads)], np.int64)
        ids = self.tokenizer.encode_batch(texts, self.threads)
        return np.array([len(i) for i in ids], np.int64) + (self.bos is not None) + len(self._end)
