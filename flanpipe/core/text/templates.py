"""Instruction templates: the template bank (data) and its vectorised renderer.

Templates live in ``flanpipe/data/templates/<cluster>.yaml``, one list per dataset. A template is a
pair of format strings, ``input`` and ``target``, over a small placeholder language:

- ``{field}`` / ``{struct.sub}``: a raw field by its registry path. Lists of strings are joined with
  ", "; lists of lists with " | " inside and "; " between (DART triples).
- ``{field|first}``, ``{field|lines}``, ``{field|numbered}``, ``{field|comma}``: list filters;
  ``{field|nopunct}``: a string lower-cased, without punctuation (fix-punctuation task inputs);
  ``{field|unpunctuated}``: the same with its case kept (FLAN's ``no_punct``); ``{field|options}``:
  a list as FLAN's ``OPTIONS:`` block; ``{field|round}``: a number said as a whole number.
- ``{answer}``: the label's answer text (classification, from the template's ``answers`` map), the
  correct choice (multiple choice) or the first reference (generation). A raw field that happens to
  be called ``answer`` is ``{@answer}``.
- ``{{`` and ``}}`` are literal braces.

Rendering works on whole Arrow columns: a template is split once into literal pieces and column
references, and ``binary_join_element_wise`` concatenates them for every row at once.

>>> import pyarrow as pa
>>> t = Template(id=0, input="Review: {sentence}\\nIs it positive?", target="{answer}")
>>> table = pa.table({"sentence": ["a fine film", "dull"], "idx": [0, 1], "label": [1, 0]})
>>> rendered = render_template(load_bank()["sst2"], t, table)
>>> rendered.inputs.to_pylist()[0]
'Review: a fine film\\nIs it positive?\\n\\nOPTIONS:\\n- negative\\n- positive'
"""

from __future__ import annotations

import functools
import hashlib
import re
import string
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml
from pydantic import BaseModel, ConfigDict, model_validator

from flanpipe.core.config.registry import (
    DatasetSpec,
    active_extras,
    extra_template_files,
    field_type,
    is_builtin,
    load_registry,
)
from flanpipe.core.text.validate import label_index

FILTERS = ("first", "lines", "numbered", "comma", "nopunct", "unpunctuated", "options", "round")
BANKS = ("flanpipe", "flan2021", "flan2022")
"""The template banks: flanpipe's own (``flanpipe/data/templates``) and FLAN's, read from a FLAN
checkout (:mod:`flanpipe.core.text.flan`)."""
OPTIONS_AT = re.compile(r"\s*\{options_\}")
"""A template's own OPTIONS place (FLAN's ``{options_}``) with the blank lines before it."""


def _string_pool() -> pa.MemoryPool:
    """The memory pool for building large string columns.

    The wheels' default pool (mimalloc) is about 3x slower than jemalloc or the system allocator
    for the large, growing buffers that concatenating whole columns builds (measured with
    ``flanpipe bench templatize``), so rendering asks for jemalloc where the build has it.
    """
    try:
        return pa.jemalloc_memory_pool()
    except NotImplementedError:
        return pa.system_memory_pool()


STRING_POOL = _string_pool()


def use_string_pool() -> None:
    """Make :data:`STRING_POOL` the process's default pool (gathers and casts allocate there too).

    Called by the stage entry points, not on import: a library import changes no global state.
    """
    pa.set_memory_pool(STRING_POOL)
OptionsStyle = Literal["dash", "letters", "none"]
Format = Literal["instructions", "no_template", "dataset_name"]


class TemplateError(ValueError):
    """A template cannot be rendered; the message names the dataset, template id and field."""


