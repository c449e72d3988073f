#!/usr/bin/env bash
# Start a one-node SLURM cluster for tests and CI: munged, slurmctld, slurmd, as root, no systemd.
#
# - Installs Debian's slurm-wlm and munge with apt-get when they are missing.
# - Writes /etc/slurm/slurm.conf (the executor plugin's job step drops SLURM_CONF, so the
#   config must sit at the default path) and /etc/slurm/gres.conf with a fake GPU.
# - Two partitions on the one node: "main" (default) and "gpu", so profiles can route
#   training jobs with `slurm_partition`.
# - Accounting is off: use `squeue` as the executor's status command.
# - Idempotent: if the cluster it started is still up, it only checks it.
# - Every daemon it starts gets a pid file under $STATE_RUN/started/; .ci/slurm-down.sh stops
#   only those, and removes the config files if this script wrote them. Its state, spool and pid folders are its own (never shared with another cluster).
#
# Exit status: 0 when the node is idle and accepting jobs; non-zero with a message otherwise.
# Environment overrides: LUNGFUSION_SLURM_CPUS (default: max(nproc, 4)),
# LUNGFUSION_SLURM_GPUS (fake GPUs, 1 or 2; default 2).
set -euo pipefail

CLUSTER=lungfusion
STATE_RUN=/run/lungfusion-slurm
STATE_SPOOL=/var/spool/lungfusion-slurm
STATE_LOG=/var/log/lungfusion-slurm
STARTED="$STATE_RUN/started"
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
MARKER="# written by lungfusion .ci/slurm-up.sh"

die() {
    echo "slurm-up: $*" >&2
    exit 1
}
say() { echo "slurm-up: $*"; }

[[ "$(id -u)" == 0 ]] || die "must run as root (it installs packages and starts daemons); skipping SLURM."

install_if_missing() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
        return
    fi
    command -v apt-get >/dev/null || die "slurmctld/slurmd/munged missing and no apt-get to install them."
    say "installing slurm-wlm and munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update >/dev/null || die "apt-get update failed (no network?)."
    apt-get install -y slurm-wlm munge >/dev/null || die "apt-get install slurm-wlm munge failed."
}

# Alive and the named program (pid file written by this script).
pid_alive() {
    local name=$1 file="$STARTED/$1.pid" pid
    [[ -f "$file" ]] || return 1
    pid=$(cat "$file")
    [[ -n "$pid" && -d "/proc/$pid" ]] || return 1
    grep -q "$name" "/proc/$pid/comm" 2>/dev/null
}

# Wait until a command succeeds, up to $1 seconds.
wait_for() {
    local seconds=$1
    shift
    for _ in $(seq "$seconds"); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 1
    done
    return 1
}

munge_works() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_works; then
        say "munged already answers; using it"
        return
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        say "creating /etc/munge/munge.key"
        if command -v mungekey >/dev/null; then
            mungekey --create --force
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
        fi
    fi
    chown -R munge:munge /etc/munge 2>/dev/null || true
    chmod 700 /etc/munge
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    # -f: run although it is root and directory permissions are not as strict as munge wants.
    munged -f --pid-file="$STARTED/munged.pid" || die "munged failed to start (see /var/log/munge/munged.log)."
    wait_for 10 munge_works || die "munged started but munge/unmunge does not work."
    say "munged started"
}

write_config() {
    local host cpus mem_mb gpus files
    host=$(hostname -s)
    cpus=${LUNGFUSION_SLURM_CPUS:-$(($(nproc) > 4 ? $(nproc) : 4))}
    # Leave some memory to the host; the node advertises the rest.
    mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    gpus=${LUNGFUSION_SLURM_GPUS:-2}
    case "$gpus" in
    1) files=/dev/null ;;
    2) files=/dev/null,/dev/zero ;;
    *) die "LUNGFUSION_SLURM_GPUS must be 1 or 2, got '$gpus'" ;;
    esac

    if [[ -f "$CONF" ]] && ! grep -qF "$MARKER" "$CONF"; then
        die "$CONF exists and was not written by this script; refusing to overwrite another cluster's config."
    fi
    mkdir -p "$CONF_DIR" "$STATE_SPOOL/ctld" "$STATE_SPOOL/d" "$STATE_LOG"
    cat >"$CONF.tmp" <<EOF
