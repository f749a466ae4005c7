"""``detcon evaluate RUN_DIR``: downstream evaluation of a run's encoder (or its random-init
baseline) into the run directory's ``eval.json``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from detcon.cli import path_arg, whole_number_arg

__all__ = ["register_cli"]


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from detcon.evaluate.run import default_out_name, evaluate_run
    from detcon.evaluate.settings import TASKS

    tasks = TASKS if args.tasks is None else [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise ValueError(f"--tasks {args.tasks!r}: expected a comma-separated subset of {TASKS}")
    profile = args.profile or _run_profile(args.run_dir)
    start = time.perf_counter()

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"[{time.perf_counter() - start:7.1f} s] {message}", flush=True)

    results = evaluate_run(
        args.run_dir,
        tasks=tasks,
        profile=profile,
        out_name=args.out_name,
        backbone=args.backbone,
        seed=args.seed,
        progress=progress,
        quick=args.quick,
        data_root=args.data_root,
        device=args.device,
        split=args.split,
        replace=args.replace,
    )
    for name, metrics in results.items():
        shown = (
            f"{k}={v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in metrics.items()
        )
        print(f"{name}: " + ", ".join(shown))  # a diverged probe: its message
    out = args.out_name or default_out_name(args.backbone)
    print(f"wrote {Path(args.run_dir) / out} in {time.perf_counter() - start:.1f} s")
    return 0


def _run_profile(run_dir: Path) -> str:
    """The profile the run was trained at (its ``config.json``), else ``cpu``: a paper run
    is probed on the paper's tasks unless ``--profile`` says otherwise."""
    from detcon.runs import read_json

    try:
        profile = (read_json(Path(run_dir) / "config.json") or {}).get("profile")
    except (OSError, ValueError):
        profile = None  # evaluate_run names what is wrong with the run directory
    return profile if profile in ("cpu", "paper") else "cpu"


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` subcommand to the ``detcon`` command."""
    p = subparsers.add_parser(
        "evaluate", help="downstream evaluation of a run's encoder into RUN_DIR/eval.json"
    )
    p.add_argument("run_dir", type=path_arg, help="run directory with config.json and backbone.pt")
    p.add_argument(
        "--tasks",
        default=None,
        help="comma-separated subset of segmentation,depth,linear,detection (default: all)",
    )
    p.add_argument(
        "--profile",
        choices=["cpu", "paper"],
        default=None,
        help="cpu: synthetic scenes, minutes on two cores; paper: COCO, VOC, "
        "Cityscapes, NYU-Depth v2, ImageNet under --data-root (default: the run's own, from its "
        "config.json)",
    )
    p.add_argument(
        "--backbone",
        choices=["pretrained", "random", "supervised"],
        default="pretrained",
        help="the run's backbone.pt; a random initialisation of the same architecture (the "
        "floor, written to eval_random.json); or that initialisation trained with the "
        "segmentation labels (the ceiling, eval_supervised.json; cpu profile only)",
    )
    p.add_argument(
        "--split",
        default=None,
        help="score on this split instead of the profile's (cpu: 'test', the reported "
        "numbers; use 'val' to choose a recipe)",
    )
    p.add_argument(
        "--seed",
        type=whole_number_arg("a whole number >= 0"),
        default=0,
        help="head initialisation and data order",
    )
    p.add_argument("--out-name", default=None, help="result file name inside the run directory")
    p.add_argument(
        "--replace",
        action="store_true",
        help="replace a result file probed otherwise (another --split, --seed or data); "
        "without it such a file is kept and the evaluation refused",
    )
    p.add_argument("--quick", action="store_true", help="smoke-test sizes (metrics meaningless)")
    p.add_argument(
        "--data-root",
        type=path_arg,
        default=None,
        help="folder holding the paper profile's datasets",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda[:N] or auto (default: cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=_cmd_evaluate)
