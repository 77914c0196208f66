"""Where a CPU's time goes when it fine-tunes and scores a real checkpoint: float32 against bfloat16.

    flanpipe bench precision --model DIR [--rows 80] [--threads 2]

On one checkpoint (any local Hugging Face causal LM folder, e.g. SmolLM2 from ``flanpipe smollm2``)
it times, in the same run and with the same inputs, each in float32 (the peer: what a CPU run used)
and in bfloat16:

- **training**: forward and backward of :class:`flanpipe.core.model.causal.PackedCausalLM` on packed rows
  shaped like the held-out experiment's (5 rows of 416 tokens, 4 examples each, 8 target tokens per
  example), in tokens/s; and the share of the forward's time spent in ``torch.nn.functional.linear``
  (the projections: on a 135M model, nearly all of it);
- **scoring**: :func:`flanpipe.core.eval.scoring.score_options` on ``--rows`` prompts of 70 tokens with
  two options of 12 tokens (the prompt encoded once, the options on its cache), in ms per prompt,
  with the share of rows whose choice differs between the two precisions.

bf16 matrix products run on the AMX or AVX-512 BF16 units of recent Xeons; elsewhere they may be
slower than float32. The ratio printed is float32 time over bf16 time, and the last line says what
``precision: auto`` chooses on this machine, and why.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from flanpipe.core.model.precision import resolve

DTYPES = ("fp32", "bf16")
LINEAR_OPS = ("aten::addmm", "aten::mm", "aten::linear", "aten::matmul")


def _train_rows(vocab: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    rows, width, per = 5, 416, 104
    tokens = torch.randint(100, vocab - 100, (rows, width), generator=g)
    segments = (torch.arange(width) // per + 1).repeat(rows, 1)
    positions = (torch.arange(width) % per).repeat(rows, 1)
    loss_mask = ((torch.arange(width) % per) >= per - 8).long().repeat(rows, 1)
    return tokens, positions, segments, loss_mask


def _linear_share(model, inputs) -> float:
    """The share of one forward pass's time inside ``F.linear`` (the profiler's self CPU time)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof, torch.no_grad():
        model(*inputs)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    linear = sum(e.self_cpu_time_total for e in events if e.key in LINEAR_OPS)
    return linear / total if total else 0.0


def bench_precision(model_dir: str | Path, prompts: int = 80, threads: int = 2, repeats: int = 3) -> dict:
    import torch

    from flanpipe.core.eval.scoring import score_options
    from flanpipe.core.model.causal import PackedCausalLM
    from flanpipe.core.model.checkpoint import load_checkpoint

    torch.set_num_threads(threads)
    out: dict = {"model": str(model_dir), "threads": threads, "prompts": prompts}
    g = torch.Generator().manual_seed(1)
    choices = {}
    for name in DTYPES:
        dtype = torch.float32 if name == "fp32" else torch.bfloat16
        model, tok = load_checkpoint(Path(model_dir), dtype=dtype, device="cpu")
        vocab = tok.vocab_size
        if name == "fp32":
            score_prompts = [torch.randint(100, vocab - 100, (70,), generator=g).tolist()
                             for _ in range(prompts)]
            options = [[torch.randint(100, vocab - 100, (12,), generator=g).tolist() for _ in range(2)]
                       for _ in range(prompts)]
        wrapper = PackedCausalLM(model).train()
        rows = _train_rows(vocab)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for r in range(rows[0].shape[0]):
                wrapper(*(x[r:r + 1] for x in rows)).sum().backward()
            times.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
        train_s = float(np.median(times))
        share = _linear_share(wrapper.eval(), [x[:1] for x in rows])
        model.eval()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            scores = score_options(model, score_prompts, options, max_batch_tokens=16_384)
            times.append(time.perf_counter() - t0)
        choices[name] = np.array([int(np.argmax(s)) for s in scores])
        out[name] = {"train_tokens_per_s": rows[0].numel() / train_s, "linear_share_forward": share,
                     "score_ms_per_prompt": 1000 * float(np.median(times)) / prompts}
        del model, wrapper
    out["train_speedup"] = out["bf16"]["train_tokens_per_s"] / out["fp32"]["train_tokens_per_s"]
    out["score_speedup"] = out["fp32"]["score_ms_per_prompt"] / out["bf16"]["score_ms_per_prompt"]
    out["choices_differ"] = float((choices["fp32"] != choices["bf16"]).mean())
    out["auto"] = resolve("auto", "cpu").record()
    return out


def print_precision(r: dict) -> None:
    print(f"# {r['model']}: {r['threads']} threads; peer: float32")
    print("| precision | train tokens/s | linear share of a forward | scoring ms/prompt |")
    print("|---|---:|---:|---:|")
    for name in DTYPES:
        x = r[name]
        print(f"| {name} | {x['train_tokens_per_s']:.0f} | {100 * x['linear_share_forward']:.0f}% | "
              f"{x['score_ms_per_prompt']:.0f} |")
    print(f"\nbf16 / fp32: training {r['train_speedup']:.2f}x, scoring {r['score_speedup']:.2f}x; "
          f"{100 * r['choices_differ']:.1f}% of {r['prompts']} rows choose another option")
    print(f"precision: auto chooses {r['auto']['precision']} on this machine "
          f"({r['auto']['precision_reason']})")


def run(model: str, rows: int, threads: int) -> int:
    """``flanpipe bench precision``: ``rows`` prompts."""
    print_precision(bench_precision(model, rows, threads))
    return 0
