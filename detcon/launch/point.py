"""One grid point's job: the body of every executor's job (:func:`run_point`).

A point's job holds ``run_dir/.lock``, writes ``status.json`` (first), ``point.json`` and
``env.json``, executes ``notebooks/<notebook>.ipynb`` and then ``notebooks/evaluate.ipynb`` with
papermill (``cwd=run_dir``), renders each to HTML with nbconvert, and writes ``summary.json``
(docs/run-directory.md). When a run of the same config already finished (in any ablation under
the same runs folder), its results are taken instead of training again, and its evaluation too
when the evaluation settings are equal (:mod:`detcon.launch.reuse`). A failing point records
``failed`` with its error and keeps the HTML of the failed notebook; it never stops the other
points.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from detcon.atomic import remove_stale_temp_files, write_json
from detcon.grid import GridPoint, resolve_config
from detcon.launch.notebooks import EVALUATE_NOTEBOOK, REPO, execute_notebook, render_html
from detcon.launch.reuse import (
    Source,
    adopt,
    check_source,
    eval_settings,
    expected_config,
    find_source,
)
from detcon.runs import (
    OFFICIAL_PARAMETER,
    PointBusyError,
    environment_record,
    is_locked,
    job_id_from_env,
    point_lock,
    read_json,
    read_status,
    read_summary,
    reference_cache,
    reused_source,
    summary_of,
    write_status,
)

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class PointFailedError(RuntimeError):
    """A grid point's notebook (or its bookkeeping) failed; ``status.json`` says why."""


def _render_after(notebook: Path) -> None:
    """Render what was executed, also after a failure; a rendering problem must not hide the
    notebook's own error, so it is only reported."""
    if not notebook.exists():
        return
    try:
        render_html(notebook)
    except Exception as exc:  # noqa: BLE001 - reported, the point's outcome stands
        print(f"detcon: could not render {notebook} to HTML: {exc}", file=sys.stderr)


def _execute(
    spec_nb: Path, out_nb: Path, parameters: Mapping[str, Any], cwd: Path, kernel: str
) -> None:
    # One indirection, so that tests can stand in for papermill at the point's level.
    execute_notebook(spec_nb, out_nb, parameters, cwd=cwd, kernel=kernel)


def _error_text(exc: BaseException) -> tuple[str, str]:
    """(one line, detail) for status.json; papermill errors give the cell's exception."""
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    line = f"{ename}: {evalue}" if ename else f"{type(exc).__name__}: {exc}"
    return _ANSI.sub("", line).strip().splitlines()[0][:500], _ANSI.sub("", str(exc))[-20000:]


@dataclass(frozen=True)
class PointSpec:
    """Everything a job needs to run one point (pickled to the cluster node).

    ``parameters`` / ``eval_parameters``: papermill parameters of the main / evaluate notebook
    (``eval_parameters`` None: no evaluation). ``overrides`` are the point's overrides with
    relative data paths made absolute (the notebook runs with ``cwd=run_dir``). ``reuse``: the
    run directory of a finished run of the same config found when the launch was planned
    (:func:`detcon.launch.reuse.find_source`), whose results the point takes if it is still
    usable when the job starts.
    """

    point: GridPoint
    run_dir: Path
    notebook: Path
    parameters: Mapping[str, Any]
    evaluate_notebook: Path
    eval_parameters: Mapping[str, Any] | None
    kernel: str
    executor: str
    reuse: Path | None = None

    @property
    def run_id(self) -> str:
        return self.point.run_id

    def record(self) -> dict[str, Any]:
        """What the point's ``point.json`` holds: the grid point, its notebook and the
        parameters of both notebooks."""
        return {
            **self.point.to_json(),
            "notebook": self.notebook.name,
            "parameters": dict(self.parameters),
            "eval_parameters": None if self.eval_parameters is None else dict(self.eval_parameters),
        }


