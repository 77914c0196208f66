"""Stage 6, evaluate: one model on one held-out dataset, zero-shot or few-shot, every template.

Evaluation reads the dataset's raw eval split (``data/raw/{dataset}/eval.parquet``), the same
registry split that decontamination checked the training data against, and renders it with every
template that poses the task (turned-around templates are for training), in the paper's
instruction format whatever the model was trained on.

The model is any local ``transformers`` causal LM folder (ours, or a Hugging Face checkpoint such
as SmolLM2 or Llama), or a T5-family encoder-decoder (T5, FLAN-T5, mT5), with its own tokenizer
(:func:`flanpipe.core.tokens.tokenizers.load_tokenizer`:
``tokenizer.json`` or ``tokenizer.model``). Token sequences follow the model's format
(:mod:`flanpipe.core.tokens.formats`: the one it was trained in, ``[BOS] inputs EOS targets EOS`` for
``eos``, or lm-eval's ``continuation`` for a model flanpipe did not train), BOS where the tokenizer's
convention or ``tokenize.add_bos`` says.

- **Classification and multiple choice: rank classification.** Every option is scored by the
  log-likelihood of its tokens (and EOS) given the instruction, with the prompt run once for all of
  its options (:func:`flanpipe.core.eval.scoring.score_options`; an encoder-decoder encodes each prompt
  once and scores every option as decoder input against that encoder output). Prompts are scored
  with the OPTIONS suffix
  and without it; each option's score is its summed log-likelihood, or that per token or per
  character. The best-scoring option is the prediction.
- **Generation: decoding.** Greedy decoding (and, with ``evaluate.generation.sample``, sampling at a
  temperature with top-k), scored with the metric the registry names.
- **Few-shot**: ``templatize.few_shot.k`` solved train exemplars before each query, same template,
  never the example itself, trimmed to the token budget with the model's tokenizer. Exemplars come
  from the train file's columns that the prompts use (:func:`flanpipe.core.text.fewshot.few_shot_columns`;
  a pool file's extra ``priority`` column is left unread), keyed once for every template and style
  (:class:`flanpipe.core.text.fewshot.FewShotPool`).

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

from flanpipe.core.config import EvaluateSlice
from flanpipe.core.config.checkpoints import folder_is_encoder_decoder
from flanpipe.core.config.registry import DatasetSpec, load_registry
from flanpipe.core.eval import metrics
from flanpipe.core.eval.ranking import (  # noqa: F401 (NORMALIZATIONS, normalized, unconditional_scores: the stage's names)
    NORMALIZATIONS,
    eval_sample,
    headline_variant,
    normalized,
    prompts_for,
    rank_classify,
    unconditional_scores,
)
from flanpipe.core.eval.scoring import generate
from flanpipe.core.io import code_version, read_schema, read_table, sha256_file, write_text_atomic
from flanpipe.core.model.adapter import adapter_base, is_adapter_folder
from flanpipe.core.model.checkpoint import load_checkpoint
from flanpipe.core.model.precision import Precision
from flanpipe.core.model.precision import resolve as resolve_precision
from flanpipe.core.text.fewshot import FewShotPool, few_shot_columns
from flanpipe.core.text.flan import checkout_identity
from flanpipe.core.text.keys import derive_seed
from flanpipe.core.text.templates import (
    DatasetTemplates,
    Template,
    column_at,
    load_bank,
    long_field,
    render_template,
)
from flanpipe.core.tokens.chat import chat_template
from flanpipe.core.tokens.formats import (
    FORMATS,
    RECORD,
    TRAIN_FORMATS,
    Format,
    FormatName,
    bos_token,
    encode,
    separator_ids,
)
from flanpipe.core.tokens.tokenizers import Tokenizer
from flanpipe.core.versions import STAGE_VERSIONS

# 4: the result's `layout`, `layout_from` and `by_layout` are `format`, `format_from` and `by_format`
STAGE_VERSION = STAGE_VERSIONS["evaluate"]
log = logging.getLogger(__name__)


# --- the model -----------------------------------------------------------------------------------

def resolve_model_dir(path: str | Path) -> Path:
    """A Hugging Face model folder: ``path`` itself, or its ``hf/`` (``models/all`` -> ``models/all/hf``);
    or a ``peft`` adapter folder (``models/all/adapter``: its base with the adapter on it)."""
    path = Path(path)
    if (path / "config.json").exists() or is_adapter_folder(path):
        return path
    if (path / "hf" / "config.json").exists():
        return path / "hf"
    raise FileNotFoundError(f"{path}: no config.json here or in {path / 'hf'} (a trained model's folder, "
                            "e.g. models/all, or a Hugging Face Llama checkpoint folder)")


def load_for_scoring(path: str | Path, precision: str | Precision = "auto"
                     ) -> tuple[torch.nn.Module, Tokenizer]:
    """A model folder (a trained model's, its ``hf/`` parent, an adapter folder, or any local
    Hugging Face checkpoint) ready to score: (model in eval mode on the GPU if there is one, its
    tokenizer), through the checkpoint seam, in ``precision`` (``auto``: :func:`scoring_precision`)."""
    chosen = precision if isinstance(precision, Precision) else scoring_precision(precision)
    return load_checkpoint(resolve_model_dir(path),
                           dtype=torch.bfloat16 if chosen.name == "bf16" else torch.float32,
                           device="cuda" if torch.cuda.is_available() else "cpu")


def scoring_precision(requested: str) -> Precision:
    """The precision a model is scored in on this machine, and why (:mod:`flanpipe.core.model.precision`:
    ``auto`` takes bf16 on a GPU that supports it and on a CPU with bf16 matrix units)."""
    return resolve_precision(requested, "cuda" if torch.cuda.is_available() else "cpu")


def is_encoder_decoder_folder(model_dir: str | Path) -> bool:
    """Whether a model folder's ``config.json`` is an encoder-decoder's (T5, mT5: ``is_encoder_decoder``)."""
    folder = resolve_model_dir(model_dir)
    folder = adapter_base(folder) if is_adapter_folder(folder) else folder
    answer = folder_is_encoder_decoder(folder)
    if answer is None:
        raise FileNotFoundError(f"{folder}: no readable config.json (not a model folder)")
    return answer


def model_format(model_dir: str | Path, override: str | None = None) -> tuple[FormatName, str, str | None]:
    """The format a model is scored in, why, and its ``text`` separator where its record names one:
    ``override``; else the format its folder's ``flanpipe.json`` records (a model flanpipe
    trained); else, for an encoder-decoder, ``eos`` (inputs EOS to the encoder, targets EOS from
    the decoder: how T5 and FLAN-T5 are trained and scored); else ``continuation``, lm-eval's
    format, for an untuned base model or any checkpoint flanpipe did not train."""
    record = resolve_model_dir(model_dir) / RECORD
    saved = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
    separator = saved.get("separator")
    if override is not None:
        if override not in FORMATS:
            raise ValueError(f"format {override!r}; allowed: {', '.join(FORMATS)}")
        return override, "override", separator
    if saved:
        trained = saved.get("format", saved.get("layout"))  # (train stage version 6 and before: `layout`)
        if trained not in TRAIN_FORMATS:
            raise ValueError(f"{record}: format {trained!r}; allowed: {', '.join(TRAIN_FORMATS)}")
        return trained, "trained", separator
    if is_encoder_decoder_folder(model_dir):
        return "eos", "encoder_decoder", None
    return "continuation", "untrained", None


def stop_ids(model: torch.nn.Module, tokenizer: Tokenizer, format_name: str = "eos") -> list[int]:
    """The tokens that end a generation: the tokenizer's EOS, then any other EOS the model's
    generation config names (Llama 3 ends turns with ``<|eot_id|>``), and in the ``chat`` format
    the token that ends the assistant's turn in its chat template."""
    named = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    named = [] if named is None else [named] if isinstance(named, int) else list(named)
    turn = chat_template(tokenizer).stop_id if format_name == "chat" else None
    return list(dict.fromkeys([tokenizer.eos_id, *named, *([turn] if turn is not None else [])]))


