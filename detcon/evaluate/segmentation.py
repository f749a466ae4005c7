"""Semantic segmentation: an FCN head on the backbone's last feature map, scored by mIoU.

Head as the FCN transfer protocol of BYOL (App. D.3) that DetCon follows (§4): 3x3 convolutions
with BatchNorm and ReLU on the last feature map, a 1x1 classifier, and the logits upsampled
bilinearly to the image. Cross-entropy ignores label 255 (VOC object borders, Cityscapes void).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from detcon.evaluate.backbones import encoder_module
from detcon.evaluate.context import EvalContext
from detcon.evaluate.data import IGNORE_INDEX
from detcon.evaluate.dense import fit_dense, run_dense
from detcon.evaluate.metrics import confusion_matrix, segmentation_scores
from detcon.evaluate.settings import DenseSettings

__all__ = ["FCNHead", "evaluate_segmentation", "supervised_state"]


class FCNHead(nn.Module):
    """``convs`` x (3x3 conv, BN, ReLU) of ``channels``, a 1x1 classifier, bilinear upsampling.

    ``standardize``: first a per-channel BatchNorm without affine parameters (with ``convs=0``:
    a linear probe of standardised features). ``dilation``: of the 3x3 convolutions (6 in the
    transfer protocol of MoCo and BYOL).
    ``forward(x, size)``: features ``(B, C, h, w)`` -> logits ``(B, num_classes, *size)``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 256,
        convs: int = 2,
        standardize: bool = False,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.BatchNorm2d(in_channels, affine=False)] if standardize else []
        for i in range(convs):
            layers += [
                nn.Conv2d(
                    in_channels if i == 0 else channels,
                    channels,
                    3,
                    padding=dilation,
                    dilation=dilation,
                    bias=False,
                ),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Conv2d(channels if convs else in_channels, num_classes, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, size: Sequence[int]) -> Tensor:
        return F.interpolate(self.net(x), size=tuple(size), mode="bilinear", align_corners=False)


class _Segmentation:
    target_key = "semantic"
    fill = float(IGNORE_INDEX)

    def __init__(self) -> None:
        self.num_classes = 0

    def make_head(
        self, in_channels: int, stride: int, settings: DenseSettings, num_classes: int
    ) -> nn.Module:
        self.num_classes = num_classes
        return FCNHead(
            in_channels,
            num_classes,
            settings.head_channels,
            settings.head_convs,
            standardize=settings.standardize,
            dilation=settings.head_dilation,
        )

    def init_head(self, head: nn.Module, targets: Sequence[Tensor]) -> None:
        pass

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        if not (target != IGNORE_INDEX).any():  # a crop of ignored pixels only: no signal
            return pred.sum() * 0.0
        return F.cross_entropy(pred, target, ignore_index=IGNORE_INDEX)

    def stats(self, pred: Tensor, target: Tensor) -> Tensor:
        return confusion_matrix(pred.argmax(1), target, self.num_classes, IGNORE_INDEX)

    def scores(self, stats: Tensor) -> dict[str, float]:
        return segmentation_scores(stats)


def evaluate_segmentation(ctx: EvalContext, settings: DenseSettings) -> dict[str, float]:
    """Train an FCN head (frozen or fine-tuned backbone) and return ``miou`` and ``pixel_acc``
    on the validation split (mIoU over all classes, background included)."""
    return run_dense(ctx, settings, _Segmentation())


def supervised_state(ctx: EvalContext, settings: DenseSettings) -> dict[str, Tensor]:
    """The encoder trained with labels: ``ctx``'s encoder fine-tuned end to end with an FCN
    head on the segmentation labels of ``settings.data``'s training split (the ceiling every
    pretraining method is compared with). Returns its state dict (the head is dropped)."""
    if not settings.train_backbone:
        raise ValueError(f"{settings.name}: a supervised encoder needs train_backbone=True")
    _, backbone = fit_dense(ctx, settings, _Segmentation())
    return {k: v.detach().cpu().clone() for k, v in encoder_module(backbone).state_dict().items()}
