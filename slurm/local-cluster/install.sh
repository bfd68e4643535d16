#!/usr/bin/env bash
# Install a single-node Slurm (Debian's slurm-wlm) and munge on this machine.
# Idempotent: does nothing when slurmctld, slurmd and munged are already installed.
# Needs root (apt-get); CI and workstations run it through `make slurm-up` or GRAINE_SLURM_INSTALL=1.
set -euo pipefail

if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
    echo "slurm and munge already installed: $(slurmctld -V)"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh needs root to apt-get install slurm-wlm munge; run it with sudo" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
# slurm-wlm pulls slurmctld, slurmd and the client commands; no systemd is needed, start.sh runs the daemons.
apt-get install -y --no-install-recommends slurm-wlm munge
echo "installed: $(slurmctld -V)"
