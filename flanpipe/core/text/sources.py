r"""Readers of the Flan 2022 Collection's own file formats, in the download stage's batch shape
(records, and a :class:`~flanpipe.core.text.validate.BadLine` by batch position for a line that is
no row).

- FLAN's chain-of-thought files (``flan/v2/cot_data/<name>_train.tsv``): one row a line, three
  tab-separated fields (question, answer, rationale), no header, a newline inside a field written as
  the two characters ``\n``.
- Super-NaturalInstructions task files (``tasks/<task>.json`` of allenai/natural-instructions): a
  folder of them becomes one dataset, a row per instance with its ``task``, its task's ``source``,
  ``definition`` and Positive Examples (``exemplars``, a list: few-shot prompts draw from it).
- Published Flan Collection dumps (Parquet or JSON Lines rows of ``inputs``, ``targets``,
  ``_task_source``, ``_task_name``, ``_template_type``, ``_template_idx``): rows already templatized,
  read one ``_task_source`` at a time.

>>> import tempfile
>>> path = Path(tempfile.mkdtemp()) / "toy_train.tsv"
>>> _ = path.write_bytes(b"2 + 3?\\nThink.\t5\t2 plus 3 is 5.\nno tabs here\n")
>>> [(records, {i: b.kind for i, b in bad.items()}) for records, bad in iter_cot_batches(path)]
[([{'question': '2 + 3?\nThink.', 'answer': '5', 'rationale': '2 plus 3 is 5.'}, None], {1: 'ragged_row'})]
"""

from __future__ import annotations

import functools
import itertools
import json
from collections import Counter
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import pyarrow.parquet as pq
import yaml

from flanpipe.core.config import PROMPT_TYPES
from flanpipe.core.text.hashing import string_hashes
from flanpipe.core.text.keys import derive_seed, scramble
from flanpipe.core.text.validate import BadLine, parse_lines

COT_FIELDS = ("question", "answer", "rationale")
"""The columns of a CoT file, in file order."""
BATCH_ROWS = 16_384

CotBatch = tuple[list[dict[str, Any] | None], dict[int, BadLine]]


def parse_cot_line(raw: bytes) -> tuple[dict[str, Any] | None, BadLine | None]:
    r"""One line of a CoT TSV file: ``(record, None)``, or ``(None, why not)``.

    >>> parse_cot_line(b"Q?\tyes\tbecause\\nso\r\n")
    ({'question': 'Q?', 'answer': 'yes', 'rationale': 'because\nso'}, None)
    >>> parse_cot_line(b"Q?\tyes\n")[1].reason
    'row has 2 tab-separated fields, expected 3 (question, answer, rationale)'
    """
    try:
        text = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as err:
        return None, BadLine("invalid_utf8", f"line is not valid UTF-8 (byte {err.start}: {err.reason})",
                             raw.rstrip(b"\r\n").decode("utf-8", "backslashreplace"))
    fields = text.split("\t")
    if len(fields) != len(COT_FIELDS):
        return None, BadLine("ragged_row", f"row has {len(fields)} tab-separated fields, expected "
                             f"{len(COT_FIELDS)} ({', '.join(COT_FIELDS)})", text)
    return {name: value.replace("\\n", "\n") for name, value in zip(COT_FIELDS, fields, strict=True)}, None


def iter_cot_batches(path: str | Path, batch_rows: int = BATCH_ROWS) -> Iterator[CotBatch]:
    """A CoT TSV file in batches of ``batch_rows`` non-blank lines; a line that is no row (wrong
    number of fields, bad UTF-8) is kept as ``None`` with its :class:`BadLine`, so the download
    stage quarantines it with its reason and the rest of the file is read."""
    with open(path, "rb") as f:
        lines = (raw for raw in f if raw.strip())
        while batch := list(itertools.islice(lines, batch_rows)):
            yield parse_lines(batch, parse_cot_line)


# --- Super-NaturalInstructions ---------------------------------------------------------------------

NIV2_KEYS = ("Source", "Definition", "Positive Examples", "Instances")
"""The keys of a task file the loader reads; a JSON file without them is no task file."""


class SourceFileError(ValueError):
    """A file is not in the format its source kind reads; the message names the file."""


