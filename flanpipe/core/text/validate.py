"""Check raw rows against a dataset's registry schema; quarantine bad rows with their reasons.

A row is rejected when a declared field is missing (null), has the wrong type, a text field is
empty, or its label is out of range for the task. Fields the registry marks as Python bytes reprs
(``hub.bytes_repr_fields``: DeepMind Mathematics on the hub holds ``"b'7\\n'"``) are decoded first,
with a count; a value that looks like a bytes repr but does not decode is rejected. Rejected rows
keep their original content (as JSON) and position, so nothing is dropped silently.

Columns are converted with one Arrow cast each; only a column whose cast fails is walked value by
value, to find the rows at fault. A split too big for memory is checked one batch at a time
(``row_offset`` keeps row positions global); :class:`SplitTally` adds up the batches' counts and
makes the whole-split schema check at the end.
"""

from __future__ import annotations

import ast
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flanpipe.core.config.registry import DatasetSpec
from flanpipe.core.text.schemas import REJECTED_SCHEMA

REJECT_KINDS = ("invalid_utf8", "invalid_unicode", "invalid_json", "ragged_row", "wrong_type",
                "missing_field", "empty_text", "label_out_of_range", "undecodable_bytes")
# A Python bytes literal as str() writes it: b'...' or b"..." (the quote it picks depends on content).
BYTES_REPR = r"""(?s)^b('.*'|".*")$"""
# The common case, decoded without Python: no escape except a final line break.
PLAIN_BYTES_REPR = r"""^b'(?P<text>[^'\\]*)(?:\\n)?'$"""


class SchemaError(ValueError):
    """The source does not have the dataset's schema at all (not a bad row: a wrong file)."""


@dataclass(frozen=True)
class BadLine:
    """A source record that could not be parsed into a row at all, kept for ``rejected.parquet``.

    ``kind`` is one of ``invalid_utf8``, ``invalid_unicode``, ``invalid_json`` (JSON Lines) or
    ``ragged_row`` (CSV); ``text`` is the record as it stood in the file (bytes that are not UTF-8
    as ``\\xNN`` escapes).
    """

    kind: str
    reason: str
    text: str


def parse_lines(lines, parse) -> tuple[list[Any], dict[int, BadLine]]:
    """Each raw line through ``parse`` (which returns ``(record, None)`` or ``(None, BadLine)``): the
    records, a None where a line was bad, and the bad lines by position, as the checks take them.

    >>> parse_lines([b"1", b"x"], lambda raw: (int(raw), None) if raw.isdigit()
    ...             else (None, BadLine("invalid_json", "not a number", raw.decode())))
    ([1, None], {1: BadLine(kind='invalid_json', reason='not a number', text='x')})
    """
    records, bad = [], {}
    for raw in lines:
        record, why = parse(raw)
        if why is not None:
            bad[len(records)] = why
        records.append(record)
    return records, bad


@dataclass
class CheckedSplit:
    """The outcome of checking one split: the rows kept and the rows quarantined."""

    table: pa.Table
    rejected: pa.Table
    rows_read: int
    extra_columns: list[str] = field(default_factory=list)
    bytes_reprs_decoded: dict[str, int] = field(default_factory=dict)
    """Per field, how many values were bytes reprs decoded to text (``hub.bytes_repr_fields``)."""

    columns_present: set[str] = field(default_factory=set)
    """The source's column (or record key) names; a batch without a column has only nulls there."""

    def rejected_by_kind(self) -> dict[str, int]:
        return dict(Counter(self.rejected.column("kind").to_pylist()))


