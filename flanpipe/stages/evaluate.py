"""Stage 6, evaluate: one model on one held-out dataset, zero-shot or few-shot, every template.

Evaluation reads the dataset's raw eval split (``data/raw/{dataset}/eval.parquet``), the same
registry split that decontamination checked the training data against, and renders it with every
template that poses the task (turned-around templates are for training), in the paper's
instruction format whatever the model was trained on.

The model is any local ``transformers`` causal LM folder (ours, or a Hugging Face checkpoint such
as SmolLM2 or Llama), with its own tokenizer (:func:`flanpipe.core.tokenizers.load_tokenizer`:
``tokenizer.json`` or ``tokenizer.model``). Token sequences follow the packer's training layout,
``[BOS] inputs EOS targets EOS``, BOS where the tokenizer's convention or ``tokenize.add_bos`` says.

- **Classification and multiple choice: rank classification.** Every option is scored by the
  log-likelihood of its tokens (and EOS) given the instruction, with the prompt run once for all of
  its options (:func:`flanpipe.core.scoring.score_options`). Prompts are scored with the OPTIONS suffix
  and without it; each option's score is its summed log-likelihood, or that per token or per
  character. The best-scoring option is the prediction.
- **Generation: decoding.** Greedy decoding (and, with ``evaluate.generation.sample``, sampling at a
  temperature with top-k), scored with the metric the registry names.
- **Few-shot**: ``templatize.few_shot.k`` solved train exemplars before each query, same template,
  never the example itself, trimmed to the token budget with the model's tokenizer. Exemplars come
  from the train file's columns that the prompts use (:func:`flanpipe.core.fewshot.few_shot_columns`;
  a pool file's extra ``priority`` column is left unread), keyed once for every template and style
  (:class:`flanpipe.core.fewshot.FewShotPool`).

Each variant gets the metric per template, then the mean over templates, the best template and
the spread, as the paper reports. The result also records the contamination counts of the dataset
in the model's training mixture. Output: ``results/eval/{heldout}/{dataset}.json`` and the like.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from flanpipe.core import metrics
from flanpipe.core.checkpoint import load_checkpoint
from flanpipe.core.config import EvaluateSlice
from flanpipe.core.fewshot import FewShotPool, TokenCounter, few_shot_columns
from flanpipe.core.io import code_version, read_schema, read_table, sha256_file, write_text_atomic
from flanpipe.core.keys import derive_seed
from flanpipe.core.layout import Layout, bos_token, encode
from flanpipe.core.registry import DatasetSpec, load_registry
from flanpipe.core.scoring import generate, score_options
from flanpipe.core.templates import DatasetTemplates, Template, column_at, load_bank, render_template
from flanpipe.core.tokenizers import Tokenizer

STAGE_VERSION = "2"
NORMALIZATIONS = ("sum", "per_token", "per_char")
log = logging.getLogger(__name__)


# --- the model -----------------------------------------------------------------------------------

def resolve_model_dir(path: str | Path) -> Path:
    """A Hugging Face model folder: ``path`` itself, or its ``hf/`` (``models/all`` -> ``models/all/hf``)."""
    path = Path(path)
    if (path / "config.json").exists():
        return path
    if (path / "hf" / "config.json").exists():
        return path / "hf"
    raise FileNotFoundError(f"{path}: no config.json here or in {path / 'hf'} (a trained model's folder, "
                            "e.g. models/all, or a Hugging Face Llama checkpoint folder)")


def load_model(path: str | Path) -> tuple[torch.nn.Module, Tokenizer]:
    """A model folder (a trained model's, or any local Hugging Face causal LM checkpoint) as (model
    in eval mode, its tokenizer), through the checkpoint seam: float32 on CPU, bfloat16 on a GPU."""
    cuda = torch.cuda.is_available()
    return load_checkpoint(resolve_model_dir(path), dtype=torch.bfloat16 if cuda else torch.float32,
                           device="cuda" if cuda else "cpu")


def stop_ids(model: torch.nn.Module, tokenizer: Tokenizer) -> list[int]:
    """The tokens that end a generation: the tokenizer's EOS, then any other EOS the model's
    generation config names (Llama 3 ends turns with ``<|eot_id|>``)."""
    named = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    named = [] if named is None else [named] if isinstance(named, int) else list(named)
    return list(dict.fromkeys([tokenizer.eos_id, *named]))


# --- prompts and tokens --------------------------------------------------------------------------

def eval_sample(table: pa.Table, max_examples: int | None, seed: int, name: str) -> pa.Table:
    """A seeded sample of ``max_examples`` eval rows (in source order), or every row."""
    if max_examples is None or table.num_rows <= max_examples:
        return table
    rng = np.random.default_rng(derive_seed(seed, f"evaluate/{name}"))
    return table.take(pa.array(np.sort(rng.choice(table.num_rows, max_examples, replace=False))))


def read_exemplar_rows(spec: DatasetSpec, bank: DatasetTemplates, path: str | Path) -> pa.Table:
    """The train rows few-shot exemplars come from (a raw train split, or a pool file of the rows
    that can survive the cap), only the columns the prompts use."""
    columns = few_shot_columns(spec, bank, read_schema(path).names)
    train_raw = read_table(path, columns=columns)
    if train_raw.num_rows == 0:
        raise ValueError(f"{path}: few-shot needs train exemplars; it has none")
    return train_raw


def prompts_for(bank: DatasetTemplates, template: Template, eval_raw: pa.Table, pool: FewShotPool | None,
                style: str, count_tokens: TokenCounter, rendered=None) -> list[str]:
    """The prompt of every eval row under one template: zero-shot, or few-shot with exemplars from
    ``pool``. ``rendered``: the template already rendered in ``style``, reused for zero-shot prompts."""
    if pool is None:
        rendered = rendered or render_template(bank, template, eval_raw, style)
        return rendered.inputs.to_pylist()
    built = pool.prompts(template, style, count_tokens)
    log.info("%s template %d, OPTIONS %s: %d few-shot prompts, %.2f exemplars each, %d counted exactly",
             bank.dataset, template.id, style, len(built.prompts), built.shots.mean(), built.counted)
    return built.prompts


# --- scoring one template ------------------------------------------------------------------------

def rank_classify(model: torch.nn.Module, layout: Layout, prompts: list[str], options: list[list[str]],
                  max_batch_tokens: int) -> dict[str, np.ndarray]:
    """The chosen option of every row under each normalisation (``sum``, ``per_token``,
    ``per_char``); ties go to the first option."""
    ptoks = layout.inputs(prompts)
    otoks_flat = layout.targets([o for opts in options for o in opts])
    otoks, at = [], 0
    for opts in options:
        otoks.append(otoks_flat[at:at + len(opts)])
        at += len(opts)
    sums = score_options(model, ptoks, otoks, max_batch_tokens=max_batch_tokens)
    picks = {}
    for norm in NORMALIZATIONS:
        chosen = []
        for s, toks, opts in zip(sums, otoks, options, strict=True):
            if norm == "per_token":
                s = s / np.array([len(t) for t in toks])
            elif norm == "per_char":
                s = s / np.array([max(1, len(o)) for o in opts])
            chosen.append(int(np.argmax(s)))
        picks[norm] = np.array(chosen)
    return picks


def decode(model: torch.nn.Module, layout: Layout, prompts: list[str], cfg: EvaluateSlice, sample: bool
           ) -> list[str]:
    """Greedy (or, with ``sample``, sampled) continuations of the prompts, as text."""
    gen = cfg.evaluate.generation
    out = generate(model, layout.inputs(prompts), min(gen.max_new_tokens, layout.max_target_tokens),
                   stop_ids(model, layout.tokenizer), temperature=gen.temperature if sample else 0.0,
                   top_k=gen.top_k if sample else 0, seed=derive_seed(cfg.seed, "evaluate/sample"),
                   max_batch_tokens=cfg.evaluate.max_batch_tokens, vocab_limit=layout.tokenizer.vocab_size)
    return [layout.tokenizer.decode(ids) for ids in out]


def references(spec: DatasetSpec, template: Template, rendered_targets: list[str],
               raw: pa.Table) -> list[list[str]]:
    """Every reference of a generation example. When the template's target is the answer as it is
    (``{answer}`` or a target field), that is every value of every target field the registry names
    (TriviaQA's value and aliases, SQuAD's answer list), the rendered one first; otherwise the
    rendered target alone."""
    fields = spec.task.targets
    as_is = {"{answer}"} | {"{" + f + filt + "}" for f in fields for filt in ("", "|first")}
    plain = template.target.strip() in as_is
    if not plain:
        return [[t] for t in rendered_targets]
    columns = [column_at(raw, f).to_pylist() for f in fields]
    out = []
    for row, first in enumerate(rendered_targets):
        refs = [first]
        for col in columns:
            value = col[row]
            refs += [str(v) for v in (value if isinstance(value, list) else [value]) if v is not None]
        out.append(list(dict.fromkeys(r for r in refs if r.strip() or r == first)))
    return out


def summarize(per_template: list[dict], variant: str, key: str) -> dict:
    """Mean over templates, the best template and the spread of one variant's ``key``."""
    values = np.array([t["variants"][variant][key] for t in per_template], np.float64)
    best = int(np.argmax(values))
    return {"mean": _r(values.mean()), "best": _r(values[best]),
            "best_template": per_template[best]["template_id"], "worst": _r(values.min()),
            "std": _r(values.std(ddof=0)), "templates": len(values)}


