#!/usr/bin/env bash
# The README's test command: set up .venv, then lint and run the whole test suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k registry`), which then runs once, plainly.
# `bash scripts/test.sh --fast` runs the fast tier: the unit tests without torchrun, Snakemake, mkdocs or
# the linters (tests/conftest.py SLOW), a few minutes.
# Without arguments the Slurm tests (`-m slurm`: clusters on localhost, most of their time waiting on
# Slurm's status polls; docs/slurm.md gives their time) run in a second pytest beside the rest; their
# output follows.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
if [ "${1:-}" = "--fast" ]; then
  # the inner loop: unit tests without torchrun, Snakemake, mkdocs or the linters (tests/conftest.py SLOW)
  shift
  exec python -m pytest -m "not slow and not e2e and not slurm" --durations=10 "$@"
fi
if [ $# -gt 0 ]; then
  exec python -m pytest --durations=30 "$@"
fi
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
python -m pytest -m slurm --basetemp "$scratch/slurm" --durations=10 -p no:cacheprovider \
  > "$scratch/slurm.log" 2>&1 &
slurm=$!
rc=0
python -m pytest -m "not slurm" --basetemp "$scratch/rest" --durations=30 || rc=$?
slurm_rc=0
wait "$slurm" || slurm_rc=$?
echo
echo "=== the Slurm tests (pytest -m slurm, run beside the rest) ==="
cat "$scratch/slurm.log"
# pytest exits 5 when it collects nothing (a checkout without the Slurm tests): no failure on a
# developer's machine, but in CI (CI set, and not empty, 0 or false: as tests/slurm_cluster.py
# reads it), which is meant to run them, a Slurm suite that did not run fails the run.
ci="$(printf '%s' "${CI:-}" | tr '[:upper:]' '[:lower:]')"
if [ "$slurm_rc" -eq 5 ] && { [ -z "$ci" ] || [ "$ci" = 0 ] || [ "$ci" = false ]; }; then
  slurm_rc=0
fi
[ "$rc" -ne 0 ] && exit "$rc"
exit "$slurm_rc"
