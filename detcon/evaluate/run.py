"""The entry point: evaluate one run directory's encoder on the downstream tasks of a profile and
write ``eval.json`` (docs/run-directory.md)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import torch

from detcon.atomic import remove_stale_temp_files, write_json
from detcon.config import PretrainConfig, did_you_mean, to_dict
from detcon.data.synthetic import GENERATOR_VERSION, SceneSpec
from detcon.evaluate import dense, detection
from detcon.evaluate.backbones import (
    BackboneStages,
    backbone_state,
    load_run_config,
    make_backbone,
    weights_need_tf_same,
    weights_take_unit_range,
)
from detcon.evaluate.context import EvalContext
from detcon.evaluate.data import DataStore
from detcon.evaluate.depth import evaluate_depth
from detcon.evaluate.detection import evaluate_detection
from detcon.evaluate.features import FeatureBank
from detcon.evaluate.linear import evaluate_linear
from detcon.evaluate.segmentation import evaluate_segmentation, supervised_state
from detcon.evaluate.settings import (
    TASKS,
    EvalSettings,
    get_settings,
    with_eval_split,
    with_scene_difficulty,
)
from detcon.runs import (
    DIVERGED,
    ENCODER_RECORD,
    PROBE_RECORD,
    PointBusyError,
    default_out_name,
    encoder_record,
    is_locked,
    lock_holder,
    point_lock,
    read_json,
    summary_of,
)

__all__ = [
    "ReferenceBusyError",
    "default_out_name",
    "evaluate_point_references",
    "evaluate_references",
    "evaluate_run",
    "resolve_device",
    "settings_for_run",
]


class ReferenceBusyError(PointBusyError):
    """Another process is computing the reference (floor or ceiling) that
    :func:`evaluate_run` was asked not to wait for."""


_RUNNERS: dict[str, Callable] = {
    "segmentation": evaluate_segmentation,
    "depth": evaluate_depth,
    "linear": evaluate_linear,
    "detection": evaluate_detection,
}


def settings_for_run(settings: EvalSettings, cfg: PretrainConfig) -> EvalSettings:
    """``settings`` as they score the run whose config is ``cfg``: a synthetic run's probes draw
    their scenes like its pretraining scenes (its ``data.scene_*`` fields)."""
    if cfg.data.dataset != "synthetic":
        return settings
    return with_scene_difficulty(settings, SceneSpec.from_config(cfg.data))


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto``: CUDA when available, else CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device={device!r}: expected 'auto', 'cpu' or 'cuda[:N]'")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} requested but CUDA is not available")
    return torch.device(device)


def _check_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    if isinstance(tasks, str):
        tasks = [tasks]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        hint = did_you_mean(unknown[0], TASKS) if unknown else ""
        raise ValueError(
            f"tasks={list(tasks)!r}{hint}: expected a non-empty subset of {list(TASKS)}"
        )
    return tuple(t for t in TASKS if t in tasks)  # the canonical order


def evaluate_run(
    run_dir: str | Path,
    *,
    tasks: Sequence[str] = TASKS,
    profile: str = "cpu",
    out_name: str | None = None,
    backbone: Literal["pretrained", "random", "supervised"] = "pretrained",
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    quick: bool = False,
    settings: EvalSettings | None = None,
    data_root: str | Path | None = None,
    device: str | torch.device = "cpu",
    split: str | None = None,
    reference_cache: str | Path | None = None,
    replace: bool = True,
    wait: bool = True,
) -> dict[str, dict[str, float]]:
    """Evaluate the encoder of ``run_dir`` and write ``run_dir/out_name`` atomically.

    Args:
        run_dir: a run directory with ``config.json`` and (for ``pretrained``) ``backbone.pt``.
        tasks: task kinds to run, a subset of ``segmentation``, ``depth``, ``linear``,
            ``detection``; a kind may hold several datasets (paper: VOC and Cityscapes).
        profile: ``cpu`` (synthetic scenes, minutes on two cores) or ``paper``.
        out_name: file written in ``run_dir``; default :func:`default_out_name`. Entries for
            tasks not run now are kept from an existing file, unless it measured another
            encoder or was probed otherwise. The file holds ``"probe"``: the profile, split,
            probe seed and a digest of the data (:func:`probe_record`); for ``pretrained``
            also ``"encoder"``: the pretraining step of ``backbone.pt``
            (:func:`detcon.runs.encoder_record`); evaluating a run that has not finished
            pretraining warns on stderr. Each task's result is kept in ``.<out_name>.partial``
            as it finishes: an evaluation cut off (a job's time limit, a kill) and run again
            with the same encoder weights, settings, seed, split and device goes on from its
            last finished task; the file is removed once ``out_name`` is written.
        backbone: ``pretrained`` (``backbone.pt``), ``random`` (same architecture, random
            initialisation from ``seed``: the floor) or ``supervised`` (that initialisation
            trained with the profile's segmentation labels, ``settings.supervised``: the
            ceiling).
        seed: seeds head initialisation and data order (and the random backbone); the same
            run, settings and seed give the same metrics.
        progress: called with one-line progress messages.
        quick: the profile at smoke-test size (tests; the metrics mean nothing).
        settings: explicit settings instead of ``profile``/``quick``.
        data_root: folder holding the paper profile's datasets (relative ``DataSpec.root``).
        device: ``cpu``, ``cuda[:N]`` or ``auto``.
        split: score on this split instead of each dataset's own (cpu profile: ``test``;
            choose recipes on ``val``).
        reference_cache: a folder where the ``random`` and ``supervised`` references are kept,
            keyed by everything they depend on (architecture, scenes, settings, tasks, seed):
            the grid points of an ablation that share them compute them once.
        replace: whether results probed otherwise (another split, probe seed or data) may
            be replaced; ``False`` refuses before any work (``detcon evaluate`` without
            ``--replace``).
        wait: with ``reference_cache``, when another process is computing the same reference:
            wait for it and reuse its result (``True``), or raise :class:`ReferenceBusyError`
            before any evaluation (``False``; :func:`evaluate_references` computes another
            reference meanwhile).
    Returns:
        ``{name: {metric: value}}`` for the entries evaluated now, e.g.
        ``{"segmentation": {"miou": .., "pixel_acc": ..}, "depth": {"rmse": .., "delta1": ..},
        "linear": {"top1": .., "presence_map": ..}, "detection": {"ap_bb": .., "ap_mk": ..,
        "ap50_bb": .., "ap50_mk": ..}}``. A task whose head's loss became non-finite holds
        ``{"diverged": <message>}`` instead of metrics (a warning on stderr; the other tasks
        still run).
    Raises:
        FileNotFoundError: no run directory, ``config.json`` or ``backbone.pt``.
        FileExistsError: ``replace`` is false and the file holds results probed otherwise.
        ValueError: unknown task, profile, backbone or device; an ``out_name`` that is a path
            or another backbone's file (``eval.json`` for ``random``: the run's own results).
        ReferenceBusyError: ``wait`` is false and another process is computing this reference.
    """
    run_dir = Path(run_dir)
    tasks = _check_tasks(tasks)
    _check_out_name(out_name, backbone)
    if settings is None:
        settings = get_settings(profile, quick)
    if split is not None:
        scored = with_eval_split(settings, split)
        # each dataset's own split named (the cpu profile's `test`): the same probe as none
        settings, split = scored, (None if scored == settings else split)
    if backbone == "supervised" and settings.supervised is None:
        raise ValueError(
            f"backbone='supervised': the {settings.profile} profile has no supervised recipe "
            "(for the paper profile, import an ImageNet-supervised checkpoint instead)"
        )
    cfg = load_run_config(run_dir)  # fails early, before any work, on a bad run directory
    settings = settings_for_run(settings, cfg)
    initial = "random" if backbone == "supervised" else backbone
    state = backbone_state(run_dir, cfg.model, backbone=initial, seed=seed)
    tf_same = weights_need_tf_same(run_dir, backbone)
    unit_range = weights_take_unit_range(run_dir, backbone)
    dev = resolve_device(device)
    out_path = run_dir / (out_name or default_out_name(backbone))
    # what a kill while writing the results or the partial ones left (the launcher clears the
    # whole point's when it starts; a `detcon evaluate` run by hand did not), unless a job holds
    # the directory now: its temp files are being written
    if not is_locked(run_dir):
        remove_stale_temp_files(run_dir, [out_path.name, f".{out_path.name}.partial"])
    log = progress or (lambda message: None)
    record = encoder_record(run_dir) if backbone == "pretrained" else None
    if record is not None and not record["finished"]:
        at = (
            "an unknown step (no backbone.json)"
            if record["step"] is None
            else f"step {record['step']} of {record['planned_steps']}"
        )
        print(
            f"detcon evaluate: warning: {run_dir} has not finished pretraining (no "
            f"train_summary.json): its backbone.pt is from {at}; {out_path.name} records it",
            file=sys.stderr,
            flush=True,
        )

    probe = probe_record(settings, split, seed)
    earlier = _existing(out_path).get(PROBE_RECORD, probe)
    if not replace and earlier != probe:
        raise FileExistsError(
            f"{out_path} holds results probed otherwise ({_probe_text(earlier)}; now "
            f"{_probe_text(probe)}), which this evaluation would replace: keep both under "
            f"another name (--out-name {Path(out_path.stem + '_' + (split or 'own') + '.json')};"
            " out_name= in Python), or overwrite it (--replace; replace=True)"
        )
    with contextlib.ExitStack() as hold:
        cached_path = None
        if reference_cache is not None and backbone != "pretrained":
            key = {
                "backbone": backbone,
                "model": to_dict(cfg.model),
                "settings": repr(settings),  # dataclass reprs: every value, scenes included
                "tasks": tasks,
                "seed": seed,
                "device": dev.type,
                # relative dataset roots resolve against it (paper profile)
                "data_root": str(Path(data_root).resolve()) if data_root else None,
                "scene_generator": GENERATOR_VERSION,
            }
            digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
            cached_path = Path(reference_cache) / f"{backbone}-{digest}.json"
            cached_path.parent.mkdir(parents=True, exist_ok=True)
            # Two points of one seed evaluated side by side (two lanes, a job array) would both
            # train the same ceiling: the second waits for the first and reuses its result (or,
            # not waiting, says so before any evaluation; evaluate_references computes another).
            lock_name = f".{digest}.lock"
            try:
                hold.enter_context(point_lock(cached_path.parent, name=lock_name))
            except PointBusyError:
                if not wait:
                    raise ReferenceBusyError(
                        f"the {backbone} reference {cached_path} is being computed by another "
                        f"process (it holds {lock_name} there); wait for it (wait=True) to "
                        "reuse its result"
                    ) from None
                # the ceiling takes minutes: say whom this evaluation waits for
                log(
                    f"{backbone} reference: waiting for {cached_path.name}, being computed by "
                    f"{lock_holder(cached_path.parent / lock_name)}"
                )
                hold.enter_context(point_lock(cached_path.parent, wait=True, name=lock_name))
            if cached_path.is_file():
                results = json.loads(cached_path.read_text())
                log(f"{backbone} reference: reused {cached_path}")
                kept = _kept(out_path, probe, record=None)
                write_json(out_path, {**kept, **results, PROBE_RECORD: probe})
                _refresh_summary(run_dir)
                return results

        threads = torch.get_num_threads()
        if settings.threads:
            torch.set_num_threads(settings.threads)
        results: dict[str, dict[str, float]] = {}
        # Each task's result is kept as it finishes, so that an evaluation cut off (a job's time
        # limit, a kill) goes on from its last finished task; keyed by everything a task's
        # result depends on, the encoder's weights included.
        partial_path = out_path.with_name(f".{out_path.name}.partial")
        partial_key = _partial_key(
            state,
            backbone,
            tf_same,
            unit_range,
            settings,
            seed,
            split,
            dev,
            data_root,
            GENERATOR_VERSION,
        )
        earlier_tasks = _partial(partial_path, partial_key)
        # The tasks seed torch's global RNG; the caller's RNG state is restored afterwards.
        with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
            try:
                store = DataStore(data_root)
                if backbone == "supervised":
                    t0 = time.perf_counter()
                    labels = settings.supervised.data.dataset
                    log(f"supervised: training the encoder on {labels} labels")
                    trainer = EvalContext(
                        cfg.model, state, store, None, seed=seed, device=dev, progress=progress
                    )
                    state = supervised_state(trainer, settings.supervised)
                    log(f"supervised: done in {time.perf_counter() - t0:.1f} s")
                encoder = make_backbone(cfg.model, state, tf_same=tf_same, unit_range=unit_range)
                stages = BackboneStages(encoder).to(dev)
                stages.eval().requires_grad_(False)
                ctx = EvalContext(
                    cfg.model,
                    state,
                    store,
                    FeatureBank(stages, store),
                    seed=seed,
                    device=dev,
                    progress=progress,
                    tf_same=tf_same,
                    unit_range=unit_range,
                )
                # Reserve every frozen stage any task reads, so one pass extracts them all.
                for kind, module in (
                    ("segmentation", dense),
                    ("depth", dense),
                    ("detection", detection),
                ):
                    if kind in tasks:
                        for s in settings.for_task(kind):
                            if s.name not in earlier_tasks:
                                ctx.bank.reserve(s.data, module.bank_stages(s, stages.strides))
                for kind in tasks:
                    for s in settings.for_task(kind):
                        if s.name in earlier_tasks:
                            results[s.name] = earlier_tasks[s.name]
                            log(f"{s.name}: taken from the evaluation cut off ({partial_path})")
                            continue
                        t0 = time.perf_counter()
                        log(f"{s.name}: start ({backbone} backbone, {settings.profile} profile)")
                        try:
                            results[s.name] = _RUNNERS[kind](ctx, s)
                        except FloatingPointError as exc:
                            # The head's training diverged on these features (e.g. the large
                            # activations of a briefly pretrained encoder): a property of the
                            # encoder under this probe, recorded as such; the other tasks go on.
                            results[s.name] = {DIVERGED: str(exc)}
                            print(
                                f"detcon evaluate: warning: {exc}: the {s.name} probe diverged "
                                f"on the {backbone} backbone of {run_dir}; recorded as "
                                f"{s.name}.{DIVERGED} in {out_path.name}, no metrics",
                                file=sys.stderr,
                                flush=True,
                            )
                        else:
                            log(f"{s.name}: done in {time.perf_counter() - t0:.1f} s")
                        write_json(partial_path, {"key": partial_key, "results": results})
            finally:
                torch.set_num_threads(threads)
        stored = {**_kept(out_path, probe, record), **results, PROBE_RECORD: probe}
        if record is not None:
            stored[ENCODER_RECORD] = record
        write_json(out_path, stored)
        if cached_path is not None:
            write_json(cached_path, results)
        partial_path.unlink(missing_ok=True)
        _refresh_summary(run_dir)
        return results


def _refresh_summary(run_dir: Path) -> None:
    """Rebuild a finished launcher point's ``summary.json`` (what ``detcon report``, ``export``
    and the claims read) from its eval files, so that a re-evaluation (``--replace``, a task
    added, a reference) reaches them. Other run directories have none: nothing to do."""
    summary, point = run_dir / "summary.json", run_dir / "point.json"
    if summary.is_file() and point.is_file():
        write_json(summary, summary_of(read_json(point), run_dir, evaluated=True))


def _partial_key(state: dict[str, torch.Tensor], *parts: object) -> str:
    """A digest of the encoder's weights and of everything else a task's result depends on."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    for part in parts:
        text = str(part.type) if isinstance(part, torch.device) else repr(part)
        h.update(text.encode())
    return h.hexdigest()[:32]


