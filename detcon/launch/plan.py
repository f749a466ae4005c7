"""Planning a launch: expand an ablation and validate every point (:func:`prepare`) before
anything is written or submitted, into a :class:`Plan`; the cluster profiles a plan runs with."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detcon.config import STORE_SOURCES, ConfigError, did_you_mean, from_dict, total_steps
from detcon.grid import Ablation, GridPoint, expand, load_ablation, select_points
from detcon.launch.notebooks import (
    EVALUATE_NOTEBOOK,
    REPO,
    check_parameters,
    kernel_name,
    notebook_path,
)
from detcon.launch.point import PointSpec
from detcon.runs import OFFICIAL_PARAMETER, read_json

CLUSTER_DIR = REPO / "ablations" / "clusters"
EXECUTORS = ("local", "slurm", "debug")
# Evaluation tasks when detcon.evaluate cannot be imported (docs/design.md §5); its TASKS wins
# otherwise.
_DESIGN_TASKS = ("segmentation", "depth", "linear", "detection")
# Parameters the launcher sets itself, per stage; an ablation file may not set them.
_LAUNCHER_PARAMETERS = {
    "pretrain": ("profile", "overrides", "run_dir", "progress"),
    "evaluate": ("run_dir", "tasks", "profile", "data_root"),
}
# Would change what is trained without changing the run id: belongs in the config instead.
_CONFIG_PARAMETERS = {
    "max_steps": "base: {train.max_steps: N}",
    # the imported weights replace training: a grid key, so they are part of the run id
    "official_checkpoint": "a grid key, e.g. point: {notebook.official_checkpoint: PATH}",
}


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
    max_num_timeout: int = _cf(
        20, "time-limit requeues before a point counts as failed (submitit's own default: 3)", 0
    )
    array_parallelism: int = _cf(8, "grid points running at the same time", 1)
    account: str = _cf("", "SLURM account (empty: none)")
    qos: str = _cf("", "SLURM QOS (empty: none)")
    constraint: str = _cf("", "SLURM node constraint (empty: none)")
    setup: str = _cf("", "shell lines run before the job starts (module load, conda activate)")

    def executor_arguments(self) -> dict[str, Any]:
        """Keyword arguments for the ``AutoExecutor`` constructor (not ``update_parameters``)."""
        return {"slurm_max_num_timeout": self.max_num_timeout}

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
    """``<directory>/<name>.yaml``, or ``name`` itself when it is a ``.yaml`` path (a file name
    not found from here is looked for in ``directory`` too), parsed strictly (unknown keys,
    wrong types: ConfigError)."""
    from detcon.config import load_yaml

    path = Path(name) if name.endswith(".yaml") else Path(directory) / f"{name}.yaml"
    if not path.is_file() and name.endswith(".yaml") and (Path(directory) / name).is_file():
        path = Path(directory) / name  # `--cluster mine.yaml` for ablations/clusters/mine.yaml
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
            raise ValueError(
                f"{ablation.path}: evaluate names the unknown task {task!r}"
                f"{did_you_mean(task, known)}; expected "
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


def _check_data(point: GridPoint, overrides: Mapping[str, Any], where: Path) -> bool:
    """Refuse a point whose data, external masks or official checkpoint is missing, or whose
    mask store was made for other masks. Returns False when its mask store does not exist yet
    (:func:`_missing_stores_error` names the command that makes each), True otherwise."""
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
        return True
    checks = []
    if cfg.data.dataset != "synthetic":
        checks.append(("data.root", cfg.data.root, overrides.get("data.root", "")))
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
    if cfg.masks.store and not Path(overrides["masks.store"]).exists():
        return False
    if cfg.masks.store:  # its source, parameters and shards; training checks the dataset too
        from detcon.masks.sources import build_mask_source
        from detcon.masks.store import open_for_training

        try:
            open_for_training(overrides["masks.store"], build_mask_source(cfg.masks))
        except (ValueError, FileNotFoundError) as exc:
            raise type(exc)(f"{where}: point {point.run_id}: {exc}") from None
    return True


def _missing_stores_error(points: Sequence[GridPoint], where: Path) -> FileNotFoundError:
    """The error for points whose ``masks.store`` does not exist: the command that makes each
    store (one per folder), and which points read it."""
    stores: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for point in points:
        key = (point.config.masks.store, _precompute_args(point))
        stores.setdefault(key, []).append(point.run_id)
    commands = [_precompute_command(args, out, ids) for (out, args), ids in stores.items()]
    reads = (
        "1 point reads a mask store that does"
        if len(points) == 1
        else (f"{len(points)} points read mask stores that do")
    )
    return FileNotFoundError(
        f"{where}: {reads} not exist yet (masks.store, relative to the current directory "
        f"{os.getcwd()}). Precompute each once: {'; '.join(commands)}"
    )


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


def _precompute_command(args: Sequence[str], out: str, ids: Sequence[str]) -> str:
    """```detcon masks precompute ARGS --out OUT` (points a, b, c and N more)``: a store's
    command in an error, and the points that read it."""
    shown = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
    command = shlex.join(["detcon", "masks", "precompute", *args, "--out", out])
    return f"`{command}` (point{'s' if len(ids) > 1 else ''} {shown})"


def check_mask_stores(points: Sequence[GridPoint], where: Path) -> None:
    """At the paper profile, on a real dataset, fh and mcg masks come from a precomputed store:
    refuse every point that would compute them on the fly, giving the commands that make the
    stores (one per distinct source and parameters)."""
    groups: dict[tuple[str, ...], list[GridPoint]] = {}
    for point in points:
        cfg = point.config
        if (
            point.profile == "paper"
            and cfg.data.dataset != "synthetic"
            and cfg.masks.source in STORE_SOURCES
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
        commands.append(_precompute_command(args, out, [p.run_id for p in group]))
    n = sum(len(group) for group in groups.values())
    raise ValueError(
        f"{where}: at profile 'paper' on a real dataset, fh and mcg masks come from a "
        f"precomputed mask store, but {n} point{'s compute' if n > 1 else ' computes'} them "
        "on the fly (masks.store is empty), in every loader worker, every epoch. Precompute "
        f"each store once: {'; '.join(commands)}; then set masks.store of those points to its "
        "--out folder (one setting for every source: masks.store: 'stores/<dataset>-{source}', "
        "where {source} becomes each point's masks.source)"
    )


def _check_eval_data(ablation: Ablation, profile: str, data_root: Path) -> None:
    """The evaluation datasets' folder must exist when a task of ``profile`` reads real data."""
    try:
        from detcon.evaluate import get_settings
    except ImportError:
        return
    roots = get_settings(profile).roots_on_disk(ablation.evaluate)
    real = sorted(set(roots.values()))
    if real and not data_root.is_dir():
        raise FileNotFoundError(
            f"{ablation.path}: evaluation at profile {profile!r} reads {', '.join(real)} from "
            f"--data-root {str(data_root)!r}, which does not exist; pass the folder holding "
            "the evaluation datasets"
        )
    # Each dataset's own folder too: a wrong --data-root would otherwise be found only when
    # the first point's evaluation starts, after its pretraining (the readers check the rest)
    missing = [
        f"{root} ({name})" for root, name in roots.items() if not (data_root / root).exists()
    ]
    if missing:
        raise FileNotFoundError(
            f"{ablation.path}: evaluation at profile {profile!r} reads from --data-root "
            f"{str(data_root)!r}, which lacks {', '.join(missing)}; each dataset in its "
            "publisher's layout there (docs/design.md §5, detcon/data/readers.py)"
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
    points = select_points(expand(ablation, profile), only, ablation.name, profile)
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
        if name == "max_steps":  # the notebook would train another config than the point's
            raise ValueError(
                f"{ablation.path}: grid key notebook.{name} would train a config other than the "
                "point's (the check after training refuses it); use the config key "
                "train.max_steps instead"
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
    without_store = []
    for point in points:
        cfg = point.config
        if cfg.data.dataset == "synthetic":  # its size is known: refused before anything runs
            try:
                total_steps(cfg.optim, cfg.data.num_images)
            except ConfigError as exc:
                raise ConfigError(f"{ablation.path}: point {point.run_id}: {exc}") from None
        if executor == "slurm":
            _check_processes(cfg, cluster_profile, f"{ablation.path}: point {point.run_id}")
        overrides = _job_overrides(point)
        if check_data and not _check_data(point, overrides, ablation.path):
            without_store.append(point)
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
    if without_store:
        raise _missing_stores_error(without_store, ablation.path)
    if check_data:
        check_mask_stores(points, ablation.path)
    if check_data and ablation.evaluate:
        _check_eval_data(ablation, profile, data_root)
    # every point's: a grid axis may mix types (notebook.num_examples: [1, 2.5])
    check_parameters(main_nb, *(spec.parameters for spec in specs))
    if specs and specs[0].eval_parameters is not None:
        check_parameters(eval_nb, specs[0].eval_parameters)
    return Plan(
        ablation, profile, runs_root, tuple(points), tuple(specs), cluster_name, cluster_profile
    )


def _check_processes(cfg: Any, cluster: ClusterProfile, where: str) -> None:
    """A job's processes (nodes x tasks_per_node) split the batch evenly, and each process's share
    tiles the negative groups (the training loop's and the loss's rules, found here before a job
    waits in the queue for its nodes)."""
    world = cluster.nodes * cluster.tasks_per_node
    batch, groups = cfg.optim.batch_size, cfg.loss.negative_groups
    if batch % world:
        raise ConfigError(
            f"{where}: optim.batch_size={batch} is not divisible by the cluster profile's "
            f"{world} processes (nodes {cluster.nodes} x tasks_per_node "
            f"{cluster.tasks_per_node}); expected a number of processes that divides the batch"
        )
    local, size = batch // world, batch // groups
    if groups > 1 and (size % local if size >= local else local % size):
        raise ConfigError(
            f"{where}: loss.negative_groups={groups} makes groups of {size} images, which the "
            f"{local} images of each of the cluster profile's {world} processes do not tile; "
            "expected one to be a multiple of the other"
        )


def _varying_keys(points: Sequence[GridPoint]) -> list[str]:
    keys: dict[str, None] = {}
    for p in points:
        keys.update(dict.fromkeys(k for k in p.params if k != "seed"))
    return [*keys, "seed"]


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def describe_plan(plan: Plan, reused: Mapping[str, str] | None = None) -> str:
    """The dry-run listing: one line per point with its run id and parameters.

    ``reused``: run id -> ``<ablation>/<run id>`` of the finished run of the same config whose
    results the point would take instead of training (a ``reuses`` column and count).
    """
    ab = plan.ablation
    reused = dict(reused or {})
    keys = _varying_keys(plan.points)
    rows = [[p.run_id, *(p.params.get(k, "") for k in keys)] for p in plan.points]
    header = ["run id", *keys]
    if reused:
        rows = [[*row, reused.get(p.run_id, "")] for row, p in zip(rows, plan.points)]
        header.append("reuses")
    stages = [plan.specs[0].notebook.name] if plan.specs else []
    if ab.evaluate:
        stages.append(f"evaluate.ipynb [{', '.join(ab.evaluate)}]")
    head = (
        f"{ab.name} (profile {plan.profile}): {len(plan.points)} points"
        + (f" ({len(reused)} reused from finished runs)" if reused else "")
        + f"; notebooks {' -> '.join(stages)}; runs in {plan.runs_root}/"
        + (f"; cluster profile {plan.cluster_name}" if plan.cluster_name else "")
    )
    return head + "\n" + _table(rows, header)