@dataclass
class SplitTally:
    """Counts of a split checked batch by batch; equal to those of one :func:`check_split` call.

    >>> from flanpipe.core.config.registry import load_registry
    >>> spec = load_registry().datasets["rte"]
    >>> rows = [{"premise": "p", "hypothesis": "h", "idx": i, "label": i} for i in range(3)]
    >>> tally = SplitTally()
    >>> for start in (0, 2):
    ...     tally.add(check_split(rows[start:start + 2], spec, "train", row_offset=start,
    ...                           require_schema=False))
    >>> tally.check_schema(spec, "train")
    >>> tally.rows_read, tally.rows, dict(tally.rejected_by_kind)
    (3, 2, {'label_out_of_range': 1})
    """

    rows_read: int = 0
    rows: int = 0
    bad_lines: int = 0
    rejected_by_kind: Counter = field(default_factory=Counter)
    bytes_reprs_decoded: Counter = field(default_factory=Counter)
    columns_present: set[str] = field(default_factory=set)
    duplicate_ids: dict[str, int] = field(default_factory=dict)
    """Ids held by more than one kept row, and how many rows hold them (set by the download stage)."""

    def add(self, checked: CheckedSplit, bad_lines: int = 0) -> None:
        self.rows_read += checked.rows_read
        self.rows += checked.table.num_rows
        self.bad_lines += bad_lines
        self.rejected_by_kind.update(checked.rejected.column("kind").to_pylist())
        self.bytes_reprs_decoded.update(checked.bytes_reprs_decoded)
        self.columns_present |= checked.columns_present

    @property
    def rejected(self) -> int:
        return self.rows_read - self.rows

    def extra_columns(self, spec: DatasetSpec) -> list[str]:
        return sorted(self.columns_present - set(spec.features))

    def check_schema(self, spec: DatasetSpec, split: str) -> None:
        """Raise :class:`SchemaError` if a declared field is in no row of the whole split."""
        _check_schema(self.columns_present, spec, split, self.rows_read, self.bad_lines)


def _check_schema(present: set[str], spec: DatasetSpec, split: str, n_rows: int,
                  n_bad_lines: int) -> None:
    missing = [name for name in spec.features if name not in present]
    if missing and n_rows > n_bad_lines:
        raise SchemaError(
            f"{spec.name} [{split}]: the source has no column(s) {missing}; expected the hub schema "
            f"{list(spec.features)}, found {sorted(present)}")


# --- value conformance ---------------------------------------------------------------------------

def _type_name(typ: pa.DataType) -> str:
    if pa.types.is_list(typ):
        return f"list<{_type_name(typ.value_type)}>"
    if pa.types.is_struct(typ):
        return "struct{" + ", ".join(f.name for f in typ) + "}"
    return {pa.int64(): "int", pa.float64(): "float", pa.bool_(): "bool", pa.string(): "string"}[typ]


def _conform_value(value: Any, typ: pa.DataType) -> tuple[Any, bool]:
    """Return ``(converted, ok)`` for one Python value against an Arrow type (None is ok)."""
    if value is None:
        return None, True
    if pa.types.is_list(typ):
        if not isinstance(value, list | tuple):
            return None, False
        out = [_conform_value(v, typ.value_type) for v in value]
        return [v for v, _ in out], all(ok for _, ok in out)
    if pa.types.is_struct(typ):
        if not isinstance(value, dict):
            return None, False
        out = {f.name: _conform_value(value.get(f.name), f.type) for f in typ}
        return {k: v for k, (v, _) in out.items()}, all(ok for _, ok in out.values())
    if typ == pa.string():
        return (value, True) if isinstance(value, str) else (None, False)
    if typ == pa.bool_():
        return (value, True) if isinstance(value, bool) else _parse_scalar(value, typ)
    if typ == pa.int64():
        if isinstance(value, int) and not isinstance(value, bool):
            return value, True
        return _parse_scalar(value, typ)
    if typ == pa.float64():
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value), True
        return _parse_scalar(value, typ)
    raise TypeError(typ)


def _parse_scalar(value: Any, typ: pa.DataType) -> tuple[Any, bool]:
    """Strings that parse as the declared scalar (CSV cells, ``"1"``) are accepted."""
    if not isinstance(value, str):
        return None, False
    try:
        return pa.scalar(value.strip(), pa.string()).cast(typ).as_py(), True
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None, False


