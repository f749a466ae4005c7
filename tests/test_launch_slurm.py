"""``detcon run --executor slurm`` on the real local scheduler (scripts/slurm-up.sh).

A grid goes out as one job array and a failing point leaves its siblings alone; a rerun skips
finished points; a point interrupted by USR2 (what SLURM sends before a time limit or a
preemption) is requeued by submitit and resumes from its checkpoint to the same final weights as
an uninterrupted run. The real notebooks run in the jobs; evaluation is left out (it is covered
by tests/test_launch.py) to keep the jobs short.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import torch

from detcon import launch
from detcon.grid import resolve_config
from detcon.runs import read_json
from detcon.train import load_checkpoint, pretrain

pytestmark = pytest.mark.slurm

# Jobs take ~20-60 s on a busy 2-core node (kernel start + imports dominate); reached only when
# something is wrong.
_DEADLINE_S = 300.0
TINY = """
base:
  data.num_images: 16
  data.scene_size: 32
  augment.crop_size: 32
  optim.batch_size: 4
  model.small_width: 8
  model.head_hidden: 32
  model.head_out: 16
  masks.grid_size: 2
  train.threads: 1
"""


def write_ablation(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"name: {name}\ndescription: slurm test\nparameters: {{pretrain: {{num_examples: 1}}}}\n"
        + textwrap.dedent(TINY)
        + textwrap.dedent(text)
    )
    return path


def wait_done(jobs, deadline_s: float = _DEADLINE_S) -> None:
    end = time.monotonic() + deadline_s
    while not all(job.done(force_check=True) for job in jobs):
        if time.monotonic() > end:
            pytest.fail(
                f"jobs {[j.job_id for j in jobs]} not done after {deadline_s} s: "
                f"{[j.state for j in jobs]}"
            )
        time.sleep(1.0)


def test_grid_runs_as_one_array_failures_isolated_reruns_skip(slurm_cluster, tmp_path):
    assert launch.load_cluster_profile("local").partition == slurm_cluster.partition
    empty = tmp_path / "empty-store"
    empty.mkdir()
    path = write_ablation(
        tmp_path,
        "grid3",
        f"""
          train.max_steps: 3
        grid:
          union:
            - product: {{masks.source: [grid, ground_truth]}}
            - point: {{masks.source: external, masks.external_dir: {empty}}}
        """,
    )
    runs = tmp_path / "runs"
    lines: list[str] = []
    result = launch.run_ablation(
        path, executor="slurm", cluster="local", runs_dir=runs, echo=lines.append
    )
    jobs = result.jobs
    assert len(jobs) == 3 and len({j.job_id.split("_")[0] for j in jobs}) == 1  # one array
    assert any(
        f"submitted 3 points as SLURM array {jobs[0].job_id.split('_')[0]}" in x for x in lines
    )
    record = read_json(result.folder / "launch.json")
    assert sorted(record["jobs"].values()) == sorted(j.job_id for j in jobs)
    # the profile's requeue budget reached the submitted job (submitit's own default is 3)
    countdown = jobs[0].submission()._timeout_countdown
    assert countdown == launch.load_cluster_profile("local").max_num_timeout == 20
    wait_done(jobs)

    states = {s.run_id: s for s in launch.ablation_status(path, runs_dir=runs)}
    good = [s for s in states.values() if s.state == "done"]
    failed = [s for s in states.values() if s.state == "failed"]
    assert len(good) == 2 and len(failed) == 1, states
    assert "holds no .png or .npz mask" in failed[0].error
    assert failed[0].notebook and failed[0].notebook.name == "pretrain.html"
    for s in good:
        env = read_json(s.run_dir / "env.json")
        assert env["executor"] == "slurm" and env["slurm"]["SLURM_ARRAY_JOB_ID"]
        assert s.job_id in {j.job_id for j in jobs} and s.steps == 3
        assert (s.run_dir / "pretrain.html").exists() and (s.run_dir / "summary.json").exists()
    errors = [j.exception() for j in jobs]  # the failure reached the submitter, only its own
    assert sum(e is not None for e in errors) == 1
    assert "holds no .png or .npz mask" in str(next(e for e in errors if e is not None))

    # A second launch submits only the failed point (cancelled at once: it would fail again).
    lines.clear()
    again = launch.run_ablation(
        path, executor="slurm", cluster="local", runs_dir=runs, echo=lines.append
    )
    try:
        assert lines[0].endswith("3 points, 2 done, 0 running elsewhere, 1 to run")
        assert len(again.jobs) == 1 and again.folder != result.folder
        assert read_json(again.folder / "launch.json")["jobs"] == {
            failed[0].run_id: again.jobs[0].job_id
        }
    finally:
        for job in again.jobs:
            job.cancel(check=False)


def _release_when_requeued(job_id: str, deadline_s: float = 120.0) -> None:
    """A requeued job waits ~120 s (BeginTime); start it now once it is pending again.

    On a loaded machine the reference training in the test can outlast that wait: a job that
    SLURM already restarted (``Restarts`` >= 1) needs no release.
    """
    end = time.monotonic() + deadline_s
    fields: dict[str, str] = {}
    while time.monotonic() < end:
        out = subprocess.run(
            ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=False
        ).stdout
        fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
        if fields.get("JobState") == "PENDING":  # it ran before the interrupt: requeued
            subprocess.run(
                ["scontrol", "update", f"jobid={job_id}", "StartTime=now"],
                check=True,
                capture_output=True,
            )
            return
        if int(fields.get("Restarts", "0")) >= 1:
            return  # requeued and already started again
        time.sleep(0.5)
    pytest.fail(f"job {job_id} was not requeued (scontrol: {fields.get('JobState')!r})")


def test_interrupted_point_resumes_to_the_same_final_checkpoint(slurm_cluster, tmp_path):
    path = write_ablation(
        tmp_path,
        "resume",
        """
          optim.epochs: 100              # a long schedule: max_steps cuts it
          train.max_steps: 300
          train.checkpoint_every: 10
        grid:
          product: {masks.source: [grid]}
        """,
    )
    runs = tmp_path / "runs"
    result = launch.run_ablation(
        path, executor="slurm", cluster="local", runs_dir=runs, echo=lambda line: None
    )
    (job,) = result.jobs
    (spec,) = result.plan.specs
    run_dir = spec.run_dir

    # Interrupt once the first checkpoint exists and training is still going.
    end = time.monotonic() + _DEADLINE_S
    while True:
        ckpt = run_dir / "checkpoint.pt"
        if ckpt.exists() and not (run_dir / "train_summary.json").exists():
            break
        assert not job.done(force_check=True), "the job ended before it could be interrupted"
        assert time.monotonic() < end, "no checkpoint appeared"
        time.sleep(0.2)
    # USR2 alone, as SLURM sends before the time limit. Not the preemption form (_interrupt()
    # sends SIGTERM, then USR2): slurmd may deliver the two out of order, and a late SIGTERM kills
    # the `scontrol requeue` child of submitit's USR2 handler, so the job fails instead of being
    # requeued (seen once in .ci/run on a loaded machine).
    job._interrupt(timeout=True)
    # Meanwhile, the reference: the same config trained without interruption, in this process.
    cfg = resolve_config(spec.parameters["overrides"], "cpu")
    ref = pretrain(cfg, tmp_path / "reference", progress=False)
    _release_when_requeued(job.job_id)
    wait_done([job])

    status = read_json(run_dir / "status.json")
    assert status["state"] == "done", status
    env = read_json(run_dir / "env.json")
    assert int(env["slurm"]["SLURM_RESTART_COUNT"]) >= 1  # it really ran twice
    summary = read_json(run_dir / "train_summary.json")
    assert 0 < summary["resumed_from"] < 300 and summary["steps"] == ref.steps == 300
    got = load_checkpoint(run_dir / "checkpoint.pt")
    want = load_checkpoint(tmp_path / "reference" / "checkpoint.pt")
    assert got["step"] == want["step"] == 300
    for key, tensor in want["model"].items():
        assert torch.equal(got["model"][key], tensor), key
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").open()]
    assert steps == list(range(300))  # no step lost or logged twice across the requeue