# --- prompts and tokens --------------------------------------------------------------------------

def read_exemplar_rows(spec: DatasetSpec, bank: DatasetTemplates, path: str | Path) -> pa.Table:
    """The train rows few-shot exemplars come from (a raw train split, or a pool file of the rows
    that can survive the cap), only the columns the prompts use."""
    columns = few_shot_columns(spec, bank, read_schema(path).names)
    train_raw = read_table(path, columns=columns)
    if train_raw.num_rows == 0:
        raise ValueError(f"{path}: few-shot needs train exemplars; it has none")
    return train_raw


# --- scoring one template ------------------------------------------------------------------------

def decode(model: torch.nn.Module, fmt: Format, prompts: list[str], cfg: EvaluateSlice, sample: bool
           ) -> list[str]:
    """Greedy (or, with ``sample``, sampled) continuations of the prompts, as text."""
    gen = cfg.evaluate.generation
    out = generate(model, fmt.inputs(prompts), min(gen.max_new_tokens, fmt.max_target_tokens),
                   stop_ids(model, fmt.tokenizer, fmt.name),
                   temperature=gen.temperature if sample else 0.0,
                   top_k=gen.top_k if sample else 0, seed=derive_seed(cfg.seed, "evaluate/sample"),
                   max_batch_tokens=cfg.evaluate.max_batch_tokens, vocab_limit=fmt.tokenizer.vocab_size)
    texts = [fmt.tokenizer.decode(ids) for ids in out]
    if fmt.name == "continuation":  # a base model writes on past its answer: keep the first paragraph
        texts = [t.strip().split("\n\n")[0] for t in texts]
    return texts