class Template(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: int
    input: str
    target: str
    inverted: bool = False
    answers: dict[str, str] | None = None
    """Classification: how each label name is said (overrides the dataset's map)."""
    few_shot_input: str | None = None
    """The input of this template's few-shot rows (the ``fs_*`` prompt types), rendered from the row
    alone: the row carries its own exemplars in a field (NIv2's Positive Examples), so the
    instruction is said once; without it, few-shot rows take solved exemplars from the train pool."""

    def placeholders(self, part: Literal["input", "target", "few_shot_input"]) -> list[str]:
        """The placeholders of ``input``, ``target`` or ``few_shot_input``, filters included
        (``concepts|lines``)."""
        text = {"input": self.input, "target": self.target, "few_shot_input": self.few_shot_input or ""}[part]
        return [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]


class DatasetTemplates(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str
    answers: dict[str, str] | None = None
    empty_answer: str | None = None
    templates: tuple[Template, ...]

    options_suffix: ClassVar[bool] = True
    """Classification and multiple choice: OPTIONS follow every template's input (flanpipe's bank);
    a FLAN bank shows them only where a template puts ``{options_}``."""

    def generation_answer(self) -> str | None:
        """Generation: the answer as a placeholder expression, where it is not the registry's first
        target as it is (a FLAN bank's numbered CoQA answers); None for the target."""
        return None

    @model_validator(mode="after")
    def _unique_ids(self) -> DatasetTemplates:
        ids = [t.id for t in self.templates]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{self.dataset}: template ids are not unique: {ids}")
        return self

    def answer_texts(self, spec: DatasetSpec, template: Template) -> list[str]:
        """Classification: the answer text of each label, in label order."""
        mapping = template.answers or self.answers or {}
        missing = [name for name in spec.task.labels if mapping and name not in mapping]
        if missing:
            raise TemplateError(f"{self.dataset} template {template.id}: answers has no text for "
                                f"label(s) {missing}")
        return [mapping.get(name, name.replace("_", " ")) for name in spec.task.labels]

    def listed(self, spec: DatasetSpec, texts: list[str]) -> list[str]:
        """Classification: the answer texts (in label order) in the order an OPTIONS block lists
        them: label order here; a FLAN bank lists them in FLAN's order (TREC's)."""
        return texts

    @property
    def eval_templates(self) -> tuple[Template, ...]:
        """Templates that pose the dataset's own task (turned-around ones do not)."""
        return tuple(t for t in self.templates if not t.inverted)

    def shows_options(self, spec: DatasetSpec, template: Template, style: OptionsStyle) -> bool:
        """Whether the template's inputs carry an OPTIONS block in ``style``: at its ``{options_}``
        (a FLAN bank), or as flanpipe's suffix (classification and multiple choice, not turned
        around)."""
        if style == "none":
            return False
        if "options_" in template.placeholders("input"):
            return True
        return self.options_suffix and spec.task.type != "generation" and not template.inverted


def load_bank(bank: str = "flanpipe", flan_root: str | None = None) -> dict[str, DatasetTemplates]:
    """Every dataset's templates (cached): flanpipe's own, or a FLAN bank's read from the checkout at
    ``flan_root`` (:func:`flanpipe.core.text.flan.load_flan_bank`)."""
    if bank != "flanpipe":
        from flanpipe.core.text.flan import load_flan_bank  # the FLAN banks build on this module

        return load_flan_bank(bank, None if flan_root is None else str(flan_root))
    return _own_bank()


def _own_bank() -> dict[str, DatasetTemplates]:
    """flanpipe's templates, ``same_as`` references resolved: the package's files, one per cluster of
    the registry, then the template files of the extra registries (``registry.extra``)."""
    return _load_own_bank(active_extras())


@functools.cache
def _load_own_bank(extras: tuple[str, ...]) -> dict[str, DatasetTemplates]:
    root = resources.files("flanpipe").joinpath("data/templates")
    raw: dict[str, Any] = {}
    for cluster in load_registry().clusters:
        ref = root.joinpath(f"{cluster}.yaml")
        if ref.is_file():
            raw.update(yaml.safe_load(ref.read_text("utf-8")) or {})
    for path in extra_template_files():
        raw.update(yaml.safe_load(path.read_text("utf-8")) or {})
    bank = {}
    for name, entry in raw.items():
        source = entry
        while "same_as" in source:
            source = raw[source["same_as"]]
        bank[name] = DatasetTemplates(dataset=name, **source)
    return bank


# --- column access -------------------------------------------------------------------------------

def _child(arr: pa.Array, part: str) -> pa.Array:
    """``struct.part``, looking through lists (the list structure is kept)."""
    if pa.types.is_list(arr.type):
        return pa.ListArray.from_arrays(arr.offsets, _child(arr.values, part), mask=arr.is_null())
    return pc.struct_field(arr, part)


def column_at(table: pa.Table, path: str) -> pa.Array:
    head, *rest = path.split(".")
    col = table.column(head)
    arr = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()  # no copy for one chunk
    for part in rest:
        arr = _child(arr, part)
    return arr


def letter_mark(i: int) -> str:
    """``(A) ``, ``(B) ``, ... for option ``i``; past Z, ``(27) `` and on."""
    return f"({chr(65 + i)}) " if i < 26 else f"({i + 1}) "


def _numbered(arr: pa.Array, labels: str = "numbers") -> pa.Array:
    """Join each list as "1. a\\n2. b" (or "(A) a\\n(B) b" with ``labels="letters"``)."""
    offsets = arr.offsets.to_numpy()
    n_items = int(offsets[-1] - offsets[0])
    pos = np.arange(n_items) - np.repeat(offsets[:-1] - offsets[0], np.diff(offsets))
    if labels == "letters":
        longest = int(pos.max()) + 1 if n_items else 0
        marks = pc.take(pa.array([letter_mark(i) for i in range(longest)], pa.string()), pa.array(pos))
    else:
        marks = pc.binary_join_element_wise(pa.array(pos + 1).cast(pa.string()), ". ", "")
    values = arr.values.slice(offsets[0], n_items)
    items = pc.binary_join_element_wise(marks, values, "")
    return pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets - offsets[0], pa.int32()), items),
                          "\n")


