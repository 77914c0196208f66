"""Training throughput benchmark: tokens/s and MFU of `flanpipe train` on packed rows.

    flanpipe bench train [--size 1b] [--steps 300] [--micro-batch-rows 8]     # on a GPU machine
    flanpipe bench train --size 1b --steps 100 --optimizer adamw              # the same with AdamW
    flanpipe bench train --size tiny --steps 20                               # checks the path on CPU
    flanpipe bench train --adapter lora --model ~/.cache/flanpipe/smollm2-135m-instruct --steps 8 \
        --micro-batch-rows 1                                  # LoRA beside full fine-tuning (CPU)
    flanpipe bench train --architecture t5 --size tiny --steps 20   # a T5 beside a decoder of its width

It writes a synthetic packed mixture (FLAN-like example lengths, best-fit packed into rows of 1280
tokens), runs the real trainer on it (DeepSpeed ZeRO-3, FlexAttention block masks and bf16 on GPU)
in this process, and reports the steady-state tokens/s (the median step after 10 warm-up steps) and
the model FLOPs utilisation: ``tokens/s x FLOPs per token / peak``, with PaLM's FLOPs count
(6 x matmul parameters + attention) and the H100's dense bf16 peak of 989 TFLOP/s; also the step
time, the peak GPU memory and the optimizer state's bytes on rank 0 beside AdamW's
(``scripts/gpu/bench_optim.sh`` runs it for Adafactor and AdamW and prints their ratio).

``--adapter lora`` (:func:`bench_lora`) trains the same model (``--model``: a pretrained checkpoint
folder, or ``--size``) twice on the same rows, each run in its own process: full fine-tuning, then
LoRA adapters (rank 16 on every attention and MLP projection), and prints both runs' tokens/s and
peak memory (GPU: ``max_memory_allocated``; CPU: the process's peak resident set) and their ratios.

``--architecture t5`` (:func:`bench_architectures`) trains a T5 v1.1 / FLAN-T5-shaped encoder-decoder
of ``--size``'s width, depth (on each side) and heads beside the Llama of that size, each in its own
process, on the same examples: packed into decoder rows of 1,280 tokens for the Llama, into paired
rows of 1,024 input and 256 target tokens for the T5 (:func:`synthetic_paired`); and prints both
runs' tokens/s (row tokens: inputs and targets, padding included, as the trainer counts them) and
peak memory, and their ratios.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import resource
import tempfile
from pathlib import Path

import numpy as np

from flanpipe.core.config import ENCODER_DECODER_ARCHITECTURES, TrainSlice, parse_config
from flanpipe.core.io import write_json_atomic
from flanpipe.core.tokens import binpack
from flanpipe.core.tokens.shards import stored_dtype
from flanpipe.stages.pack import ShardWriter, packed_rows

H100_BF16_PEAK = 989e12
SIZES = {  # Llama-style shapes
    "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 4},
    "125m": {"hidden_size": 768, "num_layers": 12, "num_heads": 12},
    "1b": {"hidden_size": 2048, "num_layers": 18, "num_heads": 16},
}
VOCAB = 32_000
LI, LT = 1024, 256


def synthetic_packed(out: Path, rows: int, seed: int = 0) -> Path:
    """A packed decoder-only mixture of ``rows`` rows of random tokens, with FLAN-like segments."""
    rng = np.random.default_rng(seed)
    size_in, size_tg = _example_sizes(rows, rng)
    placed = binpack.pack("best_fit", size_in + size_tg, LI + LT, np.zeros(len(size_in), np.int64), 0)
    bins, seg, off, n_rows = placed.row, placed.segment, placed.offset_a, placed.rows
    keep = np.flatnonzero(bins < rows)
    tokens = np.zeros(min(rows, n_rows), stored_dtype("decoder_only", LI, LT, VOCAB))
    sides = []
    for size in (size_in[keep] - 1, size_tg[keep] - 1):  # random tokens before each EOS
        starts = np.concatenate([[0], np.cumsum(size)[:-1]])
        sides += [rng.integers(4, VOCAB, int(size.sum())), starts, size, size]
    binpack.fill_decoder_only(tokens["tokens"], bins[keep], off[keep], *sides, np.array([1], np.int32),
                              np.array([1], np.int32), False)
    (out / "shards").mkdir(parents=True)
    writer = ShardWriter(out / "shards", tokens.dtype, len(tokens))
    writer.add(packed_rows(tokens, bins[keep], seg[keep], size_in[keep], size_tg[keep]))
    write_json_atomic(out / "manifest.json", {
        "model_kind": "decoder_only", "rows": len(tokens), "shards": writer.close(),
        "tokenizer": {"vocab_size": VOCAB,
                      "special_ids": {"pad_id": 0, "eos_id": 1, "unk_id": 2, "bos_id": 3}}})
    return out


def _example_sizes(rows: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """FLAN-like example lengths, EOS included: inputs log-normal around 150 tokens (at most LI),
    targets around 12 (at most LT); ``8 x rows`` of them."""
    n = rows * 8
    size_in = np.minimum(np.ceil(rng.lognormal(5.0, 1.0, n)), LI - 1).astype(np.int64) + 1
    size_tg = np.minimum(np.ceil(rng.lognormal(2.5, 1.2, n)), LT - 1).astype(np.int64) + 1
    return size_in, size_tg


def synthetic_paired(out: Path, rows: int, seed: int = 0) -> Path:
    """A packed encoder-decoder mixture of ``rows`` paired rows (inputs of LI, targets of LT) of
    random tokens, with the example lengths of :func:`synthetic_packed`."""
    rng = np.random.default_rng(seed)
    size_in, size_tg = _example_sizes(rows, rng)
    placed = binpack.pack("best_fit", size_in, LI, size_tg, LT)
    keep = np.flatnonzero(placed.row < rows)
    bins, seg = placed.row[keep], placed.segment[keep]
    tokens = np.zeros(min(rows, placed.rows), stored_dtype("encoder_decoder", LI, LT, VOCAB))
    for side, offsets, size in (("inputs", placed.offset_a, size_in), ("targets", placed.offset_b, size_tg)):
        body = size[keep] - 1  # random tokens before each EOS
        starts = np.concatenate([[0], np.cumsum(body)[:-1]])
        binpack.fill_side(tokens[side], bins, offsets[keep], rng.integers(4, VOCAB, int(body.sum())), starts,
                          body, body, 1, False)
    (out / "shards").mkdir(parents=True)
    writer = ShardWriter(out / "shards", tokens.dtype, len(tokens))
    writer.add(packed_rows(tokens, bins, seg, size_in[keep], size_tg[keep]))
    write_json_atomic(out / "manifest.json", {
        "model_kind": "encoder_decoder", "rows": len(tokens), "shards": writer.close(),
        "tokenizer": {"vocab_size": VOCAB,
                      "special_ids": {"pad_id": 0, "eos_id": 1, "unk_id": 2, "bos_id": 3}}})
    return out


def bench_train(size: str = "1b", steps: int = 300, micro_batch_rows: int = 8,
                tokens_per_batch: int | None = None, attention: str = "auto",
                optimizer: str = "adafactor", adapter: str = "none", model: str | None = None,
                architecture: str = "llama") -> dict:
    """Run the trainer on synthetic packed rows; returns tokens/s, MFU, memory and state bytes.
    ``model``: a pretrained checkpoint folder instead of a new model of ``size``; ``adapter``:
    ``train.adapter.kind`` (``lora``: rank 16, alpha 32, every attention and MLP projection);
    ``architecture``: the new model's family (``t5``: an encoder-decoder on paired rows)."""
    from flanpipe.stages.train import train

    spec = SIZES[size] | {"architecture": architecture} if model is None else {
        "source": "pretrained", "path": str(Path(model).expanduser())}
    paired = architecture in ENCODER_DECODER_ARCHITECTURES
    tokens_per_batch = tokens_per_batch or micro_batch_rows * (LI + LT)
    with tempfile.TemporaryDirectory(prefix="flanpipe-bench-train-") as tmp_name:
        tmp = Path(tmp_name)
        rows = max(64, tokens_per_batch // (LI + LT) * min(steps, 64))
        packed = (synthetic_paired if paired else synthetic_packed)(tmp / "packed", rows)
        model_kind = "encoder_decoder" if paired else "decoder_only"
        cfg = parse_config({"tokenize": {"model_kind": model_kind}, "train": {
                                      "steps": steps, "tokens_per_batch": tokens_per_batch,
                                      "micro_batch_rows": micro_batch_rows, "model": spec,
                                      "attention": attention, "checkpoint_every": 10**9, "log_every": 1,
                                      "lr": 3e-5, "optimizer": optimizer,
                                      "adapter": {"kind": adapter, "rank": 16, "alpha": 32.0}}})
        run = train("bench", packed, None, tmp / "run", TrainSlice.of(cfg))
        with open(tmp / "run/metrics.csv", newline="") as f:
            speeds = [float(r["tokens_per_s"]) for r in csv.DictReader(f)]
    steady = float(np.median(speeds[10:] if len(speeds) > 10 else speeds))
    from transformers import AutoConfig

    from flanpipe.core.model.causal import flops_per_token

    config = AutoConfig.for_model(**run["model"])
    flops = flops_per_token(config, run["parameters"], LI + LT)
    return {"size": size if model is None else Path(model).name, "architecture": architecture,
            "parameters": run["parameters"],
            "trainable_parameters": run["trainable_parameters"], "adapter": adapter, "steps": steps,
            "device": run["device"],
            "precision": run["precision"], "attention": run["attention"],
            "tokens_per_step": run["batch"]["tokens_per_step"],
            "tokens_per_s": steady, "step_s": run["batch"]["tokens_per_step"] / steady,
            "flops_per_token": flops, "mfu": steady * flops / H100_BF16_PEAK,
            "zero_stage": run["deepspeed"]["zero_optimization"]["stage"], "optimizer": run["optimizer"],
            "optimizer_state_bytes_rank0": run["optimizer_state_bytes_rank0"],
            "adamw_state_bytes_rank0": run["adamw_state_bytes_rank0"],
            "peak_memory_bytes_rank0": run["peak_memory_bytes_rank0"],
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def _one_run(kwargs: dict) -> dict:
    return bench_train(**kwargs)


def _side_by_side(common: dict, peer: tuple[str, dict], ours: tuple[str, dict]) -> dict:
    """:func:`bench_train` with ``common`` and the peer's options, then with ``common`` and ours, each
    in a fresh process (so that each peak resident set is its own); ``peer`` and ``ours`` are (name,
    options). Returns :func:`compare` of the two runs."""
    runs = {}
    for name, options in (peer, ours):
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            runs[name] = pool.apply(_one_run, (common | options,))
    return compare(runs)


def compare(runs: dict[str, dict]) -> dict:
    """Two :func:`bench_train` results by name, the peer's first: both, the memory figure both have
    (the GPU's peak, else the resident set's) and the ratios ours / peer of each figure
    :func:`print_train` shows.

    >>> r = compare({"full": {"parameters": 8, "trainable_parameters": 8, "tokens_per_s": 100.0,
    ...                       "peak_memory_bytes_rank0": None, "peak_rss_bytes": 40,
    ...                       "optimizer_state_bytes_rank0": 16},
    ...              "LoRA": {"parameters": 9, "trainable_parameters": 1, "tokens_per_s": 150.0,
    ...                       "peak_memory_bytes_rank0": None, "peak_rss_bytes": 30,
    ...                       "optimizer_state_bytes_rank0": 2}})
    >>> r["memory"], [r["ratios"][k] for k in ("trainable_parameters", "tokens_per_s", "peak_rss_bytes")]
    ('peak_rss_bytes', [0.125, 1.5, 0.75])
    """
    first, second = runs.values()
    memory = "peak_memory_bytes_rank0" if first["peak_memory_bytes_rank0"] else "peak_rss_bytes"
    figures = ("parameters", "trainable_parameters", "tokens_per_s", memory, "optimizer_state_bytes_rank0")
    return {"runs": runs, "memory": memory, "ratios": {k: second[k] / first[k] for k in figures}}


def bench_lora(size: str = "tiny", steps: int = 20, micro_batch_rows: int = 1, optimizer: str = "adafactor",
               model: str | None = None) -> dict:
    """Full fine-tuning (the peer), then LoRA, on the same model and rows, each in a fresh process;
    returns both runs and the ratios LoRA / full."""
    common = {"size": size, "steps": steps, "micro_batch_rows": micro_batch_rows, "optimizer": optimizer,
              "model": model}
    return _side_by_side(common, ("full", {"adapter": "none"}), ("LoRA", {"adapter": "lora"}))


def bench_architectures(size: str = "tiny", steps: int = 20, micro_batch_rows: int = 1,
                        optimizer: str = "adafactor", architecture: str = "t5") -> dict:
    """The Llama of ``size`` (the peer), then an encoder-decoder of ``architecture`` with its width,
    depth on each side and heads, on the same examples, each in a fresh process; returns both runs and
    the ratios encoder-decoder / decoder."""
    common = {"size": size, "steps": steps, "micro_batch_rows": micro_batch_rows, "optimizer": optimizer}
    return _side_by_side(common, ("decoder", {"architecture": "llama"}),
                         (architecture, {"architecture": architecture}))


def print_train(r: dict) -> None:
    """The result as JSON, then one run's throughput and MFU (:func:`bench_train`), or two runs side by
    side, each figure of the peer's beside ours and their ratio (:func:`bench_lora`,
    :func:`bench_architectures`)."""
    print(json.dumps(r, indent=2))
    if "runs" not in r:
        print(f"train benchmark: {r['parameters'] / 1e6:,.0f}M-parameter {r['architecture']} model, "
              f"{r['tokens_per_step']:,} tokens per step, "
              f"{r['device']} {r['precision']}, {r['attention']} attention, ZeRO-{r['zero_stage']}, "
              f"{r['optimizer']} ({r['optimizer_state_bytes_rank0'] / 2**20:,.1f} MiB of state on rank 0; "
              f"AdamW's: {r['adamw_state_bytes_rank0'] / 2**20:,.1f} MiB): "
              f"{r['tokens_per_s']:,.0f} tokens/s, MFU {100 * r['mfu']:.1f}% of the H100's 989 TFLOP/s bf16 "
              "peak (target 40%; llm-foundry 1B: 42%)")
        return
    (peer_name, peer), (ours_name, ours) = r["runs"].items()
    rows = "" if ours["architecture"] not in ENCODER_DECODER_ARCHITECTURES else (
        f" (decoder rows of {LI + LT}; paired rows of {LI} + {LT})")
    print(f"{ours_name} beside {peer_name} (the peer, same run): {peer['size']}, {peer['device']} "
          f"{peer['precision']}, ZeRO-{peer['zero_stage']}, {peer['optimizer']}, "
          f"{peer['tokens_per_step']:,} row tokens per step{rows}")
    memory = "peak GPU memory" if r["memory"] == "peak_memory_bytes_rank0" else "peak resident memory"
    figures = (("parameters", "parameters", 1e6, 1, "M"),
               ("trainable parameters", "trainable_parameters", 1e6, 2, "M"),
               ("tokens/s", "tokens_per_s", 1, 0, ""),
               (memory, r["memory"], 2**20, 0, " MiB"),
               ("optimizer state on rank 0", "optimizer_state_bytes_rank0", 2**20, 1, " MiB"))
    for label, key, scale, digits, unit in figures:
        both = ", ".join(f"{name} {run[key] / scale:,.{digits}f}{unit}" for name, run in r["runs"].items())
        print(f"  {label}: {both} ({r['ratios'][key]:.3g}x)")


def run(size: str, steps: int, micro_batch_rows: int, optimizer: str, adapter: str, architecture: str,
        model: str | None) -> int:
    """``flanpipe bench train``: one run of the trainer, or (``adapter="lora"``) LoRA beside full
    fine-tuning, or (an ``architecture`` other than llama) that encoder-decoder beside the Llama."""
    if adapter == "lora":
        result = bench_lora(size, steps, micro_batch_rows, optimizer, model=model)
    elif architecture != "llama":
        result = bench_architectures(size, steps, micro_batch_rows, optimizer, architecture)
    else:
        result = bench_train(size, steps, micro_batch_rows, optimizer=optimizer, model=model)
    print_train(result)
    return 0