def _conform_column(values: pa.Array | list[Any], typ: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    """Convert a column to ``typ``; return the array and a mask of rows whose value did not fit."""
    try:
        if isinstance(values, list):
            arr = pa.array(values, type=typ)
        else:
            arr = values.cast(typ, safe=True)
        # pa.array accepts bools for numbers and numbers for bools; recheck those rows strictly.
        if not isinstance(values, list) or not _has_bool_number_mix(values, typ):
            return arr, np.zeros(len(arr), dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, OverflowError):
        pass
    py = values if isinstance(values, list) else values.to_pylist()
    converted, bad = [], np.zeros(len(py), dtype=bool)
    for i, v in enumerate(py):
        conv, ok = _conform_value(v, typ)
        converted.append(conv)
        bad[i] = not ok
    return pa.array(converted, type=typ), bad


def _has_bool_number_mix(values: list[Any], typ: pa.DataType) -> bool:
    if typ in (pa.int64(), pa.float64()):
        return any(isinstance(v, bool) for v in values)
    if typ == pa.bool_():
        return any(v is not None and not isinstance(v, bool) for v in values)
    return False


# --- bytes reprs --------------------------------------------------------------------------------

def decode_bytes_repr(text: str) -> str | None:
    r"""Decode one ``str(bytes)`` value of a file line to its text; None if it is not one.

    >>> decode_bytes_repr("b'Solve 3*x = 6 for x.\\n'")
    'Solve 3*x = 6 for x.'
    >>> decode_bytes_repr('b"It\'s 2\\xc2\\xb0C"')
    "It's 2°C"
    >>> decode_bytes_repr("b'\\xff'") is None  # not UTF-8
    True
    """
    try:
        raw = ast.literal_eval(text)
        if not isinstance(raw, bytes):
            return None
        return raw.decode("utf-8").removesuffix("\n")
    except (ValueError, SyntaxError, UnicodeDecodeError):
        return None


def decode_bytes_repr_column(arr: pa.Array) -> tuple[pa.Array, int, np.ndarray]:
    r"""Decode the bytes reprs in a string column; plain strings pass through unchanged.

    Returns the decoded column, how many values were decoded and a mask of the values that look
    like a bytes repr (``b'...'``) but are not valid Python or not UTF-8. Values with no escape but
    a final ``\n`` (nearly all of them) are decoded with one Arrow regex; the rest one by one.
    """
    is_repr = pc.fill_null(pc.match_substring_regex(arr, BYTES_REPR), False)
    plain = pc.struct_field(pc.extract_regex(arr, PLAIN_BYTES_REPR), "text")
    decoded = pc.if_else(pc.is_valid(plain), plain, arr)
    rest = np.flatnonzero(is_repr.to_numpy(zero_copy_only=False)
                          & ~pc.is_valid(plain).to_numpy(zero_copy_only=False))
    bad = np.zeros(len(arr), dtype=bool)
    if len(rest):
        values = decoded.to_pylist()
        for i in rest:
            text = decode_bytes_repr(values[i])
            bad[i] = text is None
            values[i] = values[i] if text is None else text
        decoded = pa.array(values, type=pa.string())
    n_decoded = int(pc.sum(is_repr).as_py() or 0) - int(bad.sum())
    return decoded, n_decoded, bad


# --- nested access -------------------------------------------------------------------------------

def leaves_at(table: pa.Table, path: str) -> tuple[pa.Array, np.ndarray]:
    """The leaf values at a dotted path and, for each, the row it came from.

    Lists are flattened on the way down, so ``choices.text`` on ``{"text": ["a", "b"]}`` gives two
    leaves from the same row.
    """
    head, *rest = path.split(".")
    arr = table.column(head).combine_chunks()
    parents = np.arange(len(arr), dtype=np.int64)
    for part in [*rest, None]:
        while pa.types.is_list(arr.type):
            parents = parents[pc.list_parent_indices(arr).to_numpy(zero_copy_only=False)]
            arr = pc.list_flatten(arr)
        if part is not None:
            arr = pc.struct_field(arr, part)
    return arr, parents


def _rows_with(parents: np.ndarray, mask: np.ndarray | pa.Array, n_rows: int) -> np.ndarray:
    """A row mask that is True where any leaf of the row has ``mask`` set."""
    mask = np.asarray(mask, dtype=bool)
    return np.bincount(parents[mask], minlength=n_rows).astype(bool)


def _leaf_count(parents: np.ndarray, n_rows: int) -> np.ndarray:
    return np.bincount(parents, minlength=n_rows)


def _blank(arr: pa.Array) -> np.ndarray:
    """True where a string leaf is null, empty or only white space."""
    blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(arr)), 0)
    return pc.fill_null(blank, True).to_numpy(zero_copy_only=False)


