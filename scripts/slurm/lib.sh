# Shared by scripts/slurm-up.sh and scripts/slurm-down.sh (sourced, not run).
#
# The private single-node cluster lives in one directory, $SLURM_LOCAL_DIR (default
# <repo>/.slurm-local): configuration, munge key, MariaDB data, SLURM state, logs, sockets and
# `pids`, the record of every daemon these scripts started ("name pid" per line, start order).
# Only pids in that record are ever signalled: never a process found by name.

SLURM_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SLURM_DIR="${SLURM_LOCAL_DIR:-$SLURM_REPO/.slurm-local}"
SLURM_ETC="$SLURM_DIR/etc"
SLURM_RUN="$SLURM_DIR/run"
SLURM_LOG="$SLURM_DIR/log"
SLURM_PIDS="$SLURM_DIR/pids"
SLURM_PARTITION=local
# Daemons in start order; slurm-down.sh stops them in reverse.
SLURM_DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)

# Every SLURM command below (and every job, through sbatch's environment export) reads our config.
export SLURM_CONF="$SLURM_ETC/slurm.conf"

now_ms() { date +%s%3N; }

# seconds_since START_MS -> "1.23"
seconds_since() {
    local ms=$(($(now_ms) - $1))
    printf '%d.%02d' $((ms / 1000)) $((ms % 1000 / 10))
}

# pid_alive PID: true when PID exists and is not a zombie. Orphaned daemons are reparented to a
# PID 1 that may reap them late, so a zombie counts as dead.
pid_alive() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    [[ "${stat:0:1}" != Z ]]
}

# pid_is NAME PID: PID is alive and still runs the program NAME (guards against pid reuse).
pid_is() {
    pid_alive "$2" || return 1
    [[ "$(cat "/proc/$2/comm" 2>/dev/null)" == "$1" ]]
}

# recorded_pid NAME: the pid recorded for NAME, or nothing.
recorded_pid() {
    [[ -f "$SLURM_PIDS" ]] || return 0
    awk -v name="$1" '$1 == name { pid = $2 } END { if (pid) print pid }' "$SLURM_PIDS"
}

# stop_recorded PREFIX: TERM each recorded daemon in reverse start order, KILL it after a
# deadline, then forget the record. Prints what it did, prefixed with PREFIX.
stop_recorded() {
    local prefix="$1" i name pid deadline
    [[ -f "$SLURM_PIDS" ]] || { echo "$prefix: no daemons recorded in $SLURM_PIDS"; return 0; }
    for ((i = ${#SLURM_DAEMONS[@]} - 1; i >= 0; i--)); do
        name="${SLURM_DAEMONS[i]}"
        pid="$(recorded_pid "$name")"
        [[ -n "$pid" ]] || continue
        if ! pid_is "$name" "$pid"; then
            echo "$prefix: $name (pid $pid) is not running"
            continue
        fi
        kill -TERM "$pid" 2>/dev/null || true
        # MariaDB flushes InnoDB on TERM: give it longer than the SLURM daemons.
        deadline=$(($(now_ms) + $([[ "$name" == mariadbd ]] && echo 30000 || echo 10000)))
        while pid_alive "$pid" && (($(now_ms) < deadline)); do sleep 0.1; done
        if pid_alive "$pid"; then
            echo "$prefix: $name (pid $pid) ignored TERM; sending KILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.2
        fi
        echo "$prefix: stopped $name (pid $pid)"
    done
    # slurmctld/slurmd read their old pid file at start and signal that pid if it is alive: a
    # stale file naming a reused pid would make them kill an unrelated process.
    rm -f "$SLURM_PIDS" "$SLURM_RUN"/slurmctld.pid "$SLURM_RUN"/slurmd.pid \
        "$SLURM_RUN"/slurmdbd.pid "$SLURM_RUN"/munged.pid "$SLURM_RUN"/mariadbd.pid
}

# node_state: the state of our node as sinfo prints it, lower case, without its flag suffixes
# (`*` not responding, `~` powered down, ...). Only call once `scontrol ping` says UP: sinfo
# stalls about 9 s when the controller is down.
node_state() {
    sinfo -h -p "$SLURM_PARTITION" -o %T 2>/dev/null | head -n 1 | tr -d '*~#!%$@^-' |
        tr '[:upper:]' '[:lower:]'
}

controller_up() { scontrol ping 2>/dev/null | grep -q 'is UP'; }

accounting_works() { sacct -n -X -S now-1hours -o JobID >/dev/null 2>&1; }

# cluster_healthy: controller answers, the node takes jobs, and sacct reads accounting.
cluster_healthy() {
    controller_up || return 1
    [[ "$(node_state)" =~ ^(idle|mixed|allocated|completing)$ ]] || return 1
    accounting_works
}

# cluster_up: every daemon of the record is alive and the cluster answers (slurm-up.sh has
# nothing to do; .ci/run then leaves running a cluster it did not start).
cluster_up() {
    local name pid
    [[ -f "$SLURM_PIDS" ]] || return 1
    for name in "${SLURM_DAEMONS[@]}"; do
        pid="$(recorded_pid "$name")"
        [[ -n "$pid" ]] && pid_is "$name" "$pid" || return 1
    done
    cluster_healthy
}
