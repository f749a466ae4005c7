"""How a frozen encoder's features spread, stage by stage (RESULTS.md, the DetCon-S/MCG seed that
probes below the floor).

Usage: python scripts/feature_spread.py RUN_DIR[:random] ... [--images N]

For each run directory (``config.json`` + ``backbone.pt``; ``:random`` takes its random-init encoder
instead, at the probe seed its ``eval_random.json`` records, or, for a file from before probe
records, the run's seed: ``scripts/miniature.sh`` probes its floors at the point's seed, the study's
evaluate notebook at seed 0) the first N scenes of the cpu profile's segmentation probe-training
split, drawn like the run's own scenes as ``detcon evaluate`` draws them, go through the encoder in
eval mode, and each stage prints a Markdown row:

- ``dead``: channels whose std over all pixels is under 1e-3 of the largest channel's;
- ``PR``: participation ratio of the pixel features' channel covariance, (sum λ)^2 / sum λ^2,
  how many directions carry the variance (1 .. channels);
- ``within``: the mean over images and channels of the spatial std inside an image;
- ``across``: the mean over channels of the std across images of each image's mean feature.

Then the smallest and largest BatchNorm running variance of each layer.

With ``--seg``, a last table gives each run's last-stage PR, within and across next to its
segmentation mIoU (``eval.json``, or ``eval_random.json`` for ``:random``), and, over three runs or
more, the Spearman rank correlation between the PR and the mIoU (RESULTS.md, § Mask type).

With ``--background``, a last table gives each run's last stage: the per-scene share of the pixel
features' variance (the variance of the scene means over the variance of all pixels, summed over
channels) and how much of the scene means the scene's background colour explains: the 5-fold
cross-validated R^2 of a ridge regression from the mean RGB of the scene's background pixels
(label 0) to its mean feature (docs/cpu-miniature.md, twenty-fifth round).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from torch.utils.data import Subset

from detcon.evaluate.backbones import BackboneStages, backbone_from_run, load_run_config
from detcon.evaluate.data import DataStore
from detcon.evaluate.features import extract_stages
from detcon.evaluate.run import default_out_name, settings_for_run
from detcon.evaluate.settings import get_settings
from detcon.runs import PROBE_RECORD


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


def per_scene_share(features: torch.Tensor) -> float:
    """Variance of the scene means over the variance of all pixels (channels summed)."""
    f = features.double()
    pixels = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])
    return float(f.mean((2, 3)).var(0).sum() / pixels.var(0).sum())


def ridge_cv_r2(x: np.ndarray, y: np.ndarray, folds: int = 5, ridge: float = 1e-2) -> float:
    """Cross-validated R^2 of a ridge regression of ``y`` (N, D) on ``x`` (N, P): standardised
    inputs, an intercept, penalty ``ridge`` x the training size; the residual and total sums of
    squares are pooled over folds and outputs (each fold's total about its training mean)."""
    if len(x) < 2 * folds:
        raise ValueError(f"ridge_cv_r2: {len(x)} samples; expected at least {2 * folds}")
    x = (x - x.mean(0)) / (x.std(0) + 1e-12)
    index = np.arange(len(x))
    sse = sst = 0.0
    for held in np.array_split(index, folds):
        fit = np.setdiff1d(index, held)
        a = np.c_[x[fit], np.ones(len(fit))]
        w = np.linalg.solve(a.T @ a + ridge * len(fit) * np.eye(a.shape[1]), a.T @ y[fit])
        pred = np.c_[x[held], np.ones(len(held))] @ w
        sse += float(((y[held] - pred) ** 2).sum())
        sst += float(((y[held] - y[fit].mean(0)) ** 2).sum())
    return 1.0 - sse / sst


def background_colors(scenes) -> np.ndarray:
    """(N, 3): the mean RGB (0-255) of each scene's background pixels (semantic label 0)."""
    out = []
    for i in range(len(scenes)):
        item = scenes[i]
        image = item["image"].double()
        background = item["semantic"] == 0
        out.append(image[:, background].mean(1).numpy() if background.any() else np.zeros(3))
    return np.stack(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR[:random]")
    parser.add_argument("--images", type=int, default=256, help="scenes, at least 2 (default 256)")
    parser.add_argument(
        "--seg", action="store_true", help="last stage against each run's segmentation mIoU"
    )
    parser.add_argument(
        "--background",
        action="store_true",
        help="last stage: per-scene share of the variance, R^2 of the scene means from the "
        "background colour",
    )
    args = parser.parse_args(argv)
    if args.background and args.images < 10:
        parser.error(f"--images {args.images}: --background needs at least 10 scenes (5 folds)")
    if args.images < 2:
        parser.error(f"--images {args.images}: expected at least 2 scenes (the across-scene std)")
    runs = []
    for arg in args.runs:  # every argument checked before any work
        run, _, which = arg.partition(":")
        if which not in ("", "random"):
            parser.error(f"{arg}: expected RUN_DIR or RUN_DIR:random, not the suffix {which!r}")
        try:
            cfg = load_run_config(run)
        except (FileNotFoundError, ValueError) as exc:
            parser.error(f"{arg}: {exc}")
        backbone = "random" if which else "pretrained"
        miou = seg_miou(run, backbone) if args.seg else float("nan")
        seed, source = random_seed(run, cfg.seed) if which else (cfg.seed, "")
        runs.append((arg, run, backbone, seed, source, cfg, miou))
    torch.set_num_threads(1)
    store = DataStore()
    last: list[tuple[str, dict[str, float], float]] = []
    colour: list[tuple[str, float, float]] = []
    for arg, run, which, seed, source, cfg, miou in runs:
        data = settings_for_run(get_settings("cpu"), cfg).segmentation[0].data
        train = store.get(data, "train")
        scenes = Subset(train, range(min(args.images, len(train))))
        backbone = backbone_from_run(run, backbone=which, seed=seed)
        stages = BackboneStages(backbone)
        feats = extract_stages(stages, scenes, keep=range(len(stages.stages)))
        at = f", seed {seed} from {source}" if source else ""
        print(f"\n{run} ({which}{at}, {len(scenes)} scenes)\n")
        print("| stage | channels | dead | PR | within | across |\n|---|---|---|---|---|---|")
        rows = [(k, spread(f)) for k, f in feats.items()]
        for k, s in rows:
            print(
                f"| {k} | {s['channels']} | {s['dead']} | {s['PR']:.1f} | {s['within']:.3f} "
                f"| {s['across']:.3f} |"
            )
        last.append((arg, rows[-1][1], miou))
        if args.background:
            f = feats[max(feats)]
            r2 = ridge_cv_r2(background_colors(scenes), f.double().mean((2, 3)).numpy())
            colour.append((arg, per_scene_share(f), r2))
        bn = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        ranges = " ".join(f"{m.running_var.min():.2g}/{m.running_var.max():.2g}" for m in bn)
        print(f"\nBatchNorm running_var min/max per layer: {ranges}")
    if args.seg:
        print("\n| run | last-stage PR | within | across | seg mIoU |\n|---|---|---|---|---|")
        for arg, s, miou in last:
            print(f"| {arg} | {s['PR']:.1f} | {s['within']:.3f} | {s['across']:.3f} | {miou:.3f} |")
        if len(last) >= 3:
            rho = spearmanr([s["PR"] for _, s, _ in last], [m for _, _, m in last]).statistic
            print(f"\nSpearman rank correlation, last-stage PR against seg mIoU: {rho:.2f}")
    if args.background:
        print(
            "\n| run | per-scene share of the variance | R^2 of the scene means from the "
            "background colour |\n|---|---|---|"
        )
        for arg, share, r2 in colour:
            print(f"| {arg} | {share:.2f} | {r2:.2f} |")
    return 0


def random_seed(run: str, default: int) -> tuple[int, str]:
    """The probe seed ``run``'s floor was measured at (``eval_random.json``'s probe record), or
    ``default`` (the run's seed) when no file records it."""
    path = Path(run) / default_out_name("random")
    try:
        seed = json.loads(path.read_text())[PROBE_RECORD]["seed"]
    except (OSError, ValueError, KeyError, TypeError):
        return default, "config.json"
    return int(seed), path.name


def seg_miou(run: str, backbone: str) -> float:
    """The run's segmentation mIoU: ``eval.json``, or ``eval_random.json`` for ``:random``."""
    path = Path(run) / default_out_name(backbone)
    if not path.is_file():
        raise SystemExit(f"feature_spread: --seg needs {path} (run `detcon evaluate` first)")
    return float(json.loads(path.read_text())["segmentation"]["miou"])


if __name__ == "__main__":
    sys.exit(main())
