#!/usr/bin/env bash
# Run a command on a node of the two-node test cluster (start_multinode.sh): in the node's network
# namespace, in a UTS namespace whose hostname is the node's name, and in a private mount namespace
# where the node's /etc/hosts and /etc/slurm (from /etc/netns/<namespace>/) are bind-mounted over the
# machine's. Everything the command starts (a daemon's job steps) inherits all three.
#
#   bash scripts/slurm/on_node.sh fpn1 squeue
#   bash scripts/slurm/on_node.sh fpn1 snakemake --profile ... all     # submit from the first node
#
# (`ip netns exec` would bind-mount the /etc files too, but it remounts /sys for the namespace, which
# hides the machine's cgroup mounts that slurmd needs.)
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 fpn1|fpn2 command [args...]" >&2; exit 2; }
node=$1; shift
case "$node" in fpn1|fpn2) ;; *) echo "$0: unknown node $node (fpn1 or fpn2)" >&2; exit 2 ;; esac
ns="fpslurm-n${node#fpn}"
[ -e "/run/netns/$ns" ] || { echo "$0: no namespace $ns; run start_multinode.sh first" >&2; exit 2; }
exec nsenter --net="/run/netns/$ns" unshare --uts --mount --propagation private -- sh -c '
  mount --bind "/etc/netns/$1/hosts" /etc/hosts &&
  mount --bind "/etc/netns/$1/slurm" /etc/slurm &&
  hostname "$2" && shift 2 && exec "$@"' on_node "$ns" "$node" "$@"
