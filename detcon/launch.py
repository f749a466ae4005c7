"""``detcon run`` / ``detcon status``: validate an ablation grid, then run each point's notebooks.

Flow (docs/design.md §2): expand the ablation file into grid points; validate *every* point before
anything is written or submitted (config, evaluation task names, notebook parameters, data paths,
cluster profile); skip points that are done (a valid ``summary.json``), points locked by another
process and points whose run directory cannot be used (reported); rerun points whose
``status.json`` or ``summary.json`` is corrupt; then run each remaining point as one job through
an executor:

- ``local`` (default): points one after the other in this process. Each notebook already runs in
  its own kernel process, and on a small machine running points side by side only makes them
  compete for the same cores; in-process also gives live ``[i/n]`` progress and the error text
  at once. (``submitit.LocalExecutor`` would add a process per point and log files to chase.)
- ``slurm``: one SLURM job array through submitit (``AutoExecutor(cluster="slurm")``), resources
  and array parallelism from a cluster profile (``ablations/clusters/<name>.yaml``), a fresh
  submitit folder per launch. Jobs are ``submitit.helpers.Checkpointable``: on USR2 (preemption,
  time limit) submitit requeues them and the point resumes from its training checkpoint.
- ``debug``: ``submitit.DebugExecutor``, in-process, dropping into pdb on a failure.

A point's job (:func:`run_point`) holds ``run_dir/.lock``, writes ``point.json``, ``env.json``
and ``status.json``, executes ``notebooks/<notebook>.ipynb`` and then ``notebooks/evaluate.ipynb``
with papermill (``cwd=run_dir``), renders each to HTML with nbconvert, and writes ``summary.json``
(docs/run-directory.md). A failing point records ``failed`` with its error and keeps the HTML of
the failed notebook; it never stops the other points.
"""

from __future__ import annotations

import argparse
import ast
import datetime as _dt
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit

from detcon.atomic import remove_stale_temp_files, write_json, write_text
from detcon.config import ConfigError, from_dict, to_dict
from detcon.grid import Ablation, GridPoint, expand, load_ablation, resolve_config
from detcon.runs import (
    PointBusyError,
    PointState,
    environment_record,
    flatten_summary,
    job_id_from_env,
    point_lock,
    point_state,
    read_json,
    read_status,
    read_summary,
    write_status,
)

__all__ = [
    "ClusterProfile",
    "LaunchResult",
    "Plan",
    "PointFailedError",
    "PointJob",
    "PointSpec",
    "ablation_status",
    "load_cluster_profile",
    "prepare",
    "register_cli",
    "run_ablation",
    "run_point",
]

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO / "notebooks"
CLUSTER_DIR = REPO / "ablations" / "clusters"
EVALUATE_NOTEBOOK = "evaluate"
EXECUTORS = ("local", "slurm", "debug")
# Evaluation tasks when detcon.evaluate cannot be imported (docs/design.md §5); its TASKS wins
# otherwise.
_DESIGN_TASKS = ("segmentation", "depth", "linear", "detection")
# Parameters the launcher sets itself, per stage; an ablation file may not set them.
_LAUNCHER_PARAMETERS = {
    "pretrain": ("profile", "overrides", "run_dir", "progress"),
    "evaluate": ("run_dir", "tasks", "profile", "data_root"),
}
# Pretrain-notebook parameter of evaluation-only points: import this official checkpoint
# (detcon.official.import_run) instead of training. Given per point as grid key
# ``notebook.official_checkpoint``; checked to exist before anything is submitted.
OFFICIAL_PARAMETER = "official_checkpoint"
# Mask sources too slow to compute in every loader worker, every epoch, on a real dataset (FH ~0.14
# s per ImageNet image, docs/performance.md §4; MCG-style more): at the paper profile they must
# come from a precomputed store (masks.store).
_PRECOMPUTED_SOURCES = ("fh", "mcg")
# Would change what is trained without changing the run id: belongs in the config instead.
_CONFIG_PARAMETERS = {"max_steps": "base: {train.max_steps: N}"}
_PY_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
    "dict": (dict,),
    "list": (list,),
}
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class PointFailedError(RuntimeError):
    """A grid point's notebook (or its bookkeeping) failed; ``status.json`` says why."""


# --------------------------------------------------------------------------- cluster profiles


def _cf(default: Any, help: str, lo: float | None = None) -> Any:
    return field(default=default, metadata={"help": help, "range": (lo, None)})