def references(spec: DatasetSpec, template: Template, rendered_targets: list[str],
               raw: pa.Table, bank: DatasetTemplates | None = None) -> list[list[str]]:
    """Every reference of a generation example. When the template's target is the answer as it is
    (``{answer}`` or a target field), that is every value of every target field the registry names
    (TriviaQA's value and aliases, SQuAD's answer list), the rendered one first; otherwise, or where
    the bank says the answer otherwise (a FLAN bank's numbered CoQA answers), the rendered target
    alone."""
    fields = spec.task.targets
    as_is = {"{answer}"} | {"{" + f + filt + "}" for f in fields for filt in ("", "|first")}
    plain = template.target.strip() in as_is and (bank is None or bank.generation_answer() is None)
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


def score_format(model: torch.nn.Module, fmt: Format, spec: DatasetSpec, bank: DatasetTemplates,
                 eval_raw: pa.Table, pool: FewShotPool | None, cfg: EvaluateSlice, field: str | None,
                 budget: int) -> tuple[list[dict], dict]:
    """Every eval template's variants in one format. Returns the per-template entries and, for the
    headline variant, each template's predictions and references (the bootstrap's material)."""
    task = spec.task.type
    key = metrics.primary(spec.metric)
    style_with = cfg.options if cfg.options != "none" else "dash"
    headline = headline_variant(task, cfg)
    count_tokens = fmt.counts
    per_template, material = [], {"predictions": [], "references": []}
    for template in bank.eval_templates[:cfg.evaluate.templates_for(spec.name)]:
        rendered = render_template(bank, template, eval_raw, style_with)
        variants: dict[str, dict] = {}
        if task == "generation":
            prompts = prompts_for(bank, template, eval_raw, pool, "none", count_tokens, field, budget)
            refs = references(spec, template, rendered.targets.to_pylist(), eval_raw, bank)
            modes = [("greedy", False)] + ([("sample", True)] if cfg.evaluate.generation.sample else [])
            for name, sample in modes:
                preds = decode(model, fmt, prompts, cfg, sample)
                variants[name] = metrics.compute(spec.metric, preds, refs)
                if name == headline:
                    shown = [{"prompt": p, "prediction": x, "references": r}
                             for p, x, r in zip(prompts[:3], preds[:3], refs[:3], strict=True)]
                    kept = (preds, refs)
        else:
            options = rendered.options.to_pylist()
            gold = [[opts[i]] for opts, i in zip(options, rendered.answer_index, strict=True)]
            suffixes = (("with_options", style_with), ("without_options", "none"))
            norms = NORMALIZATIONS
            if cfg.evaluate.variants == "headline":
                suffixes = tuple(s for s in suffixes if s[0] == f"{cfg.evaluate.options_suffix}_options")
                norms = tuple(n for n in NORMALIZATIONS if n != "pmi" or cfg.evaluate.normalization == "pmi")
            for suffix, style in suffixes:
                prompts = prompts_for(bank, template, eval_raw, pool, style, count_tokens, field, budget)
                picks = rank_classify(model, fmt, prompts, options, cfg.evaluate.max_batch_tokens,
                                      cfg.evaluate.pmi_prefix, norms)
                for norm, chosen in picks.items():
                    preds = [opts[c] for opts, c in zip(options, chosen, strict=True)]
                    variants[f"{suffix}/{norm}"] = metrics.compute(spec.metric, preds, gold)
                    if f"{suffix}/{norm}" == headline:
                        shown = chosen.tolist()
                        kept = (preds, gold)
        material["predictions"].append(kept[0])
        material["references"].append(kept[1])
        scores = metrics.example_scores(spec.metric, *kept)
        per_template.append({"template_id": template.id,
                             "variants": {v: {k: _r(x) for k, x in m.items()} for v, m in variants.items()},
                             # the headline variant's choice per example (rank classification), or
                             # its first predictions with their references (generation)
                             "predictions": shown,
                             # the headline's primary score per example (None for a corpus metric)
                             "example_scores": None if scores is None else [_r(x) for x in scores]})
        log.info("%s template %d (%s format): %s", spec.name, template.id, fmt.name,
                 ", ".join(f"{v} {m[key]:.1f}" for v, m in variants.items()))
    return per_template, material


