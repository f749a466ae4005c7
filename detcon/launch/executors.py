"""Running a validated :class:`~detcon.launch.plan.Plan` (:func:`run_ablation`): each point not
yet done becomes one job (:class:`~detcon.launch.point.PointJob`) through an executor:

- ``local`` (default): points one after the other in this process. Each notebook already runs in
  its own kernel process; in-process also gives live ``[i/n]`` progress and the error text at
  once. (``submitit.LocalExecutor`` would add a process per point and log files to chase.) With
  ``lanes`` > 1, that many points run side by side, each in a spawned worker process (papermill
  changes the working directory of the process that runs it, so points cannot share one): for
  points that use fewer threads than the machine has cores, e.g. the cpu profile's one-thread
  points on a 2-core machine (the demo's two points at recipe E on a 2-core Xeon: 563 s in two
  lanes, 540 + 225 s one after the other; docs/cpu-miniature.md). A lane no point needs
  computes the floor and the ceiling the points will ask for while they pretrain
  (:func:`_run_lanes`).
- ``slurm``: one SLURM job array through submitit (``AutoExecutor(cluster="slurm")``), resources
  and array parallelism from a cluster profile (``ablations/clusters/<name>.yaml``), a fresh
  submitit folder per launch. Jobs are ``submitit.helpers.Checkpointable``: on USR2 (preemption,
  time limit) submitit requeues them and the point resumes from its training checkpoint. A point
  whose job from an earlier launch SLURM still queues or runs (``squeue``) is not submitted again.
- ``debug``: ``submitit.DebugExecutor``, in-process, dropping into pdb on a failure.

Before running, each point not yet done is looked up among the finished runs under the same runs
folder (any ablation file): one of the same config is taken over instead of trained again
(:mod:`detcon.launch.reuse`); the source is named in the point's job (:class:`PointSpec`
``reuse``) and in the launch's summary lines.
"""

from __future__ import annotations

import datetime as _dt
import functools
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import submitit

from detcon.atomic import write_json
from detcon.launch.plan import Plan, check_mask_stores, describe_plan, prepare
from detcon.launch.point import (
    PointFailedError,
    PointJob,
    PointSpec,
    evaluated_otherwise,
    planned_source,
    run_point,
    run_references,
    wants_references,
)
from detcon.launch.reuse import Source, training_elsewhere
from detcon.runs import launched_jobs, live_slurm_jobs, point_state


@dataclass
class LaunchResult:
    """What a launch did. ``jobs``: submitit jobs (slurm/debug); the lists hold run ids;
    ``broken``: points whose run directory cannot be used (not run, see ``detcon status``);
    ``reused``: run id -> ``<ablation>/<run id>`` of the finished run whose results a point to
    run takes instead of training (as found when the launch was planned)."""

    plan: Plan
    reused: dict[str, str] = field(default_factory=dict)
    done: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)
    jobs: list[Any] = field(default_factory=list)
    folder: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.failed and not self.broken


def _check_writable(runs_root: Path) -> None:
    try:
        runs_root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".write-test.", dir=runs_root)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise PermissionError(
            f"runs directory {str(runs_root)!r} is not writable ({exc.strerror or exc}); "
            "choose another with --runs-dir"
        ) from None


def _launch_folder(runs_root: Path) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return runs_root / ".submitit" / f"{stamp}-{os.getpid()}"


