"""Atomic writes, named reads, hashes and manifests shared by every stage.

A killed job must never leave a file that Snakemake or a later stage would take as complete, so
every output is written to a temporary file in the same directory and renamed into place.
A file that cannot be read raises :class:`ReadError`, whose message names the file and what it
should have held (pyarrow's own errors, ``Parquet magic bytes not found``, name none).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import flanpipe

log = logging.getLogger(__name__)
METADATA_KEY = b"flanpipe"
ROW_GROUP_ROWS = 16_384
"""Rows per Parquet row group of streamed outputs (:class:`RowGroupWriter`)."""
BATCH_BYTES = 32 << 20
"""Data per batch of a streamed read (:func:`iter_parquet`), as the file's column sizes count it."""


class ReadError(RuntimeError):
    """A file could not be read as what it should hold; the message names the file."""


@contextlib.contextmanager
def reading(path: Any, what: str) -> Iterator[None]:
    """Re-raise an error of reading ``path`` as a :class:`ReadError` naming it and ``what`` it holds.

    >>> try:
    ...     with reading("/tmp/no-such-flanpipe-file.parquet", "Parquet"):
    ...         _ = pq.read_table("/tmp/no-such-flanpipe-file.parquet")
    ... except ReadError as err:
    ...     print(str(err)[:70])
    /tmp/no-such-flanpipe-file.parquet: could not read it as Parquet: File
    """
    try:
        yield
    except ReadError:
        raise
    except (pa.ArrowException, OSError, EOFError, ValueError) as err:
        name = path if isinstance(path, str | os.PathLike) else (  # else an open file
            getattr(path, "path", None) or getattr(path, "name", None) or path)
        raise ReadError(f"{name}: could not read it as {what}: {type(err).__name__}: {err}") from err


class ParquetReader(pq.ParquetFile):
    """pyarrow's ``ParquetFile`` whose errors, on opening and on every read, name the file."""

    def __init__(self, source: Any, *args: Any, **kwargs: Any):
        self._source_name = source
        with reading(source, "Parquet"):
            super().__init__(source, *args, **kwargs)

    def iter_batches(self, *args: Any, **kwargs: Any) -> Iterator[pa.RecordBatch]:
        with reading(self._source_name, "Parquet"):
            yield from super().iter_batches(*args, **kwargs)

    def read(self, *args: Any, **kwargs: Any) -> pa.Table:
        with reading(self._source_name, "Parquet"):
            return super().read(*args, **kwargs)

    def read_row_group(self, *args: Any, **kwargs: Any) -> pa.Table:
        with reading(self._source_name, "Parquet"):
            return super().read_row_group(*args, **kwargs)

    def read_row_groups(self, *args: Any, **kwargs: Any) -> pa.Table:
        with reading(self._source_name, "Parquet"):
            return super().read_row_groups(*args, **kwargs)


def read_table(path: str | Path, **kwargs: Any) -> pa.Table:
    """``pq.read_table``, with errors that name the file."""
    with reading(path, "Parquet"):
        return pq.read_table(path, **kwargs)


def read_schema(path: str | Path) -> pa.Schema:
    """``pq.read_schema``, with errors that name the file."""
    with reading(path, "Parquet"):
        return pq.read_schema(path)


def temporary_name(path: Path, name: str) -> bool:
    """Whether ``name`` is one of the temporaries :func:`atomic_path` and :func:`atomic_dir` make
    beside ``path``: ``.{path.name}.`` + tempfile's 8 random characters + ``.tmp``.

    >>> temporary_name(Path("data/pool/rte.parquet"), ".rte.parquet.k2_x9q0a.tmp")
    True
    >>> temporary_name(Path("data/x"), ".x.y.k2_x9q0a.tmp")  # the temporary of data/x.y
    False
    """
    prefix = f".{path.name}."
    middle = name[len(prefix):-len(".tmp")]
    return (name.startswith(prefix) and name.endswith(".tmp") and len(middle) == 8
            and all(c.isalnum() or c == "_" for c in middle))


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporaries a killed job left beside ``path`` (files or folders); return them.

    Called by :func:`atomic_path` and :func:`atomic_dir` before they make their own, so the next run
    of the rule that writes ``path`` cleans up after the one that was killed (Snakemake never runs two
    jobs for one output at once).
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    stale = [p for p in path.parent.iterdir() if temporary_name(path, p.name)]
    for p in stale:
        log.info("removing %s, left by a job that did not finish", p)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.
    Temporaries of ``path`` that a killed job left are removed first.

    >>> with atomic_path("/tmp/flanpipe-doctest.txt") as tmp:
    ...     _ = tmp.write_text("done")
    >>> Path("/tmp/flanpipe-doctest.txt").read_text()
    'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path``; if the block succeeds, it replaces
    ``path`` (and whatever was there). A killed job leaves no partial directory at ``path``, and the
    next one removes the temporary directory it left.

    >>> with atomic_dir("/tmp/flanpipe-doctest-dir") as tmp:
    ...     _ = (tmp / "part-0").write_text("rows")
    >>> sorted(p.name for p in Path("/tmp/flanpipe-doctest-dir").iterdir())
    ['part-0']
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_parquet_atomic(table: pa.Table, path: str | Path, metadata: dict[str, Any]) -> None:
    """Write ``table`` with ``metadata`` as JSON under the ``flanpipe`` key-value entry.

    Only deterministic values belong in ``metadata`` (no clock time): the same table and metadata
    give byte-identical files.
    """
    meta = dict(table.schema.metadata or {})
    meta[METADATA_KEY] = json.dumps(metadata, sort_keys=True, default=str).encode()
    table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


