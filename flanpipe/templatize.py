"""Stage 2, templatize: every raw example phrased as a natural-language instruction.

Train rows are rendered once per pass (``templatize.passes``): pass ``p`` of an example uses the
template drawn from (seed, dataset, the example's stable key, p) by :func:`template_draws`, so a
repeated example gets a new phrasing in each epoch of the mixture and no row's template depends on
any other row. Eval rows get every template that poses the dataset's own task (turned-around
templates are for training only), so evaluations can report the mean and the best template. The
train rows are the dataset's pool (:mod:`flanpipe.pool`): only rows that can pass the cap are
rendered. Output: ``data/templatized/{dataset}.parquet`` (train rows, then eval rows, written batch
by batch; within a batch, train rows by pass and then template, eval rows by template) and
``{dataset}.manifest.json``.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flanpipe import fingerprint as fp
from flanpipe.config import FewShotConfig, TemplatizeConfig
from flanpipe.io import (
    code_version,
    derive_seed,
    iter_parquet,
    parquet_stream,
    sha256_file,
    utc_now,
    write_json_atomic,
)
from flanpipe.logs import progress
from flanpipe.registry import DatasetSpec, field_type, load_registry
from flanpipe.templates import (
    DatasetTemplates,
    OptionsStyle,
    Rendered,
    Template,
    TemplateError,
    load_bank,
    plain_template,
    raw_texts,
    render_template,
    use_string_pool,
)

# 4: renders the pool (data/pool), batch by batch
STAGE_VERSION = "4"
BATCH_ROWS = 8_192
"""Rows rendered at a time (each ``passes`` times for train, once per template for eval)."""
log = logging.getLogger(__name__)

SCHEMA = pa.schema([
    pa.field("inputs", pa.string()),
    pa.field("targets", pa.string()),
    pa.field("dataset", pa.string()),
    pa.field("cluster", pa.string()),
    pa.field("split", pa.string()),
    pa.field("example_id", pa.string()),
    pa.field("row_index", pa.int64()),
    pa.field("template_id", pa.int32()),
    pa.field("inverted", pa.bool_()),
    pa.field("options", pa.list_(pa.string())),
    pa.field("answer_index", pa.int32()),
    pa.field("format", pa.string()),
    pa.field("pass", pa.int32()),  # which rendering of a train example (epoch e uses e % passes); 0 on eval
    pa.field("input_cut", pa.int32()),  # characters cut from the end of the long field to fit; 0 if none
])


def stable_keys(spec: DatasetSpec, table: pa.Table) -> np.ndarray:
    """A 64-bit key per raw row that does not depend on where the row sits: the hash of its id field,
    or, for a dataset without ids, of its content (all raw text fields and the plain target). Every
    per-row draw (template, cap priority, few-shot exemplars) derives from it.

    >>> t = pa.table({"sentence": ["a", "b"], "label": [0, 1], "idx": [7, 3], "row_index": [0, 1]})
    >>> k = stable_keys(load_registry().datasets["sst2"], t)
    >>> bool(k[1] == stable_keys(load_registry().datasets["sst2"], t.slice(1))[0])
    True
    """
    if spec.id_field and not pa.types.is_nested(table.schema.field(spec.id_field).type):
        return fp.string_hashes(table.column(spec.id_field).cast(pa.string()), seed=0)
    bank = DatasetTemplates(dataset=spec.name, templates=())
    targets = render_template(bank, plain_template(spec, "no_template"), table, "none").targets
    hashes = fp.exact_hashes(raw_texts(spec, table), targets)
    return hashes[:, 0] ^ (hashes[:, 1] * fp.GOLDEN)


def template_draws(keys: np.ndarray, n_templates: int, passes: int, name: str, seed: int) -> np.ndarray:
    """``(passes, n)`` template index per row and pass, drawn from (seed, dataset, key, pass).

    Each row's first template is a seeded draw from its key; pass ``p`` moves it ``p`` templates on,
    so an example repeated over ``n_templates`` passes meets every template once, and every pass is
    as balanced as the first (each template's share is a binomial draw around ``n / T``).

    >>> d = template_draws(np.arange(5, dtype=np.uint64), 3, 4, "rte", 1)
    >>> d.shape, bool(((d[1] - d[0]) % 3 == 1).all()), bool((d[3] == d[0]).all())
    ((4, 5), True, True)
    """
    with np.errstate(over="ignore"):
        z = keys.astype(np.uint64) ^ np.uint64(derive_seed(seed, f"template/{name}"))
        z = (z ^ (z >> np.uint64(30))) * fp.MIX1
        z = (z ^ (z >> np.uint64(27))) * fp.MIX2
        z ^= z >> np.uint64(31)
    first = (z % np.uint64(n_templates)).astype(np.int64)
    return (first[None, :] + np.arange(passes)[:, None]) % n_templates


def example_ids(spec: DatasetSpec, table: pa.Table, role: str) -> pa.Array:
    """``{dataset}:{split}:{id}``, the id from the dataset's id field or the raw row position."""
    if spec.id_field and not pa.types.is_nested(table.schema.field(spec.id_field).type):
        ids = table.column(spec.id_field).cast(pa.string())
    else:
        ids = table.column("row_index").cast(pa.string())
    return pc.binary_join_element_wise(f"{spec.name}:{role}:", ids, "")


def templates_for(bank: DatasetTemplates, spec: DatasetSpec, cfg: TemplatizeConfig,
                  role: str) -> tuple[Template, ...]:
    if cfg.format != "instructions":
        return (plain_template(spec, cfg.format),)
    return bank.templates if role == "train" else bank.eval_templates


def templatize_split(spec: DatasetSpec, bank: DatasetTemplates, raw: pa.Table, role: str,
                     cfg: TemplatizeConfig, seed: int, max_input_tokens: int | None = None,
                     field: str | None = None) -> pa.Table:
    """Render raw rows of one split into the output schema.

    Train rows are rendered ``cfg.passes`` times, each pass with the per-(example, pass) draw of
    :func:`template_draws`; within a pass rows come out grouped by template (in template order), raw
    order within a group, each group rendered on a zero-copy slice. Eval rows are rendered whole,
    once per template. With ``max_input_tokens`` (and ``cfg.cut_long_field``), inputs longer than its
    character estimate are fitted by :func:`fit_long_field`, cutting ``field`` (default: the long
    field of ``raw``; a caller rendering a split in batches passes the split's).
    """
    templates = templates_for(bank, spec, cfg, role)
    fit = None
    if max_input_tokens is not None and cfg.cut_long_field:
        fit = (field or long_field(spec, raw), math.floor((max_input_tokens - 1) * cfg.chars_per_token))
    if role != "train":
        return _render_groups(spec, bank, raw, role, cfg, [(t, 0, raw.num_rows) for t in templates], 0, fit)
    draws = template_draws(stable_keys(spec, raw), len(templates), cfg.passes, spec.name, seed)
    parts = []
    for p, assignment in enumerate(draws):
        grouped = raw.take(pa.array(np.argsort(assignment, kind="stable")))
        sizes = np.bincount(assignment, minlength=len(templates))
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        groups = [(t, int(a), int(m)) for t, a, m in zip(templates, starts, sizes, strict=True)]
        parts.append(_render_groups(spec, bank, grouped, role, cfg, groups, p, fit))
    return pa.concat_tables(parts)


def _render_groups(spec: DatasetSpec, bank: DatasetTemplates, raw: pa.Table, role: str,
                   cfg: TemplatizeConfig, groups: list[tuple[Template, int, int]], pass_: int,
                   fit: tuple[str | None, int] | None = None) -> pa.Table:
    """Render ``raw.slice(start, m)`` with each ``(template, start, m)`` group into the schema;
    ``fit``: (long field, most input characters) for :func:`fit_long_field`."""
    ids = example_ids(spec, raw, role)
    row_index = raw.column("row_index").combine_chunks().cast(pa.int64())
    parts = []
    for template, start, m in groups:
        if m == 0:
            continue
        r = render_template(bank, template, raw.slice(start, m), cfg.options)
        cut = np.zeros(m, np.int32)
        if fit is not None:
            r, cut = fit_long_field(bank, template, raw.slice(start, m), r, *fit, cfg.options)
        _check_not_empty(spec, template, r.inputs, "input")
        _check_not_empty(spec, template, r.targets, "target")
        const = {f.name: pa.repeat(pa.scalar(v, f.type), m) for f, v in zip(
            [SCHEMA.field(k) for k in ("dataset", "cluster", "split", "template_id", "inverted", "format",
                                       "pass")],
            [spec.name, spec.cluster, role, template.id, template.inverted, cfg.format, pass_], strict=True)}
        parts.append(pa.Table.from_arrays([
            r.inputs, r.targets, const["dataset"], const["cluster"], const["split"],
            ids.slice(start, m), row_index.slice(start, m), const["template_id"], const["inverted"],
            r.options, pa.array(r.answer_index, pa.int32()), const["format"], const["pass"],
            pa.array(cut, pa.int32())], schema=SCHEMA))
    return pa.concat_tables(parts) if parts else SCHEMA.empty_table()


def long_field(spec: DatasetSpec, raw: pa.Table | Iterable[pa.Table]) -> str | None:
    """The dataset's long field: of its top-level string text fields, the one with the most
    characters in ``raw`` (a table, or a split's tables one batch at a time): the passage, the
    article, the dialogue; None if it has none."""
    chars: Counter[str] = Counter()
    for table in [raw] if isinstance(raw, pa.Table) else raw:
        for path in spec.text_fields:
            if "." not in path and pa.types.is_string(table.schema.field(path).type):
                chars[path] += pc.sum(pc.utf8_length(table.column(path))).as_py() or 0
    best, most = None, 0
    for path in spec.text_fields:  # the first of equals, in registry order
        if chars[path] > most:
            best, most = path, chars[path]
    return best


def _top_level_fields(spec: DatasetSpec) -> list[str]:
    return sorted({p for p in spec.text_fields if "." not in p})


def fit_long_field(bank: DatasetTemplates, template: Template, raw: pa.Table, rendered: Rendered,
                   field: str | None, max_chars: int, options: str) -> tuple[Rendered, np.ndarray]:
    """Re-render the rows whose input passes ``max_chars`` with the end of ``field`` cut (at a word
    boundary) by the excess, so the text the template puts before and after it (the instruction, the
    question, the OPTIONS) stays whole. Returns the rendering and the characters cut per row.

    A template that does not use the field, or a row whose other text alone passes the budget (the
    field is emptied), is left to the tokenizer's truncation, which the pack stage counts.
    """
    lengths = pc.utf8_length(rendered.inputs).to_numpy(zero_copy_only=False)
    over = np.flatnonzero(lengths > max_chars)
    cut = np.zeros(raw.num_rows, np.int32)
    uses = field is not None and any(p.split("|")[0] == field for p in template.placeholders("input"))
    if not len(over) or not uses:
        return rendered, cut
    column = raw.column(field).combine_chunks()
    shorter = []
    for i, text in zip(over, column.take(pa.array(over)).to_pylist(), strict=True):
        keep = max(0, len(text) - int(lengths[i] - max_chars))
        space = text.rfind(" ", 0, keep + 1)
        text_cut = text[:space] if space > 0.8 * keep else text[:keep]
        shorter.append(text_cut)
        cut[i] = len(text) - len(text_cut)
    mask = np.zeros(raw.num_rows, bool)
    mask[over] = True
    fitted = pc.replace_with_mask(column, pa.array(mask), pa.array(shorter, column.type))
    table = raw.set_column(raw.schema.get_field_index(field), field, fitted)
    return render_template(bank, template, table, options), cut


def _check_not_empty(spec: DatasetSpec, template: Template, arr: pa.Array, what: str) -> None:
    """Fail on a null or zero-length rendering (read off the offsets: no string is touched)."""
    empty = pc.fill_null(pc.equal(pc.binary_length(arr), 0), True).to_numpy(zero_copy_only=False)
    if empty.any():
        row = int(np.flatnonzero(empty)[0])
        raise TemplateError(f"{spec.name} template {template.id}: the {what} of row {row} renders empty "
                            f"({getattr(template, what)!r})")


def templates_digest(name: str) -> str:
    """A hash of a dataset's templates: a Snakemake param, so editing them reruns the dataset."""
    bank = load_bank().get(name)
    text = bank.model_dump_json() if bank else "none"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def templatize_dataset(name: str, train: str | Path, eval_split: str | Path, out_path: str | Path,
                       cfg: TemplatizeConfig, seed: int, max_input_tokens: int | None = None,
                       batch_rows: int = BATCH_ROWS) -> dict:
    """Templatize a train split (the dataset's pool, ``data/pool/{dataset}.parquet``, or any raw
    train table) and an eval split into ``out_path``, plus a manifest beside it; inputs are fitted
    to ``max_input_tokens`` (estimated) by cutting their long field. Each split is read, rendered and
    written ``batch_rows`` rows at a time, so memory holds one batch's renderings."""
    use_string_pool()
    spec = load_registry().datasets[name]
    bank = load_bank().get(name)
    if bank is None and cfg.format == "instructions":
        raise TemplateError(f"{name}: no templates in flanpipe/data/templates/{spec.cluster}.yaml")
    out_path = Path(out_path)
    bank = bank or DatasetTemplates(dataset=name, templates=())
    fitting = bool(max_input_tokens) and cfg.cut_long_field
    meta = {"stage": "templatize", "stage_version": STAGE_VERSION, "dataset": name,
            "format": cfg.format, "options": cfg.options, "passes": cfg.passes, "seed": seed,
            "max_input_tokens": max_input_tokens,
            "templates_digest": templates_digest(name)}
    counts, inputs = {}, {}
    with parquet_stream(out_path, SCHEMA, meta) as writer:
        for role, path in (("train", Path(train)), ("eval", Path(eval_split))):
            examples = pq.ParquetFile(path).metadata.num_rows
            inputs[role] = {"file": str(path), "rows": examples, "sha256": sha256_file(path)}
            field = long_field(spec, iter_parquet(path, batch_rows, _top_level_fields(spec))) if fitting \
                else None
            per_template: Counter[int] = Counter()
            rows = cut = 0
            for raw in progress(iter_parquet(path, batch_rows), examples, f"{name}: templatize {role}"):
                part = templatize_split(spec, bank, raw, role, cfg, seed, max_input_tokens, field)
                writer.write(part)
                per_template.update(part.filter(pc.equal(part.column("pass"), 0))
                                    .column("template_id").to_pylist())
                rows += part.num_rows
                cut += int(pc.sum(pc.greater(part.column("input_cut"), 0)).as_py() or 0)
            counts[role] = {"rows": rows, "examples": examples, "inputs_cut": cut, "long_field": field,
                            "per_template": {str(k): v for k, v in sorted(per_template.items())}}
            log.info("%s [%s]: %d examples -> %d rows over %d templates", name, role, examples, rows,
                     len(per_template))
    manifest = {**meta, "config": cfg.model_dump(), "inputs": inputs, "outputs": counts,
                "sha256": sha256_file(out_path), "code": code_version("templatize", STAGE_VERSION),
                "created_at": utc_now()}
    write_json_atomic(out_path.with_suffix(".manifest.json"), manifest)
    return manifest


# --- few-shot ------------------------------------------------------------------------------------

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
                 cfg: FewShotConfig, seed: int):
        self.spec, self.bank, self.cfg, self.seed = spec, bank, cfg, seed
        self.eval_raw, self.train_raw = eval_raw, train_raw.combine_chunks()  # one chunk: takes 3x faster
        self.eval_keys, self.train_keys = stable_keys(spec, eval_raw), stable_keys(spec, train_raw)
        self._rings: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def ring(self, template: Template) -> tuple[np.ndarray, np.ndarray]:
        """The train rows in ring order, and where each eval row's walk starts on it."""
        if template.id not in self._rings:
            salt = derive_seed(self.seed, f"few_shot/{self.spec.name}/{template.id}")
            points = _scramble(self.train_keys, salt)
            order = np.argsort(points, kind="stable")
            starts = np.searchsorted(points[order], _scramble(self.eval_keys, salt ^ 0x5EED))
            self._rings[template.id] = order, starts
        return self._rings[template.id]

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
                count_tokens: TokenCounter = whitespace_token_counts) -> FewShotPrompts:
        """Every eval row's input with up to ``k`` solved exemplars before it, in ``style``."""
        queries = render_template(self.bank, template, self.eval_raw, style).inputs
        chosen = self.exemplars(template, queries, style)
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


def _scramble(keys: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64 of each key XOR a salt: a seeded, well-spread 64-bit point per key."""
    with np.errstate(over="ignore"):
        z = keys.astype(np.uint64) ^ np.uint64(salt % 2**64)
        z = (z ^ (z >> np.uint64(30))) * fp.MIX1
        z = (z ^ (z >> np.uint64(27))) * fp.MIX2
    return z ^ (z >> np.uint64(31))


def render_examples(name: str, raw: pa.Table, options_style: str = "dash") -> list[dict]:
    """One rendered example per template, for ``flanpipe templates --dataset``."""
    bank = load_bank()[name]
    rows = []
    for t in bank.templates:
        r = render_template(bank, t, raw.slice(0, 1), options_style)
        rows.append({"template_id": t.id, "inverted": t.inverted, "inputs": r.inputs[0].as_py(),
                     "targets": r.targets[0].as_py()})
    return rows
