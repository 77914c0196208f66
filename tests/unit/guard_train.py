"""Train a tiny Llama on packed decoder-only rows (run by ``test_train_guards.py`` under torchrun):
one example a row, 4 rows a step, ZeRO-3, into ``OUT``; ``OVERRIDES`` (JSON) sets ``train`` keys.

    python -m torch.distributed.run --standalone --nproc-per-node 1 -m tests.unit.guard_train \\
        PACKED TOKENIZER OUT '{"steps": 5}'
"""

import json
import sys
from pathlib import Path

from flanpipe.core.config import TrainSlice, parse_config
from flanpipe.core.logs import setup_logging
from flanpipe.stages.train import train

ROWS_PER_STEP = 4
LI, LT = 24, 8
MODEL = {"architecture": "llama", "hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64}


def config(**train_keys):
    """The packer's budgets (one example a row) and the run: 4 rows a step, the tiny Llama."""
    return parse_config({
        "seed": 3, "tokenize": {"max_input_tokens": LI, "max_target_tokens": LT, "packer": "none",
                                "format": "eos", "pack_window": 64, "rows_per_shard": 7},
        "train": {"model": MODEL, "steps": 4,
                  "precision": "fp32", "tokens_per_batch": ROWS_PER_STEP * (LI + LT),
                  "micro_batch_rows": 2, "optimizer": "adafactor", "lr": 1e-2, "checkpoint_every": 10**6,
                  "log_every": 1, **train_keys}})


def main(packed: str, tokenizer: str, out: str, overrides: str = "{}") -> None:
    setup_logging()  # to stderr, as the CLI does: the test reads the step a run resumed from
    train("m", packed, tokenizer, Path(out), TrainSlice.of(config(**json.loads(overrides))))


if __name__ == "__main__":
    main(*sys.argv[1:5])