@dataclass(frozen=True)
class ClusterProfile:
    """Resources of one job (= one grid point) on a SLURM cluster (``ablations/clusters/``).

    Never inside an ablation file: the same ablation runs on any cluster.
    """

    description: str = _cf("", "what machine this describes")
    partition: str = _cf("", "SLURM partition (empty: the cluster's default)")
    nodes: int = _cf(1, "nodes per point", 1)
    gpus_per_node: int = _cf(0, "GPUs per node (0: CPU job)", 0)
    tasks_per_node: int = _cf(1, "processes per node; one per GPU for DDP", 1)
    cpus_per_task: int = _cf(1, "CPU cores per process (data loading workers + 1)", 1)
    mem_gb: float = _cf(4.0, "memory per node in GB", 0.0)
    timeout_min: int = _cf(60, "time limit per job; longer points are requeued and resume", 1)
    array_parallelism: int = _cf(8, "grid points running at the same time", 1)
    account: str = _cf("", "SLURM account (empty: none)")
    qos: str = _cf("", "SLURM QOS (empty: none)")
    constraint: str = _cf("", "SLURM node constraint (empty: none)")
    setup: str = _cf("", "shell lines run before the job starts (module load, conda activate)")

    def submitit_parameters(self) -> dict[str, Any]:
        """Keyword arguments for ``AutoExecutor.update_parameters``."""
        params: dict[str, Any] = {
            "nodes": self.nodes,
            "tasks_per_node": self.tasks_per_node,
            "cpus_per_task": self.cpus_per_task,
            "mem_gb": self.mem_gb,
            "timeout_min": self.timeout_min,
            "slurm_array_parallelism": self.array_parallelism,
        }
        if self.gpus_per_node:
            params["gpus_per_node"] = self.gpus_per_node
        optional = {
            "slurm_partition": self.partition,
            "slurm_account": self.account,
            "slurm_qos": self.qos,
            "slurm_constraint": self.constraint,
        }
        params.update({k: v for k, v in optional.items() if v})
        if self.setup.strip():
            params["slurm_setup"] = [line for line in self.setup.splitlines() if line.strip()]
        return params


def load_cluster_profile(name: str, directory: str | Path = CLUSTER_DIR) -> ClusterProfile:
    """``<directory>/<name>.yaml`` (or ``name`` itself when it is a ``.yaml`` path) parsed
    strictly (unknown keys, wrong types: ConfigError)."""
    from detcon.config import load_yaml

    path = Path(name) if name.endswith(".yaml") else Path(directory) / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in Path(directory).glob("*.yaml"))
        raise ConfigError(
            f"cluster profile {name!r} not found: expected {path} (known: "
            f"{', '.join(known) or 'none'})"
        )
    try:
        return from_dict(ClusterProfile, load_yaml(path))
    except ConfigError as exc:
        raise ConfigError(f"cluster profile {path}: {exc}") from None


# --------------------------------------------------------------------------- notebooks


def notebook_path(name: str, relative_to: Path | None = None) -> Path:
    """``pretrain`` -> ``<repo>/notebooks/pretrain.ipynb``; a name ending in ``.ipynb`` is a path
    (relative to ``relative_to``, the ablation file's folder)."""
    if name.endswith(".ipynb"):
        path = Path(name)
        return path if path.is_absolute() or relative_to is None else relative_to / path
    return NOTEBOOK_DIR / f"{name}.ipynb"


def notebook_parameters(path: Path) -> dict[str, dict[str, Any]]:
    """The parameters of the notebook's ``parameters`` cell (papermill's inspection).

    Raises:
        FileNotFoundError: no such notebook.
        ValueError: the notebook has no cell tagged ``parameters``.
    """
    import nbformat
    import papermill

    if not path.is_file():
        raise FileNotFoundError(f"notebook {str(path)!r} does not exist")
    nb = nbformat.read(path, as_version=4)
    if not any("parameters" in c.get("metadata", {}).get("tags", []) for c in nb.cells):
        raise ValueError(
            f"notebook {path} has no cell tagged 'parameters': papermill needs one to inject a "
            "point's values (tag the cell that assigns the defaults)"
        )
    return dict(papermill.inspect_notebook(str(path)))


def _declared_type(param: Mapping[str, Any]) -> str | None:
    """Type name of a notebook parameter: its annotation, else its default's literal type."""
    name = str(param.get("inferred_type_name"))
    if name in _PY_TYPES:
        return name
    try:
        value = ast.literal_eval(str(param.get("default")))
    except (ValueError, SyntaxError):
        return None
    name = type(value).__name__
    return name if name in _PY_TYPES else None


