"""How finely FH partitions the cpu profile's scenes at several settings (docs/cpu-miniature.md,
eighteenth round).

Usage: python scripts/fh_granularity.py SCALE:MIN_SIZE ... [--images N] [--seed S]

For each setting, the first N ``val`` scenes of the cpu profile (seed S) are segmented by
Felzenszwalb–Huttenlocher with that scale and minimum size (the profile's sigma), and one Markdown
row gives the segments per scene (mean, min-max) and the mask quality of ``detcon masks quality``
(mean best IoU of each ground-truth object with any segment, and the share of objects covered at
IoU 0.5). A last row gives the ground-truth masks per scene, background included.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import numpy as np

from detcon.masks.cli import quality_dataset
from detcon.masks.quality import mask_quality
from detcon.masks.sources import build_mask_source


def setting(text: str) -> tuple[float, int]:
    """``"100:64"`` -> ``(100.0, 64)``: a scale > 0 and a minimum size >= 1 pixel."""
    scale, sep, min_size = text.partition(":")
    try:
        if not sep:
            raise ValueError
        value = float(scale), int(min_size)
    except ValueError:
        value = None
    if value is None or not value[0] > 0 or value[1] < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected SCALE:MIN_SIZE with a scale > 0 and a minimum size >= 1, "
            "e.g. 1000:64"
        )
    return value


def row(name: str, pairs: list[tuple[np.ndarray, np.ndarray]]) -> str:
    counts = [len(np.unique(masks)) for _, masks in pairs]
    q = mask_quality(pairs)
    return (
        f"| {name} | {np.mean(counts):.1f} ({min(counts)}-{max(counts)}) | "
        f"{q['mean_best_iou']:.3f} | {q['coverage_at_50']:.3f} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("settings", nargs="+", type=setting, metavar="SCALE:MIN_SIZE")
    parser.add_argument("--images", type=int, default=200, help="val scenes (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error(f"--images {args.images}: expected at least 1 scene")
    scenes, mask_cfg = quality_dataset("cpu", args.images, "", args.seed)
    items = [scenes[i] for i in range(len(scenes))]
    images = [(it["image"].permute(1, 2, 0).numpy(), np.asarray(it["instances"])) for it in items]
    size = images[0][0].shape[0]
    print(f"{len(items)} val scenes of {size} px, seed {args.seed}\n")
    print("| masks | segments a scene | mean best IoU | objects at IoU 0.5 |\n|---|---|---|---|")
    for scale, min_size in args.settings:
        source = build_mask_source(
            replace(mask_cfg, source="fh", fh_scale=scale, fh_min_size=min_size)
        )
        pairs = [(inst, source(image, inst)) for image, inst in images]
        print(row(f"FH scale {scale:g}, min_size {min_size}", pairs))
    truth = build_mask_source(replace(mask_cfg, source="ground_truth"))
    print(row("ground truth", [(inst, truth(image, inst)) for image, inst in images]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
