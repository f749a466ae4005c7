"""Run-directory helpers (docs/run-directory.md): status/env/point files, the lock, scanning.

The launcher writes ``point.json``, ``env.json``, ``status.json`` and ``summary.json``; training
and evaluation write the rest. Every write is atomic (:mod:`detcon.atomic`). Readers here are
tolerant of files that are missing (not started yet) and say so instead of failing.
:func:`ablation_status` reads the state of every point of an ablation (``detcon status``,
``detcon report``) without importing the launcher.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import getpass
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from detcon.atomic import write_json
from detcon.grid import expand, load_ablation, select_points

__all__ = [
    "ENCODER_RECORD",
    "PROBE_RECORD",
    "RECORDS",
    "OFFICIAL_PARAMETER",
    "PRETRAIN_ENV",
    "STATES",
    "PointBusyError",
    "PointState",
    "ablation_status",
    "encoder_record",
    "environment_record",
    "flatten_summary",
    "summary_of",
    "git_state",
    "job_id_from_env",
    "last_metrics",
    "launched_jobs",
    "live_slurm_jobs",
    "metric_records",
    "lock_holder",
    "point_lock",
    "point_state",
    "read_json",
    "read_status",
    "read_summary",
    "reused_source",
    "same_probe",
    "write_status",
]

# A taken-over point's copy of its source's env.json (detcon.launch.reuse): the git state of the
# code that trained it.
PRETRAIN_ENV = "pretrain_env.json"

# status.json `state` values (docs/run-directory.md).
STATES = ("pending", "running", "done", "failed")
# eval.json's entry saying which encoder its tasks measured (encoder_record): not a task.
ENCODER_RECORD = "encoder"
# An eval file's entry saying how its tasks were probed (profile, split, probe seed, a digest of
# the data they read; detcon.evaluate.evaluate_run): not a task. Entries probed otherwise are not
# kept next to new ones.
PROBE_RECORD = "probe"
RECORDS = (ENCODER_RECORD, PROBE_RECORD)
# The entry of a task in eval.json whose head diverged (a non-finite loss) on that encoder's
# features: its message, in place of the metrics (detcon.evaluate.evaluate_run); not a metric.
DIVERGED = "diverged"


def default_out_name(backbone: str) -> str:
    """``eval.json`` for the run's encoder, ``eval_random.json`` for the random baseline, so the
    baseline never overwrites the run's own results (``detcon evaluate --backbone``)."""
    return "eval.json" if backbone == "pretrained" else f"eval_{backbone}.json"


def reference_cache(run_dir: str | Path) -> Path:
    """Where a point's floor and ceiling are kept (``detcon.evaluate.evaluate_references``):
    ``<runs folder>/.references`` for ``run_dir`` = ``<runs folder>/<ablation>/<run id>``, so
    the points of every ablation under one runs folder that share them compute them once."""
    return Path(run_dir).absolute().parent.parent / ".references"


# A point's evaluation: its encoder's, the random-init floor's and the supervised ceiling's.
EVAL_FILES = tuple(default_out_name(b) for b in ("pretrained", "random", "supervised"))
# What a summary.json holds whatever the point (detcon.runs.flatten_summary); without them it is
# not a point's summary, whatever else it parses to.
SUMMARY_FIELDS = ("ablation", "run_id", "profile")
LOCK = ".lock"
# Pretrain-notebook parameter of evaluation-only points: import this official checkpoint
# (detcon.official.import_run) instead of training. Given per point as grid key
# ``notebook.official_checkpoint``; checked to exist before anything is submitted.
OFFICIAL_PARAMETER = "official_checkpoint"
# Packages whose versions describe a run (env.json); missing ones are recorded as null.
_PACKAGES = (
    "detcon",
    "torch",
    "torchvision",
    "numpy",
    "scipy",
    "scikit-image",
    "pycocotools",
    "submitit",
    "papermill",
    "nbconvert",
    "ipykernel",
)
_SLURM_VARS = (
    "SLURM_JOB_ID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_RESTART_COUNT",
    "SLURM_JOB_PARTITION",
    "SLURM_JOB_NODELIST",
    "SLURM_NTASKS",
    "SLURM_PROCID",
)


