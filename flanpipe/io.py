"""Atomic writes, hashes and manifests shared by every stage.

A killed job must never leave a file that Snakemake or a later stage would take as complete, so
every output is written to a temporary file in the same directory and renamed into place.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import flanpipe

METADATA_KEY = b"flanpipe"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    >>> with atomic_path("/tmp/flanpipe-doctest.txt") as tmp:
    ...     _ = tmp.write_text("done")
    >>> Path("/tmp/flanpipe-doctest.txt").read_text()
    'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
    ``path`` (and whatever was there). A killed job leaves no partial directory at ``path``.

    >>> with atomic_dir("/tmp/flanpipe-doctest-dir") as tmp:
    ...     _ = (tmp / "part-0").write_text("rows")
    >>> sorted(p.name for p in Path("/tmp/flanpipe-doctest-dir").iterdir())
    ['part-0']
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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


def read_parquet_metadata(path: str | Path) -> dict[str, Any]:
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta.get(METADATA_KEY, b"{}"))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def derive_seed(seed: int, name: str) -> int:
    """A stage's or dataset's own seed: ``seed + crc32(name)``, kept in 32 bits.

    >>> derive_seed(1234, "rte")
    3737080027
    """
    return (seed + zlib.crc32(name.encode())) % 2**32


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
