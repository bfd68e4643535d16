#!/usr/bin/env bash
# Install Slurm (Debian's slurm-wlm), munge and iproute2 (for NODES=2) on this machine.
# Idempotent: does nothing when slurmctld, slurmd, munged and ip are already installed.
# Needs root (apt-get); CI and workstations run it through `make slurm-up` or GRAINE_SLURM_INSTALL=1.
set -euo pipefail

need=()
command -v slurmctld >/dev/null && command -v slurmd >/dev/null || need+=(slurm-wlm)
command -v munged >/dev/null || need+=(munge)
command -v ip >/dev/null || need+=(iproute2)  # NODES=2: the veth pair and network namespace of the second node
if [ ${#need[@]} -eq 0 ]; then
    echo "slurm and munge already installed: $(slurmctld -V)"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh needs root to apt-get install ${need[*]}; run it with sudo" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
# slurm-wlm pulls slurmctld, slurmd and the client commands; no systemd is needed, start.sh runs the daemons.
apt-get install -y --no-install-recommends "${need[@]}"
echo "installed: ${need[*]}; $(slurmctld -V)"