def _partial(path: Path, key: str) -> dict[str, dict]:
    """Task results an evaluation with the same ``key`` finished before it was cut off."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # none, or unreadable: evaluate every task
        return {}
    if not isinstance(data, dict) or data.get("key") != key:
        return {}
    results = data.get("results")
    return results if isinstance(results, dict) else {}


def _check_out_name(out_name: str | None, backbone: str) -> None:
    """Refuse an ``out_name`` outside the run directory or naming another backbone's file."""
    if out_name is None:
        return
    if not out_name or Path(out_name).name != out_name or out_name in (".", ".."):
        raise ValueError(
            f"out_name={out_name!r}: expected a file name in the run directory, e.g. "
            f"{Path(default_out_name(backbone)).stem}_val.json"
        )
    for other in ("pretrained", "random", "supervised"):
        if other != backbone and out_name == default_out_name(other):
            raise ValueError(
                f"out_name={out_name!r} holds the {other} backbone's results: the {backbone} "
                f"one's would pass for them; expected another name, e.g. "
                f"{Path(default_out_name(backbone)).stem}_2.json"
            )


def evaluate_references(
    run_dir: str | Path,
    backbones: Sequence[Literal["random", "supervised"]],
    *,
    reference_cache: str | Path,
    **kwargs,
) -> dict[str, dict[str, dict[str, float]]]:
    """:func:`evaluate_run` of the references in ``backbones`` through ``reference_cache``; one
    that another process is computing now is left for last, then reused.

    Points evaluated side by side (two lanes, a job array) that share their references would
    otherwise compute them one after the other: the first to arrive trains the floor, then the
    ceiling, while the second waits on each in turn. Taking the free one first, the second trains
    the ceiling while the first probes the floor, and each then reuses the other's result.

    Args:
        run_dir: the point's run directory (``config.json``); the results go to its
            ``eval_random.json`` and ``eval_supervised.json``.
        backbones: ``random`` (the floor) and/or ``supervised`` (the ceiling), in the order
            they are computed when none is busy; empty: nothing to do.
        reference_cache: the folder of cached references (:func:`evaluate_run`).
        kwargs: passed on to :func:`evaluate_run` (``tasks``, ``profile``, ``seed``, ...).
    Returns:
        ``{backbone: results}``, each as :func:`evaluate_run` returns it.
    Raises:
        ValueError: a backbone other than the two references, or a keyword this function sets
            (``backbone``, ``wait``) or that would send both to one file (``out_name``).
    """
    if isinstance(backbones, str):
        backbones = [backbones]
    backbones = list(dict.fromkeys(backbones))  # in order, once each
    unknown = [b for b in backbones if b not in ("random", "supervised")]
    if unknown:
        raise ValueError(f"backbones={backbones!r}: expected 'random' and/or 'supervised'")
    taken = sorted({"backbone", "wait", "out_name"} & set(kwargs))
    if taken:
        raise ValueError(f"{taken}: evaluate_references sets these itself; not accepted")
    results: dict[str, dict[str, dict[str, float]]] = {}
    busy = []
    for backbone in backbones:
        try:
            results[backbone] = evaluate_run(
                run_dir, backbone=backbone, reference_cache=reference_cache, wait=False, **kwargs
            )
        except ReferenceBusyError:
            busy.append(backbone)
    for backbone in busy:  # computed elsewhere meanwhile: wait for it, then reuse it
        results[backbone] = evaluate_run(
            run_dir, backbone=backbone, reference_cache=reference_cache, **kwargs
        )
    return {b: results[b] for b in backbones}


