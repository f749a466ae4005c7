"""``detcon export ABLATION.yaml``: an ablation's finished points as a small results tree to commit.

Run directories hold checkpoints and weights (megabytes to gigabytes per point) and live under the
ignored ``runs/``. What a reader and the reporter need is a few kilobytes per point. For every
point of the ablation that is done (a valid ``summary.json``: :func:`detcon.results.scan_ablation`)
:func:`export_ablation` copies into ``<to>/<ablation>/<run_id>/``:

- the point's small files, :data:`POINT_FILES`, whichever exist (docs/run-directory.md), with
  ``metrics.jsonl`` thinned (:func:`thin_metrics`: at most :data:`CURVE_ROWS` evenly spaced steps
  and the last one, numbers to 5 significant digits, what the training-curves figure draws);
- for points whose seed is one of ``notebook_seeds``, its executed notebooks (``*.ipynb``; their
  HTML stays in the run directory: it repeats the notebook's images and adds ~0.3 MB of styles),
  except a notebook that a point reused from another ablation (``reused_from`` in its
  ``status.json``) shares byte for byte with its source's exported copy: the index page links
  the source's (:func:`shared_notebooks`);

never ``checkpoint.pt``, ``backbone.pt``, mask stores, scene caches or the lock. It then writes
``<to>/<ablation>.csv`` (:func:`results_table`): one row per exported point x backbone x task x
metric, with the point's seed and grid parameters, the SHA-256 of its resolved config
(``config_digest``, as the launcher computes it) and the git commit of the code that ran it (from
its ``env.json``). Points not done are listed and left out; a folder exported earlier is kept.

A point not done under the runs folder whose config finished in another ablation already
exported to ``<to>`` (the same full config digest and an equal evaluation: what the launcher
requires to take a run over, docs/design.md §2.2) is exported from that folder instead
(:func:`stand_in`), with its own ``point.json``, ``summary.json`` and a ``status.json`` naming
``reused_from``. Run directories are not kept between sessions; exports are: a study run over
several sessions need not train again the points its ablation files share (``detcon run
--only`` the new ones, then export).

``detcon report --runs-dir <to>`` reads the tree as it reads run directories, so figures
regenerate from it alone (``detcon figures``, ``make figures``).

Nothing is half-written: every file goes through :mod:`detcon.atomic`, and a point's folder is
built in a hidden sibling (``.<run_id>.<8 hex>.tmp``) and renamed into place; a folder it replaces
is first renamed aside (``.<run_id>.<8 hex>.old``), then deleted. An interrupted export leaves
the old folder, no folder (the point reads as missing) or the new one, never a partial one that
would read as done; the next export removes the hidden leftovers. One export of an ablation at a
time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from detcon.atomic import atomic_write, write_text
from detcon.grid import GridPoint, expand, load_ablation
from detcon.results import AblationScan, scan_ablation
from detcon.runs import (
    EVAL_FILES,
    PRETRAIN_ENV,
    metric_records,
    now,
    read_json,
    reused_source,
    summary_of,
)

if TYPE_CHECKING:
    from detcon.launch.point import PointSpec

__all__ = [
    "POINT_FILES",
    "RESULT_COLUMNS",
    "ExportResult",
    "copy_point",
    "export_ablation",
    "point_files",
    "shared_notebooks",
    "stand_in",
    "thin_metrics",
    "register_cli",
    "results_table",
]

# The small files of a finished point that a reader and the reporter use (docs/run-directory.md).
POINT_FILES = (
    "config.json",
    "point.json",
    "status.json",
    "summary.json",
    "train_summary.json",
    "eval.json",
    "eval_random.json",
    "eval_supervised.json",
    "backbone.json",
    "env.json",
    PRETRAIN_ENV,
    "metrics.jsonl",
)
NOTEBOOK_SUFFIXES = (".ipynb",)
# The exported metrics.jsonl: at most this many steps (evenly spaced; the last is always kept) with
# numbers to this many significant digits. A 768-step run's full log is ~165 KB, the thinned one
# ~30 KB; the run directory keeps the full log.
CURVE_ROWS = 192
CURVE_DIGITS = 5
# Columns of <to>/<ablation>.csv around the grid parameters (which go after "seed").
ID_COLUMNS = ("ablation", "run_id", "seed")
RESULT_COLUMNS = ("config_digest", "git_commit", "git_dirty", "backbone", "task", "metric", "value")
# Above this the results tree gets heavy for a git repository: say so.
SIZE_WARNING_BYTES = 40 * 10**6
# Hidden folders a killed export leaves: a point being built (.tmp) or replaced (.old).
_LEFTOVER = re.compile(r"\.(.+)\.[0-9a-f]{8}\.(tmp|old)")


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_ablation` did. ``exported``: run ids copied; ``not_done``: ``(run_id,
    state)`` of the points left out; ``kept``: those of them with a folder from an earlier export;
    ``reused``: ``(run_id, <ablation>/<run id>)`` of the points not done under the runs folder that
    an exported point of another ablation stood in for (:func:`stand_in`); ``bytes_written``:
    the files copied and the table; ``total_bytes``: the whole results tree."""

    ablation: str
    folder: Path
    table_csv: Path
    exported: list[str]
    not_done: list[tuple[str, str]]
    kept: list[str]
    reused: list[tuple[str, str]]
    bytes_written: int
    total_bytes: int


