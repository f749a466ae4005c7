#!/usr/bin/env bash
# Start a private single-node SLURM cluster on this machine, for detcon's tests and for trying an
# ablation grid with `--executor slurm` on a workstation.
#
#   bash scripts/slurm-up.sh        (or `make slurm-up`; stop it with scripts/slurm-down.sh)
#
# Needs root and Debian/Ubuntu packages (installed here with apt-get when missing). Starts, in
# order, munged -> MariaDB (unix socket only) -> slurmdbd -> slurmctld -> slurmd, waits until
# each answers, and records each pid in $SLURM_LOCAL_DIR/pids. Every file it writes (config,
# state, logs, sockets) is under $SLURM_LOCAL_DIR (default <repo>/.slurm-local). Idempotent: if
# our cluster is already up and healthy it says so and exits 0.
# Facts behind the choices (plugins, accounting, readiness checks): the comments in
# scripts/slurm/slurm.conf.in.
set -euo pipefail

# shellcheck source=slurm/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/slurm/lib.sh"

PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
CLUSTER=detcon
START_MS="$(now_ms)"
STEP_MS="$START_MS"

say() { echo "slurm-up: $*"; }

# fail NAME MESSAGE: explain, show the end of NAME's log, exit non-zero. Daemons already started
# stay recorded, so scripts/slurm-down.sh (or the next slurm-up.sh) stops them.
fail() {
    local name="$1" log
    shift
    echo "slurm-up: ERROR: $*" >&2
    # The daemon's own log; its stderr when it died before opening one.
    log="$SLURM_LOG/$name.log"
    [[ -s "$log" ]] || log="$SLURM_LOG/$name.stderr"
    if [[ -s "$log" ]]; then
        echo "---- last lines of $log ----" >&2
        tail -n 25 "$log" >&2
    fi
    echo "slurm-up: stop what was started with:" \
        "${SLURM_LOCAL_DIR:+SLURM_LOCAL_DIR=$SLURM_LOCAL_DIR }bash scripts/slurm-down.sh" >&2
    exit 1
}

step_done() {
    say "$1 ready ($(seconds_since "$STEP_MS") s)"
    STEP_MS="$(now_ms)"
}

# start NAME CMD...: run CMD as a detached daemon (own session, no terminal, stdin closed,
# output to $SLURM_LOG/NAME.stderr so no caller reading our output can hang on it), record pid.
start() {
    local name="$1" pid
    shift
    setsid "$@" </dev/null >>"$SLURM_LOG/$name.stderr" 2>&1 &
    pid=$!
    echo "$name $pid" >>"$SLURM_PIDS"
    say "started $name (pid $pid)"
}

# wait_ready NAME SECONDS PROBE...: poll PROBE until it succeeds; fail at once if NAME died.
wait_ready() {
    local name="$1" seconds="$2" pid deadline
    shift 2
    pid="$(recorded_pid "$name")"
    deadline=$(($(now_ms) + seconds * 1000))
    until "$@" >/dev/null 2>&1; do
        pid_alive "$pid" || fail "$name" "$name (pid $pid) exited during start-up"
        (($(now_ms) < deadline)) || fail "$name" "$name not ready after $seconds s (check: $*)"
        sleep 0.1
    done
}

