"""submitit on the real local SLURM scheduler (scripts/slurm-up.sh): arrays, failures, cancels.

These are the scheduler behaviours the launcher relies on: one ``map_array`` call is one SLURM
array; a task's exception reaches the submitter without touching its siblings; and a cancelled
job's final state is read back through accounting (sacct) instead of staying UNKNOWN, the case
where submitit's ``result()`` would otherwise wait forever.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cloudpickle
import pytest
import submitit
from submitit.core.utils import FailedJobError

pytestmark = pytest.mark.slurm

# Jobs unpickle the submitted callable in a fresh interpreter where this test module is not
# importable (tests/ is not a package on the job's sys.path): ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

# Deadline for jobs that take ~1-3 s on an idle 2-core node; reached only when something is wrong.
_JOB_DEADLINE_S = 45.0


def _square_and_array_ids(x: int) -> tuple[int, str, str]:
    """Runs in the job: x squared, with the SLURM array job id and task index it ran under."""
    env = os.environ
    return x * x, env.get("SLURM_ARRAY_JOB_ID", ""), env.get("SLURM_ARRAY_TASK_ID", "")


def _increment_non_negative(x: int) -> int:
    """Runs in the job: x + 1, raising ValueError for negative x."""
    if x < 0:
        raise ValueError(f"negative input {x} rejected")
    return x + 1


def _executor(folder: Path, partition: str) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=folder)
    # AutoExecutor silently falls back to local processes when srun is missing.
    assert executor.cluster == "slurm", f"submitit chose {executor.cluster!r}, not slurm"
    executor.update_parameters(
        slurm_partition=partition,
        cpus_per_task=1,
        mem_gb=0.25,
        # submitit asks for USR2 90 s before the limit and slurmctld sends it up to 60 s early
        # (its periodic check): with a limit under ~3 min the signal arrives at start and kills
        # the task before submitit installs its handler.
        timeout_min=10,
        slurm_array_parallelism=2,
    )
    return executor


def _wait_until(condition: Callable[[], bool], jobs: Sequence[submitit.Job], what: str) -> None:
    """Poll ``condition`` until true; fail with the jobs' states after the deadline.

    Polling with a deadline instead of ``result()``: result() blocks 15 s past a job's end when
    the job wrote no result, and forever when the job's state cannot be read.
    """
    deadline = time.monotonic() + _JOB_DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            states = ", ".join(f"{job.job_id}={job.state}" for job in jobs)
            pytest.fail(f"jobs not {what} after {_JOB_DEADLINE_S:.0f} s: {states}")
        time.sleep(0.25)


def _wait_done(jobs: Sequence[submitit.Job]) -> None:
    _wait_until(lambda: all(job.done(force_check=True) for job in jobs), jobs, "done")


def test_map_array_is_one_slurm_array_with_right_results(slurm_cluster, tmp_path):
    executor = _executor(tmp_path / "submitit", slurm_cluster.partition)

    jobs = executor.map_array(_square_and_array_ids, [3, 4])
    _wait_done(jobs)

    array_id = jobs[0].job_id.split("_")[0]
    assert array_id.isdigit()
    assert [job.job_id for job in jobs] == [f"{array_id}_0", f"{array_id}_1"]
    # The ids seen inside the tasks prove they ran as that array on the scheduler.
    assert [job.result() for job in jobs] == [(9, array_id, "0"), (16, array_id, "1")]


def test_failing_task_surfaces_its_error_and_spares_its_sibling(slurm_cluster, tmp_path):
    executor = _executor(tmp_path / "submitit", slurm_cluster.partition)

    ok, bad = executor.map_array(_increment_non_negative, [1, -1])
    _wait_done([ok, bad])

    assert ok.result() == 2
    with pytest.raises(FailedJobError, match="negative input -1 rejected"):
        bad.result()
    assert "negative input -1 rejected" in str(bad.exception())


def test_cancelled_job_state_is_read_from_accounting(slurm_cluster, tmp_path):
    executor = _executor(tmp_path / "submitit", slurm_cluster.partition)
    job = executor.submit(time.sleep, 300)
    _wait_until(lambda: job.get_info(mode="force").get("State") == "RUNNING", [job], "running")

    job.cancel()
    _wait_done([job])

    # Without slurmdbd, sacct fails and submitit reports UNKNOWN here (and never finishes).
    assert job.state.startswith("CANCELLED"), job.state
    assert not job.paths.result_pickle.exists()
