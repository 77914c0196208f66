"""Benchmarks: each prints our throughput next to a named peer measured in the same run.

    flanpipe bench templatize [--rows 1000000] [--peer-rows 200000]
"""

from __future__ import annotations

import time

import pyarrow as pa

from flanpipe.core.config import TemplatizeConfig
from flanpipe.core.config.registry import load_registry
from flanpipe.core.text.keys import stable_keys, template_draws
from flanpipe.core.text.templates import load_bank, use_string_pool
from flanpipe.stages.templatize import templatize_split
from tests.synthetic import synthetic_rte


def _peer_map(raw: pa.Table, seed: int, options: bool = True):
    """The same work as a per-row ``datasets.map``: one str.format per row."""
    import datasets

    spec = load_registry().datasets["rte"]
    bank = load_bank()["rte"]
    assignment = template_draws(stable_keys(spec, raw), len(bank.templates), 1, "rte", seed)[0]
    templates = bank.templates
    answers = [bank.answer_texts(spec, t) for t in templates]

    def render(row, i):
        t = templates[assignment[i]]
        texts = answers[assignment[i]]
        values = {**row, "answer": texts[row["label"]]}
        inputs = t.input.format_map(values)
        if options and not t.inverted:
            inputs += "\n\nOPTIONS:\n" + "\n".join(f"- {a}" for a in texts)
        return {"inputs": inputs, "targets": t.target.format_map(values)}

    ds = datasets.Dataset(raw)
    datasets.disable_progress_bars()
    return ds.map(render, with_indices=True, keep_in_memory=True)


def bench_templatize(rows: int = 1_000_000, peer_rows: int = 200_000, seed: int = 1234) -> dict:
    pa.set_cpu_count(1)  # per-core figures: Arrow's kernels on one thread
    use_string_pool()  # as the templatize stage does
    spec, bank = load_registry().datasets["rte"], load_bank()["rte"]
    raw = synthetic_rte(rows)
    cfg = TemplatizeConfig(passes=1)  # one rendering per row, as the peer does
    templatize_split(spec, bank, raw.slice(0, 1000), "train", cfg, seed)  # warm up

    start = time.perf_counter()
    ours = templatize_split(spec, bank, raw, "train", cfg, seed)
    ours_s = time.perf_counter() - start

    peer_raw = raw.slice(0, peer_rows)
    start = time.perf_counter()
    peer = _peer_map(peer_raw, seed)
    peer_s = time.perf_counter() - start

    # the same work: the peer's rows equal ours
    ours_small = templatize_split(spec, bank, peer_raw, "train", cfg, seed)
    by_id = {int(e.rsplit(":", 1)[1]): (i, t) for e, i, t in zip(
        ours_small.column("example_id").to_pylist(), ours_small.column("inputs").to_pylist(),
        ours_small.column("targets").to_pylist(), strict=True)}
    same = [by_id[i] for i in range(peer_rows)] == list(zip(peer["inputs"], peer["targets"], strict=True))
    result = {
        "rows": rows, "ours_s": ours_s, "ours_rows_per_s": rows / ours_s,
        "peer_rows": peer_rows, "peer_s": peer_s, "peer_rows_per_s": peer_rows / peer_s,
        "identical_output": same, "out_rows": ours.num_rows,
    }
    result["ratio"] = result["ours_rows_per_s"] / result["peer_rows_per_s"]
    return result


def print_templatize(r: dict) -> None:
    print("templatize benchmark: RTE-schema rows, 10 templates, one template per row, OPTIONS suffix")
    print(f"  flanpipe (Arrow, 1 thread)   {r['rows']:>10,} rows in {r['ours_s']:7.2f} s = "
          f"{r['ours_rows_per_s']:>12,.0f} rows/s")
    print(f"  datasets.map (per row)       {r['peer_rows']:>10,} rows in {r['peer_s']:7.2f} s = "
          f"{r['peer_rows_per_s']:>12,.0f} rows/s")
    print(f"  ratio flanpipe / datasets.map: {r['ratio']:.1f}x (target >= 10x); "
          f"per core: {r['ours_rows_per_s']:,.0f} rows/s (target >= 500,000)")
    print(f"  identical output on the peer's rows: {'yes' if r['identical_output'] else 'NO'}")


def run(rows: int, peer_rows: int) -> int:
    """``flanpipe bench templatize``; exit status 1 unless our rows equal the peer's."""
    result = bench_templatize(rows, peer_rows)
    print_templatize(result)
    return 0 if result["identical_output"] else 1