# --------------------------------------------------------------------------- one point


def _rounded(value: object) -> object:
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.{CURVE_DIGITS}g}")
    return value


def thin_metrics(text: str, *, rows: int = CURVE_ROWS) -> str:
    """``metrics.jsonl`` text reduced for the results tree: every ``ceil(n / rows)``-th of its
    ``n`` step records from the first, plus the last; floats rounded to :data:`CURVE_DIGITS`
    significant digits. Torn or non-JSON lines (a job killed mid-write) are dropped."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    records = metric_records(text)
    stride = max(1, math.ceil(len(records) / rows))
    keep = [r for i, r in enumerate(records) if i % stride == 0 or i == len(records) - 1]
    return "".join(json.dumps({k: _rounded(v) for k, v in r.items()}) + "\n" for r in keep)


def _thin_metrics_file(data: bytes) -> bytes:
    return thin_metrics(data.decode(errors="replace")).encode()


# Files rewritten on the way into the results tree (name -> bytes of the run directory's copy ->
# bytes to write).
_TRANSFORMS: dict[str, Callable[[bytes], bytes]] = {"metrics.jsonl": _thin_metrics_file}


def shared_notebooks(run_dir: str | Path, to: str | Path) -> set[str]:
    """Names of the notebooks of ``run_dir`` that a reused point shares with its source: its
    ``status.json`` names ``reused_from: <ablation>/<run id>`` and ``<to>/<ablation>/<run id>/``
    holds a byte-identical copy (an earlier export of the source)."""
    run_dir = Path(run_dir)
    source = reused_source(run_dir)
    if source is None:
        return set()
    exported = Path(to) / source
    return {
        p.name
        for p in run_dir.iterdir()
        if p.suffix in NOTEBOOK_SUFFIXES
        and (exported / p.name).is_file()
        and (exported / p.name).read_bytes() == p.read_bytes()
    }


def point_files(run_dir: str | Path, *, notebooks: bool, skip: Collection[str] = ()) -> list[Path]:
    """The files of ``run_dir`` to export: :data:`POINT_FILES` that exist, then (``notebooks``)
    its executed notebooks (:data:`NOTEBOOK_SUFFIXES`) but those named in ``skip``, by name."""
    run_dir = Path(run_dir)
    files = [run_dir / name for name in POINT_FILES if (run_dir / name).is_file()]
    if notebooks:
        files += sorted(
            p
            for p in run_dir.iterdir()
            if p.suffix in NOTEBOOK_SUFFIXES
            and not p.name.startswith(".")
            and p.name not in skip
            and p.is_file()
        )
    return files


def _aside(dest: Path, kind: str) -> Path:
    return dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.{kind}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def copy_point(
    files: Sequence[Path],
    dest: str | Path,
    *,
    transforms: Mapping[str, Callable[[bytes], bytes]] | None = None,
    written: Mapping[str, bytes] | None = None,
) -> int:
    """Make ``dest`` a folder holding exactly ``files`` (copies) and ``written`` (name -> bytes),
    replacing what was there. A file whose name is in ``transforms`` is written as that function
    makes of its bytes.

    The copies are written into a hidden sibling folder, which is renamed to ``dest`` once
    complete (an existing ``dest`` is renamed aside first, and deleted last): a reader never
    finds a partial ``dest``.

    Returns:
        The bytes copied.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _aside(dest, "tmp")
    tmp.mkdir()
    old = None
    try:
        size = 0
        for src in files:
            rewrite = (transforms or {}).get(src.name)
            if rewrite is not None:
                data = rewrite(src.read_bytes())
                atomic_write(tmp / src.name, lambda f, d=data: f.write(d))
            else:
                with src.open("rb") as source:
                    atomic_write(tmp / src.name, lambda f, s=source: shutil.copyfileobj(s, f))
            size += (tmp / src.name).stat().st_size
        for name, data in (written or {}).items():
            atomic_write(tmp / name, lambda f, d=data: f.write(d))
            size += len(data)
        if dest.exists() or dest.is_symlink():
            old = _aside(dest, "old")
            os.rename(dest, old)
        os.rename(tmp, dest)
    except BaseException:
        if old is not None and not dest.exists():
            os.rename(old, dest)  # put the earlier export back
            old = None
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        _remove(old)
    return size


