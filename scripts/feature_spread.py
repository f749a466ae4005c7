"""How a frozen encoder's features spread, stage by stage (RESULTS.md, the DetCon-S/MCG seed that
probes below the floor).

Usage: python scripts/feature_spread.py RUN_DIR[:random] ... [--images N]

For each run directory (``config.json`` + ``backbone.pt``; ``:random`` takes its random-init
encoder instead) the first N scenes of the cpu profile's segmentation probe-training split go
through the encoder in eval mode, and each stage prints a Markdown row:

- ``dead``: channels whose std over all pixels is under 1e-3 of the largest channel's;
- ``PR``: participation ratio of the pixel features' channel covariance, (sum λ)^2 / sum λ^2,
  how many directions carry the variance (1 .. channels);
- ``within``: the mean over images and channels of the spatial std inside an image;
- ``across``: the mean over channels of the std across images of each image's mean feature.

Then the smallest and largest BatchNorm running variance of each layer.
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch.utils.data import Subset

from detcon.evaluate.backbones import BackboneStages, backbone_from_run
from detcon.evaluate.data import DataStore
from detcon.evaluate.features import extract_stages
from detcon.evaluate.settings import get_settings


def spread(features: torch.Tensor) -> dict[str, float]:
    """The statistics above for one stage's ``(N, C, h, w)`` features."""
    f = features.double()
    pixels = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])
    std = pixels.std(0)
    eig = torch.linalg.eigvalsh(torch.cov(pixels.T)).clamp(min=0)
    return {
        "channels": f.shape[1],
        "dead": int((std < 1e-3 * std.max()).sum()),
        "PR": float(eig.sum() ** 2 / (eig**2).sum()),
        "within": float(f.std((2, 3)).mean()),
        "across": float(f.mean((2, 3)).std(0).mean()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR[:random]")
    parser.add_argument("--images", type=int, default=256, help="scenes (default 256)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = get_settings("cpu").segmentation[0].data
    train = DataStore().get(data, "train")
    scenes = Subset(train, range(min(args.images, len(train))))
    for arg in args.runs:
        run, _, which = arg.partition(":")
        backbone = backbone_from_run(run, backbone="random" if which == "random" else "pretrained")
        stages = BackboneStages(backbone)
        feats = extract_stages(stages, scenes, keep=range(len(stages.stages)))
        print(f"\n{run} ({which or 'pretrained'}, {len(scenes)} scenes)\n")
        print("| stage | channels | dead | PR | within | across |\n|---|---|---|---|---|---|")
        for k, f in feats.items():
            s = spread(f)
            print(
                f"| {k} | {s['channels']} | {s['dead']} | {s['PR']:.1f} | {s['within']:.3f} "
                f"| {s['across']:.3f} |"
            )
        bn = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        ranges = " ".join(f"{m.running_var.min():.2g}/{m.running_var.max():.2g}" for m in bn)
        print(f"\nBatchNorm running_var min/max per layer: {ranges}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
