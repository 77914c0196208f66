"""Train a tiny T5 on packed encoder_decoder rows (run by ``test_train_seq2seq.py`` under torchrun):
3 steps of 4 rows each, ZeRO-3, Adafactor, into ``OUT``.

    python -m torch.distributed.run --standalone --nproc-per-node 2 -m tests.unit.seq2seq_train \\
        PACKED TOKENIZER OUT [PRETRAINED]

With PRETRAINED (a T5 folder), the model is that checkpoint, loaded partitioned under ZeRO-3.
"""

import sys
from pathlib import Path

from flanpipe.core.config import TrainSlice, parse_config
from flanpipe.stages.train import train

STEPS = 3
ROWS_PER_STEP = 4
LI, LT = 64, 16
MODEL = {"architecture": "t5", "hidden_size": 32, "num_layers": 2, "num_heads": 4}


def config(zero_stage: int = 3, steps: int = STEPS, pretrained: str | None = None):
    """The run's config: the packer's budgets, the tiny T5 (or the checkpoint at ``pretrained``)
    and the step of 4 rows."""
    model = MODEL if pretrained is None else {"source": "pretrained", "path": pretrained}
    return parse_config({
        "seed": 11, "tokenize": {"model_kind": "encoder_decoder", "max_input_tokens": LI,
                                 "max_target_tokens": LT, "pack_window": 64, "rows_per_shard": 7},
        "train": {"model": model, "steps": steps,
                  "precision": "fp32", "tokens_per_batch": ROWS_PER_STEP * (LI + LT),
                  "micro_batch_rows": 1, "zero_stage": zero_stage, "optimizer": "adafactor", "lr": 1e-3,
                  "checkpoint_every": 10**6, "log_every": 1, "grad_clip": 1e9}})


def main(packed: str, tokenizer: str, out: str, pretrained: str | None = None) -> None:
    train("m", packed, tokenizer, Path(out), TrainSlice.of(config(pretrained=pretrained)))


if __name__ == "__main__":
    main(*sys.argv[1:5])