def _first_source(to: Path, name: str) -> str:
    """Follow ``reused_from`` within ``to`` from ``<ablation>/<run id>`` to the exported point
    that trained (the one whose notebooks the index page links)."""
    seen = {name}
    while True:
        source = reused_source(to / name)
        if source is None or source in seen or not (to / source).is_dir():
            return name
        seen.add(source)
        name = source


def stand_in(spec: PointSpec, to: str | Path) -> tuple[str, dict[str, bytes], list[Path]] | None:
    """An exported point of another ablation in ``to`` that stands in for ``spec`` (not done under
    the runs folder): the same full config digest, pretraining parameters and resolved config
    and an equal evaluation, as the launcher requires of a run it takes over (docs/design.md
    §2.2; :func:`detcon.launch.reuse.check_source` without the weights, which an export lacks).
    None when there is none, or when ``spec`` evaluates and the exported point's evaluation
    differs (an export cannot evaluate).

    Returns:
        ``(source, written, files)``: ``<ablation>/<run id>`` of the exported point that trained
        (``reused_from`` followed within ``to``); the files written for this point
        (``point.json``, ``status.json`` and ``summary.json`` of its own, and the source's
        ``env.json`` as ``pretrain_env.json`` when the source has none); the source's other
        small files to copy. Its notebooks are not copied: the index page links the source's.
    """
    from detcon.launch.reuse import find_source

    to = Path(to)
    source = find_source(spec, to, weights=False)
    if source is None or (spec.eval_parameters is not None and not source.evaluation):
        return None
    src = source.run_dir
    name = _first_source(to, source.name)
    evaluates = spec.eval_parameters is not None
    own = {"point.json", "status.json", "summary.json", *(() if evaluates else EVAL_FILES)}
    files = [f for f in point_files(src, notebooks=False) if f.name not in own]
    summary = summary_of(spec.point.to_json(), src, evaluated=evaluates)
    state = {
        "state": "done",
        "stages": ["pretrain", "evaluate"] if evaluates else ["pretrain"],
        "notebook": (read_json(src / "status.json") or {}).get("notebook"),
        "reused_from": name,
        # no job ran this point: the export took the exported source over
        "reused_by": "detcon export",
        "updated": now(),
    }
    written = {
        n: (json.dumps(d, indent=2, sort_keys=True, default=str) + "\n").encode()
        for n, d in (
            ("point.json", spec.record()),
            ("status.json", state),
            ("summary.json", summary),
        )
    }
    if not (src / PRETRAIN_ENV).is_file() and (src / "env.json").is_file():
        written[PRETRAIN_ENV] = (src / "env.json").read_bytes()
    return name, written, files