@functools.cache
def niv2_sources() -> dict[str, Any]:
    """The map of NIv2 ``Source`` names to registry datasets, and the sources FLAN left out
    (``flanpipe/data/registry/niv2_sources.yaml``)."""
    text = resources.files("flanpipe").joinpath("data/registry/niv2_sources.yaml").read_text("utf-8")
    data = yaml.safe_load(text)
    return {"datasets": {k: list(v) for k, v in data["datasets"].items()},
            "excluded": tuple(data["excluded"])}


def render_exemplars(examples: list[dict[str, Any]]) -> list[str]:
    """A task's Positive Examples, each an input and its output; a few-shot prompt shows a seeded
    draw of them (``flanpipe.stages.templatize.drawn_exemplars``).

    >>> render_exemplars([{"input": "2+2", "output": "4"}, {"input": "1+2", "output": "3"}])
    ['Input: 2+2\\nOutput: 4', 'Input: 1+2\\nOutput: 3']
    """
    return [f"Input: {e.get('input', '')}\nOutput: {e.get('output', '')}" for e in examples]


def read_niv2_task(path: str | Path) -> dict[str, Any]:
    """One task file, checked for the keys the loader reads (:class:`SourceFileError` names the file
    and what it lacks)."""
    path = Path(path)
    try:
        task = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SourceFileError(f"{path}: not a JSON task file ({err})") from None
    missing = [k for k in NIV2_KEYS if not isinstance(task, dict) or k not in task]
    if missing:
        raise SourceFileError(f"{path}: not a Super-NaturalInstructions task file: it lacks {missing}")
    return task


def instance_keys(task: str, instances: list[Any]) -> np.ndarray:
    """A stable 64-bit key per instance of a task: the hash of (task, instance id), never its place
    in the file; an instance without a string id, or one whose id another instance also holds, is
    keyed by its content too, so the two draw apart.

    >>> k = instance_keys("task1", [{"id": "a"}, {"id": "b"}])
    >>> alone, other_task = instance_keys("task1", [{"id": "b"}]), instance_keys("task2", [{"id": "a"}])
    >>> bool(k[1] == alone[0]), bool(k[0] == other_task[0])
    (True, False)
    """
    def content(instance: Any) -> str:
        return json.dumps(instance, sort_keys=True, ensure_ascii=False, default=str)
    idents = [i.get("id") if isinstance(i, dict) and isinstance(i.get("id"), str) else None
              for i in instances]
    held = Counter(idents)
    texts = [f"{task}\x1f{ident}" if ident is not None and held[ident] == 1
             else f"{task}\x1f{ident}\x1f{content(instance)}"
             for ident, instance in zip(idents, instances, strict=True)]
    return string_hashes(pa.array(texts, pa.string()), seed=0)


def capped_instances(task: str, instances: list[Any], cap: int, dataset: str, seed: int) -> list[int]:
    """The positions (in file order) of the ``cap`` instances a task keeps: those with the lowest
    seeded draws of (seed, dataset, task, instance id) (:func:`instance_keys` through
    :func:`~flanpipe.core.text.keys.scramble`). A draw depends on its instance alone, so adding an
    instance to a task file changes no other instance's draw: it keeps the others kept, but for the
    one it displaces when it draws below them (consistent sampling).

    >>> tasks = [{"id": f"t-{i}"} for i in range(6)]
    >>> kept = capped_instances("t", tasks, 3, "niv2", 1)
    >>> reversed_file = capped_instances("t", tasks[::-1], 3, "niv2", 1)
    >>> len(kept), kept == sorted(kept), reversed_file == [5 - i for i in kept[::-1]]
    (3, True, True)
    """
    if len(instances) <= cap:
        return list(range(len(instances)))
    keys = instance_keys(task, instances)
    draws = scramble(keys, derive_seed(seed, f"per_task_cap/{dataset}"))
    return sorted(np.lexsort((keys, draws))[:cap].tolist())


