"""Download benchmark: reading a local JSON Lines split, our reader next to the plain one, same run.

    flanpipe bench download [--rows 200000]

On a synthetic RTE-shaped ``train.jsonl`` (premise of 20-60 words, a hypothesis, an id, a label) it
measures, in rows per second (the best of three runs of each reader):

1. ``reader``: :func:`flanpipe.stages.download.iter_jsonl_batches` alone (the file's lines to records
   and the per-line faults);
2. ``peer``: the plain reader, ``for line in open(path, encoding="utf-8"): json.loads(line)``, which
   loses the whole file on one line of bad UTF-8;
3. ``download``: :func:`flanpipe.stages.download.download_dataset` end to end (read, check against
   the registry schema, write ``train.parquet``), with a 1-row eval split.

The same three on a copy of the file with one faulty line in every 1,000 (bad UTF-8, a lone
surrogate escape, broken JSON in turn) show what the slow path costs.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

from flanpipe.core.config import SourceSpec
from flanpipe.stages.download import download_dataset, iter_jsonl_batches

FAULTY_LINES = (b'{"premise": "caf\xe9", "hypothesis": "h", "idx": -1, "label": 0}',
                b'{"premise": "\\ud800", "hypothesis": "h", "idx": -2, "label": 0}',
                b'{"premise": "cut off')


def write_rte_jsonl(path: Path, rows: int, seed: int = 0, faulty_every: int = 0) -> None:
    """``rows`` RTE-shaped lines; with ``faulty_every``, one faulty line after every that many."""
    rng = random.Random(seed)
    words = [f"word{i}" for i in range(5_000)]
    with open(path, "wb") as f:
        for i in range(rows):
            premise = " ".join(rng.choices(words, k=rng.randint(20, 60)))
            row = {"premise": premise, "hypothesis": " ".join(rng.choices(words, k=8)),
                   "idx": i, "label": i % 2}
            f.write(json.dumps(row).encode() + b"\n")
            if faulty_every and i % faulty_every == faulty_every - 1:
                f.write(FAULTY_LINES[(i // faulty_every) % len(FAULTY_LINES)] + b"\n")


def _peer(path: Path) -> int:
    n = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                json.loads(line)
                n += 1
    return n


def _timed(fn, repeats: int = 1) -> tuple[float, int]:
    """The best of ``repeats`` runs of ``fn`` (the machine may be shared), and what it returned."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        n = fn()
        best = min(best, time.perf_counter() - start)
    return best, n


def bench_download(rows: int = 200_000, repeats: int = 3) -> dict:
    results: dict = {"rows": rows}
    with tempfile.TemporaryDirectory() as tmp:
        for name, faulty_every in (("clean", 0), ("faulty", 1_000)):
            src = Path(tmp) / name
            src.mkdir()
            write_rte_jsonl(src / "train.jsonl", rows, faulty_every=faulty_every)
            write_rte_jsonl(src / "validation.jsonl", 1)
            path = src / "train.jsonl"
            n = sum(1 for line in path.read_bytes().split(b"\n") if line.strip())
            entry = {"lines": n}
            try:
                reader_s, _ = _timed(lambda p=path: sum(len(r) for r, _ in iter_jsonl_batches(p)),
                                     repeats)
                entry["reader_rows_per_s"] = n / reader_s
            except (UnicodeDecodeError, ValueError) as err:
                entry["reader_rows_per_s"] = f"fails: {type(err).__name__}"
            try:
                peer_s, _ = _timed(lambda p=path: _peer(p), repeats)
                entry["peer_rows_per_s"] = n / peer_s
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                entry["peer_rows_per_s"] = f"fails: {type(err).__name__}"
            try:
                out = Path(tmp) / f"out-{name}"
                dl_s, _ = _timed(lambda s=src, o=out: download_dataset(
                    "rte", SourceSpec(kind="local", path=str(s)), o, seed=1))
                entry["download_rows_per_s"] = n / dl_s
            except Exception as err:  # noqa: BLE001 - the old reader fails on the faulty file
                entry["download_rows_per_s"] = f"fails: {type(err).__name__}"
            results[name] = entry
    return results


def print_download(result: dict) -> None:
    print(f"local JSON Lines, {result['rows']:,} RTE-shaped rows (rows per second)")
    print(f"{'file':<8} {'reader':>12} {'peer':>26} {'download':>26}")
    for name in ("clean", "faulty"):
        e = result[name]
        cells = [e[k] if isinstance(e[k], str) else f"{e[k]:,.0f}"
                 for k in ("reader_rows_per_s", "peer_rows_per_s", "download_rows_per_s")]
        print(f"{name:<8} {cells[0]:>12} {cells[1]:>26} {cells[2]:>26}")
    clean = result["clean"]
    if not isinstance(clean["peer_rows_per_s"], str):
        print(f"reader / peer on the clean file: {clean['reader_rows_per_s'] / clean['peer_rows_per_s']:.2f}")


def run(rows: int) -> int:
    """``flanpipe bench download``."""
    print_download(bench_download(rows))
    return 0
