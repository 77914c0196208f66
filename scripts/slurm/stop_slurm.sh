#!/usr/bin/env bash
# Stop the single-node Slurm cluster started by start_slurm.sh (by PID files only): cancels its
# jobs, then stops slurmd, slurmctld and munged.
# Usage: bash scripts/slurm/stop_slurm.sh [--purge]   (--purge also removes state/spool/log dirs)
set -uo pipefail
BASE="${SLURM_TEST_DIR:-/tmp/flanpipe-slurm}"
log() { echo "[stop_slurm] $*" >&2; }
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"

# cancel leftover jobs first (ignore errors if ctld already down)
if [ -s "$BASE/run/slurmctld.pid" ] && kill -0 "$(cat "$BASE/run/slurmctld.pid")" 2>/dev/null; then
  scancel --user="$(id -un)" --quiet 2>/dev/null || true
fi


stop_pidfile slurmd    "$BASE/run/slurmd.pid"
stop_pidfile slurmctld "$BASE/run/slurmctld.pid"
stop_pidfile munged    /run/munge/munged.pid

if [ "${1:-}" = "--purge" ]; then
  rm -rf "$BASE/state" "$BASE/spool" "$BASE/log" "$BASE/run" "$BASE/etc" "$BASE/dev"
  # remove our symlinks in /etc/slurm (only if they point into $BASE)
  for f in /etc/slurm/slurm.conf /etc/slurm/gres.conf; do
    if [ -L "$f" ] && [[ "$(readlink "$f")" == "$BASE"/* ]]; then rm -f "$f"; fi
  done
fi
exit 0
