"""Train LoRA adapters on a pretrained tiny Llama under ZeRO-3 (run by ``test_lora.py`` under
torchrun): 3 steps of 4 packed rows, Adafactor (a checkpoint after step 2), into ``OUT``; the
checkpoint folder ``PRETRAINED`` is loaded partitioned, frozen, and only the adapters train.

    python -m torch.distributed.run --standalone --nproc-per-node 2 -m tests.unit.lora_train \\
        PACKED TOKENIZER OUT PRETRAINED
"""

import sys
from pathlib import Path

from flanpipe.core.config import TrainSlice, parse_config
from flanpipe.stages.train import train

STEPS = 3
ROWS_PER_STEP = 4
LI, LT = 48, 16
MODEL = {"architecture": "llama", "hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2}
ADAPTER = {"kind": "lora", "rank": 4, "alpha": 8.0, "target_modules": "auto"}


def config(pretrained: str | None = None, steps: int = STEPS):
    """The run's config: the packer's budgets, the checkpoint at ``pretrained``, LoRA, a step of 4 rows."""
    model = MODEL if pretrained is None else {"source": "pretrained", "path": pretrained}
    return parse_config({
        "seed": 5, "tokenize": {"model_kind": "decoder_only", "format": "eos", "max_input_tokens": LI,
                                "max_target_tokens": LT, "pack_window": 64, "rows_per_shard": 7},
        "train": {"model": model, "steps": steps,
                  "precision": "fp32", "tokens_per_batch": ROWS_PER_STEP * (LI + LT),
                  "micro_batch_rows": 1, "zero_stage": 3, "optimizer": "adafactor", "lr": 1e-2,
                  "checkpoint_every": 2, "log_every": 1, "grad_clip": 1e9, "adapter": ADAPTER}})


def main(packed: str, tokenizer: str, out: str, pretrained: str) -> None:
    train("m", packed, tokenizer, Path(out), TrainSlice.of(config(pretrained)))


if __name__ == "__main__":
    main(*sys.argv[1:5])
