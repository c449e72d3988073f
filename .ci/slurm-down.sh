#!/usr/bin/env bash
# Stop the daemons that .ci/slurm-up.sh started (and only those), using its pid files, and
# remove the config files it wrote. Daemons it found already running were never recorded
# there, so they and their config are left alone.
set -uo pipefail

STARTED=/run/lungfusion-slurm/started

say() { echo "slurm-down: $*"; }

stop_one() {
    local name=$1 file="$STARTED/$1.pid" pid
    [[ -f "$file" ]] || return 0
    pid=$(cat "$file")
    if [[ -n "$pid" && -d "/proc/$pid" ]] && grep -q "$name" "/proc/$pid/comm" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 20); do
            [[ -d "/proc/$pid" ]] || break
            sleep 0.5
        done
        if [[ -d "/proc/$pid" ]]; then
            say "$name ($pid) ignored SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null
        fi
        say "stopped $name ($pid)"
    else
        say "$name ($pid) was not running"
    fi
    rm -f "$file"
}

# Compute node first, then the controller, then authentication.
stop_one slurmd
stop_one slurmctld
stop_one munged

# A slurm.conf naming a stopped controller makes every scontrol call (and so every Snakemake
# start, through the SLURM executor plugin) wait for its timeout: remove what slurm-up wrote.
MARKER="# written by lungfusion .ci/slurm-up.sh"
if [[ -f "$STARTED/config" ]]; then
    for file in /etc/slurm/slurm.conf /etc/slurm/gres.conf; do
        if [[ -f "$file" ]] && grep -qF "$MARKER" "$file"; then
            rm -f "$file"
            say "removed $file"
        fi
    done
    rm -f "$STARTED/config"
fi
exit 0
