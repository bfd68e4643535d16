#!/usr/bin/env bash
# Start (or check) the single-node Slurm on this machine: munged, slurmctld, slurmd.
# Idempotent: when the controller answers and the node is usable, exits 0 without touching anything.
# Needs root. Install first with install.sh (or `make slurm-up`, which does both).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONF=/etc/slurm/slurm.conf
STATE=/var/spool/graine-slurm
LOG=/var/log/slurm
RUN=/run/slurm
HOST="$(hostname -s)"

node_state() { sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n1 | tr -d '*~#'; }

healthy() {
    case "$(node_state)" in idle|mixed|allocated|completing) return 0 ;; *) return 1 ;; esac
}

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    echo "slurm is not installed; run $HERE/install.sh (or make slurm-up)" >&2
    exit 1
fi
write_conf() {
    local cpus mem
    cpus="$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)"  # nproc obeys OMP_NUM_THREADS
    # slurmd refuses a node whose RealMemory exceeds what it finds: declare 90% of MemTotal (MB).
    mem="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
    mkdir -p /etc/slurm "$STATE" "$LOG" "$RUN"
    sed -e "s|@HOST@|$HOST|g" -e "s|@CPUS@|$cpus|g" -e "s|@MEM@|$mem|g" \
        -e "s|@STATE@|$STATE|g" -e "s|@LOG@|$LOG|g" -e "s|@RUN@|$RUN|g" \
        "$HERE/slurm.conf.in" > "$1"
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

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_slurm() {
    # -i: ignore unreadable saved state (an earlier container's) instead of refusing to start; queued jobs survive.
    pid_alive "$RUN/slurmctld.pid" || slurmctld -i
    pid_alive "$RUN/slurmd.pid" || slurmd
    for _ in $(seq 60); do
        if healthy; then return 0; fi
        # A node left DOWN/DRAIN by an earlier unclean stop is returned to service once.
        case "$(node_state)" in down|drained|draining|drain)
            scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true ;;
        esac
        sleep 1
    done
    echo "the node did not become idle; sinfo says '$(node_state)'. Logs: $LOG/slurmctld.log, $LOG/slurmd.log" >&2
    exit 1
}

NEW="$(mktemp)"
trap 'rm -f "$NEW"' EXIT
write_conf "$NEW"
if [ -f "$CONF" ] && cmp -s "$NEW" "$CONF" && healthy; then
    echo "local slurm already running: node $HOST $(node_state)"
    exit 0
fi
if [ -f "$CONF" ] && ! cmp -s "$NEW" "$CONF"; then
    # The template changed since the daemons started: they read slurm.conf only at start.
    "$HERE/stop.sh"
fi
cp "$NEW" "$CONF"
start_munge
start_slurm
echo "local slurm running: node $HOST $(node_state), $(env -u OMP_NUM_THREADS nproc) CPUs; logs in $LOG"