def run_ablation(
    ablation_path: str | Path,
    *,
    profile: str = "cpu",
    executor: str = "local",
    runs_dir: str | Path = "runs",
    dry_run: bool = False,
    only: str | None = None,
    cluster: str | None = None,
    data_root: str | Path = "data",
    lanes: int = 1,
    echo: Callable[[str], None] = print,
) -> LaunchResult:
    """Validate every point of an ablation, then run (local, debug) or submit (slurm) the points
    not yet done. See the module docstring; ``lanes``: points run side by side by the local
    executor; ``echo`` receives the progress lines."""
    if isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < 1:
        raise ValueError(f"lanes={lanes!r}: expected a whole number of points to run at once, >= 1")
    if lanes > 1 and executor != "local":
        raise ValueError(
            f"lanes={lanes} applies to the local executor only, not {executor!r} (a SLURM "
            "array's parallelism comes from the cluster profile's array_parallelism)"
        )
    plan = prepare(
        ablation_path,
        profile=profile,
        runs_dir=runs_dir,
        only=only,
        executor=executor,
        cluster=cluster,
        check_data=not dry_run,
        data_root=data_root,
    )
    result = LaunchResult(plan)
    if dry_run:
        sources = {
            spec.run_id: source.name
            for spec in plan.specs
            if point_state(spec.run_dir, spec.run_id).state != "done"
            and (source := planned_source(spec)) is not None
        }
        echo(describe_plan(plan, sources))
        try:  # a check of the configs alone, which a launch makes among its data checks
            check_mask_stores(plan.points, plan.ablation.path)
        except ValueError as exc:
            echo(f"dry run: the launch would refuse this: {exc}")
        echo("dry run: nothing was written or submitted")
        return result
    _check_writable(plan.runs_root)
    live: dict[str, tuple[str, str]] = {}
    if executor == "slurm":
        _require_sbatch()
        launched = launched_jobs(plan.runs_root, profile)
        states = live_slurm_jobs(set(launched.values()))
        live = {run_id: (job, states[job]) for run_id, job in launched.items() if job in states}
    todo: list[PointSpec] = []
    evaluated: list[PointSpec] = []  # points that will run the evaluate notebook
    notes: list[str] = []
    for spec in plan.specs:
        state = point_state(spec.run_dir, spec.run_id)
        if state.state == "done" and evaluated_otherwise(spec):
            todo.append(spec)
            evaluated.append(spec)
            notes.append(
                f"  {spec.run_id}: evaluated with other settings (point.json), evaluated again"
            )
        elif state.state == "done":
            result.done.append(spec.run_id)
        elif state.state == "running":
            result.busy.append(spec.run_id)
            notes.append(f"  {spec.run_id}: running elsewhere (its lock is held), skipped")
        elif spec.run_id in live and state.state in ("not started", "pending", "interrupted"):
            # waiting to start, or requeued between two runs of its job (a failed point's job
            # may still be listed for a moment after its program ended: that one runs again)
            job, job_state = live[spec.run_id]
            result.busy.append(spec.run_id)
            notes.append(f"  {spec.run_id}: SLURM job {job} is {job_state}, skipped")
        elif state.state == "broken":  # one point's problem: report it, run the others
            result.broken.append(spec.run_id)
            notes.append(f"  {spec.run_id}: broken ({state.error}), skipped")
        else:
            source = planned_source(spec)
            elsewhere = None
            if source is None and not (spec.run_dir / "train_summary.json").exists():
                elsewhere = training_elsewhere(spec)
            if elsewhere is not None:  # the same config trains in another ablation's folder now
                result.busy.append(spec.run_id)
                notes.append(
                    f"  {spec.run_id}: its config runs now in {elsewhere.parent.name}/"
                    f"{elsewhere.name} (its lock is held), skipped; run again once that has "
                    "finished to take its results instead of training them twice"
                )
                continue
            todo.append(spec if source is None else replace(spec, reuse=source.run_dir))
            if source is None or not source.evaluation:
                evaluated.append(spec)
            if state.state == "corrupt":
                notes.append(f"  {spec.run_id}: corrupt ({state.error}), run again")
            if source is not None:
                result.reused[spec.run_id] = source.name
                notes.append(f"  {spec.run_id}: reuses {_taken(source)}")
    n = len(plan.specs)
    reused = f" ({len(result.reused)} reused from finished runs)" if result.reused else ""
    echo(
        f"{plan.ablation.name} (profile {profile}, executor {executor}): {n} points, "
        f"{len(result.done)} done, {len(result.busy)} running elsewhere, {len(todo)} to run"
        + reused
        + (f", {len(result.broken)} broken" if result.broken else "")
    )
    for line in notes:
        echo(line)
    if not todo:
        return result
    # A lane no point needs computes the references the evaluated points ask for (_run_lanes).
    references = [s for s in evaluated if wants_references(s)] if lanes > len(todo) else []
    if executor == "local" and lanes > 1 and (len(todo) > 1 or references):
        _run_lanes(todo, result, echo, lanes, references)
    elif executor == "local":
        _run_local(todo, result, echo)
    elif executor == "debug":
        _run_debug(todo, result, echo)
    else:
        _submit_slurm(todo, result, echo)
    return result


def _taken(source: Source) -> str:
    what = "pretraining and evaluation" if source.evaluation else "pretraining"
    return f"the {what} of {source.name}"


def _finish(spec: PointSpec, outcome: dict[str, Any], result: LaunchResult) -> str:
    state = outcome.get("state")
    if state == "busy":
        result.busy.append(spec.run_id)
        return "running elsewhere (its lock is held), skipped"
    if state == "skipped":
        result.done.append(spec.run_id)
        return "already done"
    result.ran.append(spec.run_id)
    return f"done (reused {outcome['reused_from']})" if outcome.get("reused_from") else "done"


def _failed_line(spec: PointSpec, exc: BaseException, result: LaunchResult) -> str:
    result.failed.append(spec.run_id)
    html = point_state(spec.run_dir, spec.run_id).notebook
    return f"FAILED: {exc}" + (f" (see {html})" if html else "")