def as_text(arr: pa.Array, filt: str | None = None, sep: str = ", ") -> pa.Array:
    """Render a column as strings, applying a list filter (``first``, ``lines``, ``numbered``, ``comma``).

    >>> as_text(pa.array([[["a", "b"], ["c", "d"]]])).to_pylist()
    ['a | b; c | d']
    """
    typ = arr.type
    if filt == "round" and (pa.types.is_floating(typ) or pa.types.is_integer(typ)):
        # a score said as a whole number, as printf's %.0f says it (half to even): 2.5 -> "2"
        return pc.round(arr, 0, round_mode="half_to_even").cast(pa.int64()).cast(pa.string())
    if filt == "unpunctuated" and pa.types.is_string(typ):  # FLAN's: punctuation removed, nothing else
        return pc.replace_substring_regex(arr, r"[^\w\s]", "")
    if filt == "nopunct" and pa.types.is_string(typ):
        bare = pc.replace_substring_regex(pc.utf8_lower(arr), r"[^\w\s]", "")
        return pc.utf8_trim_whitespace(pc.replace_substring_regex(bare, r"\s+", " "))
    if not pa.types.is_list(typ):
        if filt:
            raise TemplateError(f"filter |{filt} needs a list field, not {typ}")
        return arr if pa.types.is_string(typ) else arr.cast(pa.string())
    if pa.types.is_list(typ.value_type):  # list of lists: inner " | ", outer "; "
        inner = pa.ListArray.from_arrays(arr.offsets, as_text(arr.values, sep=" | "))
        return as_text(inner, filt, sep="; ")
    arr = pa.ListArray.from_arrays(arr.offsets, as_text(arr.values))
    if filt == "first":  # "" for an empty list (squad_v2's unanswerable questions)
        return pc.binary_join(pc.list_slice(arr, 0, 1), "")
    if filt == "numbered":
        return _numbered(arr)
    if filt == "options":  # FLAN's OPTIONS block of a list (ReCoRD's entities)
        return pc.binary_join_element_wise("OPTIONS:\n- ", pc.binary_join(arr, "\n- "), "")
    if filt == "lines":
        sep = "\n"
    elif filt == "comma":
        sep = ", "
    elif filt is not None:
        raise TemplateError(f"unknown filter |{filt}; allowed: {', '.join(FILTERS)}")
    return pc.binary_join(arr, sep)


def raw_texts(spec: DatasetSpec, table: pa.Table, paths: tuple[str, ...] | None = None) -> pa.Array:
    """Each row's raw text fields (or the fields at ``paths``) joined by spaces, lists flattened: the
    text dedup and decontamination compare."""
    parts = [as_text(column_at(table, path)) for path in (spec.text_fields if paths is None else paths)]
    return pc.binary_join_element_wise(*[pc.fill_null(p, "") for p in parts], " ")


def distinct_texts(spec: DatasetSpec, table: pa.Table) -> pa.Array | None:
    """The text that tells a row apart from rows sharing its other fields (SQuAD's question and
    answer beside a passage several questions share): the registry's ``distinct`` fields joined, or
    None when the dataset declares none (all text fields tell rows apart)."""
    return raw_texts(spec, table, spec.distinct) if spec.distinct else None


# --- answers and options -------------------------------------------------------------------------