def format_summary(per_template: list[dict], material: dict, spec: DatasetSpec, headline: str,
                   cfg: EvaluateSlice, n: int) -> dict:
    """One format's headline (mean, best, spread over templates, and its bootstrap interval over
    examples) and every variant's summary."""
    key = metrics.primary(spec.metric)
    score = metrics.template_mean(spec.metric, material["predictions"], material["references"])
    interval = metrics.bootstrap(score, n, cfg.evaluate.bootstrap,
                                 derive_seed(cfg.seed, f"evaluate/bootstrap/{spec.name}"))
    summary = summarize(per_template, headline, key)
    if interval is not None:
        interval = {k: _r(v) if isinstance(v, float) else v for k, v in interval.items()}
    return {"headline": {**summary, "interval": interval},
            "variants": {v: summarize(per_template, v, key) for v in per_template[0]["variants"]}}


def evaluate_dataset(dataset: str, model_dir: str | Path, raw_dir: str | Path, out_path: str | Path,
                     cfg: EvaluateSlice, few_shot: bool, model_name: str,
                     contamination: str | Path | None = None, threads: int = 1,
                     train: str | Path | None = None, format_name: str | None = None) -> dict:
    """Evaluate one model on one dataset's eval split (``raw_dir/eval.parquet``); writes and returns
    the result. Few-shot exemplars come from ``train``: the workflow passes the dataset's pool
    (``data/pool/{dataset}.parquet``, at most ``pool_factor x cap`` rows, so a 40M-row translation
    set costs no more than a small one); by default ``raw_dir/train.parquet``.

    The model is scored in its own format (:func:`model_format`; ``format_name`` overrides it), and
    with ``evaluate.cross_formats`` in the other one too (``by_format``). Every headline carries a
    bootstrap interval over the eval examples, and each template its per-example scores, from which
    the report pairs two models on the same rows."""
    torch.set_num_threads(max(1, threads))
    t0 = time.perf_counter()
    spec = load_registry().datasets[dataset]
    bank = load_bank(cfg.bank, cfg.flan_root)[dataset]
    if not bank.eval_templates:
        raise ValueError(f"{dataset}: bank {cfg.bank} has no template posing the dataset's own task "
                         "(turned-around templates are not scored; flanpipe datasets --bank says why)")
    raw_dir = Path(raw_dir)
    eval_path = raw_dir / "eval.parquet"
    eval_raw = eval_sample(read_table(eval_path), cfg.evaluate.max_examples, cfg.seed, dataset)
    if eval_raw.num_rows == 0:
        raise ValueError(f"{eval_path}: no eval rows to evaluate {dataset} on")
    pool = None
    if few_shot:
        exemplars = read_exemplar_rows(spec, bank, train or raw_dir / "train.parquet")
        few = cfg.few_shot.within(cfg.max_input_tokens)
        pool = FewShotPool(spec, bank, eval_raw, exemplars, few, cfg.seed)
    own, why, separator = model_format(model_dir, format_name)
    precision = scoring_precision(cfg.evaluate.precision)
    model, tokenizer = load_for_scoring(model_dir, precision)
    base_format = Format.of(tokenizer, cfg, threads, own, separator)
    field = long_field(spec, eval_raw) if cfg.cut_long_field else None
    budget = cfg.few_shot.within(cfg.max_input_tokens).max_tokens if few_shot else cfg.max_input_tokens

    task = spec.task.type
    key = metrics.primary(spec.metric)
    headline = headline_variant(task, cfg)
    # beside its own format, the other of (the run's training format, continuation); an
    # encoder-decoder has one format: its encoder reads the prompt, its decoder the option
    cross = cfg.evaluate.cross_formats and not is_encoder_decoder_folder(model_dir)
    names = [own] + ([n for n in (cfg.format, "continuation") if n != own][:1] if cross else [])
    by_format, per_template = {}, None
    for name in names:
        templates, material = score_format(model, base_format.as_(name), spec, bank, eval_raw, pool, cfg,
                                           field, budget)
        by_format[name] = format_summary(templates, material, spec, headline, cfg, eval_raw.num_rows)
        by_format[name]["example_scores"] = [t["example_scores"] for t in templates]
        if name == own:
            per_template = templates

    result = {
        "dataset": dataset, "paper_name": spec.paper_name, "cluster": spec.cluster,
        "model": model_name, "model_dir": str(model_dir), "few_shot": few_shot,
        "shots": cfg.few_shot.k if few_shot else 0, "task": task,
        "method": "generation" if task == "generation" else "rank_classification",
        "metric": spec.metric, "primary": key, "headline_variant": headline,
        "format": own, "format_from": why, **precision.record(),
        "headline": by_format[own]["headline"], "variants": by_format[own]["variants"],
        "by_format": by_format,
        "templates": per_template, "examples": eval_raw.num_rows,
        "eval_split": {"registry_split": spec.splits.eval, "file": str(eval_path),
                       "sha256": sha256_file(eval_path)},
        "contamination": contamination_counts(contamination, dataset),
        "bank": checkout_identity(cfg.bank, cfg.flan_root),
        "config": {"evaluate": cfg.evaluate.model_dump(), "few_shot": cfg.few_shot.model_dump(),
                   "options": cfg.options, "seed": cfg.seed, "cut_long_field": cfg.cut_long_field,
                   "max_input_tokens": cfg.max_input_tokens},
        "code": code_version("evaluate", STAGE_VERSION),
    }
    write_text_atomic(out_path, json.dumps(result, indent=2, sort_keys=True) + "\n")
    interval = result["headline"]["interval"]
    log.info("%s (%s, %s, %s format, %s): %s %s mean %.2f%s, best %.2f (template %d), %d examples x %d "
             "templates in %.1f s", dataset, model_name, "few-shot" if few_shot else "zero-shot", own,
             precision.name, headline, key,
             result["headline"]["mean"],
             f" [{interval['low']:.2f}, {interval['high']:.2f}]" if interval else "",
             result["headline"]["best"], result["headline"]["best_template"], eval_raw.num_rows,
             len(per_template), time.perf_counter() - t0)
    return result


