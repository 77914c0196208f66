"""Few-shot prompts: ``k`` solved train exemplars before each eval input, drawn by stable keys.

Used by evaluate (few-shot evaluation) and by anything that builds few-shot prompts; exemplars come
from :class:`FewShotPool`, trimmed to a token budget by :func:`trim_prompts`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flanpipe.core.config import FewShotConfig
from flanpipe.core.config.registry import DatasetSpec, field_type, load_registry  # noqa: F401 (doctests)
from flanpipe.core.text.keys import derive_seed, scramble, stable_keys
from flanpipe.core.text.templates import DatasetTemplates, OptionsStyle, Template, load_bank, render_template  # noqa: F401

TokenCounter = Callable[[list[str]], np.ndarray]
"""Counts the tokens of each of a batch of texts (the model's tokenizer, or words)."""
CALIBRATION_PROMPTS = 128
"""Prompts per template and style whose tokens are counted exactly to measure tokens per character."""
ESTIMATE_MARGIN = 1.25
"""How far past the calibration's extreme tokens per character a prompt may be before its estimate
stops deciding whether it fits; prompts nearer the budget are counted exactly."""


def whitespace_tokens(text: str) -> int:
    """The default token count for trimming prompts before a tokenizer exists: words."""
    return len(text.split())


def whitespace_token_counts(texts: list[str]) -> np.ndarray:
    """:func:`whitespace_tokens` of each text, the default :data:`TokenCounter`.

    >>> whitespace_token_counts(["two words", "", "one\\ntwo  three"]).tolist()
    [2, 0, 3]
    """
    return np.fromiter((len(t.split()) for t in texts), np.int64, len(texts))


def few_shot_columns(spec: DatasetSpec, bank: DatasetTemplates, available: list[str]) -> list[str]:
    """The raw columns few-shot prompts read, of those ``available`` (a file's columns): the id
    (or, without one, the text fields the content key hashes), the label and target fields, and
    every field the eval templates name. Others (a pool file's ``priority``) are left unread.

    >>> spec = load_registry().datasets["mnli"]
    >>> few_shot_columns(spec, load_bank()["mnli"], ["premise", "hypothesis", "label", "idx", "priority"])
    ['premise', 'hypothesis', 'label', 'idx']
    """
    task = spec.task
    paths = [task.label_field, task.label_in, *(task.targets or ())]
    paths += [task.choices] if isinstance(task.choices, str) else list(task.choices or ())
    paths.append(spec.id_field)
    if not spec.id_field or pa.types.is_nested(field_type(spec.schema, spec.id_field)):
        paths += spec.text_fields  # no scalar id: the key hashes the content (stable_keys)
    for template in bank.eval_templates:
        for part in ("input", "target"):
            paths += [p.split("|")[0].removeprefix("@") for p in template.placeholders(part)
                      if p.split("|")[0] != "answer"]
    wanted = {p.split(".")[0] for p in paths if p}
    return [c for c in available if c in wanted]


@dataclass(frozen=True)
class FewShotPrompts:
    """Few-shot prompts of one template and OPTIONS style, and how they were trimmed."""

    prompts: list[str]
    shots: np.ndarray
    """Exemplars kept in each prompt."""
    counted: int
    """Prompts (of every trimming round) whose tokens were counted exactly; the rest were decided
    by their estimate, far from the budget."""


class FewShotPool:
    """The train rows few-shot exemplars are drawn from and the eval rows they are drawn for.

    Exemplars come from stable keys, never positions: the train rows sit on a ring ordered by a
    seeded hash of (seed, dataset, template, their key); each eval row starts at the hash of its own
    key and takes the next ``k`` rows, rejecting the example itself (the same key, or the identical
    input). Adding or removing one train row changes only the exemplars of the eval rows whose walk
    passes it (consistent hashing). Keys are hashed once per dataset and each template's ring built
    once for all its OPTIONS styles; only the rows a walk visits are rendered. Whole exemplars are
    dropped, oldest first, until the prompt fits in ``cfg.max_tokens`` (:func:`trim_prompts`).
    """

    def __init__(self, spec: DatasetSpec, bank: DatasetTemplates, eval_raw: pa.Table, train_raw: pa.Table,
                 cfg: FewShotConfig, seed: int, eval_keys: np.ndarray | None = None,
                 train_keys: np.ndarray | None = None):
        self.spec, self.bank, self.cfg, self.seed = spec, bank, cfg, seed
        self.eval_raw, self.train_raw = eval_raw, train_raw.combine_chunks()  # one chunk: takes 3x faster
        self.eval_keys = stable_keys(spec, eval_raw) if eval_keys is None else eval_keys
        self.train_keys = stable_keys(spec, train_raw) if train_keys is None else train_keys
        self._orders: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}
        self._starts: dict[int, np.ndarray] = {}

    def asking(self, eval_raw: pa.Table, eval_keys: np.ndarray) -> FewShotPool:
        """This pool's train rows (their keys and ring orders shared, not rebuilt) for other rows
        to prompt, e.g. a batch of train rows that get few-shot prompts in templatize."""
        other = copy.copy(self)  # shallow: the train rows, keys and ring orders are this pool's
        other.eval_raw, other.eval_keys, other._starts = eval_raw, eval_keys, {}
        return other

    def ring(self, template: Template) -> tuple[np.ndarray, np.ndarray]:
        """The train rows in ring order, and where each eval row's walk starts on it."""
        if template.id not in self._orders:
            salt = derive_seed(self.seed, f"few_shot/{self.spec.name}/{template.id}")
            points = scramble(self.train_keys, salt)
            order = np.argsort(points, kind="stable")
            self._orders[template.id] = order, points[order], salt
        order, points, salt = self._orders[template.id]
        if template.id not in self._starts:
            self._starts[template.id] = np.searchsorted(points, scramble(self.eval_keys, salt ^ 0x5EED))
        return order, self._starts[template.id]

    def exemplars(self, template: Template, queries: pa.Array, style: OptionsStyle) -> np.ndarray:
        """``(eval rows, k)`` train row of each exemplar, oldest first; -1 where the train split
        has fewer than ``k`` rows to give. Each walk looks ``k + 2`` steps ahead, and four times as
        far again for the rare rows that had to reject more than two."""
        order, starts = self.ring(template)
        n, k = len(order), self.cfg.k
        chosen = np.full((len(starts), k), -1, np.int64)
        pending, width = np.arange(len(starts)), min(n, k + 2)
        while len(pending) and k and n:
            walk = order[(starts[pending, None] + np.arange(width)) % n]
            rows, at = np.unique(walk, return_inverse=True)
            inputs = render_template(self.bank, template, self.train_raw.take(pa.array(rows)), style).inputs
            query = queries.take(pa.array(np.repeat(pending, width)))
            same = pc.equal(inputs.take(pa.array(at.ravel())), query).to_numpy(zero_copy_only=False)
            ok = (self.train_keys[walk] != self.eval_keys[pending, None]) & ~same.reshape(walk.shape)
            rank = np.cumsum(ok, axis=1)
            done = (rank[:, -1] >= k) | (width == n)
            take = ok & (rank <= k) & done[:, None]
            r, c = np.nonzero(take)
            chosen[pending[r], rank[r, c] - 1] = walk[r, c]
            pending, width = pending[~done], min(n, width * 4)
        return chosen

    def prompts(self, template: Template, style: OptionsStyle = "dash",
                count_tokens: TokenCounter = whitespace_token_counts, queries: pa.Array | None = None,
                shots: np.ndarray | None = None) -> FewShotPrompts:
        """Every eval row's input with up to ``k`` solved exemplars before it, in ``style``.
        ``queries``: the inputs to ask (default: the template's rendering of the eval rows; evaluate
        passes them fitted to the budget). Exemplars are chosen against the rendering as it is.
        ``shots``: exemplars each row asks for, at most ``k`` (default ``k``): the first ones of its
        walk."""
        rendered = render_template(self.bank, template, self.eval_raw, style).inputs
        chosen = self.exemplars(template, rendered, style)
        if shots is not None:
            chosen[np.arange(chosen.shape[1])[None, :] >= np.asarray(shots)[:, None]] = -1
        queries = rendered if queries is None else queries
        rows, at = np.unique(chosen[chosen >= 0], return_inverse=True)
        shown = render_template(self.bank, template, self.train_raw.take(pa.array(rows)), style)
        texts = pc.binary_join_element_wise(shown.inputs, shown.targets, "\n")
        index = np.full(chosen.shape, 0, np.int64)
        index[chosen >= 0] = at
        slots = [texts.take(pa.array(index[:, s], mask=chosen[:, s] < 0)) for s in range(chosen.shape[1])]
        seed = derive_seed(self.seed, f"few_shot/calibrate/{self.spec.name}/{template.id}/{style}")
        return trim_prompts(slots, queries, self.cfg, count_tokens, seed)