def now() -> str:
    """UTC time stamp, ISO 8601 with seconds."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def read_json(path: str | Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when the file does not exist.

    Raises:
        ValueError: the file exists but is not a JSON object (names the file).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path} is not valid JSON ({exc}); delete it to start the point over"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_status(run_dir: str | Path) -> dict[str, Any] | None:
    """``run_dir/status.json``, or None when there is none.

    Raises:
        ValueError: it is not a JSON object with a ``state`` among :data:`STATES` (names it).
    """
    path = Path(run_dir) / "status.json"
    status = read_json(path)
    if status is not None and status.get("state") not in STATES:
        raise ValueError(
            f"{path}: state={status.get('state')!r}, expected one of {', '.join(STATES)}"
        )
    return status


def reused_source(run_dir: str | Path) -> str | None:
    """``<ablation>/<run id>`` of the finished run whose results the point took over
    (``reused_from`` in its ``status.json``); None when it trained itself or the file is missing
    or unreadable."""
    try:
        name = (read_status(run_dir) or {}).get("reused_from")
    except ValueError:
        return None
    return name if isinstance(name, str) and name else None


def read_summary(run_dir: str | Path, run_id: str) -> dict[str, Any] | None:
    """``run_dir/summary.json`` (its presence means the point is done), or None when there is
    none.

    Raises:
        ValueError: it is not a JSON object holding :data:`SUMMARY_FIELDS` with this
            ``run_id`` (names the file and the problem).
    """
    path = Path(run_dir) / "summary.json"
    summary = read_json(path)
    if summary is None:
        return None
    missing = [k for k in SUMMARY_FIELDS if k not in summary]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: not a point's summary")
    if summary["run_id"] != run_id:
        raise ValueError(f"{path} is the summary of {summary['run_id']!r}, not of {run_id!r}")
    return summary


def write_status(run_dir: str | Path, state: str, **fields: Any) -> dict[str, Any]:
    """Write ``status.json``: ``state`` plus ``fields`` (e.g. ``job_id``, ``error``), keeping
    ``started`` from the previous status; adds ``updated`` (and ``started`` when running)."""
    if state not in STATES:
        raise ValueError(f"state={state!r}: expected one of {', '.join(STATES)}")
    path = Path(run_dir) / "status.json"
    try:
        old = read_json(path) or {}
    except ValueError:
        old = {}
    status = {"state": state, **fields, "updated": now()}
    if "started" in old and "started" not in fields:
        status["started"] = old["started"]
    if state == "running" and "started" not in status:
        status["started"] = status["updated"]
    write_json(path, status)
    return status


# --------------------------------------------------------------------------- lock


class PointBusyError(BlockingIOError):
    """Another process holds the point's lock (it is running elsewhere). A BlockingIOError, like
    the refused ``flock`` it reports: the CLI shows it as a one-paragraph error."""


def lock_holder(path: Path) -> str:
    """``pid P on host H`` from a lock file (what the holder wrote), or why it is unknown."""
    try:
        host, pid = path.read_text().split()
    except (OSError, ValueError):
        return "holder unknown: it has not written its name yet"
    return f"pid {pid} on host {host}"


# Descriptors of the run-directory locks this process holds. A flock belongs to the open file,
# so a forked child (a DataLoader worker, a process pool) that kept its copy of the descriptor
# would keep the lock alive after its parent was killed: the resumed run would find the
# directory "in use" until the orphaned worker noticed and exited. Children close their copies
# at the fork; that leaves the parent's lock as it is (only LOCK_UN or the last close drops it).
_HELD_LOCKS: set[int] = set()


def _close_inherited_locks() -> None:
    for fd in _HELD_LOCKS:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


# errno of a non-blocking flock on a lock another open file holds.
_BUSY = (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)


def _flock_soon(fd: int, patience_s: float = 0.25) -> None:
    """An exclusive flock without blocking, tried again for ``patience_s``: a reader's probe
    (:func:`is_locked`, a shared lock held for microseconds) must not make a writer give up."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in _BUSY or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


