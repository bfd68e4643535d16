#!/usr/bin/env bash
# Stop the local Slurm started by start.sh: slurmd, slurmctld, then munged. Queued jobs stay queued
# (the controller keeps its saved state). Safe to run when nothing is running.
set -uo pipefail

RUN=/run/slurm

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

stop_pidfile slurmd "$RUN/slurmd.pid"
stop_pidfile slurmctld "$RUN/slurmctld.pid"
stop_pidfile munged /run/munge/munged.pid
