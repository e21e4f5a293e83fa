#!/usr/bin/env bash
# More than one compute node on this one machine: node1..nodeN, each a `slurmd` in its
# own network and UTS namespace, on a bridge this script makes, joined to the SAME
# slurmctld/slurmdbd as the one-node cluster (scripts/slurm-local.sh) as partition
# `multi`. The `debug` partition (node `localhost`) keeps working beside it.
#
#   bash scripts/slurm-local.sh up          # writes slurm.conf (with this script's `conf` lines) and calls `up`
#   bash scripts/slurm-multinode.sh up      # bridge, namespaces, node slurmds; waits until they are idle
#   bash scripts/slurm-multinode.sh status  # namespaces, slurmd pids, `sinfo -p multi`
#   bash scripts/slurm-multinode.sh down    # stop the node slurmds, remove namespaces and /etc/hosts lines
#   bash scripts/slurm-multinode.sh conf    # the slurm.conf lines for the nodes (slurm-local.sh includes them)
#   bash scripts/slurm-multinode.sh net     # only the bridge and the namespaces
#
# Settings (environment):
#   LLMCTL_SLURM_NODES=2     how many nodes (1..4)
#   The bridge `br-llm` has 10.77.0.1/24; node i is namespace `llm-n<i>` with eth0 =
#   10.77.0.1<i>, hostname `node<i>`, and an /etc/hosts line `10.77.0.1<i> node<i>`
#   (names must resolve in every namespace: MASTER_ADDR=node1). The private range is
#   used only on the bridge and inside the namespaces this script made; nothing routes
#   anywhere else. Each node declares 4 CPUs (config_overrides: two 2-rank jobs fit on
#   two cores) and an equal share of 90% of the memory.
#   The filesystem is shared (one mount namespace), as a cluster's shared filesystem is.
#
# Pitfalls (each one was hit; ../shared/reference/local-slurm-multinode.md):
#   - `ip netns exec` remounts /sys, and slurmd then dies with "No filesystem mounted on
#     /sys/fs/cgroup"; start it with `nsenter --net=/run/netns/NS unshare --uts`.
#   - slurmctld's address must be reachable from the namespaces: SlurmctldHost is
#     `localhost(10.77.0.1)`, the bridge's address, so the bridge must exist before any
#     SLURM command runs (slurm-local.sh calls `net` first; `down` keeps the bridge while
#     slurmctld runs). `localhost`/127.0.0.1 inside a namespace is the namespace's own.
#   - Several slurmds on one machine need their own spool, pid and log:
#     SlurmdSpoolDir/SlurmdPidFile/SlurmdLogFile with %n (the node name).
#   - SlurmdTimeout=30: with the default 300 s a lost node is noticed after 5 minutes; with
#     10 s a slurmd starved by a busy 2-core machine (two test workers) was declared lost.
#   - The node lines come BEFORE `NodeName=localhost`: while `localhost` is the only node
#     SLURM matches every name to it, and slurmctld dies "Duplicated NodeHostName node1".
#   - With pipefail, `ip addr show | grep -q X` fails when grep exits early: read into a string.
#   - Nodes cannot be added with `scontrol reconfigure` (SLURM 22.05): when slurm.conf
#     gains them, slurmctld restarts once (`restart-if-stale`, which slurm-local.sh calls
#     before starting the daemons), with node_state/part_state removed (job state is
#     kept). Running jobs on `localhost` survive it; commands fail for a few seconds.
#
# Timing here (2 cores): `up` on a running controller ~1 s; the first slurm-local.sh `up`
# that adds the nodes to a running one-node cluster 2.6 s (one slurmctld restart).
#   - Interactive `srun` from the root namespace into `multi` does not work (the steps
#     call back to the host's primary address): submit with sbatch and run srun/mpiexec
#     inside the job, where every address is on the bridge.
#   - A `slurmstepd` left in a namespace keeps it alive: `down` kills them first.
set -euo pipefail

NODES=${LLMCTL_SLURM_NODES:-2}
BRIDGE=br-llm
NET=10.77.0
NS_PREFIX=llm-n
PARTITION=multi
CONF=/etc/slurm/slurm.conf
STATE_DIR=/var/spool/slurmctld
RUN_DIR=/run/slurm
LOG_DIR=/var/log/slurm
HOSTS_TAG="# slurm-multinode.sh"

