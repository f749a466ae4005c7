"""A point whose config already finished, in any ablation file under the same runs folder, takes
that run's results instead of training again (docs/design.md §2.2).

**Identity.** The point's full config digest (:func:`detcon.grid.config_digest`: SHA-256 of the
resolved config, seed included, and of its ``notebook.*`` grid parameters), which every
``point.json`` records. Pretraining depends on nothing else the launcher passes: the notebook
parameters that could change what is trained are refused in ablation files (``max_steps``) or
part of the digest (``notebook.official_checkpoint``); the rest must be equal too (below), or
only change what a notebook shows (``num_examples``). (Nor does the digest cover the code's
version: skipping a point that is done already assumes the same.)

**Finding a source: a scan, not an index.** Every run id ends with at least the first 6 digits
of its digest, so ``<runs>/*/*<6 digits>*`` lists the candidates from directory names alone and
each candidate's ``point.json`` confirms the full digest. An index (``<runs>/.by-digest/<digest>``)
would be a second record of what the run directories already say: it could name a directory
that was since moved, deleted or rerun, it would miss every run finished before it existed, and
concurrent writers would have to keep it right. The scan reads the directories themselves.

**A usable source** is a point that is ``done`` (a valid ``status.json`` and ``summary.json``:
never an unfinished, failed, interrupted or corrupt one), whose ``point.json`` has the same full
digest, pretraining notebook and pretraining parameters (but those that only show things), whose
``config.json`` equals the config this point must train (so absolute data paths must agree as
well) and which has ``backbone.pt`` and ``train_summary.json``. Its evaluation is taken too when
its ``eval_parameters`` equal this point's (the same tasks, profile, data root and evaluate
parameters; only ``run_dir`` differs, and the data root too when the tasks read nothing from it,
as the cpu profile's generated scenes); otherwise this point's own evaluation runs.

**Taking it over.** The source's files are placed in the point's own run directory, so every
reader (the evaluate stage, ``detcon status``, ``detcon report``, a user's script) finds a run
directory like any other and nothing follows a pointer that could break: ``checkpoint.pt`` and
``backbone.pt`` are hard links (no space; a copy where links are impossible, e.g. across file
systems); that is safe because every writer of those two files replaces them by an atomic rename
and never writes into them. The small files (``metrics.jsonl``, ``backbone.json``,
``config.json``, the rendered pretraining notebook, ``train_summary.json`` last; with the
evaluation ``eval*.json`` and the evaluate notebook) are copied, atomically. ``status.json``
records ``reused_from: <ablation>/<run id>``. The source is read without its lock: a done point is
never written again, and every file of it is replaced atomically if someone reruns it by hand; a
copy that fails (the source deleted meanwhile) fails the point, which the next launch reruns.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detcon.atomic import atomic_write, temp_name
from detcon.config import to_dict
from detcon.grid import resolve_config
from detcon.launch.notebooks import EVALUATE_NOTEBOOK
from detcon.runs import EVAL_FILES, PRETRAIN_ENV, is_locked, point_state, read_json, read_status

if TYPE_CHECKING:
    from detcon.launch.point import PointSpec

__all__ = ["Source", "adopt", "check_source", "expected_config", "find_source"]

# Digits of the digest every run id shows (detcon.grid: at least 6).
_PREFIX = 6
# Pretraining's files in the order they are placed: hard links first, then copies, and
# train_summary.json last: its presence beside the point's config.json says that pretraining
# finished (detcon.launch.point._stage_skipped), so an interrupted takeover is never taken for a
# finished stage. The rendered pretraining notebook goes in between.
_LINKED = ("checkpoint.pt", "backbone.pt")
_COPIED = ("metrics.jsonl", "backbone.json", "config.json")
_LAST = "train_summary.json"
# Pretraining-notebook parameters that do not change what is trained: set by the launcher for
# each directory (run_dir, progress), compared as the resolved config.json (overrides, whose
# relative data paths the launcher made absolute), or only showing things (num_examples).
_SHOWING_PARAMETERS = ("run_dir", "progress", "overrides", "num_examples")


@dataclass(frozen=True)
class Source:
    """A finished run whose results a point takes: its directory, its name as ``status.json``
    records it (``<ablation>/<run id>``) and whether its evaluation is taken too."""

    run_dir: Path
    name: str
    evaluation: bool


def expected_config(spec: PointSpec) -> dict[str, Any]:
    """The config the point's notebook must train (what its ``config.json`` must hold)."""
    return to_dict(resolve_config(spec.parameters["overrides"], spec.point.profile))


def _training_parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in parameters.items() if k not in _SHOWING_PARAMETERS}


