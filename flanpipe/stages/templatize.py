"""Stage 2, templatize: every raw example phrased as a natural-language instruction.

Train rows are rendered once per pass (``templatize.passes``): pass ``p`` of an example uses the
template drawn from (seed, dataset, the example's stable key, p) by :func:`template_draws`, so a
repeated example gets a new phrasing in each epoch of the mixture and no row's template depends on
any other row. The template mix (``templatize.mix``) draws each rendering's prompt type the same
way: zero-shot or few-shot (exemplars from the dataset's own pool), with or without OPTIONS. Eval
rows get every template that poses the dataset's own task (turned-around
templates are for training only), so evaluations can report the mean and the best template. The
train rows are the dataset's pool (:mod:`flanpipe.stages.pool`): only rows that can pass the cap are
rendered. Output: ``data/templatized/{dataset}.parquet`` (train rows, then eval rows, written batch
by batch; within a batch, train rows by pass and then template, eval rows by template) and
``{dataset}.manifest.json``.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flanpipe.core.config import PROMPT_TYPES, TemplatizeConfig, TemplatizeSlice
from flanpipe.core.config.registry import DatasetSpec, load_registry
from flanpipe.core.io import (
    ParquetReader,
    code_version,
    iter_parquet,
    parquet_stream,
    read_parquet_metadata,
    read_schema,
    read_table,
    sha256_file,
    utc_now,
    write_json_atomic,
)
from flanpipe.core.logs import progress
from flanpipe.core.text.fewshot import FewShotPool, TokenCounter
from flanpipe.core.text.flan import checkout_identity
from flanpipe.core.text.hashing import GOLDEN
from flanpipe.core.text.keys import (
    derive_seed,
    duplicate_id_hashes,
    example_ids,
    pool_duplicate_ids,
    prompt_type_draws,
    scramble,
    shot_draws,
    stable_keys,
    template_draws,
    template_draws_inverted,
)
from flanpipe.core.text.schemas import TEMPLATIZED_SCHEMA
from flanpipe.core.text.templates import (
    DatasetTemplates,
    Template,
    TemplateError,
    fit_long_field,
    load_bank,
    long_field,
    plain_template,
    render_template,
    templates_digest,
    use_string_pool,
)
from flanpipe.core.versions import STAGE_VERSIONS

# 4: renders the pool (data/pool), batch by batch
STAGE_VERSION = STAGE_VERSIONS["templatize"]
BATCH_ROWS = 8_192
"""Rows rendered at a time (each ``passes`` times for train, once per template for eval)."""
log = logging.getLogger(__name__)



def templates_for(bank: DatasetTemplates, spec: DatasetSpec, cfg: TemplatizeConfig,
                  role: str) -> tuple[Template, ...]:
    if cfg.format != "instructions":
        return (plain_template(spec, cfg.format, options_in_place=not bank.options_suffix),)
    return bank.templates if role == "train" else bank.eval_templates


@dataclass(frozen=True)
class Group:
    """Rows ``start:start + rows`` of a (reordered) raw table, rendered with one template as one
    prompt type (an index into :data:`PROMPT_TYPES`)."""

    template: Template
    start: int
    rows: int
    prompt_type: int = 0


def has_options(spec: DatasetSpec, template: Template, style: str,
                bank: DatasetTemplates | None = None) -> bool:
    """Whether the template's renderings carry OPTIONS (what ``*_opt`` prompt types need): flanpipe's
    suffix, or a FLAN template's ``{options_}`` (``bank``: the dataset's bank; None: flanpipe's).

    >>> rte = load_registry().datasets["rte"]
    >>> has_options(rte, Template(id=0, input="{premise}", target="{answer}"), "dash")
    True
    """
    bank = bank or DatasetTemplates(dataset=spec.name, templates=())
    return bank.shows_options(spec, template, style)


def draw_prompts(spec: DatasetSpec, templates: tuple[Template, ...], keys: np.ndarray, cfg: TemplatizeConfig,
                 seed: int, bank: DatasetTemplates | None = None,
                 raw_types: pa.Array | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(passes, n)`` template index and prompt type of each train row and pass, from the row's
    stable key: the template as :func:`template_draws` (or, with ``mix.inverted``, at that rate of
    turned-around templates), the type by the mix's rates. A ``*_opt`` type on a template without
    options (a generation task, a turned-around template, ``options: none``) folds into its
    ``*_noopt`` type: the rendering is the same. Rows that are prompts already (the registry's
    ``prompt_type_field``, a published dump's) keep their own type, ``raw_types``."""
    mix = cfg.mix
    if mix.inverted is None:
        draws = template_draws(keys, len(templates), cfg.passes, spec.name, seed)
    else:
        draws = template_draws_inverted(keys, np.array([t.inverted for t in templates]), mix.inverted,
                                        cfg.passes, spec.name, seed)
    types = prompt_type_draws(keys, mix.rates(), cfg.passes, spec.name, seed)
    if spec.prompt_type_field is not None:  # prompts already: each keeps its own type
        return draws, np.broadcast_to(_own_prompt_types(spec, raw_types), draws.shape).copy()
    optionless = np.array([not has_options(spec, t, cfg.options, bank) for t in templates])
    return draws, np.where(optionless[draws], types | 1, types)  # PROMPT_TYPES: odd indices are *_noopt