# render TEMPLATE OUT MODE KEY=VALUE...: fill @KEY@ fields, write atomically with MODE.
render() {
    local template="$1" out="$2" mode="$3" text kv key
    shift 3
    text="$(<"$template")"
    for kv in "$@"; do
        key="${kv%%=*}"
        text="${text//"@$key@"/"${kv#*=}"}"
    done
    if [[ "$text" =~ @[A-Z_]+@ ]]; then
        echo "slurm-up: ERROR: $template: field ${BASH_REMATCH[0]} has no value" >&2
        exit 1
    fi
    printf '%s\n' "$text" >"$out.tmp"
    chmod "$mode" "$out.tmp"
    mv -f "$out.tmp" "$out"
}

# ---------------------------------------------------------------------------- preconditions
if [[ "$(id -u)" != 0 ]]; then
    echo "slurm-up: ERROR: needs root (it installs packages and runs the SLURM daemons);" \
        "run: sudo bash scripts/slurm-up.sh" >&2
    exit 1
fi

if [[ "$SLURM_DIR" =~ [[:space:]] ]]; then
    echo "slurm-up: ERROR: SLURM_LOCAL_DIR '$SLURM_DIR' contains white space;" \
        "slurm.conf paths cannot: choose another directory" >&2
    exit 1
fi

# Already up? All recorded daemons alive and the cluster answering: nothing to do.
if cluster_up; then
    say "already up and healthy (state in $SLURM_DIR); nothing to do"
    exit 0
fi
if [[ -f "$SLURM_PIDS" ]]; then
    say "a previous start is incomplete or unhealthy; stopping what it recorded first"
    stop_recorded slurm-up
    STEP_MS="$(now_ms)"
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
        missing+=("$pkg")
done
if ((${#missing[@]})); then
    command -v apt-get >/dev/null ||
        { echo "slurm-up: ERROR: missing packages ${missing[*]} and no apt-get" >&2; exit 1; }
    say "installing ${missing[*]} (apt-get)"
    # The packages' post-install scripts start no daemon where policy-rc.d forbids it (CI
    # images); where they do start the distribution's own services, ours use other paths.
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq </dev/null ||
        { echo "slurm-up: ERROR: apt-get update failed" >&2; exit 1; }
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" </dev/null >/dev/null ||
        { echo "slurm-up: ERROR: apt-get install ${PACKAGES[*]} failed" >&2; exit 1; }
    step_done "packages"
fi

# ---------------------------------------------------------------------------- configuration
mkdir -p "$SLURM_ETC" "$SLURM_RUN" "$SLURM_LOG" "$SLURM_DIR/munge" "$SLURM_DIR/spool/slurmctld" \
    "$SLURM_DIR/spool/slurmd"
# munged insists that only its owner can write the directories of its key and socket.
chmod 755 "$SLURM_DIR" "$SLURM_RUN"
chmod 700 "$SLURM_DIR/munge"
: >"$SLURM_PIDS"

HOST="$(hostname -s)"
# e.g. "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1
# RealMemory=24152": keep the CPU layout, take RealMemory 5% lower (room for the daemons).
hardware="$(env -u SLURM_CONF slurmd -C | head -n 1)"
node_hardware="$(grep -oE '(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=[0-9]+' \
    <<<"$hardware" | tr '\n' ' ')"
cpus="$(grep -oE 'CPUs=[0-9]+' <<<"$hardware" | cut -d= -f2)"
memory="$(grep -oE 'RealMemory=[0-9]+' <<<"$hardware" | cut -d= -f2)"
[[ -n "$cpus" && -n "$memory" ]] || fail slurmd "cannot parse \`slurmd -C\`: $hardware"
real_memory=$((memory * 95 / 100))
# 1 GiB per CPU by default, less on nodes with less memory per CPU.
def_mem_per_cpu=$((real_memory / cpus < 1024 ? real_memory / cpus : 1024))

fields=(DIR="$SLURM_DIR" RUN="$SLURM_RUN" LOG="$SLURM_LOG" CLUSTER="$CLUSTER" HOST="$HOST"
    PARTITION="$SLURM_PARTITION" NODE_HARDWARE="${node_hardware% }" REAL_MEMORY="$real_memory"
    DEF_MEM_PER_CPU="$def_mem_per_cpu")
render "$SLURM_REPO/scripts/slurm/slurm.conf.in" "$SLURM_ETC/slurm.conf" 644 "${fields[@]}"
render "$SLURM_REPO/scripts/slurm/slurmdbd.conf.in" "$SLURM_ETC/slurmdbd.conf" 600 "${fields[@]}"
printf 'export SLURM_CONF=%q\n' "$SLURM_CONF" >"$SLURM_DIR/env.sh.tmp"
mv -f "$SLURM_DIR/env.sh.tmp" "$SLURM_DIR/env.sh"

step_done "configuration"

# ---------------------------------------------------------------------------- munge
if [[ ! -s "$SLURM_DIR/munge/munge.key" ]]; then
    mungekey --create --keyfile="$SLURM_DIR/munge/munge.key"
    chmod 600 "$SLURM_DIR/munge/munge.key"
fi
munge_args=(--foreground --key-file="$SLURM_DIR/munge/munge.key" --socket="$SLURM_RUN/munge.socket"
    --pid-file="$SLURM_RUN/munged.pid" --seed-file="$SLURM_DIR/munge/munged.seed"
    --log-file="$SLURM_LOG/munged.log")
# munged refuses a socket that other users cannot reach (e.g. under /root, mode 700) unless
# forced; then only root can use this cluster, which is how CI runs.
if ! runuser -u nobody -- test -x "$SLURM_RUN" 2>/dev/null; then
    say "note: $SLURM_RUN is not reachable by other users; only root can submit jobs"
    munge_args+=(--force)
fi
start munged munged "${munge_args[@]}"
munge_ok() { munge -n -S "$SLURM_RUN/munge.socket" | unmunge -S "$SLURM_RUN/munge.socket"; }
wait_ready munged 10 munge_ok
step_done "munged"

# ---------------------------------------------------------------------------- MariaDB
# Our own server and data directory, no option files read (--no-defaults), no TCP.
mysql_sock="$SLURM_RUN/mysqld.sock"
# A 16 MB redo log instead of 96 MB: the data directory takes ~26 MB instead of ~114 MB.
mysql_args=(--no-defaults --user=root --datadir="$SLURM_DIR/mysql" --innodb-log-file-size=16M)
if [[ ! -d "$SLURM_DIR/mysql/mysql" ]]; then
    rm -rf "$SLURM_DIR/mysql"
    mariadb-install-db "${mysql_args[@]}" --auth-root-authentication-method=socket \
        --skip-test-db </dev/null >"$SLURM_LOG/mariadb-install.log" 2>&1 ||
        fail mariadb-install "mariadb-install-db failed"
fi
start mariadbd mariadbd "${mysql_args[@]}" --socket="$mysql_sock" --skip-networking \
    --pid-file="$SLURM_RUN/mariadbd.pid" --log-error="$SLURM_LOG/mariadbd.log"
wait_ready mariadbd 60 mariadb --no-defaults --socket="$mysql_sock" -u root -e 'select 1'
step_done "mariadbd"

# ---------------------------------------------------------------------------- slurmdbd
# slurmdbd finds slurmdbd.conf next to $SLURM_CONF; MYSQL_UNIX_PORT points its client at ours.
start slurmdbd env MYSQL_UNIX_PORT="$mysql_sock" slurmdbd -D
wait_ready slurmdbd 30 sacctmgr -n show cluster
if ! sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null || fail slurmdbd "sacctmgr add cluster failed"
fi
step_done "slurmdbd"

# ---------------------------------------------------------------------------- slurmctld
start slurmctld slurmctld -D
wait_ready slurmctld 30 controller_up
step_done "slurmctld"

# ---------------------------------------------------------------------------- slurmd
start slurmd slurmd -D -N "$HOST"
node_idle() { [[ "$(node_state)" =~ ^(idle|mixed|allocated|completing)$ ]]; }
deadline=$(($(now_ms) + 30000))
resumed=0
until node_idle; do
    pid_alive "$(recorded_pid slurmd)" || fail slurmd "slurmd exited during start-up"
    state="$(node_state)"
    # A node left drained/down by an earlier run: resume it once.
    if ((!resumed)) && [[ "$state" =~ ^(drain|drained|draining|down|fail)$ ]]; then
        say "node $HOST is $state; resuming it"
        scontrol update nodename="$HOST" state=resume || true
        resumed=1
    fi
    (($(now_ms) < deadline)) || fail slurmd "node $HOST is '$state', not idle, after 30 s"
    sleep 0.2
done
wait_ready slurmctld 10 accounting_works
step_done "slurmd"

# Only once our cluster is up (a failed start must not redirect a working one): commands
# run without SLURM_CONF (a new shell, `detcon run --executor slurm`) read /etc/slurm/slurm.conf:
# point it at ours unless it is a real file (another cluster's).
etc_conf=/etc/slurm/slurm.conf
if [[ -L "$etc_conf" || ! -e "$etc_conf" ]]; then
    mkdir -p /etc/slurm
    ln -sfn "$SLURM_CONF" "$etc_conf"
    conf_note="linked from $etc_conf"
else
    conf_note="$etc_conf belongs to another cluster: run \`source $SLURM_DIR/env.sh\` first"
fi

say "UP in $(seconds_since "$START_MS") s: cluster $CLUSTER, partition $SLURM_PARTITION," \
    "node $HOST ($cpus CPUs, $real_memory MB, DefMemPerCPU=$def_mem_per_cpu MB)"
say "config $SLURM_CONF ($conf_note); logs in $SLURM_LOG"
say "memory limits are not enforced (no cgroups); stop with: bash scripts/slurm-down.sh"
