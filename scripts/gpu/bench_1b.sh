#!/usr/bin/env bash
# GPU check of the model path (issue 14), on one GPU, about 10 minutes on an H100/H200:
#  1. train a ~1B Llama-config model from scratch for 100 steps on packed rows of 1,280 tokens
#     (FlexAttention block masks, bf16, DeepSpeed ZeRO-3, 1 rank); prints tokens/s and MFU against
#     the H100/H200 dense bf16 peak (989 TFLOP/s);
#  2. score 500 multiple-choice prompts (4 options each) with a ~1B Llama on the GPU
#     (flanpipe.core.eval.scoring.score_options; needs the `scoring` branch merged: HF models there).
# Usage: bash scripts/gpu/bench_1b.sh [steps] > bench_1b.log 2>&1
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
STEPS=${1:-100}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -c "import torch, transformers, deepspeed; print('torch', torch.__version__, 'transformers', transformers.__version__, 'deepspeed', deepspeed.__version__)"

echo "== 1. train: 1B Llama, ${STEPS} steps, flex + bf16 + ZeRO-3, 1 GPU"
python -m flanpipe.cli bench train --size 1b --steps "$STEPS" --micro-batch-rows 8

echo "== 2. score 500 multiple-choice prompts with a 1B Llama (bf16, GPU)"
python - <<'PY'
import time

import numpy as np
import torch

from flanpipe.core.model.checkpoint import build_model
from flanpipe.core.config import ModelSpec
from flanpipe.core.eval.scoring import score_options

torch.manual_seed(0)
spec = ModelSpec(hidden_size=2048, num_layers=18, num_heads=16)
model = build_model(spec, 32_000, 2048, dtype=torch.bfloat16, attention="sdpa").to("cuda").eval()
rng = np.random.default_rng(0)
prompts = [rng.integers(4, 32_000, int(n)).tolist() for n in rng.integers(64, 512, 500)]
options = [[rng.integers(4, 32_000, int(n)).tolist() for n in rng.integers(1, 8, 4)] for _ in prompts]
score_options(model, prompts[:8], options[:8])  # warm-up
torch.cuda.synchronize()
start = time.perf_counter()
with torch.no_grad():
    scores = score_options(model, prompts, options)
torch.cuda.synchronize()
seconds = time.perf_counter() - start
assert len(scores) == 500 and all(np.isfinite(s).all() for s in scores)
print(f"scored 500 prompts x 4 options in {seconds:.2f} s ({500 / seconds:.0f} prompts/s), "
      f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
PY