def evaluate_point_references(
    run_dir: str | Path,
    *,
    reference_cache: str | Path,
    random_baseline: bool = False,
    supervised_ceiling: bool = False,
    ceiling_first: bool = False,
    tasks: Sequence[str] = TASKS,
    profile: str = "cpu",
    quick: bool = False,
    device: str | torch.device = "auto",
    data_root: str | Path | None = "",
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """The references a point's evaluation asks for, from the evaluate notebook's parameters
    (same names, same defaults): :func:`evaluate_references` of the floor (``random_baseline``)
    and the ceiling (``supervised_ceiling``; left out, and said through ``progress``, where the
    profile has no supervised recipe: the paper profile's ceiling is an imported checkpoint).

    The notebook and the launcher's reference lane (:func:`detcon.launch.point.run_references`)
    both call it, so that they key the shared cache alike. ``ceiling_first``: train the ceiling
    before probing the floor (the reference lane, ahead of the points, starts with the longest
    job); a point takes the floor first. ``data_root`` ``""`` or None: none (cpu profile).
    """
    wanted = ["random"] if random_baseline else []
    if supervised_ceiling and get_settings(profile, quick).supervised is None:
        if progress is not None:
            progress(f"supervised_ceiling: skipped, the {profile} profile has no supervised recipe")
    elif supervised_ceiling:
        wanted.insert(0 if ceiling_first else len(wanted), "supervised")
    return evaluate_references(
        run_dir,
        wanted,
        reference_cache=reference_cache,
        tasks=tasks,
        profile=profile,
        quick=quick,
        device=device,
        data_root=data_root or None,
        progress=progress,
    )


def probe_record(settings: EvalSettings, split: str | None, seed: int) -> dict:
    """How an eval file's tasks were probed: the profile, the split (``None``: each dataset's
    own), the probe seed and a digest of the data every task and the supervised recipe read
    (datasets, splits, sizes, scene settings). Entries probed otherwise are not kept next to new
    ones; a task added with other head settings on the same data (``scripts/seg_probe.py``)
    is."""
    specs = [s.data for kind in TASKS for s in settings.for_task(kind)]
    if settings.supervised is not None:
        specs.append(settings.supervised.data)
    data = sorted({repr(d) for d in specs})
    digest = hashlib.sha256("\n".join(data).encode()).hexdigest()[:16]
    return {"profile": settings.profile, "split": split, "seed": seed, "data": digest}


def _probe_text(probe: dict) -> str:
    split = probe.get("split") or "each dataset's own split"
    return f"{split}, probe seed {probe.get('seed')}, data {probe.get('data')}"


def _kept(path: Path, probe: dict, record: dict | None) -> dict:
    """The entries of an earlier ``path`` that may stand next to new results: none when they
    were measured on another encoder (an earlier step) or probed otherwise (another split, seed
    or data); a file from before probe records is kept as it is."""
    kept = _existing(path)
    if record is not None and kept.get(ENCODER_RECORD, record) != record:
        return {}
    if kept.get(PROBE_RECORD, probe) != probe:
        print(
            f"detcon evaluate: {path.name}'s earlier entries were probed otherwise "
            f"({kept[PROBE_RECORD]}, now {probe}): replaced, not mixed",
            file=sys.stderr,
            flush=True,
        )
        return {}
    return kept


def _existing(path: Path) -> dict[str, dict[str, float]]:
    """Entries of an earlier result file to keep (an unreadable one is replaced)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