def iter_niv2_batches(folder: str | Path, per_task_cap: int | None = None, batch_rows: int = BATCH_ROWS,
                      tally: dict[str, Any] | None = None, dataset: str = "niv2",
                      seed: int = 0) -> Iterator[CotBatch]:
    """Every instance of the task files in ``folder`` (sorted by file name), as rows of the ``niv2``
    dataset: ``id``, ``task`` (the file's stem), ``source`` (the task's first Source), ``definition``
    (its Definition, joined), ``input``, ``output`` (the list of acceptable answers), ``exemplars``
    (the list of its Positive Examples, :func:`render_exemplars`) and ``shots`` (how many it has).

    Tasks whose Source FLAN left out (MMLU's, :func:`niv2_sources`) are skipped. An instance that is
    not an object with ``input`` and ``output`` is quarantined as ``invalid_instance``; of the rest,
    at most ``per_task_cap`` per task are kept, drawn by :func:`capped_instances` from (``seed``,
    ``dataset``, task, instance id), in file order. ``tally``, when given, is filled with the tasks
    read, skipped and capped (the download manifest records it).
    """
    tally = tally if tally is not None else {}
    tally.update(tasks=0, instances=0, capped=0, excluded_tasks={})
    excluded = set(niv2_sources()["excluded"])
    rows: list[dict[str, Any] | None] = []
    bad: dict[int, BadLine] = {}
    for path in sorted(Path(folder).glob("*.json")):
        task = read_niv2_task(path)
        source = (task["Source"] or [""])[0]
        if source in excluded:
            tally["excluded_tasks"][path.stem] = source
            continue
        tally["tasks"] += 1
        instances = task["Instances"]
        valid = [i for i, instance in enumerate(instances)
                 if isinstance(instance, dict) and "input" in instance and "output" in instance]
        kept = set(valid)
        if per_task_cap is not None and len(valid) > per_task_cap:
            drawn = capped_instances(path.stem, [instances[i] for i in valid], per_task_cap, dataset, seed)
            kept = {valid[i] for i in drawn}
            tally["capped"] += len(valid) - per_task_cap
        definition = " ".join(task["Definition"]) if isinstance(task["Definition"], list) \
            else str(task["Definition"])
        positive = [e for e in task["Positive Examples"] if isinstance(e, dict)]
        exemplars = render_exemplars(positive)
        past_cap = set(valid) - kept
        for i, instance in enumerate(instances):
            if i in past_cap:
                continue
            tally["instances"] += 1
            if i not in kept:
                bad[len(rows)] = BadLine("invalid_instance", f"{path.name}: an instance needs input and "
                                         "output", json.dumps(instance, ensure_ascii=False)[:2000])
                rows.append(None)
            else:
                output = instance["output"]
                rows.append({"id": instance.get("id"), "task": path.stem, "source": source,
                             "definition": definition, "input": instance["input"],
                             "output": output if isinstance(output, list) else [output],
                             "exemplars": exemplars, "shots": len(positive)})
            if len(rows) == batch_rows:
                yield rows, bad
                rows, bad = [], {}
    if rows:
        yield rows, bad


SOURCE_MATCH_PREFIX = "source:"
"""How a match by source is named in the decontamination tables' ``eval_dataset`` column
(``source:anli_r1``), apart from the n-gram matches named by the eval dataset alone."""


def source_matches(sources: list[str | None], datasets: dict[str, str]) -> list[tuple[list[int], str, str]]:
    """The rows whose source is a registry dataset: ``(row positions, "source:<dataset>", its
    cluster)`` for each dataset the NIv2 map (:func:`niv2_sources`) names for a row's source, of
    ``datasets`` (registry name -> cluster).

    >>> source_matches(["anli", "svamp", "rte", "anli"], {"anli_r1": "nli", "rte": "nli"})
    [([0, 3], 'source:anli_r1', 'nli'), ([2], 'source:rte', 'nli')]
    """
    by_source: dict[str, list[int]] = {}
    for i, source in enumerate(sources):
        by_source.setdefault(source or "", []).append(i)
    out = []
    mapped = niv2_sources()["datasets"]
    for source, rows in by_source.items():
        for dataset in mapped.get(source, ()):
            if dataset in datasets:
                out.append((rows, SOURCE_MATCH_PREFIX + dataset, datasets[dataset]))
    return sorted(out, key=lambda m: m[1])


# --- published Flan Collection dumps ----------------------------------------------------------------

DUMP_COLUMNS = ("inputs", "targets", "_task_source", "_task_name", "_template_type", "_template_idx")
"""The columns of a Flan Collection export row; a file without them is refused."""
DUMP_TASK_SOURCES = {"dump_flan2021": "Flan2021", "dump_t0": "T0", "dump_niv2": "NIv2",
                     "dump_cot": "CoT", "dump_dialog": "Dialog"}
"""The ``_task_source`` each dataset of the packaged ``flan_dump`` registry keeps, as FLAN's export
spells it; a source's ``task_source`` overrides it."""
DUMP_SUFFIXES = (".parquet", ".jsonl", ".json")


