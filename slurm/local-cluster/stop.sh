#!/usr/bin/env bash
# Stop the local Slurm started by start.sh, 1- or 2-node: every slurmd, slurmctld, then munged; then remove
# what NODES=2 added (network namespace n2, veth pair, /etc/hosts lines). Queued jobs stay queued (the
# controller keeps its saved state). Safe to run when nothing is running.
set -uo pipefail

RUN=/run/slurm
# Keep in step with start.sh.
NETNS=n2
VETH_HOST=graine-veth0
HOSTS_BEGIN="# graine local-cluster NODES=2: begin (written by slurm/local-cluster/start.sh, removed by stop.sh)"
HOSTS_END="# graine local-cluster NODES=2: end"
HOSTS_MARK="#graine-local-cluster# "

stop_pidfile() {
    local name=$1 pidfile=$2 pid
    [ -f "$pidfile" ] || return 0
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        echo "stopped $name ($pid)"
    fi
    rm -f "$pidfile"
}

# slurmd-<node>.pid (SlurmdPidFile=.../slurmd-%n.pid), and slurmd.pid of configurations before %n.
for pidfile in "$RUN"/slurmd-*.pid "$RUN/slurmd.pid"; do
    [ -f "$pidfile" ] || continue
    name="$(basename "$pidfile" .pid)"
    stop_pidfile "$name" "$pidfile"
done
stop_pidfile slurmctld "$RUN/slurmctld.pid"
stop_pidfile munged /run/munge/munged.pid

# 2-node mode. Deleting the namespace's name does not free it while processes live in it (a job's leftover
# task): the veth pair goes with the namespace, so delete the host end explicitly too.
if command -v ip >/dev/null; then
    if [ -e "/run/netns/$NETNS" ]; then ip netns del "$NETNS" && echo "removed network namespace $NETNS"; fi
    # The kernel tears a namespace down asynchronously: the veth may vanish between a check and a delete.
    ip link del "$VETH_HOST" 2>/dev/null && echo "removed $VETH_HOST"
    for _ in $(seq 20); do ip link show "$VETH_HOST" >/dev/null 2>&1 || break; sleep 0.25; done
fi
if grep -qxF "$HOSTS_BEGIN" /etc/hosts 2>/dev/null || grep -qF "$HOSTS_MARK" /etc/hosts 2>/dev/null; then
    # Remove our block, uncomment the loopback lines naming this host that start.sh commented out.
    # In place (cat >): /etc/hosts may be a bind mount.
    rest="$(mktemp)"
    awk -v b="$HOSTS_BEGIN" -v e="$HOSTS_END" -v m="$HOSTS_MARK" '
        $0 == b {skip = 1}
        !skip { if (index($0, m) == 1) $0 = substr($0, length(m) + 1); print }
        $0 == e {skip = 0}' /etc/hosts > "$rest" &&
        cat "$rest" > /etc/hosts && echo "restored /etc/hosts (removed the local cluster's lines)"
    rm -f "$rest"
fi
exit 0
