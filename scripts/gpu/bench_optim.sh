#!/usr/bin/env bash
# Adafactor against AdamW on one GPU: 100 steps of the 1B model, ZeRO-3, bf16, FlexAttention
# (the defaults of `flanpipe bench train` on a GPU). Prints tokens/s, MFU, step time, peak memory and
# the optimizer state's bytes of each, then Adafactor's step time over AdamW's (goal: <= 1.1) and
# the MFU (goal: >= 40%). Run from the repository root with the venv active:
#     bash scripts/gpu/bench_optim.sh [steps] [micro_batch_rows]
set -euo pipefail
steps=${1:-100}
rows=${2:-8}
size=${SIZE:-1b}  # SIZE=tiny checks the script on CPU
out=${OUT:-results/bench}
mkdir -p "$out"
for optimizer in adafactor adamw; do
    flanpipe bench train --size "$size" --steps "$steps" --micro-batch-rows "$rows" --optimizer "$optimizer" \
        | tee "$out/train-$size-$optimizer.txt"
done
python - "$out" "$size" <<'PY'
import json, pathlib, sys

out = pathlib.Path(sys.argv[1])
runs = {}
for name in ("adafactor", "adamw"):
    lines = (out / f"train-{sys.argv[2]}-{name}.txt").read_text().splitlines()
    start = len(lines) - 1 - lines[::-1].index("{")  # print_train's JSON: from a line "{" to a line "}"
    runs[name] = json.loads("\n".join(lines[start:lines.index("}", start) + 1]))
ratio = runs["adafactor"]["step_s"] / runs["adamw"]["step_s"]
for name, r in runs.items():
    print(f"{name}: {r['tokens_per_s']:,.0f} tokens/s, MFU {100 * r['mfu']:.1f}%, step {r['step_s']:.3f} s, "
          f"peak {(r['peak_memory_bytes_rank0'] or 0) / 2**30:.1f} GiB, "
          f"state {r['optimizer_state_bytes_rank0'] / 2**20:,.1f} MiB")
print(f"Adafactor step / AdamW step: {ratio:.3f} (goal <= 1.1)")
PY
