#!/usr/bin/env bash
# A real one-node SLURM cluster on localhost, with accounting, for the tests.
#
#   bash scripts/slurm-local.sh up       # install (Debian packages) and start; idempotent
#   bash scripts/slurm-local.sh status   # what runs, and the node's state
#   bash scripts/slurm-local.sh down     # stop every daemon it started
#
# Needs root and Debian 12 (SLURM 22.05). The settings come from
# ../shared/reference/local-slurm.md: without slurmdbd, `sacct` fails and submitit
# never sees a cancelled job end; without `AuthInfo=cred_expire=5` a requeued job
# waits about two minutes before it may start again; without `DefMemPerCPU` a job
# that asks for no memory takes the whole node and jobs run one at a time.
set -euo pipefail

CONF_DIR=/etc/slurm
STATE_DIR=/var/spool/slurmctld
SPOOL_DIR=/var/spool/slurmd
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm
# The nodes of partition `multi` (node1..N in network namespaces) come from this sibling.
MULTI="$(dirname "${BASH_SOURCE[0]}")/slurm-multinode.sh"
# bubblewrap and python3-venv: the sandbox of the bubblewrap site (site-configs/local-bwrap.toml,
# scripts/bwrap-prefix.sh), whose jobs run on this cluster.
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server slurm-wlm-torque openmpi-bin
          bubblewrap python3-venv)

log() { printf 'slurm-local: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

need_root() {
  [ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons)"
}

install_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

write_config() {
  mkdir -p "$CONF_DIR" "$STATE_DIR" "$SPOOL_DIR" "$LOG_DIR" "$RUN_DIR"
  local cpus mem
  cpus=$(nproc)
  # 90% of what slurmd sees: a RealMemory above the real memory drains the node.
  mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  mem=$(( mem * 9 / 10 ))
  # More CPUs than cores (config_overrides) lets several one-CPU test jobs run at once.
  local declared=$(( cpus < 4 ? 4 : cpus ))
  cat >"$CONF_DIR/slurm.conf.new" <<EOF
# Written by scripts/slurm-local.sh: a one-node test cluster on localhost.
ClusterName=localhost
SlurmctldHost=localhost($(bash "$MULTI" controller-addr))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=5
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR-%n
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd-%n.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
SlurmdTimeout=30
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
KillWait=5
MinJobAge=300
MaxArraySize=1001
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG_DIR/jobcomp.txt
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
PlugStackConfig=$CONF_DIR/plugstack.conf
$(bash "$MULTI" conf)
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$declared RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$CONF_DIR/slurm.conf.new" "$CONF_DIR/slurm.conf"
  # spank_pbs sets PBS_JOBID, PBS_O_WORKDIR, PBS_ARRAY_INDEX for #PBS scripts run by sbatch.
  local spank
  spank=$(find /usr/lib -name spank_pbs.so 2>/dev/null | head -n1 || true)
  if [ -n "$spank" ]; then
    echo "optional $spank" >"$CONF_DIR/plugstack.conf"
  else
    : >"$CONF_DIR/plugstack.conf"
  fi
  umask 077
  cat >"$CONF_DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$RUN_DIR/slurmdbd.pid
LogFile=$LOG_DIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$CONF_DIR/slurmdbd.conf"
  umask 022
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local secs=$1 what=$2; shift 2
  local i
  for ((i = 0; i < secs * 4; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.25
  done
  die "timed out after ${secs}s waiting for $what"
}

start_munge() {
  if ! pgrep -x munged >/dev/null; then
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- /usr/sbin/munged
  fi
  wait_for 10 munge munge -n
}

start_mariadb() {
  if ! mariadb-admin ping >/dev/null 2>&1; then
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    (setsid mariadbd-safe --user=mysql >/dev/null 2>&1 &)
    wait_for 60 mariadb mariadb-admin ping
  fi
  mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
}

start_slurmdbd() {
  running "$RUN_DIR/slurmdbd.pid" || slurmdbd
  wait_for 30 slurmdbd sacctmgr -n -P show cluster format=cluster
  if ! sacctmgr -n -P show cluster format=cluster | grep -qx localhost; then
    sacctmgr -i add cluster localhost >/dev/null
  fi
}

start_slurm() {
  running "$RUN_DIR/slurmctld.pid" || slurmctld
  wait_for 30 slurmctld scontrol ping
  running "$RUN_DIR/slurmd-localhost.pid" || { mkdir -p "$SPOOL_DIR-localhost"; slurmd -N localhost; }
  wait_for 60 "node localhost to be idle" node_idle
}

node_idle() {
  local state
  state=$(sinfo -h -n localhost -o %T 2>/dev/null) || return 1
  case "$state" in
    idle*|mixed*|allocated*) return 0 ;;
    down*|drain*) scontrol update nodename=localhost state=resume >/dev/null 2>&1; return 1 ;;
    *) return 1 ;;
  esac
}

up() {
  need_root
  install_packages
  if running "$RUN_DIR/slurmctld.pid" && node_idle && bash "$MULTI" conf-current; then
    bash "$MULTI" up
    log "already up"
    status
    return 0
  fi
  bash "$MULTI" net   # slurmctld's address is on its bridge
  write_config
  start_munge
  start_mariadb
  start_slurmdbd
  bash "$MULTI" restart-if-stale   # a slurmctld started before slurm.conf had the nodes
  start_slurm
  bash "$MULTI" up
  log "up: $(sinfo -h -o '%P %D %T' | head -n1)"
}

down() {
  need_root
  scontrol shutdown >/dev/null 2>&1 || true
  for f in slurmctld slurmd-localhost slurmdbd; do
    if running "$RUN_DIR/$f.pid"; then kill "$(cat "$RUN_DIR/$f.pid")" 2>/dev/null || true; fi
  done
  if mariadb-admin ping >/dev/null 2>&1; then mariadb-admin shutdown || true; fi
  if [ -f /run/munge/munged.pid ]; then kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true; fi
  bash "$MULTI" down --all
  log "down"
}

status() {
  local d
  for d in slurmctld slurmd-localhost slurmdbd; do
    if running "$RUN_DIR/$d.pid"; then echo "$d: running (pid $(cat "$RUN_DIR/$d.pid"))"
    else echo "$d: stopped"; fi
  done
  if pgrep -x munged >/dev/null; then echo "munged: running"; else echo "munged: stopped"; fi
  if mariadb-admin ping >/dev/null 2>&1; then echo "mariadb: running"; else echo "mariadb: stopped"; fi
  sinfo 2>/dev/null || echo "sinfo: controller not reachable"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