def check_parameters(path: Path, given: Mapping[str, Any]) -> None:
    """Reject parameters ``path`` does not declare (papermill only warns) or of the wrong type.

    Raises:
        ValueError: naming the parameter and the notebook's parameters.
    """
    declared = notebook_parameters(path)
    types = {n: _declared_type(p) for n, p in declared.items()}
    listing = ", ".join(f"{n} ({types[n] or 'any'})" for n in declared)
    for name, value in given.items():
        if name not in declared:
            import difflib

            hint = difflib.get_close_matches(name, list(declared), n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ValueError(
                f"notebook {path.name} has no parameter {name!r}{extra}; its parameters: "
                f"{listing or 'none'}"
            )
        expected = types[name]
        if expected is None:
            continue
        allowed = _PY_TYPES[expected]
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise ValueError(
                f"notebook {path.name}: parameter {name}={value!r} has type "
                f"{type(value).__name__}, expected {expected} (the type of its default)"
            )


def kernel_name() -> str:
    """``detcon-venv`` (installed by ``make install``) when present, else ``python3``."""
    from jupyter_client.kernelspec import KernelSpecManager

    return "detcon-venv" if "detcon-venv" in KernelSpecManager().find_kernel_specs() else "python3"


def render_html(notebook: Path) -> Path:
    """Render an executed notebook to ``<notebook>.html`` next to it (atomic)."""
    import nbconvert

    body, _ = nbconvert.HTMLExporter().from_filename(str(notebook))
    return write_text(notebook.with_suffix(".html"), body)


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
    import papermill

    papermill.execute_notebook(
        str(spec_nb),
        str(out_nb),
        parameters=dict(parameters),
        kernel_name=kernel,
        progress_bar=False,
        cwd=str(cwd),
        # ipykernel >= 7 warns on every start that its local TCP sockets are unencrypted: noise
        # in every point's log. Errors still show; the notebook's own output is unaffected.
        extra_arguments=["--IPKernelApp.log_level=ERROR"],
        # Stop the kernel at once (interrupt, then kill its process group) instead of asking it
        # to shut down: after Ctrl-C the kernel is still running a cell, and the polite request
        # closes its sockets under that cell's reply (a ZMQError traceback on the terminal).
        # After the last cell every output has arrived, so nothing is lost either way.
        shutdown_kernel="immediate",
    )


def _error_text(exc: BaseException) -> tuple[str, str]:
    """(one line, detail) for status.json; papermill errors give the cell's exception."""
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    line = f"{ename}: {evalue}" if ename else f"{type(exc).__name__}: {exc}"
    return _ANSI.sub("", line).strip().splitlines()[0][:500], _ANSI.sub("", str(exc))[-20000:]


# --------------------------------------------------------------------------- one point


@dataclass(frozen=True)
class PointSpec:
    """Everything a job needs to run one point (pickled to the cluster node).

    ``parameters`` / ``eval_parameters``: papermill parameters of the main / evaluate notebook
    (``eval_parameters`` None: no evaluation). ``overrides`` are the point's overrides with
    relative data paths made absolute (the notebook runs with ``cwd=run_dir``).
    """

    point: GridPoint
    run_dir: Path
    notebook: Path
    parameters: Mapping[str, Any]
    evaluate_notebook: Path
    eval_parameters: Mapping[str, Any] | None
    kernel: str
    executor: str

    @property
    def run_id(self) -> str:
        return self.point.run_id


def _rank(executor: str) -> int:
    """This process's rank in a multi-process SLURM job (0 outside SLURM jobs)."""
    if executor != "slurm":
        return 0
    return int(os.environ.get("SLURM_PROCID", "0") or 0)


def _expected_config(spec: PointSpec) -> dict[str, Any]:
    """The config the point's notebook must train (what its ``config.json`` must hold)."""
    return to_dict(resolve_config(spec.parameters["overrides"], spec.point.profile))


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
        return read_json(run_dir / "config.json") == _expected_config(spec)
    except ValueError:
        return False


def _point_done(spec: PointSpec) -> bool:
    """A valid ``summary.json`` and ``status.json``: a corrupt one makes the point run again."""
    try:
        read_status(spec.run_dir)
        return read_summary(spec.run_dir, spec.run_id) is not None
    except ValueError:
        return False


def _follow(spec: PointSpec) -> dict[str, Any]:
    """Ranks > 0 of a multi-process (DDP) job: join rank 0's training, write nothing else."""
    from detcon.train import pretrain

    done = _stage_skipped(spec) or _point_done(spec)
    if done or spec.parameters.get(OFFICIAL_PARAMETER):  # an import trains nothing to join
        return {"run_id": spec.run_id, "state": "follower", "rank": _rank(spec.executor)}
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
    write_json(
        run_dir / "point.json",
        {
            **point.to_json(),
            "notebook": spec.notebook.name,
            "parameters": dict(spec.parameters),
            "eval_parameters": None if spec.eval_parameters is None else dict(spec.eval_parameters),
        },
    )
    write_json(run_dir / "env.json", environment_record(spec.executor, REPO))
    write_status(run_dir, "running", job_id=job_id, stages=stages)
    current = spec.notebook.name
    try:
        if "pretrain" not in stages:
            out = run_dir / spec.notebook.name
            try:
                _execute(spec.notebook, out, spec.parameters, run_dir, spec.kernel)
            finally:
                _render_after(out)
            if read_json(run_dir / "config.json") != _expected_config(spec):
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
            out = run_dir / current
            try:
                _execute(spec.evaluate_notebook, out, spec.eval_parameters, run_dir, spec.kernel)
            finally:
                _render_after(out)
            evaluation = read_json(run_dir / "eval.json")
            if evaluation is None:
                raise PointFailedError(f"{current} finished without eval.json")
            stages.append("evaluate")
        summary = flatten_summary(
            point.to_json(),
            read_json(run_dir / "train_summary.json"),
            evaluation,
            read_json(run_dir / "eval_random.json") if evaluation is not None else None,
            read_json(run_dir / "eval_supervised.json") if evaluation is not None else None,
        )
        write_json(run_dir / "summary.json", summary)
        notebook = Path(current).with_suffix(".html").name
        write_status(run_dir, "done", job_id=job_id, stages=stages, notebook=notebook)
        return {"run_id": spec.run_id, "state": "done"}
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
        )
        raise PointFailedError(f"{spec.run_id}: {line}") from exc


