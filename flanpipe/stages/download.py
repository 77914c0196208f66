"""Stage 1, download: one dataset's train and eval splits into raw Parquet, with a manifest.

Three sources, chosen per dataset in config (``download``):

- ``hub``: the real ``datasets.load_dataset(hub_id, config, split=..., revision=...)``; for a repository
  that ships only a loading script (registry ``hub.parquet_branch``, or found out when
  ``load_dataset`` refuses the script), the hub's auto-converted Parquet branch
  ``refs/convert/parquet``, read from the hub or from a local copy of that branch;
- ``local``: ``{split}.parquet``, ``{split}.jsonl`` or ``{split}.csv`` files in the hub schema;
- ``embedded``: the small demo data shipped inside the package;
- ``cot``: FLAN's chain-of-thought TSV files (:mod:`flanpipe.core.text.sources`);
- ``niv2``: a folder of Super-NaturalInstructions task files, as the one dataset ``niv2``;
- ``flan_dump``: a published Flan Collection export, one ``_task_source`` per dataset.

Every source is read in record batches (``batch_rows`` rows: Parquet row batches, chunks of
JSONL lines, CSV blocks, the memory-mapped Arrow cache of ``datasets``), and each batch is checked
against the registry schema (:mod:`flanpipe.core.text.validate`) and appended to the output, so memory is
bounded by the batch, not by the split. Bad rows go to ``rejected.parquet`` with their reason.
Outputs are written in row groups of a fixed number of rows, whatever the batch size, so the files
are the same bytes for any ``batch_rows``. Outputs (``data/raw/{dataset}/``): ``train.parquet``,
``eval.parquet``, ``rejected.parquet``, renamed into place together once every split is read, then
``manifest.json``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from flanpipe.core.config import SourceSpec
from flanpipe.core.config.registry import DatasetSpec, load_registry
from flanpipe.core.io import (
    ParquetReader,
    ReadError,
    RowGroupWriter,
    atomic_path,
    code_version,
    reading,
    sha256_file,
    utc_now,
    write_json_atomic,
)
from flanpipe.core.text.keys import duplicated, id_hashes
from flanpipe.core.text.schemas import REJECTED_SCHEMA
from flanpipe.core.text.sources import (
    DUMP_TASK_SOURCES,
    SourceFileError,
    dump_files,
    iter_cot_batches,
    iter_dump_batches,
    iter_niv2_batches,
)
from flanpipe.core.text.validate import BadLine, SchemaError, SplitTally, check_split, parse_lines
from flanpipe.core.versions import STAGE_VERSIONS

# 2: parquet-branch reads, bytes-repr decoding; 3: read and written in batches, fixed row groups
STAGE_VERSION = STAGE_VERSIONS["download"]
BATCH_ROWS = 16_384
"""Rows read, checked and appended at a time: peak memory is a few batches, not a split."""
log = logging.getLogger(__name__)
LOCAL_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")
PARQUET_BRANCH = "refs/convert/parquet"
# What datasets >= 4 raises for a repository whose only loader is a script.
SCRIPT_ONLY_MESSAGE = "Dataset scripts are no longer supported"


class DownloadError(RuntimeError):
    """A dataset could not be read from its configured source; the message says what to do."""


class ScriptOnlyError(DownloadError):
    """The hub repository ships only a loading script, which ``datasets`` no longer runs."""


def _supply_locally_hint(spec: DatasetSpec) -> str:
    splits = ", ".join(f"{split}.jsonl" for split in spec.split_roles.values())
    hint = (f"To supply it locally, put {splits} (or .parquet/.csv) in the hub schema "
            f"({', '.join(spec.features)}) in a directory DIR and set "
            f"download.sources.{spec.name}: {{kind: local, path: DIR}} in your config.")
    if spec.local_instructions:
        hint += f" Where to get the files: {spec.local_instructions}"
    return hint


# --- readers: each yields batches of (Arrow table or records, bad records by batch position) -----

Batch = tuple["pa.Table | list[dict[str, Any] | None]", dict[int, BadLine]]
# A JSON escape of a UTF-16 surrogate (\ud800-\udfff): fine in a pair, no character alone.
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def read_jsonl(path: Path) -> tuple[list[dict[str, Any] | None], dict[int, BadLine]]:
    """Parse JSON Lines; a line that is not a JSON object is kept as ``None`` with its :class:`BadLine`."""
    records: list[dict[str, Any] | None] = []
    bad: dict[int, BadLine] = {}
    for batch, batch_bad in iter_jsonl_batches(path, batch_rows=None):
        bad.update({len(records) + i: line for i, line in batch_bad.items()})
        records.extend(batch)
    return records, bad


def parse_jsonl_line(raw: bytes) -> tuple[dict[str, Any] | None, BadLine | None]:
    r"""One line of a JSON Lines file, as bytes: ``(record, None)``, or ``(None, why not)``.

    >>> parse_jsonl_line(b'{"a": "\\u00e9"}\n')
    ({'a': 'é'}, None)
    >>> [parse_jsonl_line(line)[1].kind for line in (b'{"a": "\xe9"}', b'{"a": "\\ud800"}', b'[1]')]
    ['invalid_utf8', 'invalid_unicode', 'invalid_json']
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, BadLine("invalid_utf8", f"line is not valid UTF-8 (byte {err.start}: {err.reason})",
                             raw.rstrip(b"\r\n").decode("utf-8", "backslashreplace"))
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict):
        return None, BadLine("invalid_json", "line is not valid JSON", text.rstrip("\r\n"))
    if SURROGATE_ESCAPE.search(raw):  # rare: only then look for a lone surrogate
        try:
            json.dumps(record, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return None, BadLine("invalid_unicode", "line has a lone UTF-16 surrogate escape "
                                 "(such as \\ud800), which is no character", text.rstrip("\r\n"))
    return record, None


def iter_jsonl_batches(path: Path, batch_rows: int | None = BATCH_ROWS) -> Iterator[Batch]:
    r"""JSON Lines in batches of ``batch_rows`` non-blank lines (None: one batch).

    Each line is read as bytes and decoded on its own, so a line of bad UTF-8, a lone surrogate
    escape or broken JSON costs that line only (its :class:`BadLine`), never the file. A file whose
    first line is not a JSON object at all (a JSON array, CSV text) is not JSON Lines: that raises
    :class:`DownloadError` naming the file.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "x.jsonl"
    >>> _ = path.write_bytes(b'{"a": 1}\n\n{"a": "\xff"}\n{"a": 3}\n')
    >>> [(records, {i: b.kind for i, b in bad.items()})
    ...  for records, bad in iter_jsonl_batches(path, batch_rows=2)]
    [([{'a': 1}, None], {1: 'invalid_utf8'}), ([{'a': 3}], {})]
    """
    with open(path, "rb") as f:
        lines = (raw for raw in f if raw.strip())
        first = next(lines, None)
        if first is not None:
            _check_jsonl_start(path, first)
            lines = itertools.chain([first], lines)
        while batch := list(itertools.islice(lines, batch_rows)):
            yield parse_jsonl_lines(batch)
    if first is None and batch_rows is None:
        yield [], {}


def parse_jsonl_lines(lines: list[bytes]) -> Batch:
    r"""Non-blank JSON Lines (bytes) to records, ``None`` and a :class:`BadLine` where one is bad.

    The fast path, for a batch with no fault: one UTF-8 decode and one search for surrogate escapes
    over the whole batch, then ``json.loads`` per line. A batch with a fault is parsed line by line
    (:func:`parse_jsonl_line`); both paths give the same records.

    >>> parse_jsonl_lines([b'{"a": 1}\n', b'{"a": 2}'])
    ([{'a': 1}, {'a': 2}], {})
    """
    chunk = b"".join(lines)
    try:
        texts = chunk.decode("utf-8").split("\n")  # "\n" ends a line, and only it: as in `for raw in f`
        if not SURROGATE_ESCAPE.search(chunk):
            records = [json.loads(text) for text in texts[:len(lines)]]
            if all(type(record) is dict for record in records):
                return records, {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        pass
    return parse_lines(lines, parse_jsonl_line)


def _check_jsonl_start(path: Path, first_line: bytes) -> None:
    """Raise if the first non-blank line shows the file is not JSON Lines (one object a line)."""
    start = first_line.lstrip().removeprefix(b"\xef\xbb\xbf")
    if start.startswith(b"{"):
        return
    shown = first_line[:60].decode("utf-8", "backslashreplace").rstrip()
    if start.startswith(b"["):
        found = "a JSON array (write one object per line: jq -c '.[]' FILE)"
    elif b"," in start or b"\t" in start:
        found = "CSV or TSV text (name it .csv)"
    else:
        found = "no JSON object"
    raise DownloadError(f"{path}: expected JSON Lines (one JSON object per line), but the first line "
                        f"is {found}: {shown!r}")


def iter_parquet_batches(source: Any, batch_rows: int = BATCH_ROWS) -> Iterator[Batch]:
    """A Parquet file (path or open binary file) in record batches of at most ``batch_rows``.

    Read through a 1 MiB buffered stream without pre-buffering: pyarrow's default pre-buffers
    whole row groups ahead (a 4.5M-row file went to 0.8 GB RSS that way, 0.16 GB this way).
    """
    parquet = ParquetReader(source, pre_buffer=False, buffer_size=1 << 20)
    for batch in parquet.iter_batches(batch_size=batch_rows, use_threads=False):
        yield pa.Table.from_batches([batch]), {}


def iter_csv_batches(path: Path, spec: DatasetSpec, batch_rows: int = BATCH_ROWS) -> Iterator[Batch]:
    """A CSV file in batches of ``batch_rows`` rows, every cell read as text.

    Cells stay text (the validator parses numbers as it does for any string); an empty cell is an
    empty string in a text field (``empty_text``) and a missing value in any other declared field.
    Cells are read as bytes and decoded per batch; a row with a cell that is not UTF-8 is quarantined
    (``invalid_utf8``), the rest of its batch kept.
    A ragged row (more or fewer cells than the header) is quarantined (``ragged_row``) and the rows
    around it kept; pyarrow does not say where in its block a ragged row stood, so ragged rows come
    last in the split's ``row_index`` numbering, after every parsed row, in the order met.
    """
    ragged: list[BadLine] = []

    def quarantine(row: pacsv.InvalidRow) -> str:
        ragged.append(BadLine("ragged_row", f"row has {row.actual_columns} fields, the header "
                              f"{row.expected_columns}", row.text))
        return "skip"

    with reading(path, "CSV with a header row"):  # pyarrow's errors name no file
        parse = pacsv.ParseOptions(invalid_row_handler=quarantine)
        with pacsv.open_csv(path, parse_options=parse) as probe:
            names = probe.schema.names
        ragged.clear()
        convert = pacsv.ConvertOptions(column_types={name: pa.binary() for name in names},
                                       strings_can_be_null=False, auto_dict_encode=False)
        not_text = [f.name for f in spec.schema if f.name in names and f.type != pa.string()]
        rows: list[pa.RecordBatch] = []
        n_rows = 0
        with pacsv.open_csv(path, convert_options=convert, parse_options=parse) as reader:
            for batch in reader:
                rows.append(batch)
                n_rows += batch.num_rows
                while n_rows >= batch_rows:
                    table = pa.Table.from_batches(rows)
                    yield _csv_batch(table.slice(0, batch_rows), not_text)
                    rest = table.slice(batch_rows)
                    rows, n_rows = rest.to_batches(), rest.num_rows
        if n_rows:
            yield _csv_batch(pa.Table.from_batches(rows, schema=reader.schema), not_text)
    for start in range(0, len(ragged), batch_rows):
        part = ragged[start:start + batch_rows]
        yield [None] * len(part), dict(enumerate(part))


def _csv_batch(table: pa.Table, not_text: list[str]) -> Batch:
    """A batch of CSV cells read as bytes, as text: one cast when every cell is UTF-8 (the fast path),
    else column by column, the rows with a bad cell set aside as ``invalid_utf8``."""
    text_schema = pa.schema([pa.field(f.name, pa.string()) for f in table.schema])
    try:
        return _empty_cells_as_null(table.cast(text_schema), not_text), {}
    except pa.ArrowInvalid:
        pass
    columns, bad_rows = [], set()
    for column in table.columns:
        try:
            columns.append(column.cast(pa.string()))
            continue
        except pa.ArrowInvalid:
            pass
        values = []
        for i, value in enumerate(column.to_pylist()):
            try:
                values.append(value.decode("utf-8"))
            except UnicodeDecodeError:
                values.append(None)
                bad_rows.add(i)
        columns.append(pa.array(values, pa.string()))
    rows = table.to_pylist()
    bad = {i: BadLine("invalid_utf8", "row has a cell that is not valid UTF-8",
                      ",".join(v.decode("utf-8", "backslashreplace") for v in rows[i].values()))
           for i in sorted(bad_rows)}
    return _empty_cells_as_null(pa.Table.from_arrays(columns, schema=text_schema), not_text), bad


def _empty_cells_as_null(table: pa.Table, names: list[str]) -> pa.Table:
    for name in names:
        col = table.column(name)
        empty = pc.equal(col, "")
        table = table.set_column(table.schema.get_field_index(name), name,
                                 pc.if_else(empty, pa.scalar(None, pa.string()), col))
    return table


def local_split_path(directory: Path, split: str) -> Path:
    for suffix in LOCAL_SUFFIXES:
        path = directory / f"{split}{suffix}"
        if path.exists():
            return path
    expected = ", ".join(f"{split}{s}" for s in LOCAL_SUFFIXES)
    raise DownloadError(f"no file for split {split!r} in {directory} (expected one of: {expected})")


def iter_local_split(path: Path, spec: DatasetSpec, batch_rows: int = BATCH_ROWS) -> Iterator[Batch]:
    """The batches of one local file, by its suffix (Parquet, CSV, a ``.json`` holding one JSON
    array of objects, else JSON Lines)."""
    if path.suffix == ".parquet":
        return iter_parquet_batches(path, batch_rows)
    if path.suffix == ".csv":
        return iter_csv_batches(path, spec, batch_rows)
    if path.suffix == ".json" and _starts_with(path, b"["):
        return iter_json_array_batches(path, batch_rows)
    return iter_jsonl_batches(path, batch_rows)


def _starts_with(path: Path, prefix: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(1 << 16).lstrip().removeprefix(b"\xef\xbb\xbf").lstrip().startswith(prefix)


def iter_json_array_batches(path: Path, batch_rows: int = BATCH_ROWS) -> Iterator[Batch]:
    """A ``.json`` file holding one JSON array of records (read whole), in batches of ``batch_rows``.

    An element that is not an object (``invalid_json``) or holds a lone surrogate
    (``invalid_unicode``) is quarantined; a file that is not one valid JSON array raises
    :class:`DownloadError` naming it.
    """
    try:
        records = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DownloadError(f"{path}: expected one JSON array of records (or JSON Lines), but it does "
                            f"not parse: {err}") from err
    if not isinstance(records, list):
        raise DownloadError(f"{path}: expected one JSON array of records, found a JSON "
                            f"{type(records).__name__}")
    for start in range(0, max(len(records), 1), batch_rows):
        batch, bad = records[start:start + batch_rows], {}
        for i, record in enumerate(batch):
            text = json.dumps(record, ensure_ascii=False)
            if not isinstance(record, dict):
                bad[i] = BadLine("invalid_json", "array element is not a JSON object", text)
            elif SURROGATE_ESCAPE.search(json.dumps(record).encode()):
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    bad[i] = BadLine("invalid_unicode", "element has a lone UTF-16 surrogate "
                                     "(such as \\ud800), which is no character",
                                     json.dumps(record))
            if i in bad:
                batch[i] = None
        yield batch, bad


def read_embedded_split(spec: DatasetSpec, split: str) -> tuple[Any, dict[int, str], str]:
    ref = resources.files("flanpipe").joinpath("data/embedded", spec.name, f"{split}.jsonl")
    if not ref.is_file():
        raise DownloadError(f"{spec.name}: no embedded demo data for split {split!r}. "
                            + _supply_locally_hint(spec))
    with resources.as_file(ref) as path:
        records, bad = read_jsonl(path)
    return records, bad, f"flanpipe/data/embedded/{spec.name}/{split}.jsonl"


def read_hub_split(spec: DatasetSpec, split: str, revision: str | None,
                   batch_rows: int = BATCH_ROWS) -> tuple[Iterator[Batch], str]:
    """Load one split with ``datasets.load_dataset``; fail fast, with guidance, when it cannot.

    Returns the split's batches, read from the memory-mapped Arrow cache ``load_dataset`` writes
    (never the whole split in memory), and the commit read.
    """
    if not spec.hub.id:
        raise DownloadError(f"{spec.name} has no public hub copy. " + _supply_locally_hint(spec))
    import datasets  # heavy import, only for this source

    try:
        ds = datasets.load_dataset(spec.hub.id, spec.hub.config, split=split, revision=revision)
    except Exception as err:  # noqa: BLE001 - any failure means: tell the user how to proceed
        if isinstance(err, RuntimeError) and SCRIPT_ONLY_MESSAGE in str(err):
            raise ScriptOnlyError(f"{spec.name}: {spec.hub.id!r} ships only a loading script: "
                                  f"{err}") from err
        offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
        why = "the hub is switched off (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE=1) and it is not cached" \
            if offline else f"{type(err).__name__}: {err}"
        raise DownloadError(
            f"{spec.name}: could not load {spec.hub.id!r} (config {spec.hub.config!r}, split "
            f"{split!r}, revision {revision or 'default'}) from the Hugging Face hub: {why}. "
            + _supply_locally_hint(spec)) from err
    batches = ((table, {}) for table in ds.with_format("arrow").iter(batch_size=batch_rows))
    return batches, _resolved_revision(spec.hub.id, revision, ds)


# --- the hub's auto-converted Parquet branch -----------------------------------------------------

@dataclass(frozen=True)
class BranchSplit:
    """Where one split lies on a ``refs/convert/parquet`` branch."""

    config: str
    """The config folder read (``default`` for a repository without named configs)."""
    files: tuple[str, ...]
    """The split's Parquet files, relative to the branch root, in shard order."""
    layout: str
    """``split_folder`` (``<config>/<split>/0000.parquet``) or ``flat`` (the older
    ``<config>/<repo>-<split>[-00000-of-00002].parquet``)."""
    partial: bool
    """The converter stopped early (``<config>/partial-<split>/``): only the first part of the split."""


def _flat_split(name: str) -> str | None:
    """The split of an older flat file name: ``samsum-train.parquet`` or ``x-test-00000-of-00002``."""
    match = re.fullmatch(r"[^/]+?-(?P<split>[^-/]+)(?:-\d{5}-of-\d{5})?\.parquet", name)
    return match["split"] if match else None


def locate_branch_split(paths: Iterable[str], config: str | None, split: str) -> BranchSplit:
    """Find ``split`` of ``config`` among the Parquet files of a ``refs/convert/parquet`` branch.

    ``paths`` are relative to the branch root. A registry entry without a config reads the config
    ``default``, or the only config the branch has.

    >>> locate_branch_split(["default/train/0000.parquet", "default/train/0001.parquet",
    ...                      "default/test/0000.parquet"], None, "train").files
    ('default/train/0000.parquet', 'default/train/0001.parquet')
    >>> b = locate_branch_split(["samsum/samsum-train.parquet", "samsum/samsum-test.parquet"],
    ...                         None, "test")
    >>> b.config, b.files, b.layout
    ('samsum', ('samsum/samsum-test.parquet',), 'flat')
    """
    by_config: dict[str, list[tuple[str, ...]]] = {}
    for path in paths:
        parts = tuple(path.strip("/").split("/"))
        hidden = parts[0].startswith(".")  # .cache/ of a `hf download --local-dir` copy
        if len(parts) >= 2 and parts[-1].endswith(".parquet") and not hidden:
            by_config.setdefault(parts[0], []).append(parts)
    configs = sorted(by_config)
    if config is None:
        if "default" in by_config or len(configs) != 1:
            config = "default"
        else:
            config = configs[0]
    if config not in by_config:
        raise DownloadError(f"the Parquet branch has no config {config!r}; it has {configs}"
                            + ("; name one in the registry's hub.config" if len(configs) > 1 else ""))
    folders: dict[str, list[str]] = {}
    flat: dict[str, list[str]] = {}
    for parts in by_config[config]:
        if len(parts) == 3:
            folders.setdefault(parts[1], []).append("/".join(parts))
        elif len(parts) == 2 and (found := _flat_split(parts[1])):
            flat.setdefault(found, []).append("/".join(parts))
    for layout, folder, partial, table in (("split_folder", split, False, folders),
                                           ("split_folder", f"partial-{split}", True, folders),
                                           ("flat", split, False, flat)):
        if folder in table:
            return BranchSplit(config, tuple(sorted(table[folder])), layout, partial)
    have = sorted(set(folders) | set(flat))
    raise DownloadError(f"the Parquet branch has no split {split!r} in config {config!r}; it has "
                        f"{have}")


def _branch_filesystem(spec: DatasetSpec, root: str | None, revision: str | None):
    """The filesystem and root folder of the branch: the hub (pinned to a commit) or a local copy."""
    if root is not None:
        from fsspec.implementations.local import LocalFileSystem

        base = Path(root).resolve()
        if not base.is_dir():
            raise DownloadError(f"{spec.name}: the local copy of the Parquet branch {base} is not a "
                                "directory")
        return LocalFileSystem(), base.as_posix(), f"local-path:{base}"
    from huggingface_hub import HfApi, HfFileSystem

    sha = HfApi().dataset_info(spec.hub.id, revision=revision or PARQUET_BRANCH).sha
    return HfFileSystem(), f"datasets/{spec.hub.id}@{quote(sha, safe='')}", sha


def read_parquet_branch_split(spec: DatasetSpec, split: str, root: str | None = None,
                              revision: str | None = None,
                              batch_rows: int = BATCH_ROWS) -> tuple[Iterator[Batch], dict]:
    """Read one split from the hub's ``refs/convert/parquet`` branch, or from a local copy of it.

    ``root`` is a directory laid out as the branch is (``hf download ID --repo-type dataset
    --revision refs/convert/parquet --local-dir DIR`` makes one); None reads the hub.
    ``revision`` pins a commit of the branch. Returns the split's batches (its files read one
    after the other, one record batch at a time) and where it came from.
    """
    if not spec.hub.id:
        raise DownloadError(f"{spec.name} has no public hub copy. " + _supply_locally_hint(spec))
    where = root or f"the hub ({spec.hub.id}@{revision or PARQUET_BRANCH})"
    try:
        fs, base, resolved = _branch_filesystem(spec, root, revision)
        paths = [p.removeprefix(base).lstrip("/") for p in fs.find(base)]
        located = locate_branch_split(paths, spec.hub.config, split)
    except DownloadError as err:
        raise DownloadError(f"{spec.name}: {err} (read from {where})") from err
    except Exception as err:  # noqa: BLE001 - network, auth, offline: tell the user how to proceed
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        why = "the hub is switched off (HF_HUB_OFFLINE=1)" if offline and root is None \
            else f"{type(err).__name__}: {err}"
        raise DownloadError(
            f"{spec.name}: could not read split {split!r} of {spec.hub.id!r} from its Parquet branch "
            f"{PARQUET_BRANCH} in {where}: {why}. To read it offline, copy the branch with `hf "
            f"download {spec.hub.id} --repo-type dataset --revision {PARQUET_BRANCH} --local-dir DIR` "
            f"and set download.sources.{spec.name}: {{kind: hub, path: DIR}}. "
            + _supply_locally_hint(spec)) from err
    log.info("%s [%s]: Parquet branch of %s in %s: config %r, %d file(s), %s layout", spec.name, split,
             spec.hub.id, where, located.config, len(located.files), located.layout)
    if located.partial:
        log.warning("%s [%s]: the Parquet branch holds only the first part of this split (%s)",
                    spec.name, split, located.files[0].rsplit("/", 1)[0])
    origin = {"parquet_branch": {"config": located.config, "files": list(located.files),
                                 "layout": located.layout, "partial": located.partial},
              "revision_resolved": resolved}
    return _branch_batches(fs, [f"{base}/{rel}" for rel in located.files], batch_rows), origin


def _branch_batches(fs: Any, paths: list[str], batch_rows: int) -> Iterator[Batch]:
    for path in paths:
        with fs.open(path, "rb") as f:
            yield from iter_parquet_batches(f, batch_rows)


def _resolved_revision(hub_id: str, requested: str | None, ds: Any) -> str:
    """The commit actually read: asked of the hub when online, else read off the cache path."""
    if Path(hub_id).exists():
        return f"local-path:{Path(hub_id).resolve()}"
    if os.environ.get("HF_HUB_OFFLINE") != "1":
        try:
            from huggingface_hub import HfApi

            return HfApi().dataset_info(hub_id, revision=requested).sha
        except Exception as err:  # noqa: BLE001
            log.warning("could not ask the hub which commit %s@%s is: %s", hub_id, requested, err)
    for cache in getattr(ds, "cache_files", []) or []:
        parts = Path(cache["filename"]).parts
        shas = [p for p in parts if len(p) == 40 and all(c in "0123456789abcdef" for c in p)]
        if shas:
            return shas[-1]
    return requested or "unknown"


# --- the stage -----------------------------------------------------------------------------------

def _read_hub(spec: DatasetSpec, source: SourceSpec, split: str,
              batch_rows: int) -> tuple[Iterator[Batch], dict]:
    """The hub source: ``load_dataset`` on the main branch, or the Parquet branch where needed."""
    revision = source.revision or spec.hub.revision
    origin = {"hub_id": spec.hub.id, "hub_config": spec.hub.config, "revision_requested": revision}
    use_branch = source.parquet_branch
    if use_branch is None:
        use_branch = spec.hub.parquet_branch
    if not use_branch:
        try:
            batches, resolved = read_hub_split(spec, split, revision, batch_rows)
            return batches, {**origin, "revision_resolved": resolved}
        except ScriptOnlyError as err:
            if source.parquet_branch is False:
                raise DownloadError(f"{err}; parquet_branch is false for it in the config, so its "
                                    f"Parquet branch {PARQUET_BRANCH} is not read") from err
            log.warning("%s; reading its Parquet branch %s instead", err, PARQUET_BRANCH)
            revision = None  # a pinned revision names a main-branch commit, not a branch one
            origin["parquet_branch_fallback"] = True
    batches, branch_origin = read_parquet_branch_split(spec, split, source.path, revision, batch_rows)
    return batches, {**origin, **branch_origin}


def _open_split(spec: DatasetSpec, source: SourceSpec, split: str,
                batch_rows: int, seed: int = 0) -> tuple[Iterator[Batch], dict]:
    if source.kind == "hub":
        return _read_hub(spec, source, split, batch_rows)
    if source.kind == "local":
        path = local_split_path(Path(source.path), split)
        origin = {"path": str(path.resolve()), "sha256_source": sha256_file(path)}
        return iter_local_split(path, spec, batch_rows), origin
    if source.kind == "cot":
        return _open_cot(spec, source, batch_rows)
    if source.kind == "niv2":
        return _open_niv2(spec, source, batch_rows, seed)
    if source.kind == "flan_dump":
        return _open_dump(spec, source, batch_rows)
    records, bad, path = read_embedded_split(spec, split)  # small demo files
    return iter([(records, bad)]), {"path": path}


def _open_cot(spec: DatasetSpec, source: SourceSpec, batch_rows: int) -> tuple[Iterator[Batch], dict]:
    """A CoT dataset's one TSV file; a missing one is named, with how to go on without it."""
    path = Path(source.files_for(spec.name, ["train"])[0])
    if not path.is_file():
        raise DownloadError(f"{spec.name}: no CoT file {path} (expected {path.name} in {path.parent}). "
                            f"Where to get it: {spec.local_instructions}. To run without it, set "
                            f"optional: true on its source (download.sources.{spec.name}) or "
                            "download.optional: true, or leave it out of 'datasets'.")
    origin = {"path": str(path.resolve()), "sha256_source": sha256_file(path)}
    return iter_cot_batches(path, batch_rows), origin


def _open_niv2(spec: DatasetSpec, source: SourceSpec, batch_rows: int,
               seed: int) -> tuple[Iterator[Batch], dict]:
    """A folder of NIv2 task files, each task capped by a draw seeded from ``seed``; the origin's
    ``niv2`` counts (tasks, instances, capped, MMLU's tasks skipped) are filled in as the files are
    read, before the manifest is written."""
    folder = Path(source.path)
    if not folder.is_dir() or not any(folder.glob("*.json")):
        raise DownloadError(f"{spec.name}: no task files (*.json) in {folder}. Where to get them: "
                            f"{spec.local_instructions}.")
    tally: dict[str, Any] = {}
    origin = {"path": str(folder.resolve()), "per_task_cap": source.per_task_cap, "niv2": tally}

    def batches() -> Iterator[Batch]:
        try:
            yield from iter_niv2_batches(folder, source.per_task_cap, batch_rows, tally, spec.name, seed)
        except SourceFileError as err:
            raise DownloadError(str(err)) from err
        log.info("%s: %d tasks, %d instances read, %d past the cap of %s per task; skipped as FLAN did: %s",
                 spec.name, tally["tasks"], tally["instances"], tally["capped"], source.per_task_cap,
                 tally["excluded_tasks"] or "none")

    return batches(), origin


def _open_dump(spec: DatasetSpec, source: SourceSpec, batch_rows: int) -> tuple[Iterator[Batch], dict]:
    """The rows of one ``_task_source`` of a Flan Collection export; its ``flan_dump`` counts are
    filled in as the files are read."""
    files = dump_files(source.path)
    if not files:
        raise DownloadError(f"{spec.name}: no dump file at {source.path} (a .parquet or .jsonl file, or a "
                            f"folder of them). Where to get one: {spec.local_instructions}.")
    task_source = source.task_source or DUMP_TASK_SOURCES.get(spec.name)
    tally: dict[str, Any] = {}
    origin = {"path": str(Path(source.path).resolve()), "files": [f.name for f in files],
              "task_source": task_source, "per_task_cap": source.per_task_cap, "flan_dump": tally}

    def batches() -> Iterator[Batch]:
        try:
            for table in iter_dump_batches(source.path, task_source, source.per_task_cap, batch_rows, tally):
                yield table, {}
        except SourceFileError as err:
            raise DownloadError(str(err)) from err
        if tally["unknown_template_type"]:
            log.warning("%s: rows left out for a _template_type that is no prompt type: %s", spec.name,
                        tally["unknown_template_type"])
        if tally["rows_read"] and not tally["rows_of_source"]:
            raise DownloadError(f"{spec.name}: none of the {tally['rows_read']} rows of {source.path} has "
                                f"_task_source {task_source!r}; set task_source on its source to the "
                                "spelling the dump uses")

    return batches(), origin


def download_dataset(name: str, source: SourceSpec, out_dir: str | Path, seed: int,
                     batch_rows: int = BATCH_ROWS) -> dict:
    """Read ``name``'s train and eval splits from ``source`` into ``out_dir``; return the manifest.

    Splits are read, checked and written ``batch_rows`` rows at a time; the outputs are the same
    bytes for any ``batch_rows``. The three Parquet files are renamed into place only once both
    splits are read, and the manifest after them: a killed or failed download leaves none of them.
    """
    spec = load_registry().datasets[name]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("%s: reading %s from %s in batches of %d rows", name, spec.split_roles, source.kind,
             batch_rows)
    parquet_meta = {"stage": "download", "stage_version": STAGE_VERSION, "dataset": name,
                    "cluster": spec.cluster, "source": source.kind}
    kept_schema = spec.schema.append(pa.field("row_index", pa.int64()))
    splits: dict[str, Any] = {}
    n_rejected = 0
    with contextlib.ExitStack() as commit:
        rejected_tmp = commit.enter_context(atomic_path(out_dir / "rejected.parquet"))
        role_tmps = {role: commit.enter_context(atomic_path(out_dir / f"{role}.parquet"))
                     for role in ("train", "eval")}
        with RowGroupWriter(rejected_tmp, REJECTED_SCHEMA, parquet_meta) as rejected_writer:
            for role, tmp in role_tmps.items():
                split = spec.split_roles.get(role)
                meta = {**parquet_meta, "role": role, "split": split}
                if split is None:  # eval- or train-only dataset: an empty file keeps outputs uniform
                    batches, origin = iter([([], {})]), {}
                else:
                    batches, origin = _open_split(spec, source, split, batch_rows, seed)
                where = origin.get("path") or origin.get("hub_id") or source.kind
                with RowGroupWriter(tmp, kept_schema, meta) as writer:
                    tally = _check_batches(batches, spec, split or role, writer, rejected_writer,
                                           where, require_rows=split is not None)
                n_rejected += tally.rejected
                splits[role] = {"source_split": split, **origin, "rows_read": tally.rows_read,
                                "rows": tally.rows, "rejected": tally.rejected,
                                "rejected_by_kind": dict(tally.rejected_by_kind),
                                "duplicate_ids": tally.duplicate_ids,
                                "extra_columns_dropped": tally.extra_columns(spec),
                                "bytes_reprs_decoded": {f: tally.bytes_reprs_decoded[f]
                                                        for f in spec.hub.bytes_repr_fields},
                                "file": f"{role}.parquet", "sha256": sha256_file(tmp)}
                log.info("%s [%s <- %s]: %d rows read, %d kept, %d rejected %s", name, role, split,
                         tally.rows_read, tally.rows, tally.rejected,
                         dict(tally.rejected_by_kind) or "")
        rejected_sha = sha256_file(rejected_tmp)
    manifest = {
        "dataset": name,
        "cluster": spec.cluster,
        "source": source.model_dump(),
        "splits": splits,
        "rejected": {"rows": n_rejected, "file": "rejected.parquet", "sha256": rejected_sha},
        "seed": seed,
        "code": code_version("download", STAGE_VERSION),
        "created_at": utc_now(),
    }
    write_json_atomic(out_dir / "manifest.json", manifest)
    return manifest


def _check_batches(batches: Iterable[Batch], spec: DatasetSpec, split: str,
                   writer: RowGroupWriter, rejected_writer: RowGroupWriter, where: str,
                   require_rows: bool = True) -> SplitTally:
    """Check each batch, append its kept and rejected rows; the split's counts.

    A split that reads no row, or whose every row is rejected, is not a dataset with bad rows but
    a wrong file: :class:`DownloadError`, naming ``where`` it was read from, as does a file that
    cannot be read or lacks the schema.
    """
    tally = SplitTally()
    first_rejected = ""
    ids: list[np.ndarray] = []
    try:
        for data, bad in batches:
            checked = check_split(data, spec, split, bad, row_offset=tally.rows_read,
                                  require_schema=False)
            if (hashes := id_hashes(spec, checked.table)) is not None:
                ids.append(hashes)
            writer.write(checked.table)
            rejected_writer.write(checked.rejected)
            tally.add(checked, bad_lines=len(bad))
            if not first_rejected and checked.rejected.num_rows:
                first = checked.rejected.slice(0, 1).to_pylist()[0]
                first_rejected = f"row {first['row_index']}: {first['reason']}: {first['row'][:200]!r}"
            if tally.rows_read and tally.rows_read % (BATCH_ROWS * 64) < checked.rows_read:
                log.info("%s [%s]: %d rows read", spec.name, split, tally.rows_read)
        tally.check_schema(spec, split)
    except (SchemaError, ReadError) as err:
        raise DownloadError(f"{where}: {err}") from err
    all_ids = np.concatenate(ids) if ids else np.zeros(0, np.uint64)
    dups = duplicated(all_ids)
    tally.duplicate_ids = {"ids": len(dups), "rows": int(np.isin(all_ids, dups).sum()) if len(dups) else 0}
    if len(dups):
        log.warning("%s [%s]: %d ids are held by %d rows; those rows are keyed by their content too",
                    spec.name, split, *tally.duplicate_ids.values())
    if not require_rows:
        return tally
    if tally.rows_read == 0:
        raise DownloadError(f"{where}: split {split!r} of {spec.name} has no rows; expected records "
                            f"with the fields {list(spec.features)}")
    if tally.rows == 0:
        raise DownloadError(
            f"{where}: every one of the {tally.rows_read} rows of split {split!r} of {spec.name} was "
            f"rejected {dict(tally.rejected_by_kind)}, so it is no file of {spec.name} rows "
            f"(fields {list(spec.features)}); the first, {first_rejected}")
    return tally
