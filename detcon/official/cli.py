"""``detcon import-official`` (registered by :mod:`detcon.cli`)."""

from __future__ import annotations

import argparse

from detcon.cli import path_arg
from detcon.official.importing import import_official, import_run
from detcon.official.release import RELEASE_URL


def _cmd_import(args: argparse.Namespace) -> int:
    if (args.out is None) == (args.run_dir is None):
        raise ValueError("import-official: pass exactly one of --out FILE or --run-dir DIR")
    if args.run_dir is not None:
        if args.with_classifier:
            raise ValueError(
                "import-official: --with-classifier applies to --out only (a run directory's "
                "backbone.pt holds the encoder, like ours)"
            )
        from detcon.config import parse_dotted

        profile = args.profile or "paper"
        cfg = import_run(
            args.path,
            args.run_dir,
            network=args.network,
            profile=profile,
            overrides=parse_dotted(args.set),
        )
        print(
            f"imported {args.path} as an evaluation-only run in {args.run_dir} "
            f"(model.backbone={cfg.model.backbone}, TF-SAME padding recorded in backbone.json); "
            f"next: detcon evaluate {args.run_dir} --profile {profile}"
        )
        return 0
    if args.set or args.profile is not None:
        raise ValueError(
            "import-official: --profile and --set describe a run directory: use them with "
            "--run-dir, not --out"
        )
    s = import_official(
        args.path, args.out, network=args.network, with_classifier=args.with_classifier
    )
    dropped = s.classifier and not args.with_classifier
    print(
        f"imported {s.architecture} from {args.path} ({s.network}): {s.tensors} tensors -> "
        f"{s.out} (+ {s.out.with_suffix('.json').name}); ignored {list(s.ignored) or 'nothing'}"
        f"{'; classifier left out (--with-classifier keeps it)' if dropped else ''}. "
        "The weights need TF-SAME padding: evaluate them through "
        "detcon.official.load_official_backbone, not a stock torchvision ResNet."
    )
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``detcon import-official`` (called by :mod:`detcon.cli`)."""
    p = subparsers.add_parser(
        "import-official",
        help="convert an official DetCon release checkpoint (.npy) to a torchvision state dict",
        description="Read a checkpoint of the official DetCon release (Haiku ResNet, "
        f"downloaded from {RELEASE_URL}) without JAX, map it to torchvision ResNet keys and "
        "write it as a torch state dict with a .json sidecar. The weights are exact only with "
        "TF-SAME padding (detcon.official.use_tf_same_padding).",
    )
    p.add_argument("path", type=path_arg, help="e.g. resnet50_detcon_b_imagenet_1k.npy")
    p.add_argument("--out", type=path_arg, help="output state dict, e.g. model.pt")
    p.add_argument(
        "--run-dir",
        type=path_arg,
        help="instead of --out: write an evaluation-only run directory (backbone.pt, "
        "config.json, train_summary.json) that `detcon evaluate` takes like one of ours",
    )
    p.add_argument(
        "--profile",
        choices=["cpu", "paper"],
        default=None,
        help="with --run-dir: the profile whose config describes the checkpoint (default paper)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --run-dir: config fields that describe the checkpoint, e.g. "
        "--set data.dataset=coco (model.backbone is read from the weights unless set)",
    )
    p.add_argument(
        "--network",
        default=None,
        help="which network, when the file holds several (a substring of the listed labels, "
        "e.g. 'online'); default: the only one, else the online network",
    )
    p.add_argument(
        "--with-classifier",
        action="store_true",
        help="also write the release's linear classifier as fc.* (default: backbone only, "
        "like our runs' backbone.pt)",
    )
    p.set_defaults(func=_cmd_import)