def _outcome_line(
    spec: PointSpec, outcome: Callable[[], dict[str, Any]], result: LaunchResult
) -> str:
    """The end of a point's ``[i/n]`` line: ``outcome()`` is its ``run_point`` result, which
    raises :class:`PointFailedError` for a failed point."""
    try:
        return _finish(spec, outcome(), result)
    except PointFailedError as exc:
        return _failed_line(spec, exc, result)


def _run_local(todo: Sequence[PointSpec], result: LaunchResult, echo: Callable) -> None:
    for i, spec in enumerate(todo, 1):
        tag = f"[{i}/{len(todo)}] {spec.run_id}"
        echo(f"{tag} ...")
        t0 = time.perf_counter()
        msg = _outcome_line(spec, functools.partial(run_point, spec), result)
        echo(f"{tag} {msg} ({time.perf_counter() - t0:.0f} s)")


# How lane workers start: "spawn" (a fresh interpreter per worker) is safe on every platform
# whatever threads this process holds; the tests use "fork" so that their stand-in notebooks
# (monkeypatched) reach the workers.
_LANE_START_METHOD = "spawn"


def _lane_init() -> None:
    """A lane worker waiting for its next point ignores Ctrl-C (the parent stops the launch);
    :func:`_run_in_lane` restores it while a point runs, so the point stops as it would in
    ``_run_local`` and its kernel, started meanwhile, does not inherit an ignored SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_in_lane(spec: PointSpec) -> dict[str, Any]:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return run_point(spec)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _reference_lane(specs: Sequence[PointSpec], conn: Connection) -> None:
    """The reference lane's process: :func:`run_references`, its outcome sent through ``conn``
    (``None``: done; else the error's line). Ctrl-C stops it quietly: the launch reports it."""
    try:
        run_references(specs)
    except KeyboardInterrupt:
        conn.send("interrupted")
        return
    except Exception as exc:  # noqa: BLE001 - reported by the launch; the points go on
        conn.send(f"{type(exc).__name__}: {exc}".splitlines()[0][:500])
        return
    conn.send(None)


_REFERENCES_TAG = "[references]"
_EACH_POINT = "each point computes the references it lacks"
# How often the launch looks at the reference lane's process while points run (seconds).
_POLL_S = 1.0


class _ReferenceLane:
    """The spare lane: a process of its own running :func:`_reference_lane`, and the pipe its
    outcome comes through."""

    def __init__(self, context: Any, specs: Sequence[PointSpec]) -> None:
        self.receive, send = context.Pipe(duplex=False)
        self.process = context.Process(target=_reference_lane, args=(list(specs), send))
        self.process.start()
        send.close()  # the child holds its end
        self.t0 = time.perf_counter()

    def outcome(self) -> str | None:
        """None while it runs, else the end of its ``[references]`` line."""
        if self.process.is_alive():
            return None
        try:
            message = self.receive.recv()
        except EOFError:  # it died before sending anything (killed, a crash)
            message = f"its process ended with exit code {self.process.exitcode}"
        text = "done" if message is None else f"FAILED: {message} ({_EACH_POINT})"
        return f"{text} ({time.perf_counter() - self.t0:.0f} s)"

    def stop(self) -> None:
        """Its cache writes are atomic and its locks end with it: stopping loses only work."""
        self.process.terminate()
        self.process.join()


def _run_lanes(
    todo: Sequence[PointSpec],
    result: LaunchResult,
    echo: Callable,
    lanes: int,
    references: Sequence[PointSpec] = (),
) -> None:
    """``_run_local`` with up to ``lanes`` points at once, each in a worker process; a point
    starts as soon as a lane is free, and its ``[i/n]`` lines are written as it starts and ends.

    ``references``: the points whose evaluation will ask for the floor or the ceiling, given when
    a lane is left over (``lanes`` > points): that lane computes them while the points pretrain
    (:func:`run_references`; on two cores, three one-thread processes instead of a ceiling
    trained after the pretrainings). It is a process of its own, outside the points' pool, so
    that even its crash fails nothing else: each point then computes what it still lacks. When
    every point has ended before it, nobody is left to use what it computes: it is stopped.
    """
    queue = list(enumerate(todo, 1))
    pending: dict[Future, tuple[str, PointSpec, float]] = {}
    context = multiprocessing.get_context(_LANE_START_METHOD)
    workers = min(lanes, len(todo))
    lane: _ReferenceLane | None = None
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_lane_init)
    try:

        def start() -> None:
            i, spec = queue.pop(0)
            tag = f"[{i}/{len(todo)}] {spec.run_id}"
            echo(f"{tag} ...")
            pending[pool.submit(_run_in_lane, spec)] = (tag, spec, time.perf_counter())

        while queue and len(pending) < lanes:
            start()
        try:
            if references:
                echo(f"{_REFERENCES_TAG} the floor and the ceiling, in the spare lane ...")
                lane = _ReferenceLane(context, references)
            while pending:
                timeout = None if lane is None else _POLL_S
                finished, _ = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
                for future in finished:
                    tag, spec, t0 = pending.pop(future)
                    msg = _outcome_line(spec, future.result, result)
                    echo(f"{tag} {msg} ({time.perf_counter() - t0:.0f} s)")
                    if queue:
                        start()
                if lane is not None and (end := lane.outcome()) is not None:
                    echo(f"{_REFERENCES_TAG} {end}")
                    lane = None
            if lane is not None:
                echo(f"{_REFERENCES_TAG} stopped: every point has ended, none is left to use them")
        finally:
            if lane is not None:  # every point has ended, or the launch is interrupted
                lane.stop()
    except BaseException:  # Ctrl-C, SIGTERM (detcon.cli.Terminated)
        _stop_lanes(pool, pending)
        raise
    pool.shutdown()


