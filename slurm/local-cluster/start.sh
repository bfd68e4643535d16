#!/usr/bin/env bash
# Start (or check) the local Slurm on this machine: munged, slurmctld, and one slurmd per node.
#   NODES=1 (default): one node, this host.
#   NODES=2: a second node `n2` in a network namespace on the same machine (same filesystem, as compute nodes
#            share Lustre), reached over a veth pair: this host is 10.77.0.1, n2 is 10.77.0.2.
# Idempotent: when the configuration is unchanged and every node is usable, exits 0 without touching anything.
# Switching NODES rewrites slurm.conf and restarts the daemons (stop.sh). Needs root. Install first with
# install.sh (or `make slurm-up [NODES=2]`, which does both).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONF=/etc/slurm/slurm.conf
STATE=/var/spool/graine-slurm
LOG=/var/log/slurm
RUN=/run/slurm
HOST="$(hostname -s)"
HOST_FULL="$(hostname)"  # what gethostname() returns; may be a longer name than $HOST
NODES="${NODES:-1}"
# 2-node mode: keep these in step with stop.sh.
NETNS=n2
NETNS_PATH=/run/netns/$NETNS
VETH_HOST=graine-veth0         # this host's end
VETH_PEER=graine-veth1         # n2's end, inside the namespace
HOST_IP=10.77.0.1
PEER_IP=10.77.0.2
HOSTS_BEGIN="# graine local-cluster NODES=2: begin (written by slurm/local-cluster/start.sh, removed by stop.sh)"
HOSTS_END="# graine local-cluster NODES=2: end"
HOSTS_MARK="#graine-local-cluster# "  # prefixes the lines start.sh comments out
HOSTS_BACKUP=/etc/hosts.graine-orig

case "$NODES" in
    1) NODE_NAMES=("$HOST") ;;
    2) NODE_NAMES=("$HOST" "$NETNS") ;;
    *) echo "NODES=$NODES: the local cluster has 1 or 2 nodes" >&2; exit 2 ;;
esac
if [ "$NODES" = 2 ] && [ "$HOST" = "$NETNS" ]; then
    echo "this host is named $NETNS, the name of the second node: NODES=2 cannot work here" >&2
    exit 1
fi

node_state() { sinfo -h -N -n "$1" -o %T 2>/dev/null | head -n1 | tr -d '*~#'; }

states() {
    local n out=""
    for n in "${NODE_NAMES[@]}"; do out+="$n $(node_state "$n"), "; done
    echo "${out%, }"
}

healthy() {
    local n
    for n in "${NODE_NAMES[@]}"; do
        case "$(node_state "$n")" in idle|mixed|allocated|completing) ;; *) return 1 ;; esac
    done
}

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    echo "slurm is not installed; run $HERE/install.sh (or make slurm-up)" >&2
    exit 1
fi
if [ "$NODES" = 2 ]; then
    for tool in ip nsenter unshare; do
        command -v "$tool" >/dev/null && continue
        echo "NODES=2 needs '$tool' (apt-get install iproute2 util-linux)" >&2
        exit 1
    done
fi

write_conf() {
    local cpus mem nodes ctlhost
    cpus="$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)"  # nproc obeys OMP_NUM_THREADS
    # slurmd refuses a node whose RealMemory exceeds what it finds: declare 90% of MemTotal (MB).
    mem="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
    mkdir -p /etc/slurm "$STATE" "$LOG" "$RUN"
    nodes="$(mktemp)"
    if [ "$NODES" = 1 ]; then
        ctlhost="$HOST"
        echo "NodeName=$HOST CPUs=$cpus RealMemory=$mem State=UNKNOWN" > "$nodes"
    else
        # Both nodes are the same machine: each declares all of its CPUs and memory.
        ctlhost="$HOST($HOST_IP)"
        { echo "NodeName=$HOST NodeAddr=$HOST_IP CPUs=$cpus RealMemory=$mem State=UNKNOWN"
          echo "NodeName=$NETNS NodeAddr=$PEER_IP CPUs=$cpus RealMemory=$mem State=UNKNOWN"; } > "$nodes"
    fi
    sed -e "s|@CTLHOST@|$ctlhost|g" -e "s|@CPUS@|$cpus|g" -e "s|@MEM@|$mem|g" \
        -e "s|@STATE@|$STATE|g" -e "s|@LOG@|$LOG|g" -e "s|@RUN@|$RUN|g" \
        -e "/^@NODES@\$/{r $nodes" -e "d}" \
        "$HERE/slurm.conf.in" > "$1"
    rm -f "$nodes"
}

