#!/usr/bin/env bash
# Bring up a two-node Slurm cluster on this one machine, for flanpipe's multi-node CI test
# (tests/e2e/test_slurm_multinode.py): two network namespaces, each a "node" with its own address,
# hostname, /etc/hosts and /etc/slurm, joined by a veth pair on a private /24 that exists only inside
# those namespaces (nothing is added to the machine's own interfaces or routes, so no traffic leaves
# the machine; of /etc only /etc/netns/fpslurm-n*/ is written, and stop_multinode.sh removes it):
#
#   namespace fpslurm-n1: hostname fpn1, 10.251.17.1/24   slurmctld + slurmd -N fpn1
#   namespace fpslurm-n2: hostname fpn2, 10.251.17.2/24   slurmd -N fpn2
#
# Each daemon runs under on_node.sh: in its node's network namespace, with the node's hostname (a job
# step's gloo binds to the address the hostname resolves to) and /etc/netns/<ns>/{hosts,slurm}
# bind-mounted over /etc/hosts and /etc/slurm, for it and everything it starts.
# munged is the machine's (its socket is a file, reachable from every namespace); started here if it
# is not running, and then stopped by stop_multinode.sh. Both nodes declare all of the machine's CPUs.
# Commands for the cluster (sbatch, squeue, snakemake --profile ...) run on the first node:
#   bash scripts/slurm/on_node.sh fpn1 squeue
#
# Why not Slurm's multiple-slurmd mode: Debian's build has it, but every node would have the address
# 127.0.0.1, so a rank that used the wrong rendezvous host (its own localhost) would still work; in
# namespaces only the first node's address does.
#
# Idempotent; a second run leaves running daemons alone. Stop it with stop_multinode.sh. Needs root.
# Debian 12 packages: slurm-wlm 22.05.8, munge (apt-get installs them if missing). Exit status 3:
# the packages are missing and cannot be installed; 4: network namespaces cannot be made here.
#
#   SLURM_MULTINODE_DIR=/tmp/flanpipe-slurm-multinode   config, state, spool and daemon logs
#   SLURM_FAKE_GPUS=N                                   N fake GPUs (GRES) per node
set -euo pipefail

BASE="${SLURM_MULTINODE_DIR:-/tmp/flanpipe-slurm-multinode}"
CONF_DIR="$BASE/etc"
NET=10.251.17          # the /24, only inside the namespaces below
NODES=(fpn1 fpn2)      # node i is namespace fpslurm-n<i>, address $NET.<i>
CPUS="$(nproc)"
MEM_MB=$(( $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) * 40 / 100 ))  # per node: 2 share it
FAKE_GPUS="${SLURM_FAKE_GPUS:-0}"
log() { echo "[start_multinode] $*" >&2; }
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"
ns() { echo "fpslurm-n$1"; }

# ---------- 1. packages ----------
install_slurm
mkdir -p "$CONF_DIR" "$BASE/state" "$BASE/spool" "$BASE/log" "$BASE/run" /etc/slurm

# ---------- 2. the two nodes' namespaces and the link between them ----------
for i in 1 2; do
  if ! ip netns list | grep -qw "$(ns $i)"; then
    ip netns add "$(ns $i)" || { log "cannot make network namespaces here (ip netns add failed)"; exit 4; }
  fi
  ip -n "$(ns $i)" link set lo up
done
if ! ip -n "$(ns 1)" link show fpveth1 >/dev/null 2>&1; then
  log "linking the nodes: $NET.1 <-> $NET.2 (veth)"
  ip -n "$(ns 2)" link del fpveth2 2>/dev/null || true
  ip link add fpveth1 netns "$(ns 1)" type veth peer name fpveth2 netns "$(ns 2)" \
    || { log "cannot make a veth pair here"; exit 4; }
fi
for i in 1 2; do
  ip -n "$(ns $i)" addr replace "$NET.$i/24" dev "fpveth$i"
  ip -n "$(ns $i)" link set "fpveth$i" up
  mkdir -p "/etc/netns/$(ns $i)/slurm"
  printf '127.0.0.1 localhost\n%s.1 fpn1\n%s.2 fpn2\n' "$NET" "$NET" > "/etc/netns/$(ns $i)/hosts"
done

# ---------- 3. munge (the machine's daemon; its socket is shared) ----------
start_munge
if [ "$MUNGE_STARTED" = 1 ]; then touch "$BASE/run/munged.ours"; fi

