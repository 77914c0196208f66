"""Compare two workflow directories' outputs (data/, models/, results/), for a change that must not move
them (a layout change, a refactor): Parquet by table and key-value metadata, JSON and YAML by value,
everything else by bytes. Fields that differ between any two runs (wall times, dates, code versions,
peaks of memory) are left out, and so are logs/ and benchmarks/ (times).

    python scripts/compare_runs.py RUN_A RUN_B    # not run by the tests

Prints one line per file that differs, with the first differing field, and a summary; exits 1 when
anything but a volatile field differs.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import yaml

FOLDERS = ("data", "models", "results")
VOLATILE = {"created_at", "code", "code_version", "wall_s", "seconds", "elapsed_s", "duration_s",
            "tokens_per_s_this_run", "peak_memory_bytes_rank0", "peak_rss_bytes", "host", "hostname",
            "time", "started", "finished", "runtime_s", "rows_per_s", "examples_per_s", "python",
            "versions"}
SKIP_SUFFIXES = (".log", ".tsv", ".duckdb", ".png", ".wal")  # times; the catalog is rebuilt from the rest


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE and not k.endswith("_s")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _first_difference(a, b, path="") -> str:
    if type(a) is not type(b):
        return f"{path or '.'}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{path}.{k}: only in {'b' if k not in a else 'a'}"
            if a[k] != b[k]:
                return _first_difference(a[k], b[k], f"{path}.{k}")
    if isinstance(a, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _first_difference(x, y, f"{path}[{i}]")
    return f"{path or '.'}: {str(a)[:80]} != {str(b)[:80]}"


def _metadata(path: Path) -> dict:
    meta = pq.read_schema(path).metadata or {}
    out = {}
    for k, v in meta.items():
        key = k.decode()
        try:
            out[key] = _strip(json.loads(v))
        except ValueError:
            out[key] = v.decode(errors="replace")
    return out


def compare(a: Path, b: Path) -> str | None:
    """None when the two files agree (volatile fields aside), else the first difference."""
    if a.suffix == ".parquet":
        ta, tb = pq.read_table(a), pq.read_table(b)
        if not ta.equals(tb):
            same_schema = ta.schema == tb.schema
            return f"table differs ({ta.num_rows} vs {tb.num_rows} rows; schema equal: {same_schema})"
        ma, mb = _metadata(a), _metadata(b)
        return None if ma == mb else "metadata " + _first_difference(ma, mb)
    if a.suffix in (".json", ".yaml", ".yml"):
        load = json.loads if a.suffix == ".json" else yaml.safe_load
        va, vb = _strip(load(a.read_text())), _strip(load(b.read_text()))
        return None if va == vb else _first_difference(va, vb)
    same = hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    return None if same else f"bytes differ ({a.stat().st_size} vs {b.stat().st_size})"


def _outputs(root: Path) -> set[Path]:
    return {p.relative_to(root) for f in FOLDERS for p in (root / f).rglob("*")
            if p.is_file() and not p.name.endswith(SKIP_SUFFIXES) and "tensorboard" not in p.parts}


def main(run_a: str, run_b: str) -> int:
    root_a, root_b = Path(run_a), Path(run_b)
    in_a, in_b = _outputs(root_a), _outputs(root_b)
    differing = 0
    for rel in sorted(in_a ^ in_b):
        print(f"only in {'a' if rel in in_a else 'b'}: {rel}")
        differing += 1
    for rel in sorted(in_a & in_b):
        why = compare(root_a / rel, root_b / rel)
        if why:
            print(f"differs: {rel}: {why}")
            differing += 1
    print(f"{len(in_a & in_b)} files in both, {differing} differing")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
