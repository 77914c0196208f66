#!/usr/bin/env bash
# The README's test command: set up .venv, then lint and run the whole test suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k registry`), which then runs once, plainly.
# `bash scripts/test.sh --fast` runs the fast tier: the unit tests without torchrun, Snakemake, mkdocs or
# the linters (tests/conftest.py SLOW), a few minutes.
# Without arguments the suite runs as three pytest processes side by side, each in its own --basetemp,
# their outputs printed one after the other: the tests of the shared demo run (`-m demo`, marked in
# tests/conftest.py), the Slurm tests (`-m slurm`: clusters on localhost, most of their time waiting on
# Slurm's status polls; docs/slurm.md gives their time), and the rest. Much of one pytest's work runs
# on one core at a time: side by side they keep both busy (docs/development.md).
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
# The local runs (the demo run's tests and the rest) tell Slurm's commands that there is no cluster:
# every `snakemake` start loads the Slurm executor plugin, which asks `scontrol show config`, and
# where Slurm is installed but no controller answers (once the Slurm tests have stopped theirs)
# that waits its 10 s timeout, at each of the suite's many Snakemake runs. With this config it
# fails at once (port 1, MessageTimeout 1). The Slurm tests keep the machine's /etc/slurm.
no_cluster="$scratch/no-cluster.conf"
printf '%s\n' "# scripts/test.sh: no Slurm cluster for the local runs" "ClusterName=none" \
  "SlurmctldHost=localhost" "SlurmctldPort=1" "MessageTimeout=1" > "$no_cluster"
python -m pytest -m slurm --basetemp "$scratch/slurm" --durations=10 -p no:cacheprovider \
  > "$scratch/slurm.log" 2>&1 &
slurm=$!
# demo_run is a fixture of tests/e2e/conftest.py: only tests/e2e can use it
SLURM_CONF="$no_cluster" python -m pytest tests/e2e -m "demo and not slurm" --basetemp "$scratch/demo" \
  --durations=15 -p no:cacheprovider > "$scratch/demo.log" 2>&1 &
demo=$!
rc=0
SLURM_CONF="$no_cluster" python -m pytest -m "not demo and not slurm" --basetemp "$scratch/rest" \
  --durations=30 || rc=$?
demo_rc=0
wait "$demo" || demo_rc=$?
slurm_rc=0
wait "$slurm" || slurm_rc=$?
echo
echo "=== the tests of the shared demo run (pytest tests/e2e -m demo, run beside the rest) ==="
cat "$scratch/demo.log"
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
[ "$demo_rc" -ne 0 ] && exit "$demo_rc"
exit "$slurm_rc"
