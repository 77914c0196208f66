"""The ``chat`` format: an example as a two-turn conversation in the tokenizer's own chat template
(the instruction as the user turn, the target as the assistant turn), as instruct checkpoints
(SmolLM2-Instruct, Llama 3 Instruct, Qwen Instruct) are trained and prompted.

The spec is ``transformers``' ``apply_chat_template``: an example's tokens are those of
``apply_chat_template([{"role": "user", "content": input}, {"role": "assistant", "content": target}])``,
rendered by the same Jinja template with the same special-token variables and tokenized whole
without special tokens added. The **prompt** is the rendering of the user turn alone with
``add_generation_prompt=True`` (for SmolLM2: its default system turn, the user turn and
``<|im_start|>assistant\\n``); the **reply**, on which the loss falls and which evaluation scores,
is every token the full rendering has after the prompt's (SmolLM2: ``target<|im_end|>\\n``, the
newline the template writes after each turn included).

A template qualifies when the prompt's rendering is a prefix of the full rendering (checked once
on probe texts; :class:`ChatTemplateError` otherwise). Rendering does not call Jinja per row: the
template is rendered once around sentinel texts, which gives its fixed wrapper text, and rows are
built by string concatenation, provided probes with leading and trailing whitespace and newlines
come out verbatim (a template that trims or rewrites content, as Llama 3's ``| trim`` does, is
rendered per row instead). The whole strings are then tokenized in batch, so tokens are exactly
the spec's; the reply is split off at the prompt's token count where the prompt's own tokens are a
prefix of the whole (a reply starting with whitespace can merge into the generation prompt's last
token: such rows take the reply's own tokens and are counted as ``merged``).

The prompt's own tokens cost no second encoding of the (long) prompt where the template's text
after the user's content starts with an added token that takes no whitespace from its left
(``<|im_end|>``, ``<|eot_id|>``): ``tokenizers`` splits a text at its added tokens before anything
else, so the tokens before that token are the same in the prompt and in the whole conversation,
and the whole's tokens from that token on are those of the (short) text from it to the end. Rows
are checked against that (``whole[m:] == tokens(tail + reply)``) and any that fail take the
general path.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from flanpipe.core.tokens.tokenizers import Tokenizer

log = logging.getLogger(__name__)

SENTINELS = ("\x00FLANPIPE_USER\x00", "\x00FLANPIPE_ASSISTANT\x00")
PROBES = ((" \n Probe user text, with spaces.\n\n", "\n  Probe reply \n"),
          ("x", "y"), ("", ""))
"""Contents a verbatim template must render unchanged (leading and trailing whitespace included)."""
SPOT_CHECKS = 8
"""Rows of each rendered batch compared with the template's own Jinja rendering."""


class ChatTemplateError(ValueError):
    """The tokenizer cannot render the ``chat`` format; the message says why and what to change."""


def read_chat_template(folder: str | Path) -> str | None:
    """The chat template of a tokenizer folder: ``chat_template.jinja``, ``chat_template.json`` or
    the ``chat_template`` of ``tokenizer_config.json`` (a named list: its ``default``), as
    ``transformers`` reads them; None where there is none."""
    folder = Path(folder)
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    for name in ("chat_template.json", "tokenizer_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        value = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(value, list):
            value = {t.get("name"): t.get("template") for t in value}.get("default")
        if isinstance(value, str) and value:
            return value
    return None


def _special_tokens(folder: Path) -> dict[str, str]:
    """The special-token variables ``apply_chat_template`` gives a template (``bos_token``, ...)."""
    names: dict[str, str] = {}
    for file in ("special_tokens_map.json", "tokenizer_config.json"):
        path = folder / file
        raw = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            value = raw.get(key)
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str):
                names[key] = value
    return names


@dataclass(frozen=True)
class ChatTokens:
    """Each example's prompt and reply tokens, and which rows took the reply's own tokens because
    the whole rendering merged a token across the prompt's end (``merged``)."""

    prompts: list[np.ndarray]
    replies: list[np.ndarray]
    merged: np.ndarray


