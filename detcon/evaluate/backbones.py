"""Backbones for evaluation: read a run directory, rebuild its encoder, export/import torchvision
ResNets, and expose a backbone's stages for an FPN.

A run directory (docs/run-directory.md) holds ``config.json`` (the resolved PretrainConfig) and
``backbone.pt`` (the online encoder's state dict: plain torchvision ResNet keys without ``fc`` for
ResNets, the SmallResNet's own keys otherwise). ``random`` is the baseline every ablation is
compared with: the same architecture, randomly initialised from the evaluation seed.
"""

from __future__ import annotations

import json
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn
from torchvision.models.resnet import ResNet

from detcon.atomic import load_torch
from detcon.config import ConfigError, ModelConfig, PretrainConfig, from_dict
from detcon.models import (
    Backbone,
    SmallResNet,
    build_backbone,
    first_non_finite,
    set_bn_momentum,
    torchvision_resnet,
)

__all__ = [
    "BackboneStages",
    "backbone_from_run",
    "backbone_state",
    "encoder_module",
    "load_run_config",
    "load_torchvision_resnet",
    "make_backbone",
    "weights_need_tf_same",
    "weights_take_unit_range",
]

CONFIG_FILE = "config.json"
BACKBONE_FILE = "backbone.pt"


def load_run_config(run_dir: str | Path) -> PretrainConfig:
    """The PretrainConfig stored in ``run_dir/config.json``, parsed strictly."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"run directory {str(run_dir)!r} is a file, expected a folder")
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {str(run_dir)!r} does not exist")
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: a run directory needs the {CONFIG_FILE} written by "
            "`detcon pretrain` (docs/run-directory.md)"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    try:
        return from_dict(PretrainConfig, data)
    except ConfigError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def backbone_state(
    run_dir: str | Path,
    model_cfg: ModelConfig,
    *,
    backbone: Literal["pretrained", "random"] = "pretrained",
    seed: int = 0,
) -> dict[str, Tensor]:
    """The encoder weights to evaluate: ``run_dir/backbone.pt`` or a random initialisation.

    ``random`` draws the weights of ``build_backbone(model_cfg)`` from ``seed`` without touching
    the global RNG, so the baseline is reproducible and independent of what ran before.
    """
    if backbone == "random":
        _refuse_other_shape(run_dir, model_cfg)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = build_backbone(model_cfg)
        return encoder_module(net).state_dict()
    if backbone != "pretrained":
        raise ValueError(f"backbone={backbone!r}: expected 'pretrained' or 'random'")
    path = Path(run_dir) / BACKBONE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: expected the encoder weights that `detcon pretrain` exports at the "
            "end of training (or evaluate backbone='random' for the baseline)"
        )
    return _load_weights(path)


def _refuse_other_shape(run_dir: str | Path, model_cfg: ModelConfig) -> None:
    """The random floor (and the ceiling trained from it) is ``build_backbone(model_cfg)``:
    not the same architecture as an imported checkpoint of another width (the release's
    ``resnet200 (width x2)``); a floor of another network is refused, not computed."""
    try:
        arch = _backbone_meta(run_dir).get("architecture")
    except (OSError, ValueError):
        return  # the floor does not depend on it; the pretrained encoder's evaluation says why
    if arch is not None and arch != model_cfg.backbone:
        raise ValueError(
            f"{run_dir} holds an imported {arch}: the random floor and the supervised ceiling "
            f"are built as model.backbone={model_cfg.backbone!r} at its standard width, another "
            "network; evaluate this run's own weights only (backbone 'pretrained')"
        )


def _load_weights(path: Path) -> dict[str, Tensor]:
    """An exported encoder's state dict, read safely; a damaged file is named with the fix."""
    try:
        state = load_torch(path)
    except ValueError as exc:
        raise ValueError(
            f"{path} is truncated or corrupt ({exc}): export it again from the run's "
            f"checkpoint with `detcon pretrain --config {path.parent / 'config.json'} --out "
            f"{path.parent}` (a finished run trains no further step), or, for an imported "
            "official checkpoint, rerun `detcon import-official`"
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors")
    bad = first_non_finite(state)
    if bad is not None:  # every probe would score NaN features (the linear one as numbers)
        raise ValueError(
            f"{path}: {bad} holds NaN or infinite values: the encoder diverged in training, "
            "there is nothing to evaluate; train it again into a new run directory (a lower "
            "optim.base_lr)"
        )
    return state


def encoder_module(net: nn.Module) -> nn.Module:
    """The module whose state dict is exported (``Backbone.net`` for ResNets)."""
    return net.net if isinstance(net, Backbone) else net


def weights_need_tf_same(
    run_dir: str | Path, backbone: Literal["pretrained", "random"] = "pretrained"
) -> bool:
    """Whether the run's encoder weights were trained with TF "SAME" padding: an official
    checkpoint imported by ``detcon import-official --run-dir`` (its ``backbone.json`` says
    ``"padding": "tf_same"``). Our own runs and the random baseline use stock padding."""
    if backbone != "pretrained":
        return False
    from detcon.official import needs_tf_same_padding

    path = Path(run_dir) / BACKBONE_FILE
    return path.is_file() and needs_tf_same_padding(path)


UNIT_RANGE = "unit_range"


def weights_take_unit_range(
    run_dir: str | Path, backbone: Literal["pretrained", "random"] = "pretrained"
) -> bool:
    """Whether the run's encoder was trained on RGB in [0, 1], not ImageNet-normalised images:
    an official checkpoint pretrained on COCO, which the release does not normalise (its
    ``normalize_images`` applies ImageNet's mean and std to ImageNet only; docs/deviations.md
    A8). ``detcon import-official --run-dir`` records it in ``backbone.json`` (``"inputs":
    "unit_range"``) when the config says ``data.dataset: coco``."""
    return backbone == "pretrained" and _backbone_meta(run_dir).get("inputs") == UNIT_RANGE


def _backbone_meta(run_dir: str | Path) -> dict:
    """The run's ``backbone.json`` (``{}`` when there is none); ValueError when unreadable."""
    from detcon.runs import read_json

    return read_json(Path(run_dir) / "backbone.json") or {}


def _take_unit_range(resnet: ResNet) -> None:
    """Map the evaluation's ImageNet-normalised images back to [0, 1] in front of ``conv1``
    (before any padding hook: the release padded zeros of the [0, 1] image)."""
    from detcon.augment import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def hook(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        x = args[0]
        return (x * std.to(x) + mean.to(x), *args[1:])

    resnet.conv1.register_forward_pre_hook(hook, prepend=True)


def make_backbone(
    model_cfg: ModelConfig,
    state: dict[str, Tensor],
    *,
    dilate_last_stage: bool = False,
    tf_same: bool = False,
    unit_range: bool = False,
) -> nn.Module:
    """A fresh encoder with ``state`` loaded; it has ``out_channels`` and ``stride``.

    ``dilate_last_stage`` (ResNets only) replaces the stride of ``layer4`` by dilation, for
    FCN-style dense heads at output stride 16; the weights are the same tensors.
    ``tf_same``: the weights are Haiku-trained (an imported official checkpoint): the ResNet is
    shaped by the weights (the release's widths need not be torchvision's) and padded like
    TensorFlow's "SAME" (:func:`detcon.official.use_tf_same_padding`); its depth must be
    ``model_cfg.backbone``'s. ``unit_range``: the weights were trained on [0, 1] images
    (:func:`weights_take_unit_range`); the encoder takes normalised ones like every other and
    maps them back in front of its first convolution.
    """
    if unit_range and not tf_same:
        raise ValueError("unit_range applies to imported official weights (tf_same) only")
    if tf_same:
        from detcon.official import backbone_from_state, check_backbone

        net = set_bn_momentum(backbone_from_state(state).train(), model_cfg.bn_momentum)
        check_backbone(net.net, model_cfg.backbone, "the imported weights")
        if unit_range:
            _take_unit_range(net.net)
    else:
        net = build_backbone(model_cfg)
        try:
            encoder_module(net).load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(
                f"backbone weights do not fit model.backbone={model_cfg.backbone!r}: {exc}"
            ) from exc
    if dilate_last_stage and isinstance(net, Backbone):
        _dilate_last_stage(net.net)
        net.stride = 16
    return net


def _dilate_last_stage(resnet: ResNet) -> None:
    """Trade ``layer4``'s stride 2 for dilation 2, in place, as torchvision's
    ``replace_stride_with_dilation=[False, False, True]`` builds it: the first block keeps
    dilation 1 with stride 1, the later blocks' 3x3 convs get dilation and padding 2. Shapes of
    all weights are unchanged (torchvision's BasicBlock refuses dilation, this works for both)."""
    for i, block in enumerate(resnet.layer4):
        for conv in (m for m in block.modules() if isinstance(m, nn.Conv2d)):
            if conv.stride == (2, 2):
                conv.stride = (1, 1)
            if i > 0 and conv.kernel_size == (3, 3):
                conv.dilation, conv.padding = (2, 2), (2, 2)


def backbone_from_run(
    run_dir: str | Path, *, backbone: Literal["pretrained", "random"] = "pretrained", seed: int = 0
) -> nn.Module:
    """Our encoder of ``run_dir`` (config.json + backbone.pt), or its random-init baseline."""
    cfg = load_run_config(run_dir)
    state = backbone_state(run_dir, cfg.model, backbone=backbone, seed=seed)
    return make_backbone(
        cfg.model,
        state,
        tf_same=weights_need_tf_same(run_dir, backbone),
        unit_range=weights_take_unit_range(run_dir, backbone),
    )


def load_torchvision_resnet(
    weights: str | Path | dict[str, Tensor], name: str = "resnet50"
) -> nn.Module:
    """A plain torchvision ResNet (``torchvision.models.<name>``) with exported weights.

    Every key must match except the classifier (``fc.*``), which the export does not hold and
    which stays randomly initialised (``strict=False`` for ``fc`` only): the backbone can be taken
    to any detection or segmentation stack that builds on torchvision ResNets.
    """
    if not isinstance(weights, dict):
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: expected an exported backbone.pt")
        from detcon.official import needs_tf_same_padding

        if needs_tf_same_padding(path):
            warnings.warn(
                f"{path} holds Haiku-trained weights (an imported official checkpoint): a stock "
                "torchvision ResNet shifts their features on even input sizes; load them with "
                "detcon.official.load_official_backbone or apply "
                "detcon.official.use_tf_same_padding",
                stacklevel=2,
            )
        weights = _load_weights(path)
    try:
        net = torchvision_resnet(name)
    except AttributeError as exc:
        raise ValueError(f"name={name!r}: expected a ResNet name such as 'resnet50'") from exc
    try:
        result = net.load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # a tensor of another shape (another depth or width)
        raise ValueError(f"weights do not fit torchvision {name}: {str(exc)[:500]}") from exc
    missing = [k for k in result.missing_keys if not k.startswith("fc.")]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"weights do not fit torchvision {name}: missing {missing[:5]}, unexpected "
            f"{result.unexpected_keys[:5]} (a SmallResNet export cannot be loaded as a ResNet)"
        )
    return net


class BackboneStages(nn.Module):
    """A backbone split into its stages: ``forward(x)`` returns every stage's output.

    Works for the SmallResNet (stem+stage 1, stages 2-4) and for our ResNet wrapper / a plain
    torchvision ResNet (conv1..maxpool+layer1, layer2-4). The modules are shared with the
    backbone, not copied. ``channels[i]`` and ``strides[i]`` describe stage ``i``'s output; they
    are measured with one dry run on a 64x64 input.
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        net = encoder_module(backbone)
        if isinstance(net, SmallResNet):
            first = nn.Sequential(net.stem, net.layers[0])
            rest = list(net.layers[1:])
        elif isinstance(net, ResNet):
            first = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
            rest = [net.layer2, net.layer3, net.layer4]
        else:
            raise ValueError(
                f"cannot split a {type(net).__name__} into stages: expected a SmallResNet or a "
                "torchvision ResNet"
            )
        self.stages = nn.ModuleList([first, *rest])
        # The dry run in eval mode (no BatchNorm statistics move), then every module back to its
        # own mode: the wrapper is new, so its flag says nothing about the backbone's.
        modes = [(m, m.training) for m in self.stages.modules()]
        self.eval()
        with torch.no_grad():
            outs = self(torch.zeros(1, 3, 64, 64))
        for module, training in modes:
            module.training = training
        self.training = net.training
        self.channels = [o.shape[1] for o in outs]
        self.strides = [64 // o.shape[-1] for o in outs]

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


def fpn_stage_indices(strides: list[int], min_stride: int) -> list[int]:
    """Stages that feed an FPN: for each distinct stride >= ``min_stride``, its last stage.

    The SmallResNet at output stride 8 has strides [2, 4, 8, 8]: -> stages [1, 3]. ResNets have
    [4, 8, 16, 32]: -> all four, as torchvision's ``resnet_fpn_backbone``.
    """
    last: OrderedDict[int, int] = OrderedDict()
    for i, s in enumerate(strides):
        if s >= min_stride:
            last[s] = i
    if not last:
        raise ValueError(f"no stage has stride >= {min_stride} (strides {strides})")
    return list(last.values())
