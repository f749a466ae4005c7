#!/usr/bin/env bash
# Stop the private SLURM cluster started by scripts/slurm-up.sh (or `make slurm-down`).
#
# Signals only the daemons recorded in $SLURM_LOCAL_DIR/pids (default <repo>/.slurm-local/pids),
# in reverse start order: TERM, then KILL after a deadline. Jobs still queued or running are
# cancelled first, so no job step outlives its slurmd. Configuration, the munge key, the
# accounting database and SLURM's state stay in place: a later slurm-up.sh starts the same
# cluster again (job ids continue).
set -euo pipefail

# shellcheck source=slurm/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/slurm/lib.sh"

START_MS="$(now_ms)"
if [[ ! -f "$SLURM_PIDS" ]]; then
    echo "slurm-down: nothing to stop (no $SLURM_PIDS)"
    exit 0
fi

ctld_pid="$(recorded_pid slurmctld)"
if [[ -n "$ctld_pid" ]] && pid_is slurmctld "$ctld_pid" && controller_up; then
    jobs="$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')"
    if [[ -n "${jobs// /}" ]]; then
        echo "slurm-down: cancelling jobs still queued or running: $jobs"
        # shellcheck disable=SC2086  # one argument per job id
        scancel $jobs || true
        # KillWait=5 in slurm.conf: a job step is killed at most ~5 s after the cancel.
        deadline=$(($(now_ms) + 15000))
        while [[ -n "$(squeue -h -o %A 2>/dev/null)" ]] && (($(now_ms) < deadline)); do
            sleep 0.2
        done
    fi
fi

stop_recorded slurm-down
echo "slurm-down: done in $(seconds_since "$START_MS") s (state kept in $SLURM_DIR)"
