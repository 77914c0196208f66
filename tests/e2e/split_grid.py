"""Train the same rows under several splits in one launch (run by ``test_train.py`` under torchrun):
every (ZeRO stage, optimizer, micro-batch rows) of the grid trains a few steps of 4 packed rows
into ``<out>/w<ranks>-z<stage>-<optimizer>-mb<rows>/``, one after another in the same process group.

    python -m torch.distributed.run --standalone --nproc-per-node 2 -m tests.e2e.split_grid \\
        PACKED TOKENIZER OUT
"""

import sys
from pathlib import Path

import yaml

from flanpipe.core.config import TrainSlice, parse_config
from flanpipe.core.tokens.shards import PackedShards
from flanpipe.core.train.distributed import dist_env
from flanpipe.stages.train import train

REPO = Path(__file__).resolve().parents[2]
STAGES = (0, 2, 3)
OPTIMIZERS = ("adafactor", "adamw")
STEPS = 3
ROWS_PER_STEP = 4


def grid(world: int) -> list[tuple[int, str, int]]:
    """1 rank: 4 micro-batches of 1 row; 2 ranks: 2 micro-batches of 1 row, or 1 of 2 rows."""
    micro = (1,) if world == 1 else (1, 2)
    return [(s, o, m) for s in STAGES for o in OPTIMIZERS for m in micro]


def main(packed: str, tokenizer: str, out: str) -> None:
    world = dist_env().world_size
    row_tokens = PackedShards(packed).dtype["tokens"].shape[0]
    base = yaml.safe_load((REPO / "config/config.yaml").read_text())
    for stage, optimizer, micro in grid(world):
        train_cfg = base["train"] | {
            "steps": STEPS, "tokens_per_batch": ROWS_PER_STEP * row_tokens, "micro_batch_rows": micro,
            "zero_stage": stage, "optimizer": optimizer, "lr": 1e-3, "checkpoint_every": 10**6,
            "log_every": 1,
            "grad_clip": 1e9}  # a clip that never clips: DeepSpeed then logs the gradient norm at every stage
        cfg = parse_config(base | {"train": train_cfg})
        train("nli", packed, tokenizer, Path(out) / f"w{world}-z{stage}-{optimizer}-mb{micro}",
              TrainSlice.of(cfg))


if __name__ == "__main__":
    main(*sys.argv[1:4])