# --- the check -----------------------------------------------------------------------------------

class _Reasons:
    def __init__(self, n: int):
        self.by_row: dict[int, list[tuple[str, str]]] = {}
        self.n = n

    def add(self, mask: np.ndarray, kind: str, reason: str) -> None:
        for i in np.flatnonzero(mask):
            self.by_row.setdefault(int(i), []).append((kind, reason))

    def flagged(self) -> np.ndarray:
        mask = np.zeros(self.n, dtype=bool)
        mask[list(self.by_row)] = True
        return mask


def check_split(
    source: pa.Table | list[dict[str, Any] | None],
    spec: DatasetSpec,
    split: str,
    bad_lines: dict[int, BadLine] | None = None,
    row_offset: int = 0,
    require_schema: bool = True,
) -> CheckedSplit:
    """Check one split, or one batch of it, against ``spec``.

    ``source`` is an Arrow table or a list of records (``None`` where a line could not be parsed;
    its :class:`BadLine` is in ``bad_lines``, keyed by position in ``source``). Returns the
    valid rows in the declared schema plus a ``row_index`` column (their position in the split:
    ``row_offset`` plus their position in ``source``), and the rejected rows.
    ``require_schema=False`` (a batch of a larger split) fills absent columns with nulls instead of
    raising; :meth:`SplitTally.check_schema` then checks the whole split.
    """
    bad_lines = bad_lines or {}
    is_records = isinstance(source, list)
    n = len(source) if is_records else source.num_rows
    reasons = _Reasons(n)
    if is_records:
        present = {k for rec in source if rec for k in rec}
    else:
        present = set(source.column_names)
    if require_schema:
        _check_schema(present, spec, split, n, len(bad_lines))
    extra = sorted(present - set(spec.features))

    for i, bad in sorted(bad_lines.items()):
        reasons.by_row.setdefault(i, []).append((bad.kind, bad.reason))
    columns = []
    decoded: dict[str, int] = {}
    for fld in spec.schema:
        if is_records:
            values = [rec.get(fld.name) if rec else None for rec in source]
        elif fld.name in present:
            values = source.column(fld.name).combine_chunks()
        else:
            values = pa.nulls(n, fld.type)
        arr, wrong = _conform_column(values, fld.type)
        reasons.add(wrong, "wrong_type", f"field {fld.name!r} is not of type {_type_name(fld.type)}")
        if fld.name in spec.hub.bytes_repr_fields:
            arr, decoded[fld.name], undecodable = decode_bytes_repr_column(arr)
            reasons.add(undecodable, "undecodable_bytes",
                        f"field {fld.name!r} looks like a bytes repr (b'...') but is not valid "
                        "Python or not UTF-8")
        null = arr.is_null().to_numpy(zero_copy_only=False) & ~wrong
        if bad_lines:
            null[list(bad_lines)] = False
        reasons.add(null, "missing_field", f"field {fld.name!r} is missing")
        columns.append(arr)
    table = pa.Table.from_arrays(columns, schema=spec.schema)
    _check_content(table, spec, reasons)

    keep = ~reasons.flagged()
    valid = table.filter(pa.array(keep)).append_column(
        "row_index", pa.array(np.flatnonzero(keep) + row_offset, type=pa.int64()))
    rejected = _rejected_table(source, split, reasons, bad_lines, row_offset)
    return CheckedSplit(valid, rejected, n, extra, decoded, present)


