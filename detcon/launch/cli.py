"""``detcon run`` and ``detcon status`` (registered by :mod:`detcon.cli`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from detcon.cli import path_arg
from detcon.launch.executors import run_ablation
from detcon.launch.plan import EXECUTORS, _table
from detcon.runs import PointState, ablation_status


def format_status(states: Sequence[PointState], *, title: str = "") -> str:
    counts: dict[str, int] = {}
    for s in states:
        counts[s.state] = counts.get(s.state, 0) + 1
    head = (
        (title + ": " if title else "")
        + f"{len(states)} points: "
        + ", ".join(f"{v} {k}" for k, v in counts.items())
    )
    header = ["run id", "state", "job", "steps", "loss", "notebook", "error"]
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
    reused = sum(1 for s in states if s.reused_from)
    if reused:  # results taken from a finished run of the same config (docs/design.md §2.2)
        head += f" ({reused} reused from finished runs)"
        header.insert(-1, "reused from")
        rows = [[*row[:-1], s.reused_from or "", row[-1]] for row, s in zip(rows, states)]
    return head + "\n" + _table(rows, header)


# --------------------------------------------------------------------------- CLI


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 1")
    return value


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
        lanes=args.lanes,
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
    if not Path(args.runs_dir).is_dir():  # a typo reads as "nothing started"
        print(
            f"detcon status: note: the runs folder {str(args.runs_dir)!r} does not exist (yet); "
            "`detcon run` creates it, give its --runs-dir",
            file=sys.stderr,
        )
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``detcon run`` and ``detcon status`` (called by :mod:`detcon.cli`)."""
    from detcon.config import available_profiles

    profiles = available_profiles()
    p = subparsers.add_parser(
        "run",
        help="validate an ablation grid, then run or submit its points not yet done",
        description="Expand ABLATION into grid points, validate every point (config, "
        "notebook parameters, data paths), skip finished ones and run the rest: per point "
        "the pretraining notebook, then the evaluation notebook when the file lists tasks, "
        "each rendered to HTML in its run directory.",
    )
    p.add_argument("ablation", type=path_arg, help="ablation file, e.g. ablations/mask_type.yaml")
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
        help="local: here, one point after the other or --lanes N at once (default); "
        "slurm: one job array; "
        "debug: in-process with pdb on failure",
    )
    p.add_argument(
        "--runs-dir",
        type=path_arg,
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
        type=path_arg,
        default=Path("data"),
        help="folder of the evaluation datasets of the paper profile (coco/, VOCdevkit/, ...; "
        "default: data)",
    )
    p.add_argument(
        "--lanes",
        type=_positive_int,
        default=1,
        metavar="N",
        help="local executor: run N points side by side (default 1); for points that use "
        "fewer threads than the machine has cores, e.g. two lanes of the cpu profile's "
        "one-thread points on two cores. A lane no point needs computes the floor and the "
        "ceiling the points ask for while they pretrain (make demo: 3 lanes, 2 points)",
    )
    p.set_defaults(func=_cmd_run)

    p = subparsers.add_parser("status", help="state of every point of an ablation grid")
    p.add_argument("ablation", type=path_arg, help="ablation file")
    p.add_argument("--profile", choices=profiles, default="cpu")
    p.add_argument("--runs-dir", type=path_arg, default=Path("runs"))
    p.add_argument("--only", metavar="SUBSTR", help="only the points whose run id contains SUBSTR")
    p.set_defaults(func=_cmd_status)