# How long running points get to stop on their own when the launch is interrupted (a
# terminal's Ctrl-C reaches them too) before their processes are terminated (seconds).
_STOP_GRACE_S = 10.0


def _stop_lanes(pool: ProcessPoolExecutor, pending: Mapping[Future, Any]) -> None:
    """Stop the lane workers of an interrupted launch without the pool's own orderly shutdown,
    which can wait forever when interrupted (a race in CPython's ProcessPoolExecutor: 2 hangs in
    7 tries, and in a bare pool too), and which left the workers training on after a SIGTERM.
    A terminated point resumes as after any kill: its files are written atomically and its
    lock ends with its process."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # 3.14: public
    try:
        wait(pending, timeout=_STOP_GRACE_S)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(timeout=_STOP_GRACE_S)


def _run_debug(todo: Sequence[PointSpec], result: LaunchResult, echo: Callable) -> None:
    folder = _launch_folder(result.plan.runs_root)
    ex = submitit.DebugExecutor(folder=folder)
    result.folder = folder
    for i, spec in enumerate(todo, 1):
        tag = f"[{i}/{len(todo)}] {spec.run_id}"
        echo(f"{tag} ... (debug executor: pdb on failure)")
        job = ex.submit(PointJob(spec))
        result.jobs.append(job)
        try:
            msg = _finish(spec, job.result(), result)
        except Exception as exc:  # noqa: BLE001 - after pdb, go on with the next point
            msg = _failed_line(spec, exc, result)
        echo(f"{tag} {msg}")


def _require_sbatch() -> None:
    if shutil.which("sbatch") is None:
        raise FileNotFoundError(
            "--executor slurm needs SLURM's sbatch on PATH (none found); run on a login node, "
            "start the local cluster with `make slurm-up`, or use --executor local"
        )


def _submit_slurm(todo: Sequence[PointSpec], result: LaunchResult, echo: Callable) -> None:
    plan = result.plan
    folder = _launch_folder(plan.runs_root)
    assert plan.cluster is not None  # prepare() requires one for slurm
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm", **plan.cluster.executor_arguments())
    ex.update_parameters(name=f"detcon-{plan.ablation.name}", **plan.cluster.submitit_parameters())
    try:
        with ex.batch():
            jobs = [ex.submit(PointJob(spec)) for spec in todo]
    except submitit.core.utils.FailedJobError as exc:  # sbatch refused the array
        raise ChildProcessError(
            f"SLURM refused the jobs of cluster profile {plan.cluster_name!r} ({exc}); check "
            "its partition, account and limits against `sinfo` and `sacctmgr show assoc`"
        ) from None
    result.jobs, result.folder = jobs, folder
    record = {
        "ablation": plan.ablation.name,
        "profile": plan.profile,
        "cluster": plan.cluster_name,
        "submitted": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "jobs": {spec.run_id: job.job_id for spec, job in zip(todo, jobs)},
    }
    write_json(folder / "launch.json", record)
    array = jobs[0].job_id.split("_")[0] if jobs else "?"
    echo(
        f"submitted {len(jobs)} points as SLURM array {array} "
        f"(parallelism {min(plan.cluster.array_parallelism, len(jobs))}); submitit folder {folder}"
    )
    for spec, job in zip(todo, jobs):
        echo(f"  {job.job_id}  {spec.run_id}")
    echo(
        f"follow with: detcon status {plan.ablation.path} --profile {plan.profile} "
        f"--runs-dir {plan.runs_root.parent}"
    )