def generate_text(model_dir: str | Path, prompts: list[str], max_new_tokens: int = 64,
                  temperature: float = 0.0, top_k: int = 0, seed: int = 0,
                  max_input_tokens: int = 1024, add_bos: bool | None = None,
                  format_name: str | None = None) -> list[str]:
    """Text from a model for prompts typed by hand (``flanpipe generate``), in the model's own format
    (:func:`model_format`: its training format, or a plain continuation for a checkpoint flanpipe
    did not train; ``add_bos`` None follows the tokenizer's convention)."""
    name, _, separator = model_format(model_dir, format_name)
    model, tokenizer = load_for_scoring(model_dir)
    if name == "chat":
        chat = chat_template(tokenizer)
        ptoks = [chat.cut_prompt(ids, max_input_tokens, False).tolist() for ids in chat.prompt_ids(prompts)]
    else:
        end = separator_ids(tokenizer, name, separator if separator is not None else "\n")
        ptoks = encode(tokenizer, prompts, max_input_tokens, end, bos=bos_token(tokenizer, add_bos))
    out = generate(model, ptoks, max_new_tokens, stop_ids(model, tokenizer, name), temperature=temperature,
                   top_k=top_k, seed=seed, vocab_limit=tokenizer.vocab_size)
    return [tokenizer.decode(ids) for ids in out]