def choices_column(spec: DatasetSpec, table: pa.Table) -> pa.Array:
    """Multiple choice: each row's options as a list<string> column."""
    choices = spec.task.choices
    if isinstance(choices, str):
        return column_at(table, choices)
    n, k = table.num_rows, len(choices)
    stacked = pa.concat_arrays([as_text(column_at(table, path)) for path in choices])
    row_major = (np.arange(n)[:, None] + np.arange(k)[None, :] * n).ravel()  # row 0's k choices, ...
    offsets = pa.array(np.arange(0, n * k + 1, k), pa.int32())
    return pa.ListArray.from_arrays(offsets, pc.take(stacked, pa.array(row_major)))


@dataclass
class Answers:
    """Per-row answers and options of one dataset under one template."""

    answer: pa.Array                  # string per row
    options: pa.Array                 # list<string> per row (empty for generation)
    index: np.ndarray                 # the correct option per row; -1 for generation


def compute_answers(spec: DatasetSpec, bank: DatasetTemplates, template: Template,
                    table: pa.Table) -> Answers:
    n = table.num_rows
    task = spec.task
    if task.type == "generation":
        expression = bank.generation_answer()
        if expression is not None:
            answer = _broadcast(_render_string(expression, lambda name: field_text(spec, table, name)), n)
        else:
            first = column_at(table, task.targets[0])
            answer = as_text(first, "first" if pa.types.is_list(first.type) else None)
        if bank.empty_answer is not None:
            empty = pc.fill_null(pc.equal(pc.utf8_length(answer), 0), True)
            answer = pc.if_else(empty, bank.empty_answer, answer)
        return Answers(answer, repeat_list([], n), np.full(n, -1))
    idx = label_index(spec, table)
    if task.type == "classification":
        texts = bank.answer_texts(spec, template)
        bad = (idx < 0) | (idx >= len(texts))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise TemplateError(
                f"{spec.name} template {template.id}: field {task.label_field!r} of row {row} "
                f"({column_at(table, task.label_field)[row].as_py()!r}) has no label name "
                f"(labels: {list(task.labels)})")
        answer = pc.take(pa.array(texts, pa.string()), pa.array(idx))
        return Answers(answer, repeat_list(texts, n), idx)
    options = choices_column(spec, table)
    offsets = options.offsets.to_numpy()
    bad = (idx < 0) | (idx >= np.diff(offsets))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise TemplateError(f"{spec.name} template {template.id}: field {task.label_field!r} of row "
                            f"{row} does not name one of its choices")
    answer = pc.take(options.values, pa.array(offsets[:-1] + idx))
    return Answers(as_text(answer), as_text_list(options), idx)


def repeat_list(items: list[str], n: int) -> pa.Array:
    """The same list of strings on each of ``n`` rows, built without a Python loop."""
    k = len(items)
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * k)
    values = pc.take(pa.array(items, pa.string()), pa.array(np.tile(np.arange(k), n)))
    return pa.ListArray.from_arrays(offsets, values)


def as_text_list(arr: pa.Array) -> pa.Array:
    if pa.types.is_string(arr.type.value_type):
        return arr
    return pa.ListArray.from_arrays(arr.offsets, as_text(arr.values))


def options_block(options: pa.Array, style: OptionsStyle, constant: list[str] | None = None,
                  head: str = "OPTIONS:\n") -> pa.Array | str:
    """The ``OPTIONS`` block: ``OPTIONS:``, then one ``- choice`` line per option (``(A) choice``
    with ``letters``); empty with ``none``. FLAN's ``{options_}`` renders as this block.

    ``constant``: the options when every row has the same (classification): one string, no column.

    >>> options_block(pa.array([]), "dash", ["yes", "no"])
    'OPTIONS:\\n- yes\\n- no'
    """
    if style == "none":
        return ""
    if constant is not None:
        marks = [letter_mark(i) if style == "letters" else "- " for i in range(len(constant))]
        return head + "\n".join(m + c for m, c in zip(marks, constant, strict=True))
    body = _numbered(options, "letters") if style == "letters" else pc.binary_join_element_wise(
        "- ", pc.binary_join(options, "\n- "), "")
    return pc.binary_join_element_wise(head, body, "")


def options_suffix(options: pa.Array, style: OptionsStyle, constant: list[str] | None = None
                   ) -> pa.Array | str:
    """The ``OPTIONS`` suffix flanpipe's bank appends to an input: a blank line, then the block."""
    return options_block(options, style, constant, "\n\nOPTIONS:\n")


# --- rendering -----------------------------------------------------------------------------------

@dataclass
class Rendered:
    inputs: pa.Array
    targets: pa.Array
    options: pa.Array
    answer_index: np.ndarray


