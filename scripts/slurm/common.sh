# Shell functions shared by the one-node (start_slurm.sh, stop_slurm.sh) and the two-node
# (start_multinode.sh, stop_multinode.sh) local Slurm clusters. Sourced, not run; each script defines
# its own `log`.

# Install Slurm and munge with apt-get if they are missing; exit status 3 if they cannot be.
install_slurm() {
  if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
     || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
    command -v apt-get >/dev/null || { log "slurm/munge missing and no apt-get to install them"; exit 3; }
    log "installing slurm + munge via apt"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge; } >&2 \
      || { log "apt-get could not install slurmctld slurmd slurm-client munge"; exit 3; }
  fi
}

# Start the machine's munged unless a credential already round-trips; creates the key if missing.
# Sets MUNGE_STARTED=1 when this call started it (so the two-node cluster can stop it again).
start_munge() {
  MUNGE_STARTED=0
  if [ ! -s /etc/munge/munge.key ]; then
    log "creating munge key"
    install -d -o munge -g munge -m 0700 /etc/munge
    if command -v mungekey >/dev/null; then mungekey --create --force --keyfile /etc/munge/munge.key
    else dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; fi
  fi
  chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "starting munged"
    rm -f /run/munge/munged.pid /run/munge/munge.socket.2*
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null || { log "munge not working"; exit 1; }
    MUNGE_STARTED=1
  fi
}

# The slurm.conf lines both clusters share: users, munge, ports, plugins, scheduling and timeouts.
slurm_conf_shared() {
  cat <<'CONF'
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
ReturnToService=2
# reject (instead of pend forever) jobs that can never run, e.g. cpus > node CPUs
EnforcePartLimits=ALL
# keep finished jobs visible to squeue for 10 min (snakemake status via squeue)
MinJobAge=600
SlurmdTimeout=300
InactiveLimit=0
KillWait=5
Waittime=0
CONF
}

# Whether the process of a PID file runs.
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# SIGTERM the process of a PID file and wait up to 10 s for it to exit.
stop_pid() {
  local pid
  pid=$(cat "$1")
  kill -TERM "$pid"
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
}

# Stop a daemon by its PID file (SIGTERM, then SIGKILL after 5 s) and remove the file.
stop_pidfile() {  # name pidfile
  local name=$1 pf=$2 pid
  [ -s "$pf" ] || return 0
  pid=$(cat "$pf")
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping $name (pid $pid)"
    kill -TERM "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { log "$name did not exit, SIGKILL"; kill -KILL "$pid"; }
  fi
  rm -f "$pf"
}