# ---------- 4. slurm.conf and gres.conf, seen as /etc/slurm/ inside the namespaces ----------
GRES_LINE=""; NODE_GRES=""
if [ "$FAKE_GPUS" != "0" ]; then
  GRES_LINE="GresTypes=gpu"
  NODE_GRES="Gres=gpu:$FAKE_GPUS"
  mkdir -p "$BASE/dev"
  for g in $(seq 0 $((FAKE_GPUS - 1))); do  # char devices (slurmd rejects plain files)
    [ -c "$BASE/dev/nvidia$g" ] || { rm -f "$BASE/dev/nvidia$g"; mknod -m 666 "$BASE/dev/nvidia$g" c 1 3; }
  done
  echo "NodeName=fpn[1-2] Name=gpu File=$BASE/dev/nvidia[0-$((FAKE_GPUS - 1))]" > "$CONF_DIR/gres.conf.new"
else
  : > "$CONF_DIR/gres.conf.new"
fi
cat > "$CONF_DIR/slurm.conf.new" <<EOF
ClusterName=localci2
SlurmctldHost=fpn1($NET.1)
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool/%n
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd-%n.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd-%n.log
$(slurm_conf_shared)
$GRES_LINE
NodeName=fpn1 NodeAddr=$NET.1 CPUs=$CPUS RealMemory=$MEM_MB $NODE_GRES State=UNKNOWN
NodeName=fpn2 NodeAddr=$NET.2 CPUs=$CPUS RealMemory=$MEM_MB $NODE_GRES State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
if ! cmp -s "$CONF_DIR/slurm.conf.new" "$CONF_DIR/slurm.conf" \
   || ! cmp -s "$CONF_DIR/gres.conf.new" "$CONF_DIR/gres.conf"; then
  for pf in "$BASE"/run/slurmd-*.pid "$BASE/run/slurmctld.pid"; do
    if alive "$pf"; then log "config changed: restarting $(basename "$pf" .pid)"; stop_pid "$pf"; fi
  done
fi
mv "$CONF_DIR/slurm.conf.new" "$CONF_DIR/slurm.conf"
mv "$CONF_DIR/gres.conf.new" "$CONF_DIR/gres.conf"
for i in 1 2; do
  ln -sfn "$CONF_DIR/slurm.conf" "/etc/netns/$(ns $i)/slurm/slurm.conf"
  ln -sfn "$CONF_DIR/gres.conf" "/etc/netns/$(ns $i)/slurm/gres.conf"
done

# ---------- 5. daemons, each in its node's namespace with its node's hostname ----------
on_node() { local i=$1; shift; bash "$(dirname "$0")/on_node.sh" "${NODES[$((i - 1))]}" "$@"; }
if ! alive "$BASE/run/slurmctld.pid"; then
  log "starting slurmctld on fpn1"
  on_node 1 slurmctld -f "$CONF_DIR/slurm.conf" -c   # -c: no saved job state (fresh start)
fi
for i in 1 2; do
  node="${NODES[$((i - 1))]}"
  mkdir -p "$BASE/spool/$node"
  if ! alive "$BASE/run/slurmd-$node.pid"; then
    log "starting slurmd on $node"
    on_node "$i" slurmd -f "$CONF_DIR/slurm.conf" -N "$node"
  fi
done

# ---------- 6. wait until both nodes are idle ----------
# Up to 2 minutes of wall time: a loaded machine (the rest of the suite beside it) registers slowly,
# and a controller that does not answer yet makes each sinfo wait for its 10 s MessageTimeout. No
# state (nothing yet, unk, idle*) is an error until the time is up.
states() { on_node 1 sinfo -h -N -o '%N %t' 2>/dev/null | sort -u || true; }
ready() { [ "$(grep -cE ' (idle|mix|alloc)' <<<"$1" || true)" = 2 ]; }
deadline=$((SECONDS + 120))
while [ "$SECONDS" -lt "$deadline" ]; do
  s="$(states)"
  if ready "$s"; then break; fi
  for node in $(awk '$2 ~ /^(down|drain)/ {print $1}' <<<"$s"); do
    on_node 1 scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
  done
  sleep 0.5
done
s="$(states)"
log "nodes: $(tr '\n' ' ' <<<"$s")"
ready "$s" || { log "cluster not ready; see $BASE/log"; exit 1; }
echo "bash $(cd "$(dirname "$0")" && pwd)/on_node.sh fpn1"
