#!/usr/bin/env bash
# The cpu-profile study on one machine (RESULTS.md): for each ablation file given (default: the
# six of the study, ordered so that a later file takes over the points an earlier one ran),
# LANES `detcon run` processes side by side, one thread each. They share the work through the
# points' locks: a lane skips a point another lane holds ("running elsewhere") and takes the
# next, so LANES points run at a time. When an ablation's lanes end, its finished points are
# exported into RESULTS_DIR (`detcon export`); at the end `detcon figures --notebooks` and
# `detcon claims` regenerate figures/, the index pages, the report notebooks and RESULTS.md.
#
# Resumable: run it again and finished points are skipped, interrupted ones resume from their
# checkpoints. Commit what it exported as it goes (run directories are not meant to be kept):
#   git add results figures RESULTS.md && git commit -m "study: ..."
#
# Usage:  nohup scripts/study.sh RUNS_DIR [ABLATION.yaml ...] > study.log 2>&1 &
# Env:    LANES (default 2), DETCON (default .venv/bin/detcon), RESULTS_DIR (default results),
#         STAGGER (seconds between starting two lanes, default 5). With RESULTS_DIR elsewhere
#         the figures and the claims go there too (RESULTS_DIR/figures, RESULTS_DIR/RESULTS.md),
#         not over the committed ones; FIGURES_DIR and CLAIMS_OUT set them explicitly.
# Killed (TERM or INT), it stops its lanes too: a second run then resumes their points.
# Launch every ablation of one study from the same runs folder: the random-init floor and the
# supervised ceiling are computed once in RUNS_DIR/.references, and a point of one ablation that
# equals a finished one of another is taken over instead of trained again (docs/design.md §2.2).
set -uo pipefail
USAGE="usage: scripts/study.sh RUNS_DIR [ABLATION.yaml ...] (env: LANES, DETCON, RESULTS_DIR, STAGGER)"
RUNS=${1:?$USAGE}
case $RUNS in
    -h|--help) echo "$USAGE"; exit 0 ;;
    -*) echo "scripts/study.sh: $RUNS: expected a runs folder, not an option; $USAGE" >&2; exit 2 ;;
esac
shift
for file in "$@"; do  # every file checked before any lane starts
    [ -f "$file" ] || { echo "scripts/study.sh: no ablation file $file; $USAGE" >&2; exit 2; }
done
if [ $# -eq 0 ]; then
    set -- ablations/baselines.yaml ablations/mask_type.yaml ablations/negatives.yaml \
        ablations/single_view.yaml ablations/sample_efficiency.yaml ablations/resolution.yaml
fi
ABLATIONS_DIR=$(dirname "$1")  # detcon figures reads the files of one folder
for file in "$@"; do
    [ "$(dirname "$file")" -ef "$ABLATIONS_DIR" ] || {  # -ef: no realpath (GNU -m, macOS 13+)
        echo "scripts/study.sh: $file is not in $ABLATIONS_DIR: the ablation files of one" \
            "study are read from one folder (detcon figures --ablations-dir); $USAGE" >&2
        exit 2
    }
done
LANES=${LANES:-2}
STAGGER=${STAGGER:-5}
DETCON=${DETCON:-.venv/bin/detcon}
RESULTS_DIR=${RESULTS_DIR:-results}
mkdir -p "$RESULTS_DIR"
if [ "$RESULTS_DIR" -ef results ]; then  # ./results, results/ and links to it too
    FIGURES_DIR=${FIGURES_DIR:-figures} CLAIMS_OUT=${CLAIMS_OUT:-RESULTS.md}
else
    FIGURES_DIR=${FIGURES_DIR:-$RESULTS_DIR/figures} CLAIMS_OUT=${CLAIMS_OUT:-$RESULTS_DIR/RESULTS.md}
fi
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$RUNS"

status=0
pids=()
# the lanes are this script's children: killed, it stops them (left running, they held their
# points' locks and a resumed study skipped those points as "running elsewhere")
trap 'kill "${pids[@]}" 2>/dev/null; wait; exit 143' INT TERM
for ablation in "$@"; do
    name=$(basename "$ablation" .yaml)
    echo "== $name: $LANES lanes, logs in $RUNS/$name.lane<N>.log ($(date -u +%FT%TZ))"
    pids=()
    for lane in $(seq 1 "$LANES"); do
        "$DETCON" run "$ablation" --profile cpu --runs-dir "$RUNS" > "$RUNS/$name.lane$lane.log" 2>&1 &
        pids+=($!)
        sleep "$STAGGER"  # the first lane takes its first point's lock before the next one plans
    done
    for pid in "${pids[@]}"; do
        wait "$pid" || status=1  # a failed point: named in the lane's log, the others go on
    done
    grep -h "FAILED" "$RUNS/$name".lane*.log || true
    "$DETCON" export "$ablation" --profile cpu --runs-dir "$RUNS" --to "$RESULTS_DIR" || status=1
done
mkdir -p "$FIGURES_DIR"
if [ ! -f "$FIGURES_DIR/mask_quality.csv" ] && [ -f figures/mask_quality.csv ]; then
    cp figures/mask_quality.csv "$FIGURES_DIR/"  # the mask-quality figures read it there
fi
"$DETCON" figures --ablations-dir "$ABLATIONS_DIR" --results-dir "$RESULTS_DIR" \
    --figures-dir "$FIGURES_DIR" --notebooks &&
    "$DETCON" claims --results "$RESULTS_DIR" --out "$CLAIMS_OUT" \
        --mask-quality "$FIGURES_DIR/mask_quality.csv" --figures-dir "$FIGURES_DIR" || status=1
echo "== study: finished with status $status ($(date -u +%FT%TZ))"
exit $status
