#!/usr/bin/env bash
# Run a queue of cpu-profile experiments (docs/cpu-miniature.md): each line of QUEUE is
#   NAME SEED [KEY=VALUE ...]
# and becomes `detcon pretrain --profile cpu --out RUNS/NAME-sSEED --set seed=SEED --set KEY=VALUE...`
# followed by `detcon evaluate` of the probes in TASKS (default segmentation,depth,linear). A
# NAME that is "random" or "supervised", or starts with "random_" or "supervised_" (e.g.
# random_cls4), evaluates that backbone instead of pretraining (the floor and the ceiling), as
# miniature_table.py reads it. EVAL_ARGS are appended to every evaluate call (e.g. "--split
# val"). Finished points (an eval file exists) are skipped, so the queue is resumable; a point
# started with other TASKS or EVAL_ARGS (RUNS/NAME-sSEED/eval_args, written before it runs) is
# refused, not taken for this run's. WORKERS lines run at once, one thread each. Wall times go to RUNS/NAME-sSEED/wall.
set -uo pipefail
QUEUE=${1:?usage: scripts/miniature.sh QUEUE_FILE RUNS_DIR [WORKERS]}
RUNS=${2:?usage: scripts/miniature.sh QUEUE_FILE RUNS_DIR [WORKERS]}
WORKERS=${3:-2}
DETCON=${DETCON:-.venv/bin/detcon}
EVAL_ARGS=${EVAL_ARGS:-}
TASKS=${TASKS:-segmentation,depth,linear}
mkdir -p "$RUNS"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

run_one() {
    local name=$1 seed=$2; shift 2
    local dir="$RUNS/$name-s$seed" sets=(--set "seed=$seed")
    for kv in "$@"; do sets+=(--set "$kv"); done
    local t0=$SECONDS args="$TASKS $EVAL_ARGS"
    if [ -f "$dir/eval_args" ] && [ "$(cat "$dir/eval_args")" != "$args" ]; then
        echo "FAILED $name-s$seed: started with '$(cat "$dir/eval_args")', not '$args'" \
            "(another RUNS_DIR, or remove $dir)"
        return 1
    fi
    # recorded before any work (a kill after the eval file must not leave it unguarded)
    mkdir -p "$dir" && echo "$args" > "$dir/.eval_args.tmp" &&
        mv "$dir/.eval_args.tmp" "$dir/eval_args"
    case ${name%%_*} in
        random|supervised)
            local backbone=${name%%_*}
            [ -f "$dir/eval_$backbone.json" ] && return 0
            "$DETCON" pretrain --profile cpu --out "$dir" "${sets[@]}" --stop-after 0 --quiet \
                > "$dir.log" 2>&1 || mkdir -p "$dir"
            "$DETCON" evaluate "$dir" --backbone "$backbone" --seed "$seed" --tasks "$TASKS" --quiet \
                $EVAL_ARGS >> "$dir.log" 2>&1 || { echo "FAILED $name-s$seed"; return 1; }
            ;;
        *)
            [ -f "$dir/eval.json" ] && return 0
            "$DETCON" pretrain --profile cpu --out "$dir" "${sets[@]}" --quiet > "$dir.log" 2>&1 &&
            "$DETCON" evaluate "$dir" --seed "$seed" --tasks "$TASKS" --quiet $EVAL_ARGS \
                >> "$dir.log" 2>&1 || { echo "FAILED $name-s$seed (see $dir.log)"; return 1; }
            ;;
    esac
    echo "$((SECONDS - t0))" > "$dir/wall"
    echo "done $name-s$seed in $((SECONDS - t0)) s"
}
export -f run_one
export RUNS DETCON EVAL_ARGS TASKS
# every process under this one, deepest first (pgrep: procps)
kill_tree() {
    local child
    for child in $(pgrep -P "$1"); do kill_tree "$child"; done
    kill "$1" 2>/dev/null
}
# killed, it stops its workers and their detcon processes too (they outlived it)
trap 'for child in $(pgrep -P $$); do kill_tree "$child"; done; exit 143' INT TERM
# trailing blanks stripped: `xargs -L 1` would join a line ending in one with the next; -r: a
# queue of comments only runs nothing (not one empty point)
{ grep -v '^\s*\(#\|$\)' "$QUEUE" || true; } | sed 's/[[:space:]]*$//' |
    xargs -r -P "$WORKERS" -L 1 bash -c 'run_one "$@"' _ &
wait $!