def _rank(executor: str) -> int:
    """This process's rank in a multi-process SLURM job (0 outside SLURM jobs)."""
    if executor != "slurm":
        return 0
    return int(os.environ.get("SLURM_PROCID", "0") or 0)


def _processes(executor: str) -> int:
    """Processes of this job: SLURM's task count in a SLURM job, else 1."""
    if executor != "slurm":
        return 1
    return int(os.environ.get("SLURM_NTASKS", "1") or 1)


def _reuse_source(spec: PointSpec) -> Source | None:
    """The finished run whose results the point takes instead of pretraining, if any.

    Every process of a multi-process (DDP) job must come to the same answer, or rank 0 would
    skip the training the others wait to join: they all check only the source named when the
    launch was planned (a finished run stays finished). A job of one process also looks for a
    source that finished since (e.g. in a job array of another ablation file submitted at the
    same time).
    """
    if spec.reuse is not None:
        source = check_source(spec, spec.reuse)
        if source is not None:
            return source
    return find_source(spec) if _processes(spec.executor) == 1 else None


def planned_source(spec: PointSpec) -> Source | None:
    """The finished run the launcher plans to take ``spec``'s results from: None when the
    point's own pretraining already finished (its job only evaluates) or no run is usable."""
    return None if _stage_skipped(spec) else find_source(spec)


def _reused_before(run_dir: Path) -> dict[str, Any]:
    """``{"reused_from": ...}`` when an earlier job of the point took its pretraining from
    another run (kept in ``status.json`` across requeues), else ``{}``."""
    name = reused_source(run_dir)
    return {"reused_from": name} if name else {}


def _stage_skipped(spec: PointSpec) -> bool:
    """Pretraining of this point already finished (a requeued job only needs evaluation).

    ``status.json`` lists the finished stages. When it is corrupt, ``train_summary.json`` (written
    once training finished) beside the point's own ``config.json`` says the same: rerunning the
    notebook would resume the finished checkpoint and overwrite ``train_summary.json`` with the
    numbers of an empty segment.
    """
    run_dir = spec.run_dir
    if not (run_dir / "train_summary.json").exists():
        return False
    try:
        return "pretrain" in (read_status(run_dir) or {}).get("stages", [])
    except ValueError:
        pass
    try:
        return read_json(run_dir / "config.json") == expected_config(spec)
    except ValueError:
        return False


def evaluated_otherwise(spec: PointSpec) -> bool:
    """The point's ``point.json`` records other evaluation parameters than ``spec``'s (the
    ablation's ``evaluate:`` tasks or ``parameters.evaluate`` changed since it ran): its
    evaluation runs again, its pretraining is kept; also when it ran without an evaluation
    (``eval_parameters`` null) and the file now asks for one. False when ``spec`` evaluates
    nothing or nothing readable is recorded."""
    if spec.eval_parameters is None:
        return False
    try:
        recorded = read_json(spec.run_dir / "point.json") or {}
    except (OSError, ValueError):
        return False
    if "eval_parameters" not in recorded:
        return False
    return eval_settings(recorded["eval_parameters"]) != eval_settings(spec.eval_parameters)


def _point_done(spec: PointSpec) -> bool:
    """A valid ``summary.json`` and ``status.json``, evaluated as ``spec`` evaluates: a corrupt
    file makes the point run again, other evaluation settings its evaluation."""
    try:
        read_status(spec.run_dir)
        if read_summary(spec.run_dir, spec.run_id) is None:
            return False
    except ValueError:
        return False
    return not evaluated_otherwise(spec)


