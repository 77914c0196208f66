"""Collection benchmark: loading and templatizing the Flan 2022 Collection's own files.

    flanpipe bench collection --flan-root DIR [--niv2 DIR] [--workdir DIR]

Each present CoT file (``<flan-root>/flan/v2/cot_data/<name>_train.tsv``) and the folder of NIv2
task files is downloaded (read, checked, written as raw Parquet) and templatized (Flan 2022's
prompt types for these submixtures: half ``zs_opt``, half ``fs_opt``, 4 passes), each job in a
fresh Python process, as Snakemake runs them. Per job it reports the examples (and the rows written:
``templatize.passes`` per example), the seconds of the stage function (imports excluded), examples
per second and the process's peak RSS (``ru_maxrss`` at exit), and extrapolates the time to the
full collection (about 15M examples before capping) at the measured rate. Download and templatize
stream their input in batches, so their peak memory does not grow with the rows; the few-shot pool
of a CoT set is held whole (at most ``pool_factor`` x its cap).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

FULL_COLLECTION_ROWS = 15_000_000
"""Flan 2022's examples before capping (the Collection paper)."""

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from flanpipe.core.config import TemplatizeSlice, parse_config
from flanpipe.workflow.planner import Plan
from flanpipe.stages.download import download_dataset
from flanpipe.stages.templatize import templatize_dataset

job, name, config, out = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), Path(sys.argv[4])
cfg = parse_config(config)
start = time.perf_counter()
if job == "download":
    manifest = download_dataset(name, cfg.download.source_for(name), out / "raw" / name, seed=cfg.seed)
    rows = examples = manifest["splits"]["train"]["rows_read"]
else:
    raw = out / "raw" / name
    manifest = templatize_dataset(name, raw / "train.parquet", raw / "eval.parquet",
                                  out / f"{name}.parquet",
                                  TemplatizeSlice.model_validate(Plan(cfg).slice("templatize", dataset=name)))
    rows, examples = manifest["outputs"]["train"]["rows"], manifest["outputs"]["train"]["examples"]
seconds = time.perf_counter() - start
print(json.dumps({"rows": rows, "examples": examples, "seconds": seconds,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def collection_config(flan_root: str, niv2: str | None) -> dict:
    """The config the jobs run under: the CoT and NIv2 registries, Flan 2022's prompt types."""
    sources = {"niv2": {"kind": "niv2", "path": niv2, "per_task_cap": 5000}} if niv2 else {}
    mix = {"zs_opt": 0.5, "zs_noopt": 0.0, "fs_opt": 0.5, "fs_noopt": 0.0}
    return {"registry": {"extra": ["cot", "niv2"]}, "datasets": "all", "heldout_clusters": [],
            "ablations": {"enabled": False},
            "download": {"default_source": "local", "local_root": "/nonexistent", "optional": True,
                         "flan_root": flan_root, "sources": sources},
            "templatize": {"mix": mix, "few_shot": {"k": 3, "max_tokens": 1024}}}


def bench_collection(flan_root: str, niv2: str | None = None, workdir: str | None = None) -> list[dict]:
    """Per dataset and job (download, templatize): rows written (a templatized example is
    ``templatize.passes`` rows), the examples they come from, seconds, examples/s and peak RSS (MB)."""
    from flanpipe.core.config import parse_config
    from flanpipe.core.config.registry import use_extra_registries

    config = collection_config(flan_root, niv2)
    names = parse_config(config).dataset_names()
    use_extra_registries([])
    out = Path(workdir or tempfile.mkdtemp(prefix="bench-collection-"))
    results = []
    for name in names:
        for job in ("download", "templatize"):
            proc = subprocess.run([sys.executable, "-c", CHILD, job, name, json.dumps(config), str(out)],
                                  capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"{job} {name} failed:\n{proc.stderr[-4000:]}")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append({"dataset": name, "job": job, **row,
                            "examples_per_s": row["examples"] / row["seconds"] if row["seconds"] else 0.0})
    return results


def print_collection(results: list[dict]) -> None:
    print(f"{'dataset':<18} {'job':<11} {'examples':>9} {'rows':>9} {'seconds':>8} {'examples/s':>10} "
          f"{'peak MB':>8}")
    for r in results:
        print(f"{r['dataset']:<18} {r['job']:<11} {r['examples']:>9} {r['rows']:>9} {r['seconds']:>8.2f} "
              f"{r['examples_per_s']:>10.0f} {r['peak_rss_mb']:>8.0f}")
    for job in ("download", "templatize"):
        mine = [r for r in results if r["job"] == job]
        examples, seconds = sum(r["examples"] for r in mine), sum(r["seconds"] for r in mine)
        if not seconds:
            continue
        rate = examples / seconds
        print(f"{job}: {examples} examples in {seconds:.1f} s ({rate:.0f} examples/s); the full collection "
              f"({FULL_COLLECTION_ROWS:,} examples) at this rate: {FULL_COLLECTION_ROWS / rate / 3600:.2f} "
              f"core-hours; largest job peak {max(r['peak_rss_mb'] for r in mine):.0f} MB")


def run(flan_root: str, niv2: str | None, workdir: str | None) -> int:
    """``flanpipe bench collection``."""
    print_collection(bench_collection(flan_root, niv2, workdir))
    return 0
