"""Logging, configured once per process (CLI entry point or Snakemake script)."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(log_file: str | None = None, level: int = logging.INFO) -> None:
    """Log to ``log_file`` (a Snakemake ``log:``) or to stderr."""
    handler: logging.Handler = (logging.FileHandler(log_file, mode="w", encoding="utf-8")
                                if log_file else logging.StreamHandler(sys.stderr))
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