# --- 2-node mode: network namespace, veth pair, /etc/hosts
# <host> must resolve to 10.77.0.1 only, on both nodes: gloo (torch.distributed) binds to the first address
# getaddrinfo(gethostname()) gives. "First match wins" does not hold for getaddrinfo: with `multi on` in
# /etc/host.conf (Debian's default) it returns every line naming the host, and sorts them (RFC 3484: loopback
# has the smaller scope, so 127.0.0.1 comes first wherever its line is). So besides our block at the top,
# lines mapping a loopback address to <host> are commented out with HOSTS_MARK (their other names go into
# the block); stop.sh removes the block and uncomments them.
hosts_original() {  # /etc/hosts as it was before: without our block, our commented-out lines restored
    awk -v b="$HOSTS_BEGIN" -v e="$HOSTS_END" -v m="$HOSTS_MARK" '
        $0 == b {skip = 1}
        !skip { if (index($0, m) == 1) $0 = substr($0, length(m) + 1); print }
        $0 == e {skip = 0}' /etc/hosts
}

hosts_wanted() {  # $1: the original file
    awk -v b="$HOSTS_BEGIN" -v e="$HOSTS_END" -v m="$HOSTS_MARK" -v host="$HOST" -v full="$HOST_FULL" \
        -v hip="$HOST_IP" -v pip="$PEER_IP" -v peer="$NETNS" '
        { out[NR] = $0 }
        $1 !~ /^#/ && NF >= 2 && ($1 ~ /^127\./ || $1 == "::1") {
            kept = $1; named = 0
            for (i = 2; i <= NF && $i !~ /^#/; i++) {
                if ($i == host || $i == full) named = 1; else kept = kept " " $i
            }
            if (named) { out[NR] = m $0; if (kept != $1) extra = extra kept "\n" }
        }
        END {
            print b; print hip " " host (full != host ? " " full : ""); print pip " " peer
            printf "%s", extra; print e
            for (i = 1; i <= NR; i++) print out[i]
        }' "$1"
}

# Checks (no argument) or rewrites (write) /etc/hosts. It may be a bind mount: rewritten in place (cat >),
# never renamed over. HOSTS_BACKUP keeps the original.
hosts_sync() {
    local orig want rc=0
    orig="$(mktemp)"; want="$(mktemp)"
    hosts_original > "$orig"
    hosts_wanted "$orig" > "$want"
    if ! cmp -s "$want" /etc/hosts; then
        rc=1
        if [ "${1:-}" = write ]; then cp "$orig" "$HOSTS_BACKUP"; cat "$want" > /etc/hosts; rc=0; fi
    fi
    rm -f "$orig" "$want"
    return $rc
}
hosts_ok() { hosts_sync; }