def trim_prompts(slots: list[pa.Array], queries: pa.Array, cfg: FewShotConfig, count_tokens: TokenCounter,
                 seed: int) -> FewShotPrompts:
    """Join each row's exemplars (``slots[s]``: every row's ``s``-th, null where it has none) and
    its query with ``cfg.delimiter``, dropping exemplars oldest first until the prompt fits in
    ``cfg.max_tokens`` (a prompt with no exemplar left stays as it is).

    Counting every prompt's tokens exactly costs more than building them (MNLI: 16 prompts of ~450
    tokens per eval row), and the count only matters near the budget. So each round estimates a
    prompt's tokens from its characters, at the extreme tokens per character of a seeded sample of
    :data:`CALIBRATION_PROMPTS` prompts counted exactly, widened by :data:`ESTIMATE_MARGIN`; a prompt
    that fits (or misses) even at the far end of that range is decided by it, every other prompt is
    counted exactly. The result is the exact re-encoding loop's unless a prompt's tokens per
    character lie outside the sampled range by more than the margin.

    >>> slots = [pa.array(["a b c", "d"]), pa.array(["e f", None])]
    >>> cfg = FewShotConfig(k=2, delimiter=" | ", max_tokens=16)
    >>> trim_prompts(slots, pa.array(["q r s t u v w x y z", "q"]), cfg, whitespace_token_counts, 0).prompts
    ['e f | q r s t u v w x y z', 'd | q']
    """
    if cfg.max_tokens is None:
        raise ValueError("few_shot.max_tokens is null: resolve it first (FewShotConfig.within)")
    m, k = len(queries), len(slots)
    have = np.zeros(m, np.int64)
    for slot in slots:
        have += ~slot.is_null().to_numpy(zero_copy_only=False)
    prompts: list[str | None] = [None] * m
    shots = np.zeros(m, np.int64)
    active, counted, ratio = np.arange(m), 0, None
    for dropped in range(k + 1):
        if not len(active):
            break
        picks = pa.array(active)
        text = pc.binary_join_element_wise(*[s.take(picks) for s in slots[dropped:]], queries.take(picks),
                                           cfg.delimiter, null_handling="skip")
        left = have[active] - dropped
        chars = pc.utf8_length(text).to_numpy(zero_copy_only=False).astype(np.float64)
        tokens = np.full(len(active), -1, np.int64)
        if ratio is None:
            sample = np.flatnonzero(left > 0)
            sample = np.random.default_rng(seed).choice(sample, min(len(sample), CALIBRATION_PROMPTS),
                                                         replace=False) if len(sample) else sample
            tokens[sample] = count_tokens(text.take(pa.array(sample, pa.int64())).to_pylist())
            counted += len(sample)
            per_char = tokens[sample] / np.maximum(chars[sample], 1)
            ratio = (per_char.min() / ESTIMATE_MARGIN, per_char.max() * ESTIMATE_MARGIN) if len(sample) \
                else (0.0, 0.0)
        fits = chars * ratio[1] + 2 <= cfg.max_tokens
        misses = chars * ratio[0] - 2 > cfg.max_tokens
        unsure = np.flatnonzero((left > 0) & (tokens < 0) & ~fits & ~misses)
        if len(unsure):
            tokens[unsure] = count_tokens(text.take(pa.array(unsure, pa.int64())).to_pylist())
            counted += len(unsure)
        fits = np.where(tokens >= 0, tokens <= cfg.max_tokens, fits)
        done = (left <= 0) | fits
        for row, prompt in zip(active[done], text.filter(pa.array(done)).to_pylist(), strict=True):
            prompts[row] = prompt
        shots[active[done]] = np.maximum(left[done], 0)
        active = active[~done]
    return FewShotPrompts(prompts, shots, counted)


def few_shot_inputs(
    spec: DatasetSpec,
    bank: DatasetTemplates,
    template: Template,
    eval_raw: pa.Table,
    train_raw: pa.Table,
    cfg: FewShotConfig,
    seed: int,
    count_tokens: TokenCounter = whitespace_token_counts,
    options_style: OptionsStyle = "dash",
) -> list[str]:
    """Each eval row's input with ``cfg.k`` solved train exemplars before it, same template (one
    template of a :class:`FewShotPool`; build the pool once to prompt several templates)."""
    return FewShotPool(spec, bank, eval_raw, train_raw, cfg, seed).prompts(template, options_style,
                                                                          count_tokens).prompts


