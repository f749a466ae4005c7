"""Score miniature runs with a per-pixel linear segmentation probe (docs/cpu-miniature.md).

Usage: python scripts/seg_probe_linear.py RUN_DIR [RUN_DIR ...] [--split val] [--quick]

The cpu profile's segmentation probe is an FCN head with two hidden 3x3 layers on the frozen
features; this one is a 1x1 classifier on the same features standardised per channel (BatchNorm
without affine), trained and scored like it. Each run directory is named as scripts/miniature.sh
names them, NAME-sSEED: NAME random* / supervised* probes that reference backbone (the
supervised ceiling is trained again, seeded, so it is the encoder the FCN probe read), anything
else the run's backbone.pt. The result is added to the run's eval file (eval.json,
eval_random.json or eval_supervised.json) as the entry ``segmentation_linear``; read it with
``python scripts/miniature_table.py RUNS --seg segmentation_linear``.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path

from detcon.evaluate.run import evaluate_run
from detcon.evaluate.settings import EvalSettings, cpu_settings

ENTRY = "segmentation_linear"


def linear_probe_settings(settings: EvalSettings) -> EvalSettings:
    """``settings`` whose only segmentation probe is the linear one on standardised features."""
    fcn = settings.segmentation[0]
    probe = dataclasses.replace(fcn, name=ENTRY, head_convs=0, standardize=True)
    return dataclasses.replace(settings, segmentation=(probe,))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="seg_probe_linear.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--split", default=None, help="score on this split (recipes: val)")
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes (tests only)")
    args = parser.parse_args(argv)
    points = []
    for run in args.runs:  # every argument checked before any work
        m = re.fullmatch(r"(.+)-s(\d+)", run.name)
        if m is None:
            parser.error(f"{run}: expected a scripts/miniature.sh run directory named NAME-sSEED")
        if not (run / "config.json").is_file():
            parser.error(f"{run}: no config.json (not a run directory)")
        head = m.group(1).split("_", 1)[0]
        points.append((run, int(m.group(2)), head if head in ("random", "supervised") else None))
    settings = linear_probe_settings(cpu_settings(quick=args.quick))
    for run, seed, reference in points:
        backbone = reference or "pretrained"
        result = evaluate_run(
            run,
            tasks=["segmentation"],
            settings=settings,
            split=args.split,
            seed=seed,
            backbone=backbone,
        )
        print(f"{run.name} ({backbone}): {ENTRY} mIoU {result[ENTRY]['miou']:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