$MARKER
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE_SPOOL/ctld
SlurmdSpoolDir=$STATE_SPOOL/d
SlurmctldPidFile=$STATE_RUN/slurmctld.pid
SlurmdPidFile=$STATE_RUN/slurmd.pid
SlurmctldLogFile=$STATE_LOG/slurmctld.log
SlurmdLogFile=$STATE_LOG/slurmd.log
# No cgroups in containers: track processes by parent pid, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# The node may advertise more CPUs than the machine has, so rules with several threads fit.
SlurmdParameters=config_overrides
# Accounting off: sacct does not work, squeue is the status command. Keep finished jobs
# visible to squeue long enough for the executor's status checks and for tests to inspect.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=600
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MessageTimeout=30
GresTypes=gpu
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb Gres=gpu:$gpus State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$host MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
    # .ci/slurm-down.sh removes the config with the daemons: a slurm.conf naming a stopped
    # controller makes every `scontrol` wait, and the SLURM executor plugin runs one at import,
    # so every later Snakemake command would pay its 10 s timeout.
    touch "$STARTED/config"
    cat >"$CONF_DIR/gres.conf" <<EOF
$MARKER
# Fake GPUs: any existing device files will do, nothing is bound to them.
NodeName=$host Name=gpu File=$files
EOF
    # Debian ships a plugstack.conf that includes plugstack.conf.d; leave it as it is.
}

node_state() { sinfo -h -N -o %T 2>/dev/null | head -1; }

node_idle() {
    local state
    state=$(node_state)
    [[ "$state" == idle* || "$state" == mixed* || "$state" == allocated* ]]
}

start_slurm() {
    mkdir -p "$STARTED"
    if ! pid_alive slurmctld; then
        rm -f "$STATE_RUN/slurmctld.pid"
        slurmctld -i || die "slurmctld failed to start; see $STATE_LOG/slurmctld.log"
        wait_for 20 test -s "$STATE_RUN/slurmctld.pid" || die "slurmctld wrote no pid file; see $STATE_LOG/slurmctld.log"
        cp "$STATE_RUN/slurmctld.pid" "$STARTED/slurmctld.pid"
        say "slurmctld started"
    fi
    wait_for 30 scontrol ping || die "slurmctld does not answer; see $STATE_LOG/slurmctld.log"
    if ! pid_alive slurmd; then
        rm -f "$STATE_RUN/slurmd.pid"
        slurmd || die "slurmd failed to start; see $STATE_LOG/slurmd.log"
        wait_for 20 test -s "$STATE_RUN/slurmd.pid" || die "slurmd wrote no pid file; see $STATE_LOG/slurmd.log"
        cp "$STATE_RUN/slurmd.pid" "$STARTED/slurmd.pid"
        say "slurmd started"
    fi
}

wait_node_idle() {
    local host
    host=$(hostname -s)
    if wait_for 30 node_idle; then
        return
    fi
    # A node left down or drained by an earlier run: put it back in service once.
    scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
    wait_for 30 node_idle || die "node $host is '$(node_state)', not idle; see $STATE_LOG/slurmd.log"
}

main() {
    install_if_missing
    mkdir -p "$STARTED"
    if pid_alive slurmctld && pid_alive slurmd && scontrol ping >/dev/null 2>&1; then
        say "cluster already running"
        wait_node_idle
        sinfo
        exit 0
    fi
    start_munge
    if ! pid_alive slurmctld && ! pid_alive slurmd; then
        write_config
    fi
    start_slurm
    wait_node_idle
    say "cluster '$CLUSTER' up"
    sinfo
}

main "$@"