class ChatTemplate:
    """A tokenizer's chat template, checked and ready to render rows in batch (:func:`chat_template`
    builds one per tokenizer)."""

    def __init__(self, tokenizer: Tokenizer, template: str | None):
        if tokenizer.kind != "hf" or template is None:
            where = (f"{tokenizer.path.parent}" if tokenizer.kind == "hf"
                     else f"{tokenizer.path} (SentencePiece)")
            raise ChatTemplateError(
                f"tokenize.format: chat needs a tokenizer with a chat template, and {where} has none "
                "(no chat_template.jinja, chat_template.json or tokenizer_config.json chat_template); "
                "allowed without one: eos, text, auto (chat is for instruct checkpoints: "
                "train.model.source: pretrained)")
        from transformers.utils.chat_template_utils import _compile_jinja_template

        self.tokenizer, self.template = tokenizer, template
        self.compiled = _compile_jinja_template(template)
        self.variables = _special_tokens(tokenizer.path.parent)
        user, reply = SENTINELS
        prompt, full = self.render_one(user), self.render_one(user, reply)
        if not full.startswith(prompt):
            raise ChatTemplateError(
                f"tokenize.format: chat: the chat template of {tokenizer.path.parent} does not render the "
                "user turn with its generation prompt as a prefix of the whole conversation, so the "
                f"assistant turn cannot be told apart (prompt ends {prompt[-40:]!r}, conversation "
                f"{full[len(prompt) - 40:len(prompt) + 40]!r}); allowed with it: eos, text")
        if prompt.count(user) != 1 or full.count(reply) != 1:
            raise ChatTemplateError(f"tokenize.format: chat: the chat template of {tokenizer.path.parent} "
                                    "does not render each message's content once; allowed with it: eos, text")
        self.head, self.tail = prompt.split(user)
        self.reply_head, self.reply_end = full[len(prompt):].split(reply)
        self.verbatim = all(self.render_one(u) == self.head + u + self.tail
                            and self.render_one(u, r) == self.head + u + self.tail + self.reply_head + r
                            + self.reply_end for u, r in PROBES)
        if not self.verbatim:
            log.warning("the chat template of %s rewrites message content (trims it?): rendering it once "
                        "per example (slower)", tokenizer.path.parent)
        self.head_ids = tokenizer.encode(self.head)
        self.tail_ids = tokenizer.encode(self.tail)
        self.end_ids = tokenizer.encode(self.reply_end)
        self._added_tail = self._tail_starts_with_added_token()

    @property
    def split_at_tail(self) -> bool:
        """Whether :meth:`encode` takes the prompt's tokens from the whole conversation's."""
        return self.verbatim and self._added_tail

    def render_one(self, user: str, reply: str | None = None) -> str:
        """The template's rendering of one example: the prompt (user turn and generation prompt),
        or with ``reply`` the whole conversation, as ``apply_chat_template(..., tokenize=False)``."""
        messages = [{"role": "user", "content": user}]
        if reply is not None:
            messages.append({"role": "assistant", "content": reply})
        try:
            return self.compiled.render(messages=messages, tools=None, documents=None,
                                        add_generation_prompt=reply is None, **self.variables)
        except Exception as err:  # jinja raises its own errors, and templates raise_exception()
            raise ChatTemplateError(f"tokenize.format: chat: the chat template of "
                                    f"{self.tokenizer.path.parent} cannot render a user turn and an "
                                    f"assistant turn ({err}); allowed with it: eos, text") from None

    def render(self, users: list[str], replies: list[str] | None = None) -> list[str]:
        """:meth:`render_one` for every row, by concatenation where the template is verbatim.

        Every batch's rendering is spot-checked against Jinja on :data:`SPOT_CHECKS` rows; a
        mismatch (a template that rewrites some contents only) turns concatenation off."""
        if self.verbatim:
            rows = np.unique(np.linspace(0, len(users) - 1, min(len(users), SPOT_CHECKS)).astype(int))
            for i in rows:
                reply = None if replies is None else replies[i]
                joined = self.head + users[i] + self.tail + (
                    "" if reply is None else self.reply_head + reply + self.reply_end)
                if joined != self.render_one(users[i], reply):
                    log.warning("the chat template of %s renders row %d of a batch otherwise than its "
                                "wrapper: rendering it once per example from now on (slower)",
                                self.tokenizer.path.parent, i)
                    self.verbatim = False
                    break
        if not self.verbatim:
            if replies is None:
                return [self.render_one(u) for u in users]
            return [self.render_one(u, r) for u, r in zip(users, replies, strict=True)]
        head, tail, reply_head, end = self.head, self.tail, self.reply_head, self.reply_end
        if replies is None:
            return [head + u + tail for u in users]
        return [head + u + tail + reply_head + r + end for u, r in zip(users, replies, strict=True)]

    def _tail_starts_with_added_token(self) -> bool:
        """Whether the prompt's text after the user's content starts with an added token that
        ``tokenizers`` splits on before anything else and that takes no whitespace from its left."""
        rust = getattr(self.tokenizer, "rust", None)
        if rust is None or not self.tail_ids:
            return False
        token = rust.get_added_tokens_decoder().get(self.tail_ids[0])
        return (token is not None and self.tail.startswith(token.content) and not token.lstrip
                and not token.single_word and (token.special or not token.normalized))

    def encode(self, users: list[str], replies: list[str], threads: int = 1) -> ChatTokens:
        """Each row's prompt tokens and reply tokens (see the module docstring)."""
        whole = self.tokenizer.encode_batch(self.render(users, replies), threads)
        if not self.split_at_tail:
            return self._split(whole, self.tokenizer.encode_batch(self.render(users), threads), replies,
                               threads)
        tail = np.asarray(self.tail_ids, np.int32)
        after = self.tail + self.reply_head
        rest = self.tokenizer.encode_batch([after + r + self.reply_end for r in replies], threads)
        prompts: list[np.ndarray | None] = []
        for w, s in zip(whole, rest, strict=True):
            m = len(w) - len(s)
            ok = m >= 0 and np.array_equal(w[m:], s)
            prompts.append(np.concatenate([w[:m], tail]) if ok else None)
        failed = [i for i, p in enumerate(prompts) if p is None]
        if failed:  # not expected (see the module docstring): these rows take the general path
            log.warning("%d rows did not split at the chat template's added token; encoding their prompts",
                        len(failed))
            for i, p in zip(failed, self.tokenizer.encode_batch(self.render([users[i] for i in failed]),
                                                                threads), strict=True):
                prompts[i] = p
        return self._split(whole, prompts, replies, threads)

    def _split(self, whole: list[np.ndarray], prompts: list[np.ndarray], replies: list[str],
               threads: int) -> ChatTokens:
        """The reply as the whole's tokens after the prompt's, where the prompt's are a prefix of
        the whole's; elsewhere the reply's own tokens (counted in ``merged``)."""
        merged = np.zeros(len(whole), bool)
        out = []
        for i, (p, w) in enumerate(zip(prompts, whole, strict=True)):
            n = len(p)
            if len(w) > n and np.array_equal(w[:n], p):
                out.append(w[n:])
            else:
                merged[i] = True
                out.append(None)
        if merged.any():
            rows = np.flatnonzero(merged)
            own = self.tokenizer.encode_batch([self.reply_head + replies[i] + self.reply_end for i in rows],
                                              threads)
            for i, ids in zip(rows, own, strict=True):
                out[i] = ids
        return ChatTokens(prompts, out, merged)

    def prompt_ids(self, users: list[str], threads: int = 1) -> list[np.ndarray]:
        """Each row's prompt tokens (user turn and generation prompt)."""
        return self.tokenizer.encode_batch(self.render(users), threads)

    def cut_prompt(self, ids: np.ndarray, limit: int, left: bool) -> np.ndarray:
        """A prompt of at most ``limit`` tokens: the wrapper's tokens before and after the user's
        content kept, the content cut from its end (or with ``left`` from its start).

        The wrapper's tokens are counted from its text alone (a content starting with whitespace
        may have merged one of them: the cut is then a token off, never into the template's end).
        """
        if len(ids) <= limit:
            return ids
        h, t = len(self.head_ids), len(self.tail_ids)
        keep = limit - h - t
        if keep < 0:
            raise ValueError(f"tokenize.max_input_tokens {limit} cannot hold the chat template's "
                             f"{h + t} prompt tokens; allowed: at least {h + t + 1}")
        content = ids[h:len(ids) - t]
        content = content[len(content) - keep:] if left else content[:keep]
        return np.concatenate([ids[:h], content, ids[len(ids) - t:]])

    def cut_reply(self, ids: np.ndarray, limit: int) -> np.ndarray:
        """A reply of at most ``limit`` tokens: its end-of-turn tokens kept, the content cut from
        its end."""
        if len(ids) <= limit:
            return ids
        e = len(self.end_ids)
        if limit <= e:
            raise ValueError(f"tokenize.max_target_tokens {limit} cannot hold the chat template's {e} "
                             f"end-of-turn tokens; allowed: at least {e + 1}")
        return np.concatenate([ids[:limit - e], ids[len(ids) - e:]])

    def check_budgets(self, max_input_tokens: int, max_target_tokens: int) -> None:
        """Refuse budgets that cannot hold the template's own tokens (clear error naming the key)."""
        fixed = len(self.head_ids) + len(self.tail_ids)
        if fixed >= max_input_tokens:
            raise ValueError(f"tokenize.max_input_tokens {max_input_tokens} cannot hold the chat template's "
                             f"{fixed} prompt tokens and any input; allowed: at least {fixed + 1}")
        if len(self.end_ids) >= max_target_tokens:
            raise ValueError(f"tokenize.max_target_tokens {max_target_tokens} cannot hold the chat "
                             f"template's {len(self.end_ids)} end-of-turn tokens and any target; "
                             f"allowed: at least {len(self.end_ids) + 1}")

    def describe(self, merged: int = 0) -> dict:
        """What a manifest records: the template's hash and wrapper texts, whether rows render by
        concatenation and split at the added token, and the rows whose reply took its own tokens."""
        import hashlib

        return {"template_sha256": hashlib.sha256(self.template.encode()).hexdigest(),
                "prompt_head": self.head, "prompt_tail": self.tail, "reply_head": self.reply_head,
                "reply_end": self.reply_end, "end_ids": self.end_ids, "verbatim": self.verbatim,
                "split_at_tail": self.split_at_tail, "replies_merged": merged}

    @property
    def stop_id(self) -> int | None:
        """The token that ends the assistant's turn (the first of the end-of-turn tokens)."""
        return self.end_ids[0] if self.end_ids else None


@cache
def chat_template(tokenizer: Tokenizer) -> ChatTemplate:
    """The checked chat template of ``tokenizer`` (one per tokenizer object)."""
    template = read_chat_template(tokenizer.path.parent) if tokenizer.kind == "hf" else None
    return ChatTemplate(tokenizer, template)
