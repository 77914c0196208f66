#!/usr/bin/env bash
# Regenerate requirements/cpu.lock: every package of `.[dev]` pinned, with hashes, for Python 3.11
# on Linux x86_64, torch held at the CPU build 2.13.0+cpu (no nvidia-* packages). scripts/setup.sh
# installs from it. Pins already in the lock are kept unless pyproject.toml needs another version:
#   bash scripts/lock.sh                          after editing pyproject.toml's dependencies
#   bash scripts/lock.sh --upgrade                everything to its newest allowed release
#   bash scripts/lock.sh --upgrade-package NAME   one package (repeatable)
# then `bash scripts/setup.sh` (it reinstalls when the lock changed) and commit the lock.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=/opt/wheels  # where pip finds the CPU torch wheel on these machines (pip.conf's find-links)
UV="$(command -v .venv/bin/uv || command -v uv || true)"
if [ -z "$UV" ]; then
  echo "[lock] uv not found: run scripts/setup.sh first (uv is a dev dependency)" >&2
  exit 1
fi
links=()
[ -d "$WHEELS" ] && links=(--find-links "$WHEELS")
mkdir -p requirements
echo "torch==2.13.0+cpu" > requirements/torch-cpu.txt
"$UV" pip compile pyproject.toml --extra dev --python-version 3.11 \
  --python-platform x86_64-manylinux_2_28 "${links[@]}" -c requirements/torch-cpu.txt \
  --generate-hashes --custom-compile-command "bash scripts/lock.sh" -o requirements/cpu.lock "$@"
if grep -qiE '^(nvidia-|triton==)' requirements/cpu.lock; then
  echo "[lock] requirements/cpu.lock pulls CUDA packages: the CPU torch wheel was not used" >&2
  exit 1
fi
echo "[lock] requirements/cpu.lock: $(grep -c '^[a-z0-9]' requirements/cpu.lock) packages" >&2
