#!/usr/bin/env bash
# Stop the two-node cluster of start_multinode.sh: cancel its jobs, stop slurmd (both nodes) and
# slurmctld by their PID files, remove the two network namespaces (and with them the veth pair and
# every address of the private /24) and their /etc/netns/ files, and stop munged if start_multinode.sh
# started it. Safe to run when nothing is running.
# Usage: bash scripts/slurm/stop_multinode.sh [--purge]   (--purge also removes config, state, logs)
set -uo pipefail
BASE="${SLURM_MULTINODE_DIR:-/tmp/flanpipe-slurm-multinode}"
log() { echo "[stop_multinode] $*" >&2; }
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"

if [ -s "$BASE/run/slurmctld.pid" ] && kill -0 "$(cat "$BASE/run/slurmctld.pid")" 2>/dev/null; then
  bash "$(dirname "$0")/on_node.sh" fpn1 scancel --user="$(id -un)" --quiet 2>/dev/null || true
fi


for pf in "$BASE"/run/slurmd-*.pid; do stop_pidfile "$(basename "$pf" .pid)" "$pf" & done
stop_pidfile slurmctld "$BASE/run/slurmctld.pid" &
wait
if [ -e "$BASE/run/munged.ours" ]; then
  stop_pidfile munged /run/munge/munged.pid
  rm -f "$BASE/run/munged.ours"
fi
for ns in fpslurm-n1 fpslurm-n2; do
  if ip netns list | grep -qw "$ns"; then log "removing namespace $ns"; ip netns del "$ns"; fi
  rm -rf "/etc/netns/$ns"
done
rmdir /etc/netns 2>/dev/null || true

if [ "${1:-}" = "--purge" ]; then
  rm -rf "$BASE/state" "$BASE/spool" "$BASE/log" "$BASE/run" "$BASE/etc" "$BASE/dev"
fi
exit 0