def _render_string(fmt: str, resolve, suffix: pa.Array | str = "") -> pa.Array | str:
    """Concatenate a format string's literal pieces and columns (and a suffix) in one pass."""
    pieces: list[Any] = []
    for literal, name, _spec, _conv in string.Formatter().parse(fmt):
        if literal:
            pieces.append(literal)
        if name is not None:
            pieces.append(resolve(name))
    if isinstance(suffix, pa.Array) or suffix:
        pieces.append(suffix)
    if not any(isinstance(p, pa.Array) for p in pieces):
        return "".join(pieces)
    if len(pieces) == 1:  # "{answer}": the column itself, no copy
        return pieces[0]
    return pc.binary_join_element_wise(*pieces, "", memory_pool=STRING_POOL)


def field_text(spec: DatasetSpec, table: pa.Table, name: str) -> pa.Array:
    """A placeholder's column as text: ``field.path`` or ``@field`` with an optional ``|filter``."""
    path, _, filt = name.partition("|")
    path = path.removeprefix("@")
    try:
        field_type(spec.schema, path)
    except KeyError:
        raise TemplateError(f"placeholder {{{name}}} names no field of the dataset "
                            f"(fields: {list(spec.features)})") from None
    try:
        return as_text(column_at(table, path), filt or None)
    except TemplateError as err:
        raise TemplateError(f"{{{name}}}: {err}") from None


def _broadcast(value: pa.Array | str, n: int) -> pa.Array:
    return value if isinstance(value, pa.Array) else pa.repeat(pa.scalar(value, pa.string()), n)


def render_template(bank: DatasetTemplates, template: Template, table: pa.Table,
                    options_style: OptionsStyle = "dash") -> Rendered:
    """Render one template on every row of ``table`` (raw rows in the registry schema)."""
    spec = load_registry().datasets[bank.dataset]
    answers = compute_answers(spec, bank, template, table)
    constant = bank.answer_texts(spec, template) if spec.task.type == "classification" else None

    def resolve(name: str) -> pa.Array | str:
        if name == "answer":
            return answers.answer
        if name == "options_":  # FLAN's OPTIONS at the template's own place
            return options_block(answers.options, options_style,
                                 None if constant is None else bank.listed(spec, constant))
        try:
            return field_text(spec, table, name)
        except TemplateError as err:
            raise TemplateError(f"{spec.name} template {template.id}: {err}") from None

    n = table.num_rows
    suffix: pa.Array | str = ""
    source = template.input
    if "options_" in template.placeholders("input"):
        if options_style == "none":
            source = OPTIONS_AT.sub("", source)
    elif bank.options_suffix and spec.task.type != "generation" and not template.inverted:
        suffix = options_suffix(answers.options, options_style, constant)
    inputs = _broadcast(_render_string(source, resolve, suffix), n)
    targets = _broadcast(_render_string(template.target, resolve), n)
    options = answers.options
    if template.inverted:  # a turned-around task is open generation
        options = repeat_list([], n)
    return Rendered(inputs, targets, options, answers.index if not template.inverted else np.full(n, -1))


def plain_template(spec: DatasetSpec, fmt: Format, options_in_place: bool = False) -> Template:
    """The ablation formats: the inputs' text fields joined plainly, optionally with the task name.
    ``options_in_place``: for a FLAN bank, which shows OPTIONS only at ``{options_}``: the template
    ends in ``{options_}`` after a blank line, where flanpipe's bank appends the same suffix.

    >>> plain_template(load_registry().datasets["rte"], "dataset_name").input
    '[Task: RTE]\\n{premise}\\n{hypothesis}'
    """
    task = spec.task
    skip = set(task.targets or ())
    if isinstance(task.choices, tuple):
        skip |= set(task.choices)
    elif task.choices:
        skip.add(task.choices)
    fields = [p for p in spec.text_fields if p not in skip]
    body = "\n".join("{" + p + "}" for p in fields)
    if fmt == "dataset_name":
        body = f"[Task: {spec.paper_name}]\n" + body
    target = "{answer}" if task.type != "generation" else "{" + task.targets[0] + "|first}" \
        if pa.types.is_list(field_type(spec.schema, task.targets[0])) else "{" + task.targets[0] + "}"
    if options_in_place and task.type != "generation":
        body += "\n\n{options_}"
    return Template(id=0, input=body, target=target)


