"""``detcon masks``: precompute mask stores and measure mask quality."""

from __future__ import annotations

import argparse
import os
import shlex
from dataclasses import replace
from pathlib import Path

import numpy as np

from detcon.cli import path_arg

__all__ = ["mask_quality_table", "quality_dataset", "register_cli"]

QUALITY_SOURCES = ("grid", "fh", "mcg", "ground_truth")


def mask_quality_table(dataset, mask_cfg, sources=QUALITY_SOURCES, progress: bool = True):
    """The paper's mask-quality measure for each source over a dataset with ``instances``.

    Returns a DataFrame with columns ``source, mean_best_iou, coverage_at_50, num_objects,
    num_images`` (one row per source).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from detcon.masks.quality import mask_quality
    from detcon.masks.sources import build_mask_source

    rows = []
    for name in sources:
        source = build_mask_source(replace(mask_cfg, source=name))
        pairs = []
        for i in tqdm(range(len(dataset)), desc=f"masks {name}", disable=not progress, leave=False):
            item = dataset[i]
            if "instances" not in item:
                raise ValueError(
                    "mask quality needs ground-truth instances; the dataset item "
                    f"has only {sorted(item)}"
                )
            instances = np.asarray(item["instances"])
            image = item["image"].permute(1, 2, 0).numpy()
            pairs.append((instances, source(image, instances)))
        rows.append({"source": name, **mask_quality(pairs)})
    return pd.DataFrame(rows)


def quality_dataset(profile: str, num_images: int, root: str, seed: int):
    """The scenes ``detcon masks quality`` measures and the profile's mask config: the cpu
    profile's first ``num_images`` ``val`` scenes (drawn with ``seed``), or COCO val2017 under
    ``root`` for the paper profile."""
    from detcon.config import load_pretrain_config

    cfg = load_pretrain_config({}, profile=profile)
    if profile == "cpu":
        from detcon.data.synthetic import SceneSpec, SyntheticScenes

        scenes = SyntheticScenes(
            "val",
            num_images=num_images,
            size=cfg.data.scene_size,
            seed=seed,
            difficulty=SceneSpec.from_config(cfg.data),
        )
        return scenes, cfg.masks
    from torch.utils.data import Subset

    from detcon.data.readers import CocoInstances

    if not root:
        raise ValueError(
            "--profile paper measures mask quality on COCO val2017: pass --root "
            "<coco root> (with annotations/instances_val2017.json and val2017/)"
        )
    coco = CocoInstances(root, split="val2017")
    return Subset(coco, range(min(num_images, len(coco)))), cfg.masks


def _cmd_quality(args: argparse.Namespace) -> int:
    from detcon.atomic import write_text

    parent = args.out.parent
    if args.out.is_dir() or (parent.exists() and not parent.is_dir()):
        raise ValueError(f"--out {str(args.out)!r}: expected a file path in a folder")
    if parent.is_dir() and not os.access(parent, os.W_OK):
        raise PermissionError(
            f"--out {str(args.out)!r}: the folder {str(parent)!r} is not writable"
        )
    # checked before the masks are computed (minutes on COCO), not after
    dataset, mask_cfg = quality_dataset(args.profile, args.num_images, args.root, args.seed)
    table = mask_quality_table(dataset, mask_cfg, progress=not args.quiet)
    write_text(args.out, table.to_csv(index=False))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"wrote {args.out}")
    return 0


def _cmd_precompute(args: argparse.Namespace) -> int:
    from detcon.config import load_pretrain_config, merge, parse_dotted
    from detcon.data.pretrain import build_base_dataset
    from detcon.masks.store import precompute_store

    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {str(args.out)!r} is a file: expected a store directory")
    given = parse_dotted(args.set or [])
    masks = given.get("masks")
    if isinstance(masks, dict) and masks.get("source", args.source) != args.source:
        raise ValueError(
            f"--set masks.source={given['masks']['source']!r} contradicts --source "
            f"{args.source}: the store's source is --source's (leave masks.source out of --set)"
        )
    cfg = load_pretrain_config(merge({"masks": {"source": args.source}}, given), args.profile)
    dataset = build_base_dataset(cfg)
    # Recorded in the store's manifest: what errors name to finish or repair the store.
    command = shlex.join(
        [
            "detcon",
            "masks",
            "precompute",
            "--profile",
            args.profile,
            "--source",
            args.source,
            *(word for item in args.set or [] for word in ("--set", item)),
            "--out",
            str(args.out.absolute()),
            "--shard-size",
            str(args.shard_size),
        ]
    )
    store = precompute_store(
        dataset,
        cfg.masks,
        args.out,
        shard_size=args.shard_size,
        workers=args.workers,
        progress=None if not args.quiet else False,  # a bar on a terminal, else lines
        command=command,
    )
    print(
        f"{args.out}: {len(store)} images, {store.num_shards} shards, "
        f"{'complete' if store.complete else 'incomplete'}"
    )
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("masks", help="precompute mask stores, measure mask quality")
    msub = p.add_subparsers(dest="masks_command", required=True, metavar="ACTION")

    q = msub.add_parser(
        "quality",
        help="best IoU of each ground-truth object with any "
        "pretraining mask, per mask source (the paper's mask-quality analysis)",
    )
    q.add_argument("--profile", choices=["cpu", "paper"], default="cpu")
    q.add_argument("--num-images", type=int, default=64, help="images measured (default: 64)")
    q.add_argument("--root", default="", help="COCO root (paper profile)")
    q.add_argument("--seed", type=int, default=0, help="the synthetic val scenes' seed (cpu)")
    q.add_argument(
        "--out",
        type=path_arg,
        default=Path("figures/mask_quality.csv"),
        help="the CSV to write (default: figures/mask_quality.csv, the committed study's)",
    )
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=_cmd_quality)

    c = msub.add_parser(
        "precompute",
        help="compute a mask source for a pretraining dataset "
        "into a sharded store (restartable); train with --set masks.store=DIR",
    )
    c.add_argument("--profile", choices=["cpu", "paper"], default="cpu")
    c.add_argument("--source", required=True, choices=["grid", "fh", "mcg", "ground_truth"])
    c.add_argument("--set", action="append", metavar="KEY=VALUE")
    c.add_argument("--out", type=path_arg, required=True)
    c.add_argument("--shard-size", type=int, default=256)
    c.add_argument("--workers", type=int, default=1)
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=_cmd_precompute)