setup_net() {
    [ -e "$NETNS_PATH" ] || ip netns add "$NETNS"
    # A host end whose peer is not in today's namespace (deleted and re-added) is recreated.
    if ! ip -n "$NETNS" link show "$VETH_PEER" >/dev/null 2>&1; then
        # (an old pair may still be going away with an old namespace: the kernel frees those asynchronously)
        for _ in $(seq 20); do
            ip link del "$VETH_HOST" 2>/dev/null || true
            ip link add "$VETH_HOST" type veth peer name "$VETH_PEER" netns "$NETNS" 2>/dev/null && break
            sleep 0.25
        done
        ip -n "$NETNS" link show "$VETH_PEER" >/dev/null ||
            ip link add "$VETH_HOST" type veth peer name "$VETH_PEER" netns "$NETNS"  # fails with the reason
    fi
    ip addr replace "$HOST_IP/24" dev "$VETH_HOST"
    ip link set "$VETH_HOST" up
    ip -n "$NETNS" addr replace "$PEER_IP/24" dev "$VETH_PEER"
    ip -n "$NETNS" link set "$VETH_PEER" up
    ip -n "$NETNS" link set lo up
    hosts_sync write
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 0755 /run/munge
    # The Debian package ships a key; create one if it is missing (a fresh container image).
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    su -s /bin/sh munge -c "/usr/sbin/munged"
    for _ in $(seq 20); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    echo "munged does not answer: munge -n | unmunge fails; see /var/log/munge/munged.log" >&2
    exit 1
}

# Running, not a zombie (a daemon killed a moment ago may not be reaped yet).
pid_alive() {
    local pid stat
    pid="$(cat "$1" 2>/dev/null)" && [[ "$pid" =~ ^[0-9]+$ ]] && stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"  # the fields after "pid (comm) ": state first
    [ -n "$stat" ] && [ "${stat%% *}" != Z ]
}

start_slurm() {
    local n
    # -i: ignore unreadable saved state (an earlier container's) instead of refusing to start; queued jobs survive.
    pid_alive "$RUN/slurmctld.pid" || slurmctld -i
    pid_alive "$RUN/slurmd-$HOST.pid" || slurmd -N "$HOST"
    if [ "$NODES" = 2 ]; then
        # n2: its own network namespace and host name, everything else (filesystem, pids, munge socket) shared.
        # Not `ip netns exec`: it remounts /sys, and slurmd then finds no cgroup mount.
        pid_alive "$RUN/slurmd-$NETNS.pid" ||
            nsenter --net="$NETNS_PATH" unshare --uts sh -c "hostname $NETNS; exec slurmd -N $NETNS"
    fi
    for _ in $(seq 60); do
        if healthy; then return 0; fi
        # A node left DOWN/DRAIN by an earlier unclean stop is returned to service.
        for n in "${NODE_NAMES[@]}"; do
            case "$(node_state "$n")" in down|drained|draining|drain)
                scontrol update NodeName="$n" State=RESUME 2>/dev/null || true ;;
            esac
        done
        sleep 1
    done
    echo "the nodes did not become idle; sinfo says: $(states). Logs: $LOG/slurmctld.log, $LOG/slurmd-<node>.log" >&2
    exit 1
}

# sinfo keeps showing a node whose slurmd died as idle for SlurmdTimeout (300 s): check the daemons too.
daemons_alive() {
    local n
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 || return 1
    pid_alive "$RUN/slurmctld.pid" || return 1
    for n in "${NODE_NAMES[@]}"; do pid_alive "$RUN/slurmd-$n.pid" || return 1; done
}

NEW="$(mktemp)"
trap 'rm -f "$NEW"' EXIT
write_conf "$NEW"
if [ -f "$CONF" ] && cmp -s "$NEW" "$CONF" && daemons_alive && healthy && { [ "$NODES" = 1 ] || hosts_ok; }; then
    echo "local slurm already running: $(states)"
    exit 0
fi
if [ -f "$CONF" ] && ! cmp -s "$NEW" "$CONF"; then
    # The template or NODES changed since the daemons started: they read slurm.conf only at start.
    "$HERE/stop.sh"
fi
if [ "$NODES" = 2 ]; then setup_net; fi
cp "$NEW" "$CONF"
start_munge
start_slurm
echo "local slurm running: $(states); $(env -u OMP_NUM_THREADS nproc) CPUs per node; logs in $LOG"