def _check_content(table: pa.Table, spec: DatasetSpec, reasons: _Reasons) -> None:
    """Empty text and label range, on rows whose fields are all present."""
    n = table.num_rows
    task = spec.task
    text_paths = list(spec.text_fields)
    if task.type == "multiple_choice":
        text_paths += [task.choices] if isinstance(task.choices, str) else list(task.choices)
    if task.type == "generation":
        text_paths += [p for p in task.targets
                       if pa.types.is_string(table.schema.field(p.split(".")[0]).type)]
    for path in dict.fromkeys(text_paths):
        leaves, parents = leaves_at(table, path)
        if not pa.types.is_string(leaves.type):
            continue
        empty = _rows_with(parents, _blank(leaves), n) | (_leaf_count(parents, n) == 0)
        empty &= table.column(path.split(".")[0]).is_valid().to_numpy(zero_copy_only=False)
        reasons.add(empty, "empty_text", f"text field {path!r} is empty")

    if task.type == "generation":
        return
    present = table.column(task.label_field.split(".")[0]).is_valid().to_numpy(zero_copy_only=False)
    idx = label_index(spec, table)
    if task.type == "classification":
        n_classes = np.full(n, len(task.labels))
        allowed = f"one of {list(task.label_values or range(len(task.labels)))}"
    elif isinstance(task.choices, tuple):
        n_classes = np.full(n, len(task.choices))
        allowed = f"one of {list(task.label_values or range(len(task.choices)))}"
    else:
        n_classes = _leaf_count(leaves_at(table, task.choices)[1], n)
        allowed = f"an index into {task.choices!r}"
    if task.label_in:
        allowed = f"a value of {task.label_in!r}"
    ok = (idx >= 0) & (idx < n_classes)
    reasons.add(present & ~ok, "label_out_of_range",
                f"label field {task.label_field!r} is out of range: must be {allowed}")


def label_index(spec: DatasetSpec, table: pa.Table) -> np.ndarray:
    """The index of each row's label among its classes (classification) or choices (multiple choice).

    The label is the class index itself, its position in ``label_values``, or (``label_in``, ARC's
    answer key) its position in a per-row list. -1 where it is none of those.
    """
    task = spec.task
    label, _ = leaves_at(table, task.label_field)
    if task.label_in:
        keys, parents = leaves_at(table, task.label_in)
        match = pc.fill_null(pc.equal(keys, pc.take(label, pa.array(parents))), False).to_numpy(
            zero_copy_only=False)
        first_leaf = np.concatenate([[0], np.cumsum(_leaf_count(parents, table.num_rows))])
        pos = np.arange(len(keys)) - first_leaf[parents]
        idx = np.full(table.num_rows, -1)
        hits = np.flatnonzero(match)[::-1]  # first match wins: write the last ones first
        idx[parents[hits]] = pos[hits]
        return idx
    if task.label_values is not None:
        label = pc.index_in(label, value_set=pa.array(task.label_values, type=label.type))
    return pc.fill_null(label, -1).to_numpy(zero_copy_only=False).astype(np.int64)


def _rejected_table(source, split: str, reasons: _Reasons, bad_lines: dict[int, BadLine],
                    row_offset: int = 0) -> pa.Table:
    rows = sorted(reasons.by_row)
    if isinstance(source, list):
        originals = [source[i] for i in rows]
    else:
        originals = source.take(pa.array(rows, type=pa.int64())).to_pylist() if rows else []
    texts = [bad_lines[i].text if i in bad_lines else json.dumps(rec, default=str, ensure_ascii=False)
             for i, rec in zip(rows, originals, strict=True)]
    return pa.Table.from_pydict({
        "split": [split] * len(rows),
        "row_index": [i + row_offset for i in rows],
        "kind": [reasons.by_row[i][0][0] for i in rows],
        "reason": ["; ".join(r for _, r in reasons.by_row[i]) for i in rows],
        "row": texts,
    }, schema=REJECTED_SCHEMA)
