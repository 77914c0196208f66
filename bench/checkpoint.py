"""Peak memory per rank while a checkpoint loads under DeepSpeed ZeRO-3
(:mod:`flanpipe.core.model.checkpoint`).

    python -m bench.checkpoint make --out /tmp/llama-1b              # random ~1B Llama, shards
    python -m torch.distributed.run --standalone --nproc-per-node 2 \\
        -m bench.checkpoint load --folder /tmp/llama-1b            # one line per rank

(from the checkout's root, where ``bench`` imports).

``load`` runs on every rank: it records the process's peak resident memory (``ru_maxrss``) after
the imports and the process group (the baseline), loads the folder with
:func:`~flanpipe.core.model.checkpoint.load_model` partitioned (``zero3=``), and records the peak again; rank
0 prints both for every rank as JSON. With ``--export DIR`` the partitioned model is also saved
back (gathered to rank 0, :func:`~flanpipe.core.model.checkpoint.save_checkpoint`), which the tests compare
tensor for tensor with the folder it came from.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import torch

SIZES = {  # Llama shapes (vocabulary 32,000)
    "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 4},
    "1b": {"hidden_size": 2048, "num_layers": 18, "num_heads": 16},
}
VOCAB = 32_000


def zero3_config(bf16: bool = False) -> dict:
    """The smallest DeepSpeed config that makes ``zero.Init`` partition (stage 3)."""
    return {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3},
            "bf16": {"enabled": bf16}}


def make(out: Path, size: str, max_shard_bytes: int, seed: int = 0) -> dict:
    """A random-init Llama of ``size`` saved as a safetensors-sharded checkpoint folder."""
    from flanpipe.core.config import ModelSpec
    from flanpipe.core.model.checkpoint import build_model, parameter_count, save_checkpoint

    torch.manual_seed(seed)
    model = build_model(ModelSpec(**SIZES[size]), VOCAB, 2048)
    save_checkpoint(model, None, out, max_shard_bytes=max_shard_bytes)
    return {"out": str(out), "parameters": parameter_count(model),
            "files": sorted(p.name for p in out.glob("*.safetensors"))}


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # (KiB on Linux)


def load(folder: Path, export: Path | None, dtype: torch.dtype) -> list[dict] | None:
    """Load ``folder`` partitioned on every rank; rank 0 returns each rank's figures."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from flanpipe.core.train.distributed import disable_cpu_shm_op

    disable_cpu_shm_op()
    import deepspeed
    from transformers import AutoConfig, AutoModelForCausalLM

    from flanpipe.core.model.checkpoint import load_model, parameter_count, save_checkpoint

    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    AutoModelForCausalLM._model_mapping[type(AutoConfig.from_pretrained(folder))]  # (imports, not memory)
    baseline = _peak_mib()
    start = time.perf_counter()
    model = load_model(folder, dtype=dtype, zero3=zero3_config(dtype == torch.bfloat16))
    seconds = time.perf_counter() - start
    peak = _peak_mib()
    held = sum(p.ds_tensor.numel() * p.ds_tensor.element_size() for p in model.parameters())
    row = {"rank": rank, "world_size": world, "parameters": parameter_count(model),
           "partition_bytes": held, "baseline_peak_rss_mib": round(baseline, 1),
           "peak_rss_mib": round(peak, 1), "load_peak_over_baseline_mib": round(peak - baseline, 1),
           "load_s": round(seconds, 2)}
    rows = [None] * world
    torch.distributed.all_gather_object(rows, row)
    if export is not None:
        save_checkpoint(model, None, export, dtype=dtype)
    torch.distributed.barrier()
    return rows if rank == 0 else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("make")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--size", choices=sorted(SIZES), default="1b")
    p.add_argument("--max-shard-mib", type=int, default=1024)
    p = sub.add_parser("load")
    p.add_argument("--folder", type=Path, required=True)
    p.add_argument("--export", type=Path)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = parser.parse_args(argv)
    if args.what == "make":
        print(json.dumps(make(args.out, args.size, args.max_shard_mib * 2**20)))
        return
    rows = load(args.folder, args.export, getattr(torch, args.dtype))
    if rows is not None:
        for row in rows:
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