def rank0_took_the_point(
    spec: PointSpec, *, timeout_s: float = 600.0, busy_after_s: float = 10.0, poll_s: float = 1.0
) -> bool:
    """Whether rank 0 of this job has taken the point to train it: ``status.json`` running under
    this job's id (rank 0 writes it as soon as it holds the point's lock). False when it will
    not: another job holds the lock for ``busy_after_s``, or nothing within ``timeout_s`` (rank
    0 failed first, or found the point done): the followers must not wait in the process group
    for a rank 0 that never joins it (torch's rendezvous waits 10-30 minutes, then raises). A
    status left under the same id by an earlier run of a requeued job reads as taken: the old
    behaviour, harmless, since that run's rank 0 is gone and this one's takes the lock."""
    job = job_id_from_env(spec.executor)
    start = time.monotonic()
    other_since = None
    while time.monotonic() - start < timeout_s:
        try:
            status = read_status(spec.run_dir) or {}
        except ValueError:  # being rewritten, or corrupt: rank 0 rewrites it when it starts
            status = {}
        if status.get("job_id") == job and status.get("state") == "running":
            return True
        if is_locked(spec.run_dir):  # held, by rank 0 about to write, or by another job
            other_since = time.monotonic() if other_since is None else other_since
            if time.monotonic() - other_since >= busy_after_s:
                return False
        else:
            other_since = None
        time.sleep(poll_s)
    return False


def _follow(spec: PointSpec) -> dict[str, Any]:
    """Ranks > 0 of a multi-process (DDP) job: join rank 0's training, write nothing else."""
    from detcon.train import pretrain

    done = _stage_skipped(spec) or _point_done(spec) or _reuse_source(spec) is not None
    if done or spec.parameters.get(OFFICIAL_PARAMETER):  # an import trains nothing to join
        return {"run_id": spec.run_id, "state": "follower", "rank": _rank(spec.executor)}
    if not rank0_took_the_point(spec):
        return {"run_id": spec.run_id, "state": "busy", "rank": _rank(spec.executor)}
    cfg = resolve_config(spec.parameters["overrides"], spec.point.profile)
    pretrain(cfg, spec.run_dir, progress=False)
    return {"run_id": spec.run_id, "state": "follower", "rank": _rank(spec.executor)}


def run_point(spec: PointSpec) -> dict[str, Any]:
    """Run one grid point in ``spec.run_dir`` (the body of every executor's job).

    Returns:
        ``{"run_id", "state"}`` with state ``done``, ``skipped`` (already done) or ``busy``
        (another process holds the lock).
    Raises:
        PointFailedError: a notebook or a bookkeeping step failed; ``status.json`` says
            ``failed`` with the error and the failed notebook's HTML is kept.
    """
    if _rank(spec.executor) > 0:
        return _follow(spec)
    run_dir = spec.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with point_lock(run_dir):
            if _point_done(spec):
                return {"run_id": spec.run_id, "state": "skipped"}
            return _run_locked(spec)
    except PointBusyError:
        return {"run_id": spec.run_id, "state": "busy"}