class PointJob(submitit.helpers.Checkpointable):
    """A point as a submitit job. ``Checkpointable``: on USR2 (preemption or the time limit)
    submitit pickles this object and requeues the job, which then calls it again; the point
    resumes from ``checkpoint.pt`` (``detcon.train.pretrain``) and finished stages are skipped."""

    def __init__(self, spec: PointSpec) -> None:
        self.spec = spec

    def __call__(self) -> dict[str, Any]:
        return run_point(self.spec)


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class Plan:
    """A validated launch: the points and how to run them."""

    ablation: Ablation
    profile: str
    runs_root: Path
    points: tuple[GridPoint, ...]
    specs: tuple[PointSpec, ...]
    cluster_name: str | None
    cluster: ClusterProfile | None


def _known_tasks() -> tuple[str, ...]:
    try:
        from detcon.evaluate import TASKS
    except ImportError:
        return _DESIGN_TASKS
    return tuple(TASKS)


def _check_tasks(ablation: Ablation) -> None:
    known = _known_tasks()
    for task in ablation.evaluate:
        if task not in known:
            import difflib

            hint = difflib.get_close_matches(task, known, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ValueError(
                f"{ablation.path}: evaluate names the unknown task {task!r}{extra}; expected "
                f"tasks among {', '.join(known)}"
            )


def _absolute(path: str) -> str:
    return path if not path or os.path.isabs(path) else os.path.abspath(path)


def _job_overrides(point: GridPoint) -> dict[str, Any]:
    overrides = dict(point.overrides)
    cfg = point.config
    if cfg.data.dataset != "synthetic" and cfg.data.root:
        overrides["data.root"] = _absolute(cfg.data.root)
    for key in ("store", "external_dir"):
        if getattr(cfg.masks, key):
            overrides[f"masks.{key}"] = _absolute(getattr(cfg.masks, key))
    return overrides


def _notebook_params(point: GridPoint) -> dict[str, Any]:
    params = dict(point.notebook_params)
    if isinstance(params.get(OFFICIAL_PARAMETER), str):
        params[OFFICIAL_PARAMETER] = _absolute(params[OFFICIAL_PARAMETER])
    return params


def _check_data(point: GridPoint, overrides: Mapping[str, Any], where: Path) -> None:
    cfg = point.config
    official = point.notebook_params.get(OFFICIAL_PARAMETER)
    if official:  # nothing is trained: only the checkpoint has to be there
        if not Path(_absolute(str(official))).is_file():
            raise FileNotFoundError(
                f"{where}: point {point.run_id} imports the official checkpoint "
                f"{official!r} (resolved to {_absolute(str(official))}), which does not exist; "
                "download the release's .npy files (README, 'Official checkpoints') and set "
                "notebook.official_checkpoint to their path"
            )
        return
    checks = []
    if cfg.data.dataset != "synthetic":
        checks.append(("data.root", cfg.data.root, overrides.get("data.root", "")))
    if cfg.masks.store:
        checks.append(("masks.store", cfg.masks.store, overrides["masks.store"]))
    if cfg.masks.source == "external":
        checks.append(
            ("masks.external_dir", cfg.masks.external_dir, overrides.get("masks.external_dir", ""))
        )
    for key, given, resolved in checks:
        if not given or not Path(resolved).exists():
            shown = (
                f"is {given!r} (resolved to {resolved}), which does not exist"
                if given
                else "is empty"
            )
            raise FileNotFoundError(
                f"{where}: point {point.run_id} (profile {point.profile!r}) needs {key} but it "
                f"{shown}; set {key} under profiles.{point.profile}.overrides (or base) to the "
                "directory"
            )
    if cfg.masks.store:  # its source, parameters and shards; training checks the dataset too
        from detcon.masks.sources import build_mask_source
        from detcon.masks.store import open_for_training

        try:
            open_for_training(overrides["masks.store"], build_mask_source(cfg.masks))
        except (ValueError, FileNotFoundError) as exc:
            raise type(exc)(f"{where}: point {point.run_id}: {exc}") from None


def _check_identity(point: GridPoint, run_dir: Path) -> None:
    """A run directory is reused (resumed, or skipped as done) only by the point that made it:
    the run id shows a prefix of the config digest, ``point.json`` records all of it. (Older
    ``point.json`` files without it are taken as the point's.)"""
    path = run_dir / "point.json"
    if not path.is_file():
        return
    try:
        recorded = (read_json(path) or {}).get("config_digest")
    except (OSError, ValueError):
        return  # unreadable: reported by `detcon status`, rewritten when the point runs
    if recorded and recorded != point.digest:
        raise ValueError(
            f"run directory {run_dir} (run id {point.run_id}) holds another grid point: its "
            f"point.json has config digest {recorded}, this point's is {point.digest} (their "
            "first digits coincide); move that directory away to run this point"
        )


def _precompute_args(point: GridPoint) -> tuple[str, ...]:
    """``detcon masks precompute`` arguments (but ``--out``) of the store ``point`` reads."""
    from detcon.masks.sources import build_mask_source

    cfg = point.config
    sets = {"data.dataset": cfg.data.dataset, "data.root": cfg.data.root}
    sets |= {f"masks.{k}": v for k, v in build_mask_source(cfg.masks).params.items()}
    args = ["--profile", point.profile, "--source", cfg.masks.source]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    return tuple(args)


def _check_mask_stores(points: Sequence[GridPoint], where: Path) -> None:
    """At the paper profile, on a real dataset, fh and mcg masks come from a precomputed store:
    refuse every point that would compute them on the fly, giving the commands that make the
    stores (one per distinct source and parameters)."""
    groups: dict[tuple[str, ...], list[GridPoint]] = {}
    for point in points:
        cfg = point.config
        if (
            point.profile == "paper"
            and cfg.data.dataset != "synthetic"
            and cfg.masks.source in _PRECOMPUTED_SOURCES
            and not cfg.masks.store
            and not point.notebook_params.get(OFFICIAL_PARAMETER)  # trains nothing
        ):
            groups.setdefault(_precompute_args(point), []).append(point)
    if not groups:
        return
    outs: list[str] = []
    commands = []
    for args, group in groups.items():
        cfg = group[0].config
        out = f"stores/{cfg.data.dataset}-{cfg.masks.source}"
        out += f"-{outs.count(out) + 1}" if out in outs else ""  # other parameters, same source
        outs.append(out)
        ids = [p.run_id for p in group]
        shown = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
        command = shlex.join(["detcon", "masks", "precompute", *args, "--out", out])
        commands.append(f"`{command}` (point{'s' if len(ids) > 1 else ''} {shown})")
    n = sum(len(group) for group in groups.values())
    raise ValueError(
        f"{where}: at profile 'paper' on a real dataset, fh and mcg masks come from a "
        f"precomputed mask store, but {n} point{'s compute' if n > 1 else ' computes'} them "
        "on the fly (masks.store is empty), in every loader worker, every epoch. Precompute "
        f"each store once: {'; '.join(commands)}; then set masks.store of those points to its "
        "--out folder"
    )


def _check_eval_data(ablation: Ablation, profile: str, data_root: Path) -> None:
    """The evaluation datasets' folder must exist when a task of ``profile`` reads real data."""
    try:
        from detcon.evaluate import get_settings
    except ImportError:
        return
    settings = get_settings(profile)
    real = sorted(
        {s.data.dataset for t in ablation.evaluate for s in settings.for_task(t)} - {"synthetic"}
    )
    if real and not data_root.is_dir():
        raise FileNotFoundError(
            f"{ablation.path}: evaluation at profile {profile!r} reads {', '.join(real)} from "
            f"--data-root {str(data_root)!r}, which does not exist; pass the folder holding "
            "the evaluation datasets"
        )


def prepare(
    ablation_path: str | Path,
    *,
    profile: str = "cpu",
    runs_dir: str | Path = "runs",
    only: str | None = None,
    executor: str = "local",
    cluster: str | None = None,
    check_data: bool = True,
    data_root: str | Path = "data",
) -> Plan:
    """Expand and validate every point; nothing is written.

    Raises:
        ConfigError / ValueError / FileNotFoundError: the first problem, naming the file, the
            point and what is expected.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor={executor!r}: expected one of {', '.join(EXECUTORS)}")
    ablation = load_ablation(ablation_path)
    points = expand(ablation, profile)
    if only:
        chosen = [p for p in points if only in p.run_id]
        if not chosen:
            raise ValueError(
                f"--only {only!r} matches no run id of {ablation.name} at profile {profile!r}; "
                f"ids: {', '.join(p.run_id for p in points[:8])}"
                + (", ..." if len(points) > 8 else "")
            )
        points = chosen
    _check_tasks(ablation)
    base_dir = ablation.path.resolve().parent
    main_nb = notebook_path(ablation.notebook, base_dir)
    eval_nb = notebook_path(EVALUATE_NOTEBOOK)
    for name in sorted({name for p in points for name in p.notebook_params}):
        if name in _LAUNCHER_PARAMETERS["pretrain"]:
            raise ValueError(
                f"{ablation.path}: grid key notebook.{name} is a parameter the launcher sets for "
                "every point; remove it"
            )
    for stage, params in ablation.parameters.items():
        for name in params:
            if name in _LAUNCHER_PARAMETERS[stage]:
                raise ValueError(
                    f"{ablation.path}: parameters.{stage}.{name} is set by the launcher for "
                    "every point; remove it"
                )
            if stage == "pretrain" and name in _CONFIG_PARAMETERS:
                raise ValueError(
                    f"{ablation.path}: parameters.pretrain.{name} would change what is trained "
                    f"without changing the run id; use {_CONFIG_PARAMETERS[name]}"
                )
    if ablation.parameters.get("evaluate") and not ablation.evaluate:
        raise ValueError(
            f"{ablation.path}: parameters.evaluate is set but 'evaluate:' lists no task, so the "
            "evaluate notebook never runs; add tasks or remove the parameters"
        )
    cluster_name = cluster or ablation.cluster_for(profile)
    cluster_profile = load_cluster_profile(cluster_name) if cluster_name else None
    if executor == "slurm" and cluster_profile is None:
        raise ValueError(
            f"{ablation.path}: --executor slurm needs a cluster profile: name one with "
            f"'cluster:' (or profiles.{profile}.cluster) or --cluster (files in {CLUSTER_DIR})"
        )
    kernel = kernel_name()
    data_root = Path(data_root).absolute()
    runs_root = Path(runs_dir) / ablation.name
    specs = []
    for point in points:
        overrides = _job_overrides(point)
        if check_data:
            _check_data(point, overrides, ablation.path)
        run_dir = (runs_root / point.run_id).absolute()
        _check_identity(point, run_dir)
        params = {
            "profile": profile,
            "overrides": overrides,
            "run_dir": str(run_dir),
            # A widget bar renders as "0%" in the offline HTML; `detcon status` shows progress.
            "progress": False,
            **ablation.parameters.get("pretrain", {}),
            **_notebook_params(point),
        }
        eval_params = None
        if ablation.evaluate:
            eval_params = {
                "run_dir": str(run_dir),
                "tasks": list(ablation.evaluate),
                "profile": profile,
                "data_root": str(data_root),
                **ablation.parameters.get("evaluate", {}),
            }
        specs.append(
            PointSpec(point, run_dir, main_nb, params, eval_nb, eval_params, kernel, executor)
        )
    if check_data:
        _check_mask_stores(points, ablation.path)
    if check_data and ablation.evaluate:
        _check_eval_data(ablation, profile, data_root)
    # Points differ in their names only through notebook.* grid keys: check each distinct set.
    checked: set[tuple[str, ...]] = set()
    for spec in specs:
        names = tuple(sorted(spec.parameters))
        if names not in checked:
            checked.add(names)
            check_parameters(main_nb, spec.parameters)
    if specs and specs[0].eval_parameters is not None:
        check_parameters(eval_nb, specs[0].eval_parameters)
    return Plan(
        ablation, profile, runs_root, tuple(points), tuple(specs), cluster_name, cluster_profile
    )


# --------------------------------------------------------------------------- launching


@dataclass
class LaunchResult:
    """What a launch did. ``jobs``: submitit jobs (slurm/debug); the lists hold run ids;
    ``broken``: points whose run directory cannot be used (not run, see ``detcon status``)."""

    plan: Plan
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


def _varying_keys(points: Sequence[GridPoint]) -> list[str]:
    keys: dict[str, None] = {}
    for p in points:
        keys.update(dict.fromkeys(k for k in p.params if k != "seed"))
    return [*keys, "seed"]


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def describe_plan(plan: Plan) -> str:
    """The dry-run listing: one line per point with its run id and parameters."""
    ab = plan.ablation
    keys = _varying_keys(plan.points)
    rows = [[p.run_id, *(p.params.get(k, "") for k in keys)] for p in plan.points]
    stages = [plan.specs[0].notebook.name] if plan.specs else []
    if ab.evaluate:
        stages.append(f"evaluate.ipynb [{', '.join(ab.evaluate)}]")
    head = (
        f"{ab.name} (profile {plan.profile}): {len(plan.points)} points; notebooks "
        f"{' -> '.join(stages)}; runs in {plan.runs_root}/"
        + (f"; cluster profile {plan.cluster_name}" if plan.cluster_name else "")
    )
    return head + "\n" + _table(rows, ["run id", *keys])


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
    echo: Callable[[str], None] = print,
) -> LaunchResult:
    """Validate every point of an ablation, then run (local, debug) or submit (slurm) the points
    not yet done. See the module docstring; ``echo`` receives the progress lines."""
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
        echo(describe_plan(plan))
        echo("dry run: nothing was written or submitted")
        return result
    _check_writable(plan.runs_root)
    todo: list[PointSpec] = []
    notes: list[str] = []
    for spec in plan.specs:
        state = point_state(spec.run_dir, spec.run_id)
        if state.state == "done":
            result.done.append(spec.run_id)
        elif state.state == "running":
            result.busy.append(spec.run_id)
            notes.append(f"  {spec.run_id}: running elsewhere (its lock is held), skipped")
        elif state.state == "broken":  # one point's problem: report it, run the others
            result.broken.append(spec.run_id)
            notes.append(f"  {spec.run_id}: broken ({state.error}), skipped")
        else:
            todo.append(spec)
            if state.state == "corrupt":
                notes.append(f"  {spec.run_id}: corrupt ({state.error}), run again")
    n = len(plan.specs)
    echo(
        f"{plan.ablation.name} (profile {profile}, executor {executor}): {n} points, "
        f"{len(result.done)} done, {len(result.busy)} running elsewhere, {len(todo)} to run"
        + (f", {len(result.broken)} broken" if result.broken else "")
    )
    for line in notes:
        echo(line)
    if not todo:
        return result
    if executor == "local":
        _run_local(todo, result, echo)
    elif executor == "debug":
        _run_debug(todo, result, echo)
    else:
        _submit_slurm(todo, result, echo)
    return result


def _finish(spec: PointSpec, outcome: dict[str, Any], result: LaunchResult) -> str:
    state = outcome.get("state")
    if state == "busy":
        result.busy.append(spec.run_id)
        return "running elsewhere (its lock is held), skipped"
    if state == "skipped":
        result.done.append(spec.run_id)
        return "already done"
    result.ran.append(spec.run_id)
    return "done"


def _failed_line(spec: PointSpec, exc: BaseException, result: LaunchResult) -> str:
    result.failed.append(spec.run_id)
    html = point_state(spec.run_dir, spec.run_id).notebook
    return f"FAILED: {exc}" + (f" (see {html})" if html else "")


def _run_local(todo: Sequence[PointSpec], result: LaunchResult, echo: Callable) -> None:
    for i, spec in enumerate(todo, 1):
        tag = f"[{i}/{len(todo)}] {spec.run_id}"
        echo(f"{tag} ...")
        t0 = time.perf_counter()
        try:
            msg = _finish(spec, run_point(spec), result)
        except PointFailedError as exc:
            msg = _failed_line(spec, exc, result)
        echo(f"{tag} {msg} ({time.perf_counter() - t0:.0f} s)")


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


def _submit_slurm(todo: Sequence[PointSpec], result: LaunchResult, echo: Callable) -> None:
    plan = result.plan
    if shutil.which("sbatch") is None:
        raise FileNotFoundError(
            "--executor slurm needs SLURM's sbatch on PATH (none found); run on a login node, "
            "start the local cluster with `make slurm-up`, or use --executor local"
        )
    folder = _launch_folder(plan.runs_root)
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
    assert plan.cluster is not None  # prepare() requires one for slurm
    ex.update_parameters(name=f"detcon-{plan.ablation.name}", **plan.cluster.submitit_parameters())
    with ex.batch():
        jobs = [ex.submit(PointJob(spec)) for spec in todo]
    result.jobs, result.folder = jobs, folder
    record = {
        "ablation": plan.ablation.name,
        "profile": plan.profile,
        "cluster": plan.cluster_name,
        "submitted": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "jobs": {spec.run_id: job.job_id for spec, job in zip(todo, jobs)},
    }
    write_json(folder / "launch.json", record)
    array = jobs[0].job_id.split("_")[0] if jobs else "?"
    echo(
        f"submitted {len(jobs)} points as SLURM array {array} "
        f"(parallelism {plan.cluster.array_parallelism}); submitit folder {folder}"
    )
    for spec, job in zip(todo, jobs):
        echo(f"  {job.job_id}  {spec.run_id}")
    echo(
        f"follow with: detcon status {plan.ablation.path} --profile {plan.profile} "
        f"--runs-dir {plan.runs_root.parent}"
    )


# --------------------------------------------------------------------------- status


def _queued_jobs(runs_root: Path, profile: str) -> dict[str, str]:
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


def ablation_status(
    ablation_path: str | Path,
    *,
    profile: str = "cpu",
    runs_dir: str | Path = "runs",
    only: str | None = None,
) -> list[PointState]:
    """The state of every point of the ablation at ``profile`` (nothing is written)."""
    ablation = load_ablation(ablation_path)
    points = [p for p in expand(ablation, profile) if not only or only in p.run_id]
    runs_root = Path(runs_dir) / ablation.name
    queued = _queued_jobs(runs_root, profile)
    return [point_state(runs_root / p.run_id, p.run_id, queued.get(p.run_id)) for p in points]


def format_status(states: Sequence[PointState], *, title: str = "") -> str:
    counts: dict[str, int] = {}
    for s in states:
        counts[s.state] = counts.get(s.state, 0) + 1
    head = (
        (title + ": " if title else "")
        + f"{len(states)} points: "
        + ", ".join(f"{v} {k}" for k, v in counts.items())
    )
    rows = [
        [
            s.run_id,
            s.state,
            s.job_id or "",
            "" if s.steps is None else s.steps,
            "" if s.loss is None else f"{s.loss:.4f}",
            s.notebook or "",
            s.error or "",
        ]
        for s in states
    ]
    return (
        head + "\n" + _table(rows, ["run id", "state", "job", "steps", "loss", "notebook", "error"])
    )


# --------------------------------------------------------------------------- CLI


def _cmd_run(args: argparse.Namespace) -> int:
    result = run_ablation(
        args.ablation,
        profile=args.profile,
        executor=args.executor,
        runs_dir=args.runs_dir,
        dry_run=args.dry_run,
        only=args.only,
        cluster=args.cluster,
        data_root=args.data_root,
        echo=lambda line: print(line, flush=True),
    )
    if not result.ok:
        n = len(result.plan.specs)
        problems = [
            f"{len(ids)} of {n} points {what}: {', '.join(ids)}"
            for what, ids in (("failed", result.failed), ("broken (not run)", result.broken))
            if ids
        ]
        print(
            f"{'; '.join(problems)}; see `detcon status {args.ablation} --profile "
            f"{args.profile}` and the failed notebooks' HTML",
            file=sys.stderr,
        )
        return 1
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    states = ablation_status(
        args.ablation, profile=args.profile, runs_dir=args.runs_dir, only=args.only
    )
    print(format_status(states, title=f"{Path(args.ablation).stem} (profile {args.profile})"))
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``detcon run`` and ``detcon status`` (called by :mod:`detcon.cli`)."""
    from detcon.config import available_profiles

    profiles = available_profiles()
    p = subparsers.add_parser(
        "run",
        help="validate an ablation grid, then run or submit its points not yet done",
        description="Expand ABLATION into grid points, validate every point (config, "
        "notebook parameters, data paths), skip finished ones and run the rest: one "
        "notebook execution per point, rendered to HTML in its run directory.",
    )
    p.add_argument("ablation", type=Path, help="ablation file, e.g. ablations/mask_type.yaml")
    p.add_argument(
        "--profile",
        choices=profiles,
        default="cpu",
        help="cpu: synthetic scenes, minutes per point; paper: the paper's setting",
    )
    p.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help="local: one point after the other here (default); slurm: one job array; "
        "debug: in-process with pdb on failure",
    )
    p.add_argument(
        "--runs-dir",
        type=Path,
        default=Path("runs"),
        help="runs go to RUNS_DIR/<ablation>/<run id>/ (default: runs)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="validate and list the points; write and submit nothing, need no data",
    )
    p.add_argument("--only", metavar="SUBSTR", help="only the points whose run id contains SUBSTR")
    p.add_argument(
        "--cluster",
        metavar="NAME",
        help="cluster profile ablations/clusters/NAME.yaml, or a path to one (default: the "
        "ablation's)",
    )
    p.add_argument(
        "--data-root",
        type=Path,
        default=Path("data"),
        help="folder of the evaluation datasets of the paper profile (coco/, VOCdevkit/, ...; "
        "default: data)",
    )
    p.set_defaults(func=_cmd_run)

    p = subparsers.add_parser("status", help="state of every point of an ablation grid")
    p.add_argument("ablation", type=Path, help="ablation file")
    p.add_argument("--profile", choices=profiles, default="cpu")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"))
    p.add_argument("--only", metavar="SUBSTR", help="only the points whose run id contains SUBSTR")
    p.set_defaults(func=_cmd_status)