def dump_files(path: str | Path) -> list[Path]:
    """A dump's files: ``path`` itself, or the Parquet and JSON Lines files of a folder, sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.suffix in DUMP_SUFFIXES) if path.is_dir() else []


def _dump_tables(path: Path, batch_rows: int) -> Iterator[pa.Table]:
    """A dump file's rows in batches, its columns in :data:`DUMP_COLUMNS` order and spelling."""
    if path.suffix == ".parquet":
        columns = _dump_columns(path, pq.read_schema(path).names)
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns):
            yield pa.Table.from_batches([batch]).rename_columns(list(DUMP_COLUMNS))
        return
    with pajson.open_json(path) as reader:
        columns = _dump_columns(path, reader.schema.names)
        for batch in reader:
            yield pa.Table.from_batches([batch]).select(columns).rename_columns(list(DUMP_COLUMNS))


def _dump_columns(path: Path, names: list[str]) -> list[str]:
    """The file's names for :data:`DUMP_COLUMNS`: as written, or without the leading underscore (the
    spelling of the submixtures published on the Hugging Face hub); refused naming what is missing."""
    for spelling in (list(DUMP_COLUMNS), [c.removeprefix("_") for c in DUMP_COLUMNS]):
        if all(c in names for c in spelling):
            return spelling
    missing = [c for c in DUMP_COLUMNS if c not in names and c.removeprefix("_") not in names]
    raise SourceFileError(f"{path}: not a Flan Collection dump: it lacks the column(s) {missing} "
                          f"(a dump row has {list(DUMP_COLUMNS)}; found {names})")


def _rank_within(keys: np.ndarray, seen: dict[str, int]) -> np.ndarray:
    """Each row's rank among the rows of its key so far (``seen``: counts before this batch, updated).

    >>> _rank_within(np.array(["a", "b", "a"], object), {"a": 2})
    array([2, 0, 3])
    """
    uniq, inverse = np.unique(keys.astype(str), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    sizes = np.bincount(inverse, minlength=len(uniq))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.empty(len(keys), np.int64)
    rank[order] = np.arange(len(keys)) - np.repeat(starts, sizes)
    base = np.array([seen.get(u, 0) for u in uniq], np.int64)
    for u, n in zip(uniq, sizes, strict=True):
        seen[u] = seen.get(u, 0) + int(n)
    return rank + base[inverse]


def iter_dump_batches(path: str | Path, task_source: str | None, per_task_cap: int | None = None,
                      batch_rows: int = BATCH_ROWS,
                      tally: dict[str, Any] | None = None) -> Iterator[pa.Table]:
    """The rows of a dump (a file or a folder of them) whose ``_task_source`` is ``task_source``
    (None: every row), at most ``per_task_cap`` per ``_task_name`` (the first, in file order), with
    the leading underscores dropped from the column names (``task_source``, ``task_name``,
    ``template_type``, ``template_idx``). A file without the dump's columns is refused, naming the
    ones it lacks (:class:`SourceFileError`). ``tally`` gets the rows read, of the task source, past
    the cap, and those left out for a ``_template_type`` that is no prompt type (by value)."""
    tally = tally if tally is not None else {}
    tally.update(files=0, rows_read=0, rows_of_source=0, capped=0, unknown_template_type={})
    seen: dict[str, int] = {}
    renamed = [c.removeprefix("_") for c in DUMP_COLUMNS]
    for file in dump_files(path):
        tally["files"] += 1
        for table in _dump_tables(file, batch_rows):
            tally["rows_read"] += table.num_rows
            if task_source is not None:
                table = table.filter(pc.equal(table.column("_task_source"), task_source))
            tally["rows_of_source"] += table.num_rows
            known = pc.is_in(table.column("_template_type"), pa.array(PROMPT_TYPES))
            if not pc.all(known).as_py():
                for value in table.filter(pc.invert(known)).column("_template_type").to_pylist():
                    unknown = tally["unknown_template_type"]
                    unknown[str(value)] = unknown.get(str(value), 0) + 1
                table = table.filter(known)
            if per_task_cap is not None and table.num_rows:
                tasks = table.column("_task_name").to_numpy(zero_copy_only=False)
                keep = _rank_within(tasks, seen) < per_task_cap
                tally["capped"] += int((~keep).sum())
                table = table.filter(pa.array(keep))
            if table.num_rows:
                yield table.rename_columns(renamed)