def _run_locked(spec: PointSpec) -> dict[str, Any]:
    run_dir, point = spec.run_dir, spec.point
    remove_stale_temp_files(run_dir)  # left by a killed job; we hold the point's lock
    job_id = job_id_from_env(spec.executor)
    stages: list[str] = ["pretrain"] if _stage_skipped(spec) else []
    # Recorded in every status.json the job writes: which run the results came from.
    reused = _reused_before(run_dir) if stages else {}
    # A summary means done: one left from an earlier evaluation (this job evaluates again)
    # would keep the point done, with the old metrics, if this job fails
    (run_dir / "summary.json").unlink(missing_ok=True)
    # first: a DDP job's other ranks join its training once this says so (rank0_took_the_point;
    # env.json's record can take seconds: torch, the device, git)
    write_status(run_dir, "running", job_id=job_id, stages=stages, **reused)
    write_json(run_dir / "point.json", spec.record())
    write_json(run_dir / "env.json", environment_record(spec.executor, REPO))
    current = spec.notebook.name
    try:
        source = None if "pretrain" in stages else _reuse_source(spec)
        if source is not None:
            stages = adopt(spec, source)
            reused = {"reused_from": source.name}
            write_status(run_dir, "running", job_id=job_id, stages=stages, **reused)
        if "pretrain" not in stages:
            out = run_dir / spec.notebook.name
            try:
                _execute(spec.notebook, out, spec.parameters, run_dir, spec.kernel)
            finally:
                _render_after(out)
            if not (run_dir / "config.json").exists():
                raise PointFailedError(
                    f"{out.name} finished without config.json: it trained nothing"
                )
            if read_json(run_dir / "config.json") != expected_config(spec):
                raise PointFailedError(
                    f"{out.name} trained a config that differs from the point's "
                    "(config.json != the validated config); the notebook must train "
                    "resolve_config(overrides, profile) unchanged"
                )
            if not (run_dir / "train_summary.json").exists():
                raise PointFailedError(f"{out.name} finished without train_summary.json")
            stages.append("pretrain")
            write_status(run_dir, "running", job_id=job_id, stages=stages)
        evaluation = None
        if spec.eval_parameters is not None:
            current = f"{EVALUATE_NOTEBOOK}.ipynb"
            if "evaluate" not in stages:  # else taken over with the pretraining
                out = run_dir / current
                try:
                    _execute(
                        spec.evaluate_notebook, out, spec.eval_parameters, run_dir, spec.kernel
                    )
                finally:
                    _render_after(out)
            evaluation = read_json(run_dir / "eval.json")
            if evaluation is None:
                raise PointFailedError(f"{current} finished without eval.json")
            if "evaluate" not in stages:
                stages.append("evaluate")
        summary = summary_of(point.to_json(), run_dir, evaluated=evaluation is not None)
        write_json(run_dir / "summary.json", summary)
        notebook = Path(current).with_suffix(".html").name
        write_status(run_dir, "done", job_id=job_id, stages=stages, notebook=notebook, **reused)
        return {"run_id": spec.run_id, "state": "done", **reused}
    except Exception as exc:  # noqa: BLE001 - recorded, then re-raised for the executor
        line, detail = _error_text(exc)
        write_status(
            run_dir,
            "failed",
            job_id=job_id,
            stages=stages,
            error=line,
            error_detail=detail,
            notebook=Path(current).with_suffix(".html").name,
            **reused,
        )
        raise PointFailedError(f"{spec.run_id}: {line}") from exc


def wants_references(spec: PointSpec) -> bool:
    """The point's evaluation asks for the random-init floor or the supervised ceiling."""
    params = spec.eval_parameters or {}
    return bool(params.get("random_baseline") or params.get("supervised_ceiling"))


def run_references(specs: Sequence[PointSpec]) -> int:
    """Compute, ahead of the points, the floor and the ceiling their evaluations will ask for
    (the local executor's spare lane): the evaluate notebook's call
    (:func:`detcon.evaluate.evaluate_point_references`) with the points' own evaluation
    parameters and cache, so that each point then reuses them, or, meeting one still being
    computed, computes the other first. The ceiling first: the longest job, started earliest.

    The references depend on a point's model and data config and its evaluation parameters
    only: each distinct set once, in a scratch run directory ``<cache>/points/<run id>/``
    holding the point's ``config.json``. Returns how many sets were asked for.
    """
    from detcon.evaluate import evaluate_point_references

    seen: set[str] = set()
    for spec in specs:
        if not wants_references(spec):
            continue
        params = {k: v for k, v in (spec.eval_parameters or {}).items() if k != "run_dir"}
        config = expected_config(spec)
        key = json.dumps([config["model"], config["data"], params], sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        cache = reference_cache(spec.run_dir)
        work = cache / "points" / spec.run_id
        write_json(work / "config.json", config)
        evaluate_point_references(work, reference_cache=cache, ceiling_first=True, **params)
    return len(seen)


class PointJob(submitit.helpers.Checkpointable):
    """A point as a submitit job. ``Checkpointable``: on USR2 (preemption or the time limit)
    submitit pickles this object and requeues the job, which then calls it again; the point
    resumes from ``checkpoint.pt`` (``detcon.train.pretrain``) and finished stages are skipped."""

    def __init__(self, spec: PointSpec) -> None:
        self.spec = spec

    def __call__(self) -> dict[str, Any]:
        return run_point(self.spec)