def remove_leftovers(folder: str | Path) -> list[str]:
    """Clear the hidden ``.tmp`` / ``.old`` folders an interrupted export left in ``folder``: an
    ``.old`` one whose point is missing (a kill between :func:`copy_point`'s two renames) is put
    back, the others are removed. Returns one line per folder, saying which."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    done = []
    for path in sorted(folder.iterdir()):
        match = _LEFTOVER.fullmatch(path.name)
        if match is None:
            continue
        dest = folder / match.group(1)
        if match.group(2) == "old" and not (dest.exists() or dest.is_symlink()):
            os.rename(path, dest)
            done.append(f"put {path} back as {dest}")
        else:
            _remove(path)
            done.append(f"removed {path}")
    return done


# --------------------------------------------------------------------------- the table


def _git(run_dir: Path) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the code that ran the point, from its ``env.json`` (None: unknown); for
    a point taken over from another run (docs/design.md §2.2), the code that trained it
    (``pretrain_env.json``, its source's ``env.json``)."""
    name = PRETRAIN_ENV if (run_dir / PRETRAIN_ENV).is_file() else "env.json"
    try:
        env = read_json(run_dir / name) or {}
    except ValueError:
        return None, None
    git = env.get("git") if isinstance(env.get("git"), dict) else {}
    return git.get("sha"), git.get("dirty")


def results_table(scan: AblationScan, points: Sequence[GridPoint]) -> pd.DataFrame:
    """The tidy table of the ``done`` points of ``scan``: one row per point x backbone x task x
    metric, columns ``ablation, run_id, seed, <grid parameters>, config_digest, git_commit,
    git_dirty, backbone, task, metric, value``.

    Args:
        scan: the scan of an exported tree (or of run directories).
        points: the ablation's grid points at the scan's profile (for their config digests).
    """
    digests = {p.run_id: p.digest for p in points}
    done = scan.status[scan.status["state"] == "done"]
    git = {row["run_id"]: _git(Path(row["run_dir"])) for row in done.to_dict("records")}
    tidy = scan.tidy[scan.tidy["state"] == "done"].drop(columns="state")
    table = tidy.assign(
        config_digest=tidy["run_id"].map(digests),
        git_commit=tidy["run_id"].map(lambda r: git[r][0]),
        git_dirty=tidy["run_id"].map(lambda r: git[r][1]),
    )
    columns = [*ID_COLUMNS, *scan.param_keys, *RESULT_COLUMNS]
    return table[columns].reset_index(drop=True)


# --------------------------------------------------------------------------- the ablation


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 10**5 else f"{n / 1e3:.0f} KB"