def templates_digest(name: str, bank_name: str = "flanpipe", flan_root: str | None = None) -> str:
    """A hash of a dataset's templates in a bank: a Snakemake param, so editing them (or the FLAN
    checkout's file) reruns the dataset."""
    bank = load_bank(bank_name, flan_root).get(name)
    text = bank.model_dump_json() if bank else "none"
    if name in load_registry().datasets and not is_builtin(name):
        text += load_registry().datasets[name].model_dump_json()  # an extra's entry: editing it reruns
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- fitting an input to a token budget ----------------------------------------------------------

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


def _uses(template: Template, field: str | None) -> bool:
    return field is not None and any(p.split("|")[0] == field for p in template.placeholders("input"))


def fit_long_field(bank: DatasetTemplates, template: Template, raw: pa.Table, rendered: Rendered,
                   field: str | None, max_chars: int, options: str) -> tuple[Rendered, np.ndarray]:
    """Re-render the rows whose input passes ``max_chars`` with the end of ``field`` cut (at a word
    boundary) by the excess, so the text the template puts before and after it (the instruction, the
    question, the OPTIONS) stays whole. Returns the rendering and the characters cut per row.

    A template that does not use the field, or a row whose other text alone passes the budget (the
    field is emptied), is left to the tokenizer's truncation, which the pack stage counts.
    """
    if not _uses(template, field):
        return rendered, np.zeros(raw.num_rows, np.int32)
    rendered, (_, cut) = _cut_rows(bank, template, raw, rendered, field, np.full(raw.num_rows, max_chars),
                                   options)
    return rendered, cut


def fit_to_tokens(bank: DatasetTemplates, template: Template, raw: pa.Table, style: OptionsStyle,
                  field: str | None, budget: int, count_tokens, passes: int = 4
                  ) -> tuple[Rendered, np.ndarray]:
    """The template's rendering of ``raw`` with every input fitted to ``budget`` tokens (as
    ``count_tokens`` counts a prompt, its special tokens included) by cutting the end of ``field``,
    as templatize fits training inputs: the instruction, the question and the OPTIONS survive where
    the tokenizer's truncation would cut them. Each pass cuts an over-long row's field by its excess
    tokens at that row's own characters per token, plus a tenth, then counts again. Returns the
    rendering and the characters cut per row; a row that still does not fit after ``passes`` (its
    other text alone passes the budget) is left to the format's truncation."""
    rendered = render_template(bank, template, raw, style)
    cut = np.zeros(raw.num_rows, np.int32)
    if not _uses(template, field):
        return rendered, cut
    for _ in range(passes):
        tokens = np.asarray(count_tokens(rendered.inputs.to_pylist()), np.int64)
        over = tokens > budget
        if not over.any():
            break
        chars = pc.utf8_length(rendered.inputs).to_numpy(zero_copy_only=False).astype(np.int64)
        excess = np.ceil((tokens - budget) * chars / np.maximum(tokens, 1) * 1.1).astype(np.int64) + 1
        max_chars = np.where(over, chars - excess, np.iinfo(np.int64).max)
        rendered, (raw, more) = _cut_rows(bank, template, raw, rendered, field, max_chars, style)
        cut += more
    return rendered, cut


def _cut_rows(bank: DatasetTemplates, template: Template, raw: pa.Table, rendered: Rendered, field: str,
              max_chars: np.ndarray, style: str) -> tuple[Rendered, tuple[pa.Table, np.ndarray]]:
    """Cut the end of ``field`` (at a word boundary) in each row whose input passes its
    ``max_chars``, by the excess; re-render. Returns the rendering, the table and the cuts."""
    lengths = pc.utf8_length(rendered.inputs).to_numpy(zero_copy_only=False)
    over = np.flatnonzero(lengths > max_chars)
    cut = np.zeros(raw.num_rows, np.int32)
    if not len(over):
        return rendered, (raw, cut)
    column = raw.column(field).combine_chunks()
    shorter = []
    for i, text in zip(over, column.take(pa.array(over)).to_pylist(), strict=True):
        text = text or ""
        keep = max(0, len(text) - int(lengths[i] - max_chars[i]))
        space = text.rfind(" ", 0, keep + 1)
        text_cut = text[:space] if space > 0.8 * keep else text[:keep]
        shorter.append(text_cut)
        cut[i] = len(text) - len(text_cut)
    mask = np.zeros(raw.num_rows, bool)
    mask[over] = True
    fitted = pc.replace_with_mask(column, pa.array(mask), pa.array(shorter, column.type))
    table = raw.set_column(raw.schema.get_field_index(field), field, fitted)
    return render_template(bank, template, table, style), (table, cut)
