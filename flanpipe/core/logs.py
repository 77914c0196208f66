"""Logging, configured once per process (CLI entry point or Snakemake script)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(log_file: str | None = None, level: int = logging.INFO) -> None:
    """Log to ``log_file`` (a Snakemake ``log:``) or to stderr."""
    handler: logging.Handler = (logging.FileHandler(log_file, mode="w", encoding="utf-8")
                                if log_file else logging.StreamHandler(sys.stderr))
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if log_file:
        sys.excepthook = _log_uncaught


def _log_uncaught(kind, error, tb) -> None:
    """An error that ends a job goes into the job's own log (``logs/<rule>/...``) as well as to
    stderr, which Snakemake keeps in its own log: the log a reader opens says why the job failed."""
    logging.getLogger("flanpipe").error("%s: %s", kind.__name__, error, exc_info=(kind, error, tb))
    sys.__excepthook__(kind, error, tb)


def progress(items: Iterable[T], total: int, what: str, count: Callable[[T], int] | None = None,
             unit: str = "rows", every_s: float = 30.0) -> Iterator[T]:
    """Pass ``items`` through and show how far along they are: a tqdm bar where stderr is a terminal,
    else a log line every ``every_s`` seconds (a Snakemake job's log stays readable). ``count``: how
    much of ``total`` one item is (a table's rows; by default 1, or ``num_rows`` for Arrow tables).

    The package's one progress mechanism: every long loop of a stage goes through it.
    """
    if count is None:
        count = _rows_or_one
    if sys.stderr.isatty():
        with tqdm(total=total, desc=what, unit=unit, mininterval=1.0, leave=False) as bar:
            for item in items:
                yield item
                bar.update(count(item))
        return
    advance = progress_counter(total, what, unit, every_s)
    for item in items:
        yield item
        advance(count(item))


def progress_counter(total: int, what: str, unit: str = "rows", every_s: float = 30.0
                     ) -> Callable[[int], None]:
    """:func:`progress` for code that reports by callback: the returned function takes how many more
    of ``total`` are done (a scoring batch's prompts) and logs a line every ``every_s`` seconds."""
    log = logging.getLogger("flanpipe.progress")
    state = {"seen": 0, "started": time.monotonic(), "last": time.monotonic()}

    def advance(n: int) -> None:
        state["seen"] += n
        now = time.monotonic()
        if now - state["last"] >= every_s:
            log.info("%s: %d / %d %s (%.0f%%), %.0f %s/s", what, state["seen"], total, unit,
                     100 * state["seen"] / max(total, 1), state["seen"] / (now - state["started"]), unit)
            state["last"] = now
    return advance


def _rows_or_one(item: object) -> int:
    return int(getattr(item, "num_rows", 1))