def _r(x: float) -> float:
    return round(float(x), 6)


# --- one dataset ---------------------------------------------------------------------------------

def contamination_counts(path: str | Path | None, dataset: str) -> dict:
    """What the model's mixture found of this eval set in its training data (from the mixture's
    ``contamination.parquet``): matched train rows and the rows removed, per training dataset."""
    if path is None:
        return {"mixture": None, "matched_rows": 0, "removed_rows": 0, "by_train_dataset": {},
                "note": "untuned base model: not trained on the mixture"}
    rows = [r for r in read_table(path).to_pylist() if r["eval_dataset"] == dataset]
    return {"mixture": Path(path).parent.name,
            "matched_rows": int(sum(r["rows"] for r in rows)),
            "removed_rows": int(sum(r["removed"] for r in rows)),
            "by_train_dataset": {r["dataset"]: {"matched": int(r["rows"]), "removed": int(r["removed"])}
                                 for r in sorted(rows, key=lambda r: r["dataset"])}}


def evaluate_dataset(dataset: str, model_dir: str | Path, raw_dir: str | Path, out_path: str | Path,
                     cfg: EvaluateSlice, few_shot: bool, model_name: str,
                     contamination: str | Path | None = None, threads: int = 1,
                     train: str | Path | None = None) -> dict:
    """Evaluate one model on one dataset's eval split (``raw_dir/eval.parquet``); writes and returns
    the result. Few-shot exemplars come from ``train``: the workflow passes the dataset's pool
    (``data/pool/{dataset}.parquet``, at most ``pool_factor x cap`` rows, so a 40M-row translation
    set costs no more than a small one); by default ``raw_dir/train.parquet``."""
    torch.set_num_threads(max(1, threads))
    t0 = time.perf_counter()
    spec = load_registry().datasets[dataset]
    bank = load_bank()[dataset]
    raw_dir = Path(raw_dir)
    eval_path = raw_dir / "eval.parquet"
    eval_raw = eval_sample(read_table(eval_path), cfg.evaluate.max_examples, cfg.seed, dataset)
    if eval_raw.num_rows == 0:
        raise ValueError(f"{eval_path}: no eval rows to evaluate {dataset} on")
    pool = None
    if few_shot:
        exemplars = read_exemplar_rows(spec, bank, train or raw_dir / "train.parquet")
        pool = FewShotPool(spec, bank, eval_raw, exemplars, cfg.few_shot, cfg.seed)
    model, tokenizer = load_model(model_dir)
    layout = Layout.of(tokenizer, cfg, threads)
    count_tokens = layout.counts

    task = spec.task.type
    key = metrics.primary(spec.metric)
    style_with = cfg.options if cfg.options != "none" else "dash"
    headline = ("greedy" if task == "generation"
                else f"{cfg.evaluate.options_suffix}_options/{cfg.evaluate.normalization}")
    per_template = []
    for template in bank.eval_templates:
        rendered = render_template(bank, template, eval_raw, style_with)
        variants: dict[str, dict] = {}
        if task == "generation":
            prompts = prompts_for(bank, template, eval_raw, pool, "none", count_tokens)
            refs = references(spec, template, rendered.targets.to_pylist(), eval_raw)
            modes = [("greedy", False)] + ([("sample", True)] if cfg.evaluate.generation.sample else [])
            for name, sample in modes:
                preds = decode(model, layout, prompts, cfg, sample)
                variants[name] = metrics.compute(spec.metric, preds, refs)
                if name == headline:
                    shown = [{"prompt": p, "prediction": x, "references": r}
                             for p, x, r in zip(prompts[:3], preds[:3], refs[:3], strict=True)]
        else:
            options = rendered.options.to_pylist()
            gold = [[opts[i]] for opts, i in zip(options, rendered.answer_index, strict=True)]
            for suffix, style in (("with_options", style_with), ("without_options", "none")):
                prompts = prompts_for(bank, template, eval_raw, pool, style, count_tokens,
                                      rendered if style == style_with else None)
                picks = rank_classify(model, layout, prompts, options, cfg.evaluate.max_batch_tokens)
                for norm, chosen in picks.items():
                    preds = [opts[c] for opts, c in zip(options, chosen, strict=True)]
                    variants[f"{suffix}/{norm}"] = metrics.compute(spec.metric, preds, gold)
                    if f"{suffix}/{norm}" == headline:
                        shown = chosen.tolist()
        per_template.append({"template_id": template.id,
                             "variants": {v: {k: _r(x) for k, x in m.items()} for v, m in variants.items()},
                             # the headline variant's choice per example (rank classification), or
                             # its first predictions with their references (generation)
                             "predictions": shown})
        log.info("%s template %d: %s", dataset, template.id,
                 ", ".join(f"{v} {m[key]:.1f}" for v, m in variants.items()))

    names = list(per_template[0]["variants"])
    result = {
        "dataset": dataset, "paper_name": spec.paper_name, "cluster": spec.cluster,
        "model": model_name, "model_dir": str(model_dir), "few_shot": few_shot,
        "shots": cfg.few_shot.k if few_shot else 0, "task": task,
        "method": "generation" if task == "generation" else "rank_classification",
        "metric": spec.metric, "primary": key, "headline_variant": headline,
        "headline": summarize(per_template, headline, key),
        "variants": {v: summarize(per_template, v, key) for v in names},
        "templates": per_template, "examples": eval_raw.num_rows,
        "eval_split": {"registry_split": spec.splits.eval, "file": str(eval_path),
                       "sha256": sha256_file(eval_path)},
        "contamination": contamination_counts(contamination, dataset),
        "config": {"evaluate": cfg.evaluate.model_dump(), "few_shot": cfg.few_shot.model_dump(),
                   "options": cfg.options, "seed": cfg.seed},
        "code": code_version("evaluate", STAGE_VERSION),
    }
    write_text_atomic(out_path, json.dumps(result, indent=2, sort_keys=True) + "\n")
    log.info("%s (%s, %s): %s %s mean %.2f, best %.2f (template %d), %d examples x %d templates in %.1f s",
             dataset, model_name, "few-shot" if few_shot else "zero-shot", headline, key,
             result["headline"]["mean"], result["headline"]["best"], result["headline"]["best_template"],
             eval_raw.num_rows, len(per_template), time.perf_counter() - t0)
    return result


def generate_text(model_dir: str | Path, prompts: list[str], max_new_tokens: int = 64,
                  temperature: float = 0.0, top_k: int = 0, seed: int = 0,
                  max_input_tokens: int = 1024, add_bos: bool | None = None) -> list[str]:
    """Text from a model for prompts typed by hand (``flanpipe generate``), in the training layout
    (``[BOS] prompt EOS``; ``add_bos`` None follows the tokenizer's convention)."""
    model, tokenizer = load_model(model_dir)
    bos = bos_token(tokenizer, add_bos)
    ptoks = encode(tokenizer, prompts, max_input_tokens, tokenizer.eos_id, bos=bos)
    out = generate(model, ptoks, max_new_tokens, stop_ids(model, tokenizer), temperature=temperature,
                   top_k=top_k, seed=seed, vocab_limit=tokenizer.vocab_size)
    return [tokenizer.decode(ids) for ids in out]