@contextmanager
def point_lock(run_dir: str | Path, *, wait: bool = False, name: str = LOCK) -> Iterator[Path]:
    """Hold an exclusive ``flock`` on ``run_dir/.lock`` for the block; the file names the holder
    (``<host> <pid>``).

    The kernel drops the lock when the holder exits, killed or not, so a crashed or requeued job
    never leaves a stale lock: the name of a dead holder left in the file blocks nobody. (On NFS,
    Linux emulates flock with POSIX byte-range locks, which the server arbitrates across nodes.)

    Args:
        wait: block until the holder lets go instead of raising (for short critical sections,
            e.g. updating a mask store's manifest).
        name: the lock file's name in ``run_dir`` (another name: a lock of its own, e.g. one
            per cached reference evaluation).

    Raises:
        PointBusyError: another process holds it (not with ``wait``); the message names it.
    """
    path = Path(run_dir) / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # less the umask, as every file we write
    acquired = False
    try:
        try:
            if wait:
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                _flock_soon(fd)
            acquired = True
            _HELD_LOCKS.add(fd)
        except OSError as exc:
            if exc.errno in _BUSY:
                raise PointBusyError(
                    f"{run_dir} is in use by another process ({lock_holder(path)}, which holds "
                    f"{path}): one directory, one writer; wait for it to finish, or use another "
                    "directory"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
        yield path
    finally:
        # Closing releases the flock. A forked child whose copy of this block unwinds does not
        # own the descriptor any more (_close_inherited_locks closed it at the fork).
        if fd in _HELD_LOCKS or not acquired:
            _HELD_LOCKS.discard(fd)
            os.close(fd)


def is_locked(run_dir: str | Path) -> bool:
    """Whether a process holds ``run_dir/.lock`` now (False when there is no run directory).

    Reading never creates the lock file: without one nobody holds it (a holder creates it before
    taking the lock), and a folder that is only read (an exported copy under ``results/``, a
    read-only mount) must stay as it is.

    The probe is a shared lock on a read-only descriptor, which any holder's exclusive lock
    refuses. An exclusive probe would need a descriptor open for writing on NFS, where Linux
    emulates flock with whole-file fcntl locks (flock(2), "NFS details"): on a read-only one it
    fails with EBADF, and every point of a shared runs folder whose status says running read as
    broken.
    """
    path = Path(run_dir) / LOCK
    if not path.is_file():
        return False
    try:  # probe on a read-only descriptor: the holder's name in the file stays as it is
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # its holder's run directory was replaced meanwhile
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in _BUSY:
            return True
        raise
    finally:
        os.close(fd)  # also releases the probe's lock
    return False


# --------------------------------------------------------------------------- env.json


def git_state(repo: str | Path) -> dict[str, Any]:
    """``{"sha": str | None, "dirty": bool | None}`` of the git checkout at ``repo``.

    ``dirty``: tracked files modified, or untracked files that ``.gitignore`` does not cover
    (an uncommitted new module changes what runs as much as an edit does; run outputs are
    ignored by ``.gitignore``).
    """

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(
                ["git", "-C", str(repo), *args],
                capture_output=True,
                text=True,
                timeout=20,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout if proc.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain") if sha else None
    return {
        "sha": sha.strip() if sha else None,
        "dirty": None if status is None else bool(status.strip()),
    }


def job_id_from_env(executor: str) -> str:
    """The scheduler's id of this job: ``ARRAYJOB_TASK`` in a SLURM array, ``SLURM_JOB_ID``
    otherwise; ``<executor>:<host>:<pid>`` outside SLURM."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    if env.get("SLURM_JOB_ID"):
        return env["SLURM_JOB_ID"]
    return f"{executor}:{socket.gethostname()}:{os.getpid()}"


def _device() -> dict[str, Any]:
    import torch  # only here: env.json is written once per job

    if torch.cuda.is_available():
        return {
            "type": "cuda",
            "count": torch.cuda.device_count(),
            "name": torch.cuda.get_device_name(0),
            "cuda": torch.version.cuda,
        }
    # The CPU and the kernels torch picks for it: float results differ between CPUs (e.g. the
    # cpu profile's references moved by 0.0005-0.007 mIoU from one machine to another).
    return {
        "type": "cpu",
        "count": os.cpu_count(),
        # the job's default; training and the probes set their own (train.threads, threads)
        "torch_threads": torch.get_num_threads(),
        "name": _cpu_name(),
        "capability": torch.backends.cpu.get_cpu_capability(),
    }


# The start method of our worker pools (mask stores, figures): fork on Linux, the platform's
# default elsewhere (spawn on macOS, where Python's docs call fork unsafe, and on Windows).
POOL_START_METHOD = "fork" if sys.platform == "linux" else None


def init_pool_worker() -> None:
    """A pool worker (mask stores, figures) leaves stopping to its parent: Ctrl-C, which a
    terminal sends to every process, stops the parent, which terminates the pool, and SIGTERM
    ends the worker at once, without the traceback of an interrupted worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _cpu_name() -> str | None:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def environment_record(executor: str, repo: str | Path) -> dict[str, Any]:
    """What ``env.json`` holds: package versions, git state of ``repo``, executor, SLURM ids,
    host, device and start time."""
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "start_time": now(),
        "executor": executor,
        "job_id": job_id_from_env(executor),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "python": sys.version.split()[0],
        "packages": versions,
        "git": {"repo": str(repo), **git_state(repo)},
        "slurm": {k: os.environ[k] for k in _SLURM_VARS if k in os.environ},
        "device": _device(),
    }


# --------------------------------------------------------------------------- summary


def encoder_record(run_dir: str | Path) -> dict[str, Any]:
    """Which pretraining step the run's ``backbone.pt`` is from, as ``eval.json`` records it:
    ``{"step", "planned_steps", "finished"}`` (None where unknown).

    ``backbone.json`` (written with ``backbone.pt`` by :func:`detcon.train.pretrain`) gives the
    step and the steps planned; ``train_summary.json`` (written once pretraining finished, or by
    an official import) says finished, and gives the steps where ``backbone.json`` does not.

    Raises:
        ValueError: one of the two files is not valid JSON.
    """
    run_dir = Path(run_dir)
    sidecar = read_json(run_dir / "backbone.json") or {}
    summary = read_json(run_dir / "train_summary.json")
    steps = None if summary is None else summary.get("steps")
    return {
        "step": sidecar.get("step", steps),
        "planned_steps": sidecar.get("planned_steps", steps),
        "finished": summary is not None,
    }


def flatten_summary(
    point: Mapping[str, Any],
    train_summary: Mapping[str, Any] | None,
    evaluation: Mapping[str, Any] | None,
    random_baseline: Mapping[str, Any] | None = None,
    supervised_ceiling: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One flat row per point, the source of the report tables (``summary.json``).

    Keys: ``ablation``, ``run_id``, ``profile``; the point's parameters under their dotted
    config keys (``method``, ``masks.source``, ``seed``); ``pretrain.<key>`` from
    ``train_summary.json``; ``eval.<task>.<metric>`` from ``eval.json``,
    ``eval_random.<task>.<metric>`` from ``eval_random.json`` (the random-init baseline: the
    floor) and ``eval_supervised.<task>.<metric>`` from ``eval_supervised.json`` (the encoder
    trained on the probe's labels: the ceiling).
    """
    row: dict[str, Any] = {k: point[k] for k in ("ablation", "run_id", "profile")}
    row.update(point.get("params", {}))
    for key, value in (train_summary or {}).items():
        row[f"pretrain.{key}"] = value
    for prefix, results in (
        ("eval", evaluation),
        ("eval_random", random_baseline),
        ("eval_supervised", supervised_ceiling),
    ):
        for task, metrics in (results or {}).items():
            if task in RECORDS:  # which encoder was measured and how: not a metric
                continue
            if isinstance(metrics, Mapping):
                for metric, value in metrics.items():
                    row[f"{prefix}.{task}.{metric}"] = value
            else:
                row[f"{prefix}.{task}"] = metrics
    return row


def same_probe(evaluation: Mapping[str, Any] | None, reference: Mapping[str, Any] | None) -> bool:
    """Whether a reference's results (``eval_random.json``, ``eval_supervised.json``) were probed
    as the encoder's (``eval.json``): one left by an earlier evaluation on another split, probe
    seed or data is no floor or ceiling of this one. Files without a probe record pass."""
    if not isinstance(evaluation, Mapping) or not isinstance(reference, Mapping):
        return True  # none, or not an eval file at all: the readers report that
    ours, theirs = evaluation.get(PROBE_RECORD), reference.get(PROBE_RECORD)
    return ours is None or theirs is None or ours == theirs


def summary_of(point: Mapping[str, Any], run_dir: str | Path, *, evaluated: bool) -> dict[str, Any]:
    """:func:`flatten_summary` of the files in ``run_dir``: ``train_summary.json`` and, when
    ``evaluated``, ``eval.json`` with its references (``eval_random.json``,
    ``eval_supervised.json``) that were probed as it was (:func:`same_probe`)."""
    run_dir = Path(run_dir)
    evaluation, *references = [read_json(run_dir / n) if evaluated else None for n in EVAL_FILES]
    references = [r if same_probe(evaluation, r) else None for r in references]
    train = read_json(run_dir / "train_summary.json")
    return flatten_summary(point, train, evaluation, *references)


# --------------------------------------------------------------------------- scanning


def metric_records(text: str) -> list[dict[str, Any]]:
    """The JSON objects of ``metrics.jsonl`` text, in order; torn or non-JSON lines (a job
    killed mid-write) are skipped."""
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def last_metrics(run_dir: str | Path) -> dict[str, Any] | None:
    """The last complete line of ``metrics.jsonl`` with a whole-number ``step`` (None when there
    is none); lines that are not (torn, or not ours) are skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            lines = f.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line (a job killed mid-write) or a cut first one
        step = row.get("step") if isinstance(row, dict) else None
        if isinstance(step, int) and not isinstance(step, bool) and step >= 0:
            return row
    return None


@dataclass(frozen=True)
class PointState:
    """What ``detcon status`` shows for one point.

    ``steps``: training steps logged so far (last ``metrics.jsonl`` step + 1), ``loss`` the last
    logged loss. ``state``: ``done``, ``failed``, ``running``, ``pending`` (queued, not started),
    ``interrupted`` (status says running but no process holds the lock: killed, or requeued and
    waiting), ``not started``, ``corrupt`` (an unreadable or invalid ``status.json`` or
    ``summary.json``: ``detcon run`` reruns the point) or ``broken`` (the run directory cannot be
    read, e.g. a file took its place: ``detcon run`` leaves it alone). ``error`` says why for
    ``failed``, ``corrupt`` and ``broken``. ``reused_from``: ``<ablation>/<run id>`` of the
    finished run of the same config whose results the point took instead of training
    (``status.json``; docs/design.md §2.2).
    """

    run_id: str
    run_dir: Path
    state: str
    job_id: str | None
    steps: int | None
    loss: float | None
    error: str | None
    notebook: Path | None
    reused_from: str | None = None


def _rendered_notebook(run_dir: Path, status: Mapping[str, Any]) -> Path | None:
    """The notebook to read: the HTML ``status.json`` names, else the last stage's HTML, else (an
    exported folder keeps no HTML: docs/run-directory.md) the executed ``.ipynb`` of the same."""
    named = status.get("notebook")
    names = [named] if isinstance(named, str) and named else []
    names += ["evaluate.html", "pretrain.html"]
    for name in [*names, *(str(Path(n).with_suffix(".ipynb")) for n in names)]:
        if (run_dir / name).exists():
            return run_dir / name
    return None


def point_state(run_dir: str | Path, run_id: str, queued_job: str | None = None) -> PointState:
    """Read a point's state from its run directory.

    Args:
        run_dir: the point's directory (need not exist).
        run_id: its id (shown as is).
        queued_job: the job id a launch submitted it under, when known (from the launch record).
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        reason = f"{run_dir} is a file, not a run directory; move it away to run the point"
    else:
        try:
            return _read_point_state(run_dir, run_id, queued_job)
        except OSError as exc:  # unreadable: permissions, a folder where a file belongs, ...
            reason = f"cannot read {exc.filename or run_dir}: {exc.strerror or exc}"
    return PointState(run_id, run_dir, "broken", queued_job, None, None, reason, None)


def _read_point_state(run_dir: Path, run_id: str, queued_job: str | None) -> PointState:
    problems = []
    try:
        status = read_status(run_dir) or {}
    except ValueError as exc:
        status = {}
        problems.append(str(exc))
    try:
        summary = read_summary(run_dir, run_id)
    except ValueError as exc:
        summary = None
        problems.append(str(exc))
    metrics = last_metrics(run_dir)
    error = problems[0] if problems else None
    if not problems and summary is None and status.get("state") == "done":
        problems.append(f"{run_dir / 'summary.json'} is missing while status.json says done")
        error = problems[0]
    if problems:
        state = "corrupt"
    elif summary is not None:
        state = "done"
    elif status.get("state") == "running" and not is_locked(run_dir):
        state = "interrupted"
    elif status.get("state"):
        state = status["state"]
    else:
        state = "pending" if queued_job else "not started"
    if state == "failed":
        error = (status.get("error") or "").strip().splitlines()[0:1]
        error = error[0] if error else "failed (no error text)"
    return PointState(
        run_id=run_id,
        run_dir=run_dir,
        state=state,
        job_id=status.get("job_id") or queued_job,
        steps=None if metrics is None else int(metrics["step"]) + 1,
        loss=_number(metrics.get("loss")) if metrics is not None else None,
        error=error,
        notebook=_rendered_notebook(run_dir, status),
        reused_from=status.get("reused_from"),
    )


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a JSON number, else None (a hand-edited line's text)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def launched_jobs(runs_root: Path, profile: str) -> dict[str, str]:
    """run id -> job id of the most recent SLURM launch of each point at ``profile``."""
    jobs: dict[str, str] = {}
    for record in sorted((runs_root / ".submitit").glob("*/launch.json")):
        try:
            data = read_json(record) or {}
        except ValueError:
            continue
        if data.get("profile") == profile:
            jobs.update(data.get("jobs", {}))
    return jobs


# squeue's states of a job that still waits for, holds or will rerun its point (COMPLETING and
# STAGE_OUT come after its program ended: its point's files say how)
_LIVE_STATES = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "SUSPENDED",
        "REQUEUED",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "RESIZING",
        "SIGNALING",
    }
)


def live_slurm_jobs(job_ids: set[str]) -> dict[str, str]:
    """job id -> state, for those of ``job_ids`` that SLURM still queues or runs.

    One ``squeue`` call for this user's jobs, array tasks one a line (``123_4``, as submitit
    names them). A job SLURM has forgotten is not listed: its point's files say what it did.

    Raises:
        ChildProcessError: squeue failed (without it a queued point would be submitted twice).
    """
    if not job_ids:
        return {}
    cmd = ["squeue", "--noheader", "--array", "--format=%i %T", "--user", getpass.getuser()]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or exc
        raise ChildProcessError(
            f"cannot ask SLURM which points are still queued ({' '.join(cmd)}: "
            f"{str(detail).strip()}); without it a queued point would be submitted again"
        ) from None
    live = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in job_ids and parts[1] in _LIVE_STATES:
            live[parts[0]] = parts[1]
    return live


def ablation_status(
    ablation_path: str | Path,
    *,
    profile: str = "cpu",
    runs_dir: str | Path = "runs",
    only: str | None = None,
) -> list[PointState]:
    """The state of every point of the ablation at ``profile`` (nothing is written); with
    ``only``, of the points whose run id contains it.

    Raises:
        ValueError: ``only`` matches no run id.
        NotADirectoryError: ``runs_dir`` is a file (every point would read as broken).
    """
    if Path(runs_dir).exists() and not Path(runs_dir).is_dir():
        raise NotADirectoryError(f"--runs-dir {str(runs_dir)!r} is a file, expected a folder")
    ablation = load_ablation(ablation_path)
    points = select_points(expand(ablation, profile), only, ablation.name, profile)
    runs_root = Path(runs_dir) / ablation.name
    queued = launched_jobs(runs_root, profile)
    states = [point_state(runs_root / p.run_id, p.run_id, queued.get(p.run_id)) for p in points]
    return _forgotten_by_slurm(states)


def _forgotten_by_slurm(states: list[PointState]) -> list[PointState]:
    """A ``pending`` point (submitted, no file of its own yet) whose job SLURM no longer lists
    ended without starting it (an error on the node before the point began, ``scancel``, a
    node failure): ``not started``, saying so, so that it does not read pending for ever.
    Without a working ``squeue`` (a copied runs folder on a laptop) the states stay as read."""
    pending = {s.job_id for s in states if s.state == "pending" and s.job_id}
    if not pending or shutil.which("squeue") is None:
        return states
    try:
        live = live_slurm_jobs(pending)
    except ChildProcessError:
        return states
    return [
        replace(
            s,
            state="not started",
            error=f"SLURM job {s.job_id} left the queue without starting the point (its log: "
            f"the launch's .submitit folder); `detcon run` submits it again",
        )
        if s.state == "pending" and s.job_id not in live
        else s
        for s in states
    ]
