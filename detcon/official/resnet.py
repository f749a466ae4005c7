"""A torchvision ResNet of whatever depth and width imported weights describe
(:func:`resnet_from_state_dict`: ResNet-50/101/152/200, any width multiplier, basic or bottleneck
blocks), and which ``model.backbone`` it is."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import get_args

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from detcon.config import Backbone

# The ResNets a config can name (model.backbone); the release's files are among them.
_STANDARD_DEPTHS = tuple(b for b in get_args(Backbone) if b.startswith("resnet"))


class HaikuResNet(ResNet):
    """A torchvision :class:`ResNet` with free stem width, group widths and block counts.

    ``ResNet.__init__`` hard-codes a 64-wide stem and widths 64..512 x expansion, so this sets up
    the same modules (same names, torchvision's own ``BasicBlock``/``Bottleneck`` and
    ``forward``) for any width multiplier the release used: ``stem_width = 64 m`` and
    ``widths = (256, 512, 1024, 2048) m`` give the release's ResNet-50/101/152/200 at width
    ``m``. For the standard widths the module tree and state-dict keys are torchvision's.

    Args:
        stem_width: output channels of ``conv1``.
        widths: output channels of each of the four groups (bottleneck: divisible by 4; the
            inner width is a quarter, as in Haiku's ``BlockV1`` and torchvision's Bottleneck).
        blocks: blocks per group.
        bottleneck: Bottleneck (1x1, 3x3, 1x1) or BasicBlock (3x3, 3x3) blocks.
        shortcuts: ``(group, block)`` pairs (0-based) with a projection shortcut (``downsample``).
            Default: the first block of every group (the release's ``use_projection=True``).
        num_classes: size of ``fc``; None for no classifier (``fc`` is the identity).
    """

    def __init__(
        self,
        *,
        stem_width: int,
        widths: tuple[int, int, int, int],
        blocks: tuple[int, int, int, int],
        bottleneck: bool,
        shortcuts: Iterable[tuple[int, int]] | None = None,
        num_classes: int | None = None,
    ) -> None:
        nn.Module.__init__(self)
        if len(widths) != 4 or len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"widths={widths}, blocks={blocks}: expected four groups, >= 1 block")
        if bottleneck and any(w % 4 for w in widths):
            raise ValueError(f"widths={widths}: bottleneck widths must be divisible by 4")
        shortcuts = set(shortcuts) if shortcuts is not None else {(g, 0) for g in range(4)}
        # Attributes torchvision's ResNet methods read.
        self._norm_layer = nn.BatchNorm2d
        self.groups, self.base_width, self.dilation = 1, 64, 1
        self.conv1 = nn.Conv2d(3, stem_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        cin = stem_width
        for g, (width, n, stride) in enumerate(zip(widths, blocks, (1, 2, 2, 2))):
            layer = []
            for b in range(n):
                s = stride if b == 0 else 1
                down = None
                if (g, b) in shortcuts:
                    down = nn.Sequential(
                        nn.Conv2d(cin, width, kernel_size=1, stride=s, bias=False),
                        nn.BatchNorm2d(width),
                    )
                elif s != 1 or cin != width:
                    raise ValueError(
                        f"group {g} block {b} changes shape ({cin} -> {width} channels, stride "
                        f"{s}) but has no projection shortcut"
                    )
                if bottleneck:
                    layer.append(Bottleneck(cin, width // 4, stride=s, downsample=down))
                else:
                    layer.append(BasicBlock(cin, width, stride=s, downsample=down))
                cin = width
            setattr(self, f"layer{g + 1}", nn.Sequential(*layer))
        self.inplanes = cin
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes) if num_classes else nn.Identity()
        self.out_channels = cin


def _count_blocks(state: Mapping[str, Tensor], layer: str) -> int:
    idx = {int(m[1]) for k in state if (m := re.match(rf"{layer}\.(\d+)\.", k))}
    if not idx or idx != set(range(len(idx))):
        raise ValueError(f"{layer}: expected blocks 0..n-1, found {sorted(idx)}")
    return len(idx)


def resnet_from_state_dict(state: Mapping[str, Tensor]) -> HaikuResNet:
    """A :class:`HaikuResNet` shaped by a torchvision ResNet state dict, with it loaded.

    Depth, stem and group widths, block type, shortcuts and classifier are read from the keys and
    shapes (e.g. the release's ResNet-200 width comes from its weights, it is not stated).

    Raises:
        ValueError: the keys are not a torchvision ResNet's, or a tensor does not fit.
    """
    if "conv1.weight" not in state:
        raise ValueError(
            f"not a torchvision ResNet state dict: no 'conv1.weight' in {list(state)[:8]}"
        )
    b1, b2, b3, b4 = (_count_blocks(state, f"layer{g}") for g in range(1, 5))
    blocks = (b1, b2, b3, b4)
    bottleneck = "layer1.0.conv3.weight" in state
    last = "conv3" if bottleneck else "conv2"
    missing = [f"layer{g}.0.{last}.weight" for g in range(1, 5)]
    missing = [k for k in missing if k not in state]
    if missing:
        raise ValueError(f"not a torchvision ResNet state dict: no {missing}")
    w1, w2, w3, w4 = (int(state[f"layer{g}.0.{last}.weight"].shape[0]) for g in range(1, 5))
    shortcuts = {
        (g, b)
        for g in range(4)
        for b in range(blocks[g])
        if f"layer{g + 1}.{b}.downsample.0.weight" in state
    }
    num_classes = int(state["fc.weight"].shape[0]) if "fc.weight" in state else None
    net = HaikuResNet(
        stem_width=int(state["conv1.weight"].shape[0]),
        widths=(w1, w2, w3, w4),
        blocks=blocks,
        bottleneck=bottleneck,
        shortcuts=shortcuts,
        num_classes=num_classes,
    )
    try:
        net.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:
        raise ValueError(f"the weights do not fit the ResNet their names describe: {exc}") from exc
    net.eval()
    return net


def describe_resnet(net: HaikuResNet) -> str:
    """``"resnet50"``, ``"resnet200 (width x2)"`` or a custom description of the architecture."""
    bottleneck = isinstance(net.layer1[0], Bottleneck)
    blocks = [len(getattr(net, f"layer{g}")) for g in range(1, 5)]
    depth = 2 + (3 if bottleneck else 2) * sum(blocks)
    stem = net.conv1.out_channels
    widths = [getattr(net, f"layer{g}")[-1].bn2.num_features for g in range(1, 5)]
    if bottleneck:
        widths = [getattr(net, f"layer{g}")[-1].bn3.num_features for g in range(1, 5)]
    base = (256, 512, 1024, 2048) if bottleneck else (64, 128, 256, 512)
    m, rem = divmod(stem, 64)
    if rem == 0 and m >= 1 and widths == [b * m for b in base]:
        return f"resnet{depth}" + (f" (width x{m})" if m > 1 else "")
    kind = "bottleneck" if bottleneck else "basic"
    return f"resnet{depth}-like ({kind} blocks {blocks}, stem {stem}, widths {widths})"


def backbone_name(net: HaikuResNet, where: str | Path) -> str:
    """The ``model.backbone`` value of the imported ResNet ``net`` (its depth: ``resnet50`` for
    any width), or a ValueError naming ``where`` when no config value describes it."""
    arch = describe_resnet(net)
    depth = arch.split()[0]
    if depth not in _STANDARD_DEPTHS:
        raise ValueError(
            f"{where}: the weights are a {arch}, which no model.backbone names (expected one of "
            f"{', '.join(_STANDARD_DEPTHS)})"
        )
    return depth


def check_backbone(net: HaikuResNet, backbone: str, where: str | Path) -> None:
    """Raise a ValueError naming ``where`` unless the imported ``net`` is ``model.backbone``."""
    depth = backbone_name(net, where)
    if depth != backbone:
        raise ValueError(
            f"{where} holds a {describe_resnet(net)} but the config says "
            f"model.backbone={backbone!r}; set model.backbone={depth!r} for this checkpoint"
        )
