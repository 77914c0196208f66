"""Logging, configured once per process (CLI entry point or Snakemake script)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator

import pyarrow as pa

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(log_file: str | None = None, level: int = logging.INFO) -> None:
    """Log to ``log_file`` (a Snakemake ``log:``) or to stderr."""
    handler: logging.Handler = (logging.FileHandler(log_file, mode="w", encoding="utf-8")
                                if log_file else logging.StreamHandler(sys.stderr))
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def progress(tables: Iterator[pa.Table], rows: int, what: str, every_s: float = 30.0) -> Iterator[pa.Table]:
    """Pass ``tables`` through, logging rows done of ``rows`` every ``every_s`` seconds (a long
    streamed read shows it is moving, in the job's log)."""
    log = logging.getLogger("flanpipe.progress")
    started = last = time.monotonic()
    seen = 0
    for table in tables:
        yield table
        seen += table.num_rows
        now = time.monotonic()
        if now - last >= every_s:
            log.info("%s: %d / %d rows (%.0f%%), %.0f rows/s", what, seen, rows, 100 * seen / max(rows, 1),
                     seen / (now - started))
            last = now
