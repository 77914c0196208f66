#!/usr/bin/env bash
# Bring up a single-node Slurm cluster (munged + slurmctld + slurmd) on localhost, for flanpipe's CI
# test of the Slurm profile (tests/e2e/test_slurm.py) or to try `snakemake --profile slurm` locally.
# Idempotent: safe to re-run; already-running daemons are left alone. Stop it with stop_slurm.sh.
# Needs root. Debian 12 (bookworm) packages: slurm-wlm 22.05.8, munge 0.5.15 (installed with apt-get
# if missing). Exit status 3: the packages are missing and could not be installed.
#
# Usage:  bash scripts/slurm/start_slurm.sh     (SLURM_FAKE_GPUS=2 ... declares 2 fake GPUs)
#   SLURM_TEST_DIR=/tmp/flanpipe-slurm   where config, state, spool and daemon logs go
# Config is written to $SLURM_TEST_DIR/etc and symlinked to /etc/slurm/slurm.conf, so no
# SLURM_CONF export is needed. Prints "export SLURM_CONF=..." on stdout for
# convenience; progress goes to stderr. If the generated config differs from the
# one the running daemons use, they are restarted.
set -euo pipefail

BASE="${SLURM_TEST_DIR:-/tmp/flanpipe-slurm}"
CONF_DIR="$BASE/etc"
export SLURM_CONF="$CONF_DIR/slurm.conf"
NODE="$(hostname -s)"
CPUS="$(nproc)"
# RealMemory a bit below physical (MB); slurmd drains the node if RealMemory > actual.
MEM_MB=$(( $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) * 80 / 100 ))
WITH_GPU_GRES="${SLURM_FAKE_GPUS:-0}"   # e.g. SLURM_FAKE_GPUS=2 -> fake gres gpu:2

log() { echo "[start_slurm] $*" >&2; }
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"

# ---------- 1. packages ----------
install_slurm

# ---------- 2. hostname must resolve ----------
if ! getent hosts "$NODE" >/dev/null; then
  log "adding $NODE to /etc/hosts"
  echo "127.0.0.1 $NODE" >> /etc/hosts
fi

# ---------- 3. munge ----------
start_munge

# ---------- 4. slurm.conf ----------
mkdir -p "$CONF_DIR" "$BASE/state" "$BASE/spool" "$BASE/log" "$BASE/run"
GRES_LINE=""; NODE_GRES=""
if [ "$WITH_GPU_GRES" != "0" ]; then
  GRES_LINE="GresTypes=gpu"
  NODE_GRES="Gres=gpu:$WITH_GPU_GRES"
  # fake GPU devices: char devices with /dev/null's major/minor (slurmd rejects
  # regular files: "is not a valid character or block device")
  mkdir -p "$BASE/dev"
  for i in $(seq 0 $((WITH_GPU_GRES - 1))); do
    [ -c "$BASE/dev/nvidia$i" ] || { rm -f "$BASE/dev/nvidia$i"; mknod -m 666 "$BASE/dev/nvidia$i" c 1 3; }
  done
  echo "NodeName=$NODE Name=gpu File=$BASE/dev/nvidia[0-$((WITH_GPU_GRES - 1))]" > "$CONF_DIR/gres.conf"
else
  rm -f "$CONF_DIR/gres.conf"
fi
cat > "$SLURM_CONF.new" <<EOF
ClusterName=localci
SlurmctldHost=$NODE(127.0.0.1)
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
$(slurm_conf_shared)
$GRES_LINE
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB $NODE_GRES State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
GRES_NEW="$(cat "$CONF_DIR/gres.conf" 2>/dev/null || true)"
if ! cmp -s "$SLURM_CONF.new" "$SLURM_CONF" || [ "$GRES_NEW" != "$(cat "$BASE/run/gres.conf.used" 2>/dev/null || true)" ]; then
  for d in slurmd slurmctld; do
    if alive "$BASE/run/$d.pid"; then log "config changed: restarting $d"; stop_pid "$BASE/run/$d.pid"; fi
  done
fi
printf '%s' "$GRES_NEW" > "$BASE/run/gres.conf.used"
mv "$SLURM_CONF.new" "$SLURM_CONF"
# The snakemake slurm-jobstep plugin strips SLURM_* (incl. SLURM_CONF) from the env
# of the nested `srun` it runs inside each job, so the config must also be found at
# the compiled-in default path /etc/slurm/slurm.conf.
mkdir -p /etc/slurm
ln -sfn "$SLURM_CONF" /etc/slurm/slurm.conf
if [ -f "$CONF_DIR/gres.conf" ]; then ln -sfn "$CONF_DIR/gres.conf" /etc/slurm/gres.conf
else rm -f /etc/slurm/gres.conf; fi

# ---------- 5. daemons ----------
if ! alive "$BASE/run/slurmctld.pid"; then
  log "starting slurmctld"
  slurmctld -f "$SLURM_CONF" -c   # -c: clear saved job state (fresh start each time)
fi
if ! alive "$BASE/run/slurmd.pid"; then
  log "starting slurmd"
  slurmd -f "$SLURM_CONF" -N "$NODE"
fi

# ---------- 6. wait for node idle ----------
deadline=$((SECONDS + 120))  # up to 2 minutes of wall time: a loaded machine registers slowly
while [ "$SECONDS" -lt "$deadline" ]; do
  state="$(sinfo -h -N -n "$NODE" -o %t 2>/dev/null || true)"
  case "$state" in
    idle*|mix*|alloc*) break ;;
    down*|drain*) scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true ;;
  esac
  sleep 0.5
done
state="$(sinfo -h -N -n "$NODE" -o %t 2>/dev/null || true)"
log "node $NODE state: ${state:-unknown}"
case "$state" in idle*|mix*|alloc*) ;; *) log "cluster not ready; see $BASE/log"; exit 1 ;; esac
echo "export SLURM_CONF=$SLURM_CONF"