def templatize_split(spec: DatasetSpec, bank: DatasetTemplates, raw: pa.Table, role: str,
                     cfg: TemplatizeConfig, seed: int, max_input_tokens: int | None = None,
                     field: str | None = None,
                     duplicate_ids: np.ndarray | None = None,
                     few_shot: FewShotPool | None = None) -> pa.Table:
    """Render raw rows of one split into the output schema.

    Train rows are rendered ``cfg.passes`` times, each pass with the per-(example, pass) draw of
    :func:`template_draws`; within a pass rows come out grouped by template (in template order), raw
    order within a group, each group rendered on a zero-copy slice. Eval rows are rendered whole,
    once per template. With ``max_input_tokens`` (and ``cfg.cut_long_field``), inputs longer than its
    character estimate are fitted by :func:`fit_long_field`, cutting ``field`` (default: the long
    field of ``raw``; a caller rendering a split in batches passes the split's). ``duplicate_ids``:
    the split's ids held by more than one row (:func:`~flanpipe.core.text.keys.stable_keys`; None: those
    repeated within ``raw``, which is then the whole split).

    Train rows get their prompt type from the template mix (``cfg.mix``, :func:`draw_prompts`); a
    few-shot row's exemplars come from ``few_shot`` (the split's whole train pool, needed when the
    mix has few-shot rows), 1 to ``k`` of them as drawn by :func:`shot_draws`. Within a pass rows
    come out grouped by template, then prompt type. Eval rows are zero-shot, in ``cfg.options``.
    """
    templates = templates_for(bank, spec, cfg, role)
    fit = None
    if max_input_tokens is not None and cfg.cut_long_field:
        fit = (field or long_field(spec, raw), math.floor((max_input_tokens - 1) * cfg.chars_per_token))
    if role != "train":
        groups = [Group(t, 0, raw.num_rows, 0 if has_options(spec, t, cfg.options, bank) else 1)
                  for t in templates]
        return _render_groups(spec, bank, raw, role, cfg, groups, 0, fit, duplicate_ids)
    keys = stable_keys(spec, raw, duplicate_ids)
    raw_types = raw.column(spec.prompt_type_field) if spec.prompt_type_field else None
    draws, types = draw_prompts(spec, templates, keys, cfg, seed, bank, raw_types)
    pooled = np.array([t.few_shot_input is None for t in templates])  # few-shot from the train pool
    if few_shot is None and ((types >= PROMPT_TYPES.index("fs_opt")) & pooled[draws]).any():
        raise ValueError(f"{spec.name}: templatize.mix asks for few-shot rows; pass the train pool "
                         "(few_shot) to draw their exemplars from")
    k = few_shot.cfg.k if few_shot is not None else cfg.few_shot.k if cfg.few_shot is not None else None
    shots = shot_draws(keys, k, cfg.passes, spec.name, seed) if k is not None else None
    parts, n_types = [], len(PROMPT_TYPES)
    for p, (assignment, kind) in enumerate(zip(draws, types, strict=True)):
        order = np.lexsort((kind, assignment))  # by template, then prompt type; raw order within
        sizes = np.bincount(assignment * n_types + kind, minlength=len(templates) * n_types)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        groups = [Group(templates[g // n_types], int(starts[g]), int(sizes[g]), g % n_types)
                  for g in range(len(sizes))]
        asks = None if shots is None else (few_shot, keys[order], shots[p][order])
        parts.append(_render_groups(spec, bank, raw.take(pa.array(order)), role, cfg, groups, p, fit,
                                    duplicate_ids, asks))
    return pa.concat_tables(parts)


def _render_groups(spec: DatasetSpec, bank: DatasetTemplates, raw: pa.Table, role: str,
                   cfg: TemplatizeConfig, groups: list[Group], pass_: int,
                   fit: tuple[str | None, int] | None = None,
                   duplicate_ids: np.ndarray | None = None,
                   asks: tuple[FewShotPool | None, np.ndarray, np.ndarray] | None = None) -> pa.Table:
    """Render each group's rows (``raw.slice(start, rows)``) into the schema; ``fit``: (long field,
    most input characters) for :func:`fit_long_field`; ``asks``: the few-shot pool (None where the
    templates bring their own exemplars) and each row's key and exemplars asked for, where groups
    are few-shot."""
    ids = example_ids(spec, raw, role, duplicate_ids)
    row_index = raw.column("row_index").combine_chunks().cast(pa.int64())
    parts = []
    for group in groups:
        template, start, m = group.template, group.start, group.rows
        if m == 0:
            continue
        style = cfg.options if PROMPT_TYPES[group.prompt_type].endswith("_opt") else "none"
        rows = raw.slice(start, m)
        r = render_template(bank, template, rows, style)
        cut = np.zeros(m, np.int32)
        if fit is not None:
            r, cut = fit_long_field(bank, template, rows, r, *fit, style)
        inputs, shots = r.inputs, np.zeros(m, np.int32)
        if PROMPT_TYPES[group.prompt_type].startswith("fs_") and template.few_shot_input is not None:
            own = None
            if asks is not None and cfg.few_shot is not None:
                own = (asks[1][start:start + m], asks[2][start:start + m],
                       derive_seed(cfg.seed, f"own_exemplars/{spec.name}/{pass_}"), _budget(spec, cfg),
                       estimated_tokens(cfg.chars_per_token))
            inputs, shots = _own_exemplars(bank, template, rows, style, r.inputs, own)
        elif PROMPT_TYPES[group.prompt_type].startswith("fs_"):
            pool, keys, asked = asks
            found = pool.asking(rows, keys[start:start + m]).prompts(
                template, style, estimated_tokens(cfg.chars_per_token), r.inputs, asked[start:start + m])
            inputs, shots = pa.array(found.prompts, pa.string()), found.shots.astype(np.int32)
        _check_not_empty(spec, template, inputs, "input")
        _check_not_empty(spec, template, r.targets, "target")
        const = {f.name: pa.repeat(pa.scalar(v, f.type), m) for f, v in zip(
            [TEMPLATIZED_SCHEMA.field(k) for k in ("dataset", "cluster", "split", "template_id", "inverted",
                                                   "format", "pass", "prompt_type")],
            [spec.name, spec.cluster, role, template.id, template.inverted, cfg.format, pass_,
             PROMPT_TYPES[group.prompt_type]], strict=True)}
        parts.append(pa.Table.from_arrays([
            inputs, r.targets, const["dataset"], const["cluster"], const["split"],
            ids.slice(start, m), row_index.slice(start, m), const["template_id"], const["inverted"],
            r.options, pa.array(r.answer_index, pa.int32()), const["format"], const["pass"],
            pa.array(cut, pa.int32()), const["prompt_type"], pa.array(shots, pa.int32())],
            schema=TEMPLATIZED_SCHEMA))
    return pa.concat_tables(parts) if parts else TEMPLATIZED_SCHEMA.empty_table()


def _own_prompt_types(spec: DatasetSpec, values: pa.Array) -> np.ndarray:
    """Each row's prompt type (an index into PROMPT_TYPES) from its ``prompt_type_field``."""
    index = pc.index_in(values, pa.array(PROMPT_TYPES)).to_numpy(zero_copy_only=False)
    if np.isnan(index.astype(float)).any():
        unknown = sorted(set(pc.filter(values, pc.is_null(pc.index_in(values, pa.array(PROMPT_TYPES))))
                             .to_pylist()), key=str)
        raise ValueError(f"{spec.name}: {spec.prompt_type_field} values {unknown} are no prompt type; "
                         f"allowed: {list(PROMPT_TYPES)}")
    return index.astype(np.int64)


def _own_exemplars(bank: DatasetTemplates, template: Template, rows: pa.Table, style: str,
                   zero_shot: pa.Array | None = None,
                   own: tuple[np.ndarray, np.ndarray, int, int, TokenCounter] | None = None,
                   ) -> tuple[pa.Array, np.ndarray]:
    """Few-shot inputs from the rows' own exemplars (the template's ``few_shot_input``), and the
    shots each shows. No long-field cut: the exemplars are the task's, short by design.

    Where ``exemplars`` is a list (a NIv2 task's Positive Examples) and ``own`` gives each row's key,
    the exemplars it asks for (1 to ``k``), a salt, the token budget and the token count: each row
    shows that many of its list, drawn by :func:`drawn_exemplars`, and drops them oldest first until
    the prompt fits the budget, as the pool's prompts do (:func:`~flanpipe.core.text.fewshot.trim_prompts`);
    with none left it is the zero-shot rendering (``zero_shot``), 0 shots. Otherwise the rows'
    ``exemplars`` text is shown whole: the shots are the rows' ``shots`` column, else 1 (a published
    few-shot row does not record its count)."""
    few = template.model_copy(update={"input": template.few_shot_input})
    listed = "exemplars" in rows.column_names and pa.types.is_list(rows.schema.field("exemplars").type)
    if not listed or own is None:
        shots = rows.column("shots").to_numpy(zero_copy_only=False).astype(np.int32) \
            if "shots" in rows.column_names else np.ones(rows.num_rows, np.int32)
        return render_template(bank, few, rows, style).inputs, shots
    keys, asked, salt, budget, count = own
    chosen = drawn_exemplars(rows.column("exemplars").combine_chunks(), keys, asked, salt)
    have = pc.list_value_length(chosen).to_numpy(zero_copy_only=False).astype(np.int64)
    at = rows.column_names.index("exemplars")
    prompts: list[str | None] = [None] * rows.num_rows
    shots = np.zeros(rows.num_rows, np.int32)
    active = np.arange(rows.num_rows)
    for dropped in range(int(have.max(initial=0)) + 1):
        if not len(active):
            break
        picks = pa.array(active)
        left = have[active] - dropped
        joined = pc.binary_join(pc.list_slice(chosen.take(picks), dropped), EXEMPLAR_SEPARATOR)
        text = render_template(bank, few, rows.take(picks).set_column(at, "exemplars", joined), style).inputs
        text = pc.if_else(pa.array(left > 0), text, zero_shot.take(picks))
        done = (left <= 0) | (count(text.to_pylist()) <= budget)
        for row, prompt in zip(active[done], text.filter(pa.array(done)).to_pylist(), strict=True):
            prompts[row] = prompt
        shots[active[done]] = np.maximum(left[done], 0)
        active = active[~done]
    return pa.array(prompts, pa.string()), shots


EXEMPLAR_SEPARATOR = "\n\n"
"""Between a task's own exemplars in a few-shot prompt."""


def drawn_exemplars(lists: pa.ListArray, keys: np.ndarray, asked: np.ndarray, salt: int) -> pa.ListArray:
    """Each row's ``asked`` exemplars of its list (all, where it has fewer), in the list's order:
    those with the lowest seeded draws of (salt, the row's stable key, the exemplar's place in the
    list), so a row's choice depends on nothing but itself.

    >>> lists = pa.array([["a", "b", "c", "d"], ["e"], []])
    >>> drawn = drawn_exemplars(lists, np.array([7, 8, 9], np.uint64), np.array([2, 3, 1]), 1)
    >>> [len(x) for x in drawn.to_pylist()], drawn.to_pylist()[1:]
    ([2, 1, 0], [['e'], []])
    >>> again = drawn_exemplars(lists.slice(0, 1), np.array([7], np.uint64), np.array([2]), 1)
    >>> again.to_pylist()[0] == drawn.to_pylist()[0]
    True
    """
    values = pc.list_flatten(lists)
    parent = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    lengths = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    place = np.arange(len(parent), dtype=np.int64) - starts[parent]
    with np.errstate(over="ignore"):
        points = scramble(keys.astype(np.uint64)[parent] ^ (place.astype(np.uint64) * GOLDEN), salt)
    order = np.lexsort((points, parent))
    rank = np.empty(len(parent), np.int64)
    rank[order] = np.arange(len(parent)) - starts[parent[order]]
    keep = rank < np.asarray(asked, np.int64)[parent]
    sizes = np.bincount(parent[keep], minlength=len(lists))
    offsets = pa.array(np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32), pa.int32())
    return pa.ListArray.from_arrays(offsets, values.filter(pa.array(keep)))


def _budget(spec: DatasetSpec, cfg: TemplatizeSlice) -> int:
    """The token budget of a few-shot train prompt: ``templatize.few_shot.max_tokens`` within
    ``tokenize.max_input_tokens``."""
    budget = cfg.few_shot.within(cfg.max_input_tokens) if cfg.max_input_tokens else cfg.few_shot
    if budget.max_tokens is None:
        raise ValueError(f"{spec.name}: few-shot train rows need a token budget: "
                         "templatize.few_shot.max_tokens or tokenize.max_input_tokens")
    return budget.max_tokens


def estimated_tokens(chars_per_token: float) -> TokenCounter:
    """The token count few-shot training prompts are budgeted with: characters over
    ``templatize.chars_per_token``, the estimate the long-field cut uses (no tokenizer exists yet).

    >>> estimated_tokens(3.0)(["abcdefg", ""]).tolist()
    [3, 0]
    """
    def count(texts: list[str]) -> np.ndarray:
        chars = np.fromiter(map(len, texts), np.float64, len(texts))
        return np.ceil(chars / chars_per_token).astype(np.int64)
    return count


def _top_level_fields(spec: DatasetSpec) -> list[str]:
    return sorted({p for p in spec.text_fields if "." not in p})


def _check_not_empty(spec: DatasetSpec, template: Template, arr: pa.Array, what: str) -> None:
    """Fail on a null or zero-length rendering (read off the offsets: no string is touched)."""
    empty = pc.fill_null(pc.equal(pc.binary_length(arr), 0), True).to_numpy(zero_copy_only=False)
    if empty.any():
        row = int(np.flatnonzero(empty)[0])
        raise TemplateError(f"{spec.name} template {template.id}: the {what} of row {row} renders empty "
                            f"({getattr(template, what)!r})")


def templatize_dataset(name: str, train: str | Path, eval_split: str | Path, out_path: str | Path,
                       cfg: TemplatizeSlice, batch_rows: int = BATCH_ROWS,
                       contaminated: str | Path | None = None) -> dict:
    """Templatize a train split (the dataset's pool, ``data/pool/{dataset}.parquet``, or any raw
    train table) and an eval split into ``out_path``, plus a manifest beside it; inputs are fitted
    to ``max_input_tokens`` (estimated) by cutting their long field. Each split is read, rendered and
    written ``batch_rows`` rows at a time, so memory holds one batch's renderings.

    ``contaminated``: the dataset's decontamination matches (``data/decontam/{dataset}.parquet``);
    few-shot train prompts take no exemplar from a row that shares an n-gram with any held-out
    eval set, so no mixture meets a removed text inside another row's prompt."""
    seed, max_input_tokens = cfg.seed, cfg.max_input_tokens
    if cfg.mix.few_shot and cfg.few_shot is None:
        raise ValueError(f"{name}: templatize.mix has few-shot rows but the slice holds no few_shot config")
    use_string_pool()
    spec = load_registry().datasets[name]
    bank = load_bank(cfg.bank, cfg.flan_root).get(name)
    if bank is None and cfg.format == "instructions":
        raise TemplateError(f"{name}: no templates in flanpipe/data/templates/{spec.cluster}.yaml")
    if bank is not None and not bank.templates and cfg.format == "instructions":
        why = getattr(bank, "absent", None) or "flanpipe datasets --bank says why"
        raise TemplateError(f"{name}: bank {cfg.bank} has no template this dataset can render ({why})")
    out_path = Path(out_path)
    bank = bank or DatasetTemplates(dataset=name, templates=())
    fitting = bool(max_input_tokens) and cfg.cut_long_field
    meta = {"stage": "templatize", "stage_version": STAGE_VERSION, "dataset": name,
            "format": cfg.format, "options": cfg.options, "passes": cfg.passes, "seed": seed,
            "max_input_tokens": max_input_tokens,
            "templates_digest": templates_digest(name, cfg.bank, cfg.flan_root), "mix": cfg.mix.model_dump()}
    identity = checkout_identity(cfg.bank, cfg.flan_root)
    if cfg.bank != "flanpipe":  # the default's table metadata stays as it was
        meta["bank"] = identity
    counts, inputs = {}, {}
    with parquet_stream(out_path, TEMPLATIZED_SCHEMA, meta) as writer:
        for role, path in (("train", Path(train)), ("eval", Path(eval_split))):
            examples = ParquetReader(path).metadata.num_rows
            inputs[role] = {"file": str(path), "rows": examples, "sha256": sha256_file(path)}
            field = long_field(spec, iter_parquet(path, batch_rows, _top_level_fields(spec))) if fitting \
                else None
            per_template: Counter[int] = Counter()
            per_type: Counter[str] = Counter()
            rows = cut = 0
            dups = _split_duplicate_ids(spec, path, role, batch_rows)
            pooled = cfg.format != "instructions" or _pools_exemplars(bank)
            pool = _few_shot_pool(spec, bank, path, dups, cfg, contaminated) \
                if role == "train" and cfg.mix.few_shot and pooled else None
            if pool is not None:
                inputs["exemplars"] = {"rows": pool.train_raw.num_rows, "contaminated_file":
                                       None if contaminated is None else str(contaminated)}
            for raw in progress(iter_parquet(path, batch_rows), examples, f"{name}: templatize {role}"):
                part = templatize_split(spec, bank, raw, role, cfg, seed, max_input_tokens, field, dups, pool)
                writer.write(part)
                per_template.update(part.filter(pc.equal(part.column("pass"), 0))
                                    .column("template_id").to_pylist())
                per_type.update(part.column("prompt_type").to_pylist())
                rows += part.num_rows
                cut += int(pc.sum(pc.greater(part.column("input_cut"), 0)).as_py() or 0)
            counts[role] = {"rows": rows, "examples": examples, "inputs_cut": cut, "long_field": field,
                            "per_template": {str(k): v for k, v in sorted(per_template.items())},
                            "per_prompt_type": {t: per_type[t] for t in PROMPT_TYPES if per_type[t]}}
            log.info("%s [%s]: %d examples -> %d rows over %d templates", name, role, examples, rows,
                     len(per_template))
    manifest = {**meta, "bank": identity, "config": cfg.model_dump(), "inputs": inputs, "outputs": counts,
                "sha256": sha256_file(out_path), "code": code_version("templatize", STAGE_VERSION),
                "created_at": utc_now()}
    write_json_atomic(out_path.with_suffix(".manifest.json"), manifest)
    return manifest


def _pools_exemplars(bank: DatasetTemplates) -> bool:
    """Whether some template's few-shot rows take exemplars from the train pool (no
    ``few_shot_input``)."""
    return any(t.few_shot_input is None for t in bank.templates)


def _few_shot_pool(spec: DatasetSpec, bank: DatasetTemplates, path: Path, dups: np.ndarray,
                   cfg: TemplatizeSlice, contaminated: str | Path | None = None) -> FewShotPool:
    """The exemplar pool of few-shot train rows: every row of the train split (the dataset's pool
    file) but those in ``contaminated`` (decontamination matches), keyed as the rows asking are.
    Held whole in memory (at most ``dedupe.pool_factor x`` the cap rows)."""
    train = read_table(path)
    if contaminated is not None:
        matched = read_table(contaminated, columns=["row_index"]).column("row_index")
        train = train.filter(pc.invert(pc.is_in(train.column("row_index"), matched)))
    budget = cfg.few_shot.model_copy(update={"max_tokens": _budget(spec, cfg)})
    keys = stable_keys(spec, train, dups)
    return FewShotPool(spec, bank, train.slice(0, 0), train, budget, cfg.seed, keys[:0], keys)


def _split_duplicate_ids(spec: DatasetSpec, path: Path, role: str, batch_rows: int) -> np.ndarray:
    """The ids held by more than one row of the split: a pool file carries its raw split's (a pool
    may hold one row of a pair only); an eval split is read for its id column."""
    meta = read_parquet_metadata(path)
    if role == "train" and meta.get("stage") == "pool":
        return pool_duplicate_ids(meta)
    if not spec.id_field or spec.id_field not in read_schema(path).names:
        return np.zeros(0, np.uint64)
    return duplicate_id_hashes(spec, iter_parquet(path, batch_rows, [spec.id_field]))


def render_examples(name: str, raw: pa.Table, options_style: str = "dash", bank_name: str = "flanpipe",
                    flan_root: str | None = None) -> list[dict]:
    """One rendered example per template, for ``flanpipe templates --dataset``."""
    bank = load_bank(bank_name, flan_root)[name]
    rows = []
    for t in bank.templates:
        r = render_template(bank, t, raw.slice(0, 1), options_style)
        rows.append({"template_id": t.id, "inverted": t.inverted, "inputs": r.inputs[0].as_py(),
                     "targets": r.targets[0].as_py()})
    return rows
