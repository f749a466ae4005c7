"""Score miniature runs with another segmentation probe (docs/cpu-miniature.md).

Usage: python scripts/seg_probe.py RUN_DIR [RUN_DIR ...] [--probe linear|finetune]
       [--split val] [--quick]

The cpu profile's segmentation probe is an FCN head with two hidden 3x3 layers on the frozen
features. ``--probe linear`` (the default) trains a 1x1 classifier on the same features
standardised per channel (BatchNorm without affine) instead; ``--probe finetune`` trains the same
FCN head together with the encoder, on flipped whole scenes, as the paper's protocol fine-tunes
(the supervised ceiling's recipe, with the probe's steps, batch and step size). Both train and
score like the FCN probe otherwise. Each run directory is named as scripts/miniature.sh names
them, NAME-sSEED: NAME random* / supervised* probes that reference backbone (the supervised
ceiling is trained again, seeded, so it is the encoder the FCN probe read), anything else the
run's backbone.pt. The result is added to the run's eval file (eval.json, eval_random.json or
eval_supervised.json) as the entry ``segmentation_linear`` or ``segmentation_finetune``; read it
with ``python scripts/miniature_table.py RUNS --seg ENTRY``. An eval file probed on another split
(give the --split its other probes had) is refused, not replaced.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path

from detcon.evaluate.run import evaluate_run
from detcon.evaluate.settings import EvalSettings, cpu_settings

# What each probe changes in the profile's FCN probe: a 1x1 head on standardised frozen features,
# or the FCN head trained with the encoder on flipped scenes.
CHANGES = {
    "linear": {"head_convs": 0, "standardize": True},
    "finetune": {"train_backbone": True, "flip": True},
}
PROBES = tuple(CHANGES)


def probe_settings(settings: EvalSettings, probe: str) -> EvalSettings:
    """``settings`` whose only segmentation probe is ``probe`` (:data:`CHANGES`), named
    ``segmentation_<probe>``."""
    if probe not in CHANGES:
        raise ValueError(f"unknown probe {probe!r}: expected one of {', '.join(PROBES)}")
    fcn = settings.segmentation[0]
    changed = dataclasses.replace(fcn, name=f"segmentation_{probe}", **CHANGES[probe])
    return dataclasses.replace(settings, segmentation=(changed,))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="seg_probe.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--probe", choices=PROBES, default="linear", help="default: linear")
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
    settings = probe_settings(cpu_settings(quick=args.quick), args.probe)
    entry = settings.segmentation[0].name
    for run, seed, reference in points:
        backbone = reference or "pretrained"
        try:
            # replace=False: an eval file probed on another split (or seed, or data) is refused,
            # not emptied of its other probes' entries
            result = evaluate_run(
                run,
                tasks=["segmentation"],
                settings=settings,
                split=args.split,
                seed=seed,
                backbone=backbone,
                replace=False,
            )
        except FileExistsError as exc:
            print(f"seg_probe.py: error: {exc}", file=sys.stderr)
            return 2
        print(f"{run.name} ({backbone}): {entry} mIoU {result[entry]['miou']:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