class RowGroupWriter:
    """Append tables to a Parquet file in row groups of exactly ``row_group_rows`` rows (the last
    may be shorter), so the file's bytes depend on the rows, not on how they were batched.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "x.parquet"
    >>> schema = pa.schema([("n", pa.int64())])
    >>> with RowGroupWriter(path, schema, {"stage": "doctest"}, row_group_rows=4) as writer:
    ...     for start in range(0, 10, 3):
    ...         writer.write(pa.table({"n": range(start, min(start + 3, 10))}, schema=schema))
    >>> pf = pq.ParquetFile(path)
    >>> [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
    [4, 4, 2]
    """

    def __init__(self, path: Path, schema: pa.Schema, metadata: dict[str, Any],
                 row_group_rows: int = ROW_GROUP_ROWS):
        meta = dict(schema.metadata or {})
        meta[METADATA_KEY] = json.dumps(metadata, sort_keys=True, default=str).encode()
        self.schema = schema.with_metadata(meta)
        self.path = path
        self.row_group_rows = row_group_rows
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> RowGroupWriter:
        self._writer = pq.ParquetWriter(self.path, self.schema, compression="zstd")
        return self

    def write(self, table: pa.Table) -> None:
        self._pending.append(table.replace_schema_metadata(self.schema.metadata))
        self._pending_rows += table.num_rows
        while self._pending_rows >= self.row_group_rows:
            self._flush(self.row_group_rows)

    def _flush(self, rows: int) -> None:
        buffered = pa.concat_tables(self._pending)
        self._writer.write_table(buffered.slice(0, rows), row_group_size=rows)
        rest = buffered.slice(rows)
        self._pending, self._pending_rows = [rest], rest.num_rows

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and self._pending_rows:
            self._flush(self._pending_rows)
        self._writer.close()



@contextlib.contextmanager
def parquet_stream(path: str | Path, schema: pa.Schema, metadata: dict[str, Any],
                   row_group_rows: int = ROW_GROUP_ROWS) -> Iterator[RowGroupWriter]:
    """A :class:`RowGroupWriter` onto a temporary file that is renamed onto ``path`` only when the
    block succeeds: a stage can write an output far larger than memory, and a killed job leaves none.
    """
    with atomic_path(path) as tmp, RowGroupWriter(tmp, schema, metadata, row_group_rows) as writer:
        yield writer


def iter_parquet(path: str | Path, batch_rows: int, columns: list[str] | None = None,
                 batch_bytes: int = BATCH_BYTES) -> Iterator[pa.Table]:
    """A Parquet file as tables of at most ``batch_rows`` rows and about ``batch_bytes`` of data
    (from the file's own column sizes: a batch of long documents has fewer rows), in file order
    (``columns``: only these); memory holds one batch, whatever the file's size. Read through a
    1 MiB buffered stream without pre-buffering: pyarrow's default pre-buffers whole row groups
    ahead."""
    pf = ParquetReader(path, pre_buffer=False, buffer_size=1 << 20)
    meta = pf.metadata
    if meta.num_rows:
        wanted = set(columns or pf.schema_arrow.names)
        groups = [meta.row_group(g) for g in range(meta.num_row_groups)]
        size = sum(rg.column(c).total_uncompressed_size for rg in groups for c in range(rg.num_columns)
                   if rg.column(c).path_in_schema.split(".")[0] in wanted)
        batch_rows = max(1, min(batch_rows, int(batch_bytes * meta.num_rows / max(size, 1))))
    for batch in pf.iter_batches(batch_size=batch_rows, columns=columns, use_threads=False):
        yield pa.Table.from_batches([batch])


def read_parquet_metadata(path: str | Path) -> dict[str, Any]:
    meta = read_schema(path).metadata or {}
    return json.loads(meta.get(METADATA_KEY, b"{}"))


class ArtifactMismatch(ValueError):
    """A file is not the file its producer's manifest describes (its sha256 differs)."""


def verify_sha256(path: str | Path, expected: str | None, manifest: str | Path) -> None:
    """Raise :class:`ArtifactMismatch` naming ``path`` if its sha256 is not ``expected`` (the value
    ``manifest`` records; None: the manifest records none, nothing to check)."""
    if expected is not None and (found := sha256_file(path)) != expected:
        raise ArtifactMismatch(f"{path}: sha256 {found}, but {manifest} says {expected}: the file changed "
                               "after the rule that wrote it; rerun that rule (snakemake --forcerun)")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def lookup(sorted_values: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each query sits in ``sorted_values`` and whether it is there: ``(at, found)``, ``at``
    clamped into range (0 when ``sorted_values`` is empty), so ``sorted_values[at]`` is safe.

    >>> at, found = lookup(np.array([2, 5, 9]), np.array([5, 6, 9]))
    >>> at.tolist(), found.tolist()
    ([1, 2, 2], [True, False, True])
    """
    if not len(sorted_values):
        return np.zeros(len(queries), np.int64), np.zeros(len(queries), bool)
    at = np.minimum(np.searchsorted(sorted_values, queries), len(sorted_values) - 1)
    return at, sorted_values[at] == queries


def git_commit() -> str | None:
    """The commit of the flanpipe checkout, when it is one (``+dirty`` if it has changes)."""
    root = Path(flanpipe.__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "")


def code_version(stage: str, stage_version: str) -> dict[str, Any]:
    return {"flanpipe": flanpipe.__version__, "stage": stage, "stage_version": stage_version,
            "git_commit": git_commit()}


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def mixture_shards(shard_dir: str | Path) -> list[Path]:
    """The Parquet shards of a mixture, in order."""
    shards = sorted(Path(shard_dir).glob("part-*.parquet"))
    if not shards:
        raise FileNotFoundError(f"no part-*.parquet shards in {shard_dir}")
    return shards
