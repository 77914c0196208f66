"""Rank classification of a dataset's eval rows, shared by the evaluate stage and by training's
held-out curve (``train.eval_every``): the seeded row sample, the prompts of a template (fitted to
the token budget, zero-shot or few-shot), each option's score under a normalisation, and the chosen
option. Both callers score through :func:`flanpipe.core.eval.scoring.score_options` with these
functions, so a curve point and a separate ``flanpipe evaluate`` of the same checkpoint on the same
rows choose the same options.

:class:`Probe` is the curve's fixed slice of one dataset, rendered and tokenized once: each
:meth:`Probe.score` is the headline variant's score (the mean over templates, as evaluate's
headline ``mean``) and the gold options' mean NLL per token.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from flanpipe.core.config import EvaluateSlice
from flanpipe.core.config.registry import load_registry
from flanpipe.core.eval import metrics
from flanpipe.core.eval.scoring import score_options
from flanpipe.core.io import read_table
from flanpipe.core.logs import progress_counter
from flanpipe.core.text.fewshot import FewShotPool, TokenCounter
from flanpipe.core.text.keys import derive_seed
from flanpipe.core.text.templates import (
    DatasetTemplates,
    Template,
    fit_to_tokens,
    load_bank,
    long_field,
    render_template,
)
from flanpipe.core.tokens.formats import Format

NORMALIZATIONS = ("sum", "per_token", "per_char", "pmi")
PMI_GROUP = 32  # unconditional options scored after one prompt at a time
log = logging.getLogger(__name__)


def eval_sample(table: pa.Table, max_examples: int | None, seed: int, name: str) -> pa.Table:
    """A seeded sample of ``max_examples`` eval rows (in source order), or every row."""
    if max_examples is None or table.num_rows <= max_examples:
        return table
    rng = np.random.default_rng(derive_seed(seed, f"evaluate/{name}"))
    return table.take(pa.array(np.sort(rng.choice(table.num_rows, max_examples, replace=False))))



def prompts_for(bank: DatasetTemplates, template: Template, eval_raw: pa.Table, pool: FewShotPool | None,
                style: str, count_tokens: TokenCounter, field: str | None, budget: int) -> list[str]:
    """The prompt of every eval row under one template: zero-shot, or few-shot with exemplars from
    ``pool``. The query is fitted to ``budget`` tokens by cutting the end of ``field`` (the
    dataset's long field; None: no cut), as templatize fits training inputs, so the instruction
    and the OPTIONS survive."""
    fitted, cut = fit_to_tokens(bank, template, eval_raw, style, field, budget, count_tokens)
    if cut.any():
        log.info("%s template %d, OPTIONS %s: %d inputs fitted to %d tokens (%s cut)", bank.dataset,
                 template.id, style, int((cut > 0).sum()), budget, field)
    if pool is None:
        return fitted.inputs.to_pylist()
    built = pool.prompts(template, style, count_tokens, queries=fitted.inputs)
    log.info("%s template %d, OPTIONS %s: %d few-shot prompts, %.2f exemplars each, %d counted exactly",
             bank.dataset, template.id, style, len(built.prompts), built.shots.mean(), built.counted)
    return built.prompts



def normalized(norm: str, sums: np.ndarray, tokens: np.ndarray, chars: np.ndarray,
               unconditional: np.ndarray | None = None) -> np.ndarray:
    """Options' scores under a normalisation: ``sum`` (summed log-likelihood, lm-eval ``acc``),
    ``per_token``, ``per_char`` (lm-eval ``acc_norm``) or ``pmi`` (minus the log-likelihood of the
    same tokens after the answer prefix alone, lm-eval ``acc_mutual_info``).

    >>> normalized("pmi", np.array([-2.0, -3.0]), np.array([1, 2]), np.array([3, 6]), np.array([-0.5, -2.5]))
    array([-1.5, -0.5])
    """
    if norm == "sum":
        return sums
    if norm == "per_token":
        return sums / np.maximum(tokens, 1)
    if norm == "per_char":
        return sums / np.maximum(chars, 1)
    if norm == "pmi":
        return sums - unconditional
    raise ValueError(f"normalization {norm!r}; allowed: {', '.join(NORMALIZATIONS)}")


def unconditional_scores(model: torch.nn.Module, fmt: Format, options: list[list[list[int]]], prefix: str,
                         max_batch_tokens: int) -> list[np.ndarray]:
    """Each option's log-likelihood after the answer prefix alone (the format's prompt of
    ``prefix``): the same tokens as after its own prompt, so PMI compares like with like. Each
    distinct option is scored once."""
    prompt = fmt.inputs([prefix])[0]
    unique = list(dict.fromkeys(tuple(o) for opts in options for o in opts))
    groups = [unique[i:i + PMI_GROUP] for i in range(0, len(unique), PMI_GROUP)]
    scores = score_options(model, [prompt] * len(groups), [[list(o) for o in g] for g in groups],
                           max_batch_tokens=max_batch_tokens)
    found = {o: float(x) for g, sc in zip(groups, scores, strict=True) for o, x in zip(g, sc, strict=True)}
    return [np.array([found[tuple(o)] for o in opts]) for opts in options]


@dataclass(frozen=True)
class RankScores:
    """Each row's options' summed log-likelihoods (``sums``), their tokens (``options``, as the format
    encodes them, EOS included) and the chosen option under each normalisation asked for."""

    sums: list[np.ndarray]
    options: list[list[list[int]]]
    picks: dict[str, np.ndarray]


def rank_scores(model: torch.nn.Module, fmt: Format, prompts: list[str], options: list[list[str]],
                max_batch_tokens: int, pmi_prefix: str = "",
                norms: tuple[str, ...] = NORMALIZATIONS, tokens: tuple[list, list] | None = None
                ) -> RankScores:
    """Score every row's options and choose one under each of ``norms``; ties go to the first
    option. ``tokens`` (the prompts' and options' token lists, as ``fmt`` encodes them) skips the
    encoding (the curve encodes its slice once)."""
    ptoks, otoks = tokens if tokens is not None else (fmt.inputs(prompts), fmt.options(prompts, options))
    sums = score_options(model, ptoks, otoks, max_batch_tokens=max_batch_tokens,
                         progress=progress_counter(len(ptoks), f"{fmt.name}: rank classification", "prompts"))
    uncond = (unconditional_scores(model, fmt, otoks, pmi_prefix, max_batch_tokens) if "pmi" in norms
              else [None] * len(sums))
    picks = {}
    for norm in norms:
        chosen = [int(np.argmax(normalized(norm, s, np.array([len(t) for t in toks]),
                                           np.array([len(o) for o in opts]), u)))
                  for s, toks, opts, u in zip(sums, otoks, options, uncond, strict=True)]
        picks[norm] = np.array(chosen)
    return RankScores(sums, otoks, picks)


def rank_classify(model: torch.nn.Module, fmt: Format, prompts: list[str], options: list[list[str]],
                  max_batch_tokens: int, pmi_prefix: str = "", norms: tuple[str, ...] = NORMALIZATIONS
                  ) -> dict[str, np.ndarray]:
    """The chosen option of every row under each of ``norms`` (by default every one of
    :data:`NORMALIZATIONS`); ties go to the first option."""
    return rank_scores(model, fmt, prompts, options, max_batch_tokens, pmi_prefix, norms).picks


def headline_variant(task: str, cfg: EvaluateSlice) -> str:
    """The variant a result's headline reports: ``greedy`` decoding, or rank classification's
    ``<with|without>_options/<normalization>``."""
    return ("greedy" if task == "generation"
            else f"{cfg.evaluate.options_suffix}_options/{cfg.evaluate.normalization}")


def options_style(cfg: EvaluateSlice) -> str:
    """The OPTIONS style of the prompts that show their options (``templatize.options``, or ``dash``
    where that is ``none``: the ``without`` variant is the one without)."""
    return cfg.options if cfg.options != "none" else "dash"


@dataclass(frozen=True)
class ProbeScore:
    """One dataset's slice scored once: the headline variant's primary metric, its mean over
    templates (as evaluate's headline ``mean``), each template's, and the gold options' NLL per
    token (their tokens and EOS, as rank classification scores them, over every row and template)."""

    score: float
    per_template: list[float]
    loss: float


@dataclass(frozen=True)
class Probe:
    """A fixed slice of one dataset's eval split, rendered with its eval templates in the headline's
    OPTIONS style and encoded in one format, once: :meth:`score` scores a model on it."""

    dataset: str
    metric: str
    rows: int
    template_ids: list[int]
    texts: list[list[list[str]]]  # per template: each row's options as text
    tokens: list[tuple[list, list]]  # per template: the prompts' and the options' token lists
    gold: list[np.ndarray]  # per template: each row's gold option

    @classmethod
    def of(cls, dataset: str, eval_path: str | Path, rows: int, cfg: EvaluateSlice, fmt: Format) -> Probe:
        """The rows ``flanpipe evaluate`` scores with ``evaluate.max_examples: rows`` (zero-shot), its
        first ``evaluate.templates_for(dataset)`` eval templates, the prompts of the headline
        variant."""
        spec = load_registry().datasets[dataset]
        if spec.task.type == "generation":
            raise ValueError(f"{dataset}: a generation task has no options to rank")
        bank = load_bank(cfg.bank, cfg.flan_root)[dataset]
        if not bank.eval_templates:
            raise ValueError(f"{dataset}: bank {cfg.bank} has no template posing the dataset's own task")
        eval_raw = eval_sample(read_table(eval_path), rows, cfg.seed, dataset)
        if eval_raw.num_rows == 0:
            raise ValueError(f"{eval_path}: no eval rows to score {dataset} on")
        field = long_field(spec, eval_raw) if cfg.cut_long_field else None
        shown = options_style(cfg)
        style = shown if cfg.evaluate.options_suffix == "with" else "none"
        templates = bank.eval_templates[:cfg.evaluate.templates_for(dataset)]
        texts, tokens, gold = [], [], []
        for template in templates:
            options = render_template(bank, template, eval_raw, shown)
            prompts = prompts_for(bank, template, eval_raw, None, style, fmt.counts, field,
                                  cfg.max_input_tokens)
            texts.append(options.options.to_pylist())
            tokens.append((fmt.inputs(prompts), fmt.options(prompts, texts[-1])))
            gold.append(np.asarray(options.answer_index))
        return cls(dataset, spec.metric, eval_raw.num_rows, [t.id for t in templates], texts, tokens, gold)

    def score(self, model: torch.nn.Module, fmt: Format, cfg: EvaluateSlice) -> ProbeScore:
        """The model's headline score and gold NLL per token on the slice (no gradient)."""
        norm, key = cfg.evaluate.normalization, metrics.primary(self.metric)
        per_template, nll, counted = [], 0.0, 0
        for texts, tokens, gold in zip(self.texts, self.tokens, self.gold, strict=True):
            scored = rank_scores(model, fmt, [], texts, cfg.evaluate.max_batch_tokens,
                                 cfg.evaluate.pmi_prefix, norms=(norm,), tokens=tokens)
            preds = [opts[c] for opts, c in zip(texts, scored.picks[norm], strict=True)]
            refs = [[opts[g]] for opts, g in zip(texts, gold, strict=True)]
            per_template.append(round(float(metrics.compute(self.metric, preds, refs)[key]), 6))
            nll -= sum(float(s[g]) for s, g in zip(scored.sums, gold, strict=True))
            counted += sum(len(o[g]) for o, g in zip(scored.options, gold, strict=True))
        return ProbeScore(round(float(np.mean(per_template)), 6), per_template, nll / max(counted, 1))