def eval_settings(parameters: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The evaluate parameters that make two evaluations the same: all but ``run_dir``, and but
    ``data_root`` when the tasks read nothing from it (the cpu profile's generated scenes: two
    checkouts at different paths evaluate alike)."""
    if parameters is None:
        return None
    settings = {k: v for k, v in parameters.items() if k != "run_dir"}
    try:
        from detcon.evaluate import get_settings

        on_disk = get_settings(settings.get("profile")).datasets_on_disk(settings.get("tasks"))
    except (ImportError, ValueError, TypeError):  # unknown profile or task: compare everything
        on_disk = True
    if not on_disk:
        settings.pop("data_root", None)
    return settings


def check_source(spec: PointSpec, run_dir: str | Path, *, weights: bool = True) -> Source | None:
    """``run_dir`` as a source of ``spec``'s results, or None when it is not usable (see the
    module docstring; any unreadable file makes it unusable). ``weights=False`` accepts a source
    without ``backbone.pt``: an exported point (``detcon export``), which the export takes over
    only with its evaluation."""
    run_dir = Path(run_dir)
    try:
        if not run_dir.is_dir() or run_dir.resolve() == spec.run_dir.resolve():
            return None
        point = read_json(run_dir / "point.json") or {}
        if (
            point.get("config_digest") != spec.point.digest
            or point.get("notebook") != spec.notebook.name
            or _training_parameters(point.get("parameters") or {})
            != _training_parameters(spec.parameters)
        ):
            return None
        if point_state(run_dir, run_dir.name).state != "done":
            return None
        stages = (read_status(run_dir) or {}).get("stages") or []
        if (
            "pretrain" not in stages
            or (weights and not (run_dir / "backbone.pt").is_file())
            or read_json(run_dir / _LAST) is None
            or read_json(run_dir / "config.json") != expected_config(spec)
        ):
            return None
        evaluation = (
            spec.eval_parameters is not None
            and "evaluate" in stages
            and eval_settings(point.get("eval_parameters")) == eval_settings(spec.eval_parameters)
            and read_json(run_dir / "eval.json") is not None
        )
    except (OSError, ValueError):
        return None
    return Source(run_dir, f"{run_dir.parent.name}/{run_dir.name}", evaluation)


def find_source(
    spec: PointSpec, root: str | Path | None = None, *, weights: bool = True
) -> Source | None:
    """A finished run of ``spec``'s config under ``root`` (any ablation; default: the point's own
    runs folder), or None. ``weights``: as :func:`check_source`.

    Candidates are read in path order; the first usable one wins.
    """
    runs_dir = spec.run_dir.parent.parent if root is None else Path(root)
    for candidate in sorted(runs_dir.glob(f"*/*{spec.point.digest[:_PREFIX]}*")):
        source = check_source(spec, candidate, weights=weights)
        if source is not None:
            return source
    return None


def training_elsewhere(spec: PointSpec, root: str | Path | None = None) -> Path | None:
    """Another run directory under ``root`` (default: the point's runs folder) that runs
    ``spec``'s config now (the same config digest, its lock held: pretraining, or evaluating
    what it has trained), or None: a launch then waits for it instead of training the same
    config a second time (a point is taken over only once it is done)."""
    runs_dir = spec.run_dir.parent.parent if root is None else Path(root)
    for candidate in sorted(runs_dir.glob(f"*/*{spec.point.digest[:_PREFIX]}*")):
        if candidate.resolve() == spec.run_dir.resolve() or not candidate.is_dir():
            continue
        try:
            recorded = read_json(candidate / "point.json") or {}
        except (OSError, ValueError):
            continue
        if recorded.get("config_digest") == spec.point.digest and is_locked(candidate):
            return candidate
    return None


def _place(src: Path, dst: Path, *, link: bool) -> None:
    """``dst`` becomes ``src``'s content, atomically: a hard link when ``link`` and the file
    system allows it, else a copy. The temp file is named as :mod:`detcon.atomic` names its own,
    so a killed takeover leaves nothing that the point's next job does not remove."""
    if link:
        tmp = temp_name(dst)
        try:
            os.link(src, tmp)
        except OSError:  # another file system, or no hard links there: copy instead
            pass
        else:
            os.replace(tmp, dst)
            return
    with src.open("rb") as f:
        atomic_write(dst, lambda out: shutil.copyfileobj(f, out))


def _take(source: Path, run_dir: Path, names: tuple[str, ...]) -> None:
    for name in names:
        if (source / name).is_file():
            _place(source / name, run_dir / name, link=name in _LINKED)
        else:  # e.g. a partial checkpoint.pt of an earlier attempt: not part of this result
            (run_dir / name).unlink(missing_ok=True)


def adopt(spec: PointSpec, source: Source) -> list[str]:
    """Place ``source``'s pretraining results (and its evaluation's when ``source.evaluation``)
    in ``spec.run_dir``; the caller holds the point's lock. Returns the stages taken over.

    Raises:
        OSError: a file could not be read or written (e.g. the source was deleted meanwhile).
    """
    run_dir = spec.run_dir
    (run_dir / _LAST).unlink(missing_ok=True)  # says "finished": only once all else is there
    html = Path(spec.notebook.name).with_suffix(".html").name
    names = [*_LINKED, *_COPIED, spec.notebook.name, html, _LAST]
    stages = ["pretrain"]
    if source.evaluation:
        names += [*EVAL_FILES, f"{EVALUATE_NOTEBOOK}.ipynb", f"{EVALUATE_NOTEBOOK}.html"]
        stages.append("evaluate")
    try:
        # The git state of the code that trained it (export's git_commit), beside the point's
        # own env.json (the job that took it over): a source that took its results over itself
        # passes on its own record of that code, as export's stand-in does.
        for record in (PRETRAIN_ENV, "env.json"):
            if (source.run_dir / record).is_file():
                _place(source.run_dir / record, run_dir / PRETRAIN_ENV, link=False)
                break
        _take(source.run_dir, run_dir, tuple(names))
    except BaseException:
        # Half a takeover must not look like a finished checkpoint to the next job, which
        # trains the point itself when no source is usable: remove what was placed.
        for name in (*names, PRETRAIN_ENV):
            (run_dir / name).unlink(missing_ok=True)
        raise
    return stages
