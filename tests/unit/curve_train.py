"""Train a tiny Llama with a held-out curve (run by ``test_train_curve.py`` under torchrun): sst2's
rendered train rows, ZeRO-3, RTE held out (``nli``) and sst2 the validation set, into ``OUT``;
``OVERRIDES`` (JSON) sets ``train`` keys.

    python -m torch.distributed.run --standalone --nproc-per-node 2 -m tests.unit.curve_train \\
        PACKED TOKENIZER RAW OUT '{"steps": 6}'
"""

import json
import sys
from pathlib import Path

from flanpipe.core.config import TrainSlice, parse_config
from flanpipe.stages.train import train
from flanpipe.workflow.planner import Plan

LI, LT = 96, 8
MODEL = {"architecture": "llama", "hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64}
EVALUATE = {"max_templates": 2, "cross_formats": False, "normalization": "per_token", "bootstrap": 0,
            "max_batch_tokens": 2048, "precision": "fp32"}
"""Scored per token: the tiny model's choice then turns with its training, so the curve moves. fp32 in
training and evaluation alike, whatever the CPU's bf16 units (the loss is checked in float64)."""


def config(**train_keys):
    """Two datasets, RTE held out and sst2 trained on; the run: 4 rows a step, the tiny Llama, a
    checkpoint and a curve point (7 rows, 2 templates) every 2 steps, best_val on sst2."""
    return parse_config({
        "seed": 5, "datasets": ["rte", "sst2"], "heldout_clusters": ["nli"], "all_model": False,
        "tokenize": {"max_input_tokens": LI, "max_target_tokens": LT, "packer": "none", "format": "eos",
                     "pack_window": 64, "rows_per_shard": 50},
        "evaluate": EVALUATE,
        "train": {"model": MODEL, "steps": 10, "tokens_per_batch": 4 * (LI + LT), "micro_batch_rows": 1,
                  "precision": "fp32", "optimizer": "adafactor", "lr": 3e-2, "checkpoint_every": 2,
                  "keep_checkpoints": 5,
                  "log_every": 1, "eval_every": 2, "eval_rows": 7, "select": "best_val",
                  "val_datasets": ["sst2"], **train_keys}})


def main(packed: str, tokenizer: str, raw: str, out: str, overrides: str = "{}") -> None:
    cfg = TrainSlice.model_validate(Plan(config(**json.loads(overrides))).slice("train", mixture="nli"))
    train("nli", packed, tokenizer, Path(out), cfg, raw_dir=raw)


if __name__ == "__main__":
    main(*sys.argv[1:6])