log() { printf 'slurm-multinode: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

[[ "$NODES" =~ ^[1-4]$ ]] || die "LLMCTL_SLURM_NODES must be 1..4 (is $NODES)"

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (it makes namespaces and starts daemons)"; }

controller_addr() { echo "$NET.1"; }

# The slurm.conf lines for the nodes and their partition.
conf() {
  local mem i
  mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  mem=$(( mem * 9 / 10 / NODES ))
  for ((i = 1; i <= NODES; i++)); do
    echo "NodeName=node$i NodeAddr=$NET.1$i CPUs=4 RealMemory=$mem State=UNKNOWN"
  done
  echo "PartitionName=$PARTITION Nodes=node[1-$NODES] Default=NO MaxTime=INFINITE State=UP"
}

# Are the lines `conf` prints exactly those in slurm.conf?
conf_current() {
  [ -f "$CONF" ] || return 1
  diff <(conf) <(grep -E "^(NodeName=node[0-9]|PartitionName=$PARTITION )" "$CONF") >/dev/null
}

net() {
  need_root
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
  fi
  # grep reads a string, not a pipe: with pipefail, `ip ... | grep -q` fails when grep exits early.
  grep -q "inet $NET.1/24" <<<"$(ip addr show dev "$BRIDGE")" || ip addr add "$NET.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  local i ns
  for ((i = 1; i <= NODES; i++)); do
    ns=$NS_PREFIX$i
    [ -e "/run/netns/$ns" ] || ip netns add "$ns"
    if ! ip -n "$ns" link show eth0 >/dev/null 2>&1; then
      ip link del "veth-n$i" >/dev/null 2>&1 || true
      ip link add "veth-n$i" type veth peer name eth0 netns "$ns"
    fi
    ip link set "veth-n$i" master "$BRIDGE" up
    grep -q "inet $NET.1$i/" <<<"$(ip -n "$ns" addr show dev eth0)" || ip -n "$ns" addr add "$NET.1$i/24" dev eth0
    ip -n "$ns" link set lo up
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route replace default via "$NET.1"
    grep -q "^$NET.1$i node$i\b" /etc/hosts || echo "$NET.1$i node$i $HOSTS_TAG" >>/etc/hosts
  done
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

wait_gone() {  # wait_gone PID: until the process has exited (at most 30 s)
  local i
  for ((i = 0; i < 120; i++)); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.25; done
  kill -9 "$1" 2>/dev/null || true
}

stop_pidfile() {
  local f=$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then kill "$pid" 2>/dev/null || true; wait_gone "$pid"; fi
  rm -f "$f"
}

# slurmctld was started before slurm.conf had the nodes: restart it (once), and the
# localhost slurmd with it (its SlurmctldHost address and pid file changed too).
restart_controller() {
  log "slurmctld does not know partition $PARTITION: restarting it with the new slurm.conf"
  stop_pidfile "$RUN_DIR/slurmctld.pid"
  stop_pidfile "$RUN_DIR/slurmd.pid"            # the one-node cluster's old pid file
  stop_pidfile "$RUN_DIR/slurmd-localhost.pid"
  rm -f "$STATE_DIR"/node_state* "$STATE_DIR"/part_state*
  slurmctld
  wait_for 30 slurmctld scontrol ping
  mkdir -p /var/spool/slurmd-localhost
  slurmd -N localhost
}

node_ok() {  # node_ok NAME: idle/mixed/allocated; resumes a node that is down
  local state
  state=$(sinfo -h -n "$1" -o %T 2>/dev/null) || return 1
  case "$state" in
    idle*|mixed*|allocated*|completing*) return 0 ;;
    down*|drain*) scontrol update nodename="$1" state=resume >/dev/null 2>&1; return 1 ;;
    *) return 1 ;;
  esac
}

start_node() {
  local i=$1 ns=$NS_PREFIX$1 name=node$1
  running "$RUN_DIR/slurmd-$name.pid" && return 0
  mkdir -p "/var/spool/slurmd-$name" "$LOG_DIR" "$RUN_DIR"
  # Not `ip netns exec` (it remounts /sys): the same mounts, another network and hostname.
  nsenter --net="/run/netns/$ns" unshare --uts bash -c "hostname $name; exec slurmd -N $name"
}

# slurmctld runs but predates the nodes in slurm.conf: restart it (once).
restart_if_stale() {
  running "$RUN_DIR/slurmctld.pid" || return 0
  scontrol show partition "$PARTITION" >/dev/null 2>&1 && return 0
  restart_controller
}

up() {
  need_root
  local t0=$SECONDS i
  conf_current || die "$CONF lacks the lines for node[1-$NODES] (bash scripts/slurm-local.sh up writes them)"
  net
  restart_if_stale
  for ((i = 1; i <= NODES; i++)); do start_node "$i"; done
  for ((i = 1; i <= NODES; i++)); do wait_for 60 "node$i to be idle" node_ok "node$i"; done
  log "up in $((SECONDS - t0)) s: $(sinfo -h -p "$PARTITION" -o '%P %D %T %N' | tr '\n' ' ')"
}

down() {
  need_root
  local i ns pid
  for ((i = 1; i <= 4; i++)); do
    stop_pidfile "$RUN_DIR/slurmd-node$i.pid"
    ns=$NS_PREFIX$i
    if [ -e "/run/netns/$ns" ]; then
      # slurmstepd and job processes left in the namespace keep it alive.
      for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
      ip netns del "$ns" 2>/dev/null || true
    fi
    ip link del "veth-n$i" >/dev/null 2>&1 || true
  done
  # Rewritten in place (not sed -i): /etc/hosts may be a mount point.
  local kept
  kept=$(grep -v "$HOSTS_TAG\$" /etc/hosts || true)
  printf '%s\n' "$kept" >/etc/hosts
  # slurm.conf gives slurmctld the bridge's address: keep it while slurmctld runs.
  if [ "${1:-}" != --all ] && running "$RUN_DIR/slurmctld.pid"; then
    log "down (bridge $BRIDGE kept: slurmctld's address is on it)"
  else
    ip link del "$BRIDGE" >/dev/null 2>&1 || true
    log "down"
  fi
}

status() {
  local i
  for ((i = 1; i <= NODES; i++)); do
    if running "$RUN_DIR/slurmd-node$i.pid"; then echo "slurmd node$i: running (pid $(cat "$RUN_DIR/slurmd-node$i.pid"), netns $NS_PREFIX$i)"
    else echo "slurmd node$i: stopped"; fi
  done
  sinfo -p "$PARTITION" 2>/dev/null || echo "sinfo: controller not reachable"
}

case "${1:-}" in
  up) up ;;
  down) down "${2:-}" ;;
  status) status ;;
  conf) conf ;;
  conf-current) conf_current ;;
  controller-addr) controller_addr ;;
  restart-if-stale) need_root; restart_if_stale ;;
  net) net ;;
  *) echo "usage: $0 up|down [--all]|status|conf|conf-current|controller-addr|restart-if-stale|net" >&2; exit 2 ;;
esac
