"""Monocular depth: a deconvolution head on the backbone's last feature map, RMSE and delta1.

BYOL (App. D.5) and DetCon (§4) follow Laina et al. 2016 ("Deeper depth prediction with fully
convolutional residual networks"): a ResNet trunk, learned upsampling, the reverse Huber (berHu)
loss, and a prediction at half the input resolution. Our head: a 1x1 reduction, stride-2
transposed convolutions up to output stride 2, a 3x3 convolution to one channel, then bilinear
upsampling to the image (metrics are computed at full resolution).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detcon.evaluate.context import EvalContext
from detcon.evaluate.dense import run_dense
from detcon.evaluate.metrics import depth_scores, depth_sums
from detcon.evaluate.settings import DenseSettings

__all__ = ["DepthHead", "berhu_loss", "evaluate_depth"]


def berhu_loss(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Reverse Huber loss over ``valid`` pixels (Laina et al. 2016, eq. 4): ``|e|`` up to
    ``c = max|e| / 5`` over the batch, ``(e^2 + c^2) / 2c`` beyond. Shapes: equal ``(B, H, W)``."""
    err = (pred - target)[valid].abs()
    if err.numel() == 0:
        return pred.sum() * 0.0
    c = (err.max().detach() / 5).clamp_min(1e-6)
    return torch.where(err <= c, err, (err * err + c * c) / (2 * c)).mean()


class DepthHead(nn.Module):
    """Features ``(B, C, h, w)`` at output ``stride`` -> depth ``(B, *size)`` in metres.

    Stride-2 transposed convolutions (kernel 4, each halving the channels, at least 16) up to
    output stride 2, then a 3x3 conv to one channel and bilinear upsampling to ``size``.
    """

    def __init__(self, in_channels: int, stride: int, channels: int = 128) -> None:
        super().__init__()
        if stride < 2 or stride & (stride - 1):
            raise ValueError(f"DepthHead: stride={stride}; expected a power of two >= 2")
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        ]
        c = channels
        for _ in range(int(math.log2(stride)) - 1):
            out = max(c // 2, 16)
            layers += [
                nn.ConvTranspose2d(c, out, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            c = out
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(c, 1, 3, padding=1)

    def forward(self, x: Tensor, size: Sequence[int]) -> Tensor:
        y = self.out(self.body(x))
        return F.interpolate(y, size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


class _Depth:
    target_key = "depth"
    fill = 0.0  # padded pixels have no depth: invalid

    def __init__(self, min_depth: float, max_depth: float) -> None:
        self.min_depth, self.max_depth = min_depth, max_depth

    def _valid(self, target: Tensor) -> Tensor:
        return (target > self.min_depth) & (target <= self.max_depth)

    def make_head(
        self, in_channels: int, stride: int, settings: DenseSettings, num_classes: int
    ) -> nn.Module:
        return DepthHead(in_channels, stride, settings.head_channels)

    def init_head(self, head: nn.Module, targets: Sequence[Tensor]) -> None:
        # Start at the mean training depth: the output bias would otherwise need thousands of
        # small steps to travel from 0 to several metres.
        values = torch.cat([t[self._valid(t)].flatten() for t in targets])
        if values.numel():
            with torch.no_grad():
                head.out.bias.fill_(float(values.mean()))

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return berhu_loss(pred, target, self._valid(target))

    def stats(self, pred: Tensor, target: Tensor) -> Tensor:
        return depth_sums(pred, target, min_depth=self.min_depth, max_depth=self.max_depth)

    def scores(self, stats: Tensor) -> dict[str, float]:
        return depth_scores(stats)


def evaluate_depth(ctx: EvalContext, settings: DenseSettings) -> dict[str, float]:
    """Train a deconvolution depth head and return ``rmse`` (metres) and ``delta1`` on the
    validation split (valid pixels: ``min_depth < depth <= max_depth``)."""
    return run_dense(ctx, settings, _Depth(settings.min_depth, settings.max_depth))