def tree_size(folder: str | Path) -> int:
    """Bytes of the files under ``folder`` (0 when it does not exist)."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def _stale_folders(folder: Path, run_ids: Collection[str], profile: str) -> list[str]:
    """Exported folders of this profile that are no point of the ablation any more (its grid or
    a default changed, so the config digest and the run id did)."""
    stale = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if not path.is_dir() or path.name.startswith(".") or path.name in run_ids:
            continue
        try:
            point = read_json(path / "point.json") or {}
        except ValueError:
            point = {}
        if point.get("profile", profile) == profile:
            stale.append(path.name)
    return stale


def _stand_ins(
    ablation_path: str | Path, profile: str, runs_dir: str | Path, to: str | Path, run_ids: list
) -> dict[str, tuple[str, dict[str, bytes], list[Path]]]:
    """:func:`stand_in` of each of ``run_ids`` that has one."""
    from detcon.launch.plan import prepare

    plan = prepare(ablation_path, profile=profile, runs_dir=runs_dir, check_data=False)
    specs = {spec.run_id: spec for spec in plan.specs}
    found = {rid: stand_in(specs[rid], to) for rid in run_ids}
    return {rid: value for rid, value in found.items() if value is not None}


def export_ablation(
    ablation_path: str | Path,
    *,
    profile: str = "cpu",
    runs_dir: str | Path = "runs",
    to: str | Path = "results",
    notebook_seeds: Collection[int] = (0,),
    echo: Callable[[str], None] = print,
    warn: Callable[[str], None] = print,
) -> ExportResult:
    """Copy the finished points of an ablation into ``<to>/<name>/`` and write ``<to>/<name>.csv``.

    Args:
        ablation_path: the ablation file.
        profile: the profile its points ran at.
        runs_dir: the ``--runs-dir`` of ``detcon run``.
        to: the results tree (``results``, committed).
        notebook_seeds: points of these seeds bring their executed notebooks.
        echo: progress and the summary; ``warn``: points left out, stale folders, the size warning.
    Returns:
        The :class:`ExportResult`.
    Raises:
        FileNotFoundError: no point of the ablation is done under ``runs_dir``.
        ValueError: ``to`` is ``runs_dir`` (the export would replace the run directories), or a
            notebook seed is none of the ablation's (a typo would drop exported notebooks).
    """
    ablation = load_ablation(ablation_path)
    name = ablation.name
    unknown = sorted(set(notebook_seeds) - set(ablation.seeds_for(profile)))
    if unknown:
        raise ValueError(
            f"--notebook-seeds {' '.join(map(str, unknown))}: no point of {name} at profile "
            f"{profile!r} has that seed; expected some of "
            f"{' '.join(map(str, ablation.seeds_for(profile)))} (the option alone: none)"
        )
    source, folder = Path(runs_dir) / name, Path(to) / name
    if folder.resolve() == source.resolve():
        raise ValueError(
            f"--to {str(to)!r} is the --runs-dir: exporting would replace the run directories "
            f"under {source} with their small files; export to another folder (e.g. results)"
        )
    scan = scan_ablation(ablation_path, profile=profile, runs_dir=runs_dir)
    status = scan.status
    done = status[status["state"] == "done"]
    others = status[status["state"] != "done"]
    # Not done here and never exported: another ablation's export may stand in (stand_in).
    absent = [rid for rid in others["run_id"] if not (folder / rid / "summary.json").is_file()]
    stand_ins = _stand_ins(ablation_path, profile, runs_dir, to, absent) if absent else {}
    if done.empty and not stand_ins:
        counts = ", ".join(f"{n} {s}" for s, n in scan.counts().items())
        raise FileNotFoundError(
            f"nothing to export: none of the {len(status)} points of ablation {name!r} at profile "
            f"{profile!r} is done under {source} ({counts}); run `detcon run {ablation_path} "
            f"--profile {profile} --runs-dir {runs_dir}` first (or pass the --runs-dir and "
            "--profile it was run with)"
        )
    for line in remove_leftovers(folder):
        warn(f"{line}, left by an interrupted export")

    seeds = set(notebook_seeds)
    written = 0
    echo(f"{name} (profile {profile}): exporting {len(done)} of {len(status)} points to {folder}")
    for i, row in enumerate(done.to_dict("records"), 1):
        notebooks = row["seed"] in seeds
        skip = shared_notebooks(row["run_dir"], to) if notebooks else set()
        files = point_files(row["run_dir"], notebooks=notebooks, skip=skip)
        size = copy_point(files, folder / row["run_id"], transforms=_TRANSFORMS)
        written += size
        echo(f"  [{i}/{len(done)}] {row['run_id']}: {len(files)} files, {_size(size)}")
    reused = []
    for rid, (src, extra, files) in stand_ins.items():
        written += copy_point(files, folder / rid, transforms=_TRANSFORMS, written=extra)
        reused.append((rid, src))
        echo(f"  {rid}: not under {source}; taken from the exported {src} (the same config)")

    # the state with its reason where there is one ("failed: corrupt status.json ..."), cut short
    states = [
        s if not isinstance(e, str) or not e else f"{s}: {e if len(e) <= 80 else e[:77] + '...'}"
        for s, e in zip(others["state"], others["error"])
    ]
    not_done = [(r, s) for r, s in zip(others["run_id"], states) if r not in stand_ins]
    kept = [rid for rid, _ in not_done if (folder / rid / "summary.json").is_file()]
    left_out = [(rid, state) for rid, state in not_done if rid not in kept]
    if left_out:
        listing = ", ".join(f"{rid} ({state})" for rid, state in left_out)
        warn(f"{len(left_out)} of {len(status)} points not done, left out: {listing}")
    if kept:
        warn(
            f"{len(kept)} of {len(status)} points not done under {source}, kept from an earlier "
            f"export: {', '.join(kept)}"
        )
    points = expand(ablation, profile)
    stale = _stale_folders(folder, {p.run_id for p in points}, profile)
    if stale:
        warn(
            f"{len(stale)} folder(s) in {folder} are no point of {name} at profile {profile} any "
            f"more (its grid or defaults changed), left as they are: {', '.join(stale)}"
        )

    table = results_table(scan_ablation(ablation_path, profile=profile, runs_dir=to), points)
    table_csv = write_text(Path(to) / f"{name}.csv", table.to_csv(index=False))
    written += table_csv.stat().st_size
    total = tree_size(to)
    taken = f" (and {len(reused)} taken from other ablations' exports)" if reused else ""
    echo(
        f"wrote {_size(written)}: {len(done)} points{taken} in {folder}, {len(table)} rows in "
        f"{table_csv}; {to} holds {_size(total)}"
    )
    if total > SIZE_WARNING_BYTES:
        warn(
            f"{to} holds {_size(total)}, more than {_size(SIZE_WARNING_BYTES)}: heavy for a git "
            "repository; export the notebooks of fewer seeds (--notebook-seeds)"
        )
    return ExportResult(
        name, folder, table_csv, list(done["run_id"]), not_done, kept, reused, written, total
    )


# --------------------------------------------------------------------------- CLI


def _cmd_export(args: argparse.Namespace) -> int:
    export_ablation(
        args.ablation,
        profile=args.profile,
        runs_dir=args.runs_dir,
        to=args.to,
        notebook_seeds=args.notebook_seeds,
        echo=lambda line: print(line, flush=True),
        warn=lambda line: print(f"detcon export: {line}", file=sys.stderr, flush=True),
    )
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``detcon export`` (called by :mod:`detcon.cli`)."""
    from detcon.cli import path_arg
    from detcon.config import available_profiles

    p = subparsers.add_parser(
        "export",
        help="copy an ablation's finished points (small files only) into results/ to commit",
        description="Copy the small files of every finished point of ABLATION (config, point, "
        "status, summaries, evaluations, environment, a thinned metrics.jsonl; never checkpoints "
        "or weights) into TO/<ablation>/<run id>/, with the executed notebooks of the points of "
        "--notebook-seeds, and write the tidy table TO/<ablation>.csv. `detcon report "
        "--runs-dir TO` and `detcon figures` read that tree alone.",
    )
    p.add_argument("ablation", type=path_arg, help="ablation file, e.g. ablations/mask_type.yaml")
    p.add_argument(
        "--profile",
        choices=available_profiles(),
        default="cpu",
        help="the profile the points ran at (run ids depend on it; default: cpu)",
    )
    p.add_argument(
        "--runs-dir",
        type=path_arg,
        default=Path("runs"),
        help="the --runs-dir of `detcon run` (default: runs)",
    )
    p.add_argument(
        "--to",
        type=path_arg,
        default=Path("results"),
        help="the results tree to write (default: results)",
    )
    p.add_argument(
        "--notebook-seeds",
        type=int,
        nargs="*",
        default=[0],
        metavar="SEED",
        help="export the executed notebooks (.ipynb) of the points of these seeds "
        "(default: 0; the option alone: none)",
    )
    p.set_defaults(func=_cmd_export)
