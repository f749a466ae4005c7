"""The dense-prediction trainer shared by semantic segmentation and depth estimation.

A head on the backbone's last feature map predicts at full image resolution; it is trained with
the task's loss, then scored on the validation split. Two ways to get features:

- frozen backbone on the synthetic scenes: the stored features of the shared
  :class:`~detcon.evaluate.features.FeatureBank` (un-augmented images, extracted once);
- otherwise (fine-tuning, or real datasets of varying image sizes): the backbone runs on each
  batch of augmented crops (random scale, crop, flip), with gradients when ``train_backbone``.
  Validation images are then scored one at a time at their native resolution.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

from detcon.evaluate.context import EvalContext
from detcon.evaluate.data import num_classes, random_scale_crop, to_input
from detcon.evaluate.settings import DenseSettings
from detcon.evaluate.training import (
    batch_indices,
    lr_at,
    make_optimizer,
    optimizer_step,
    set_lr,
)

__all__ = ["DenseTask", "bank_stages", "fit_dense", "run_dense"]


class DenseTask(Protocol):
    """What differs between dense tasks (segmentation: classes; depth: metres)."""

    target_key: str  # item key of the per-pixel target
    fill: float  # target value for padded pixels (ignore label / invalid depth)

    def make_head(
        self, in_channels: int, stride: int, settings: DenseSettings, num_classes: int
    ) -> nn.Module:
        """A module mapping ``(B, C, h, w)`` features and an output size to predictions."""

    def init_head(self, head: nn.Module, targets: Sequence[Tensor]) -> None:
        """Data-dependent initialisation from some training targets (may do nothing)."""

    def loss(self, pred: Tensor, target: Tensor) -> Tensor: ...

    def stats(self, pred: Tensor, target: Tensor) -> Tensor:
        """Sufficient statistics of one batch, summed over batches before :meth:`scores`."""

    def scores(self, stats: Tensor) -> dict[str, float]: ...


def uses_bank(s: DenseSettings) -> bool:
    """Whether the head trains on stored frozen features (synthetic scenes, frozen backbone)."""
    return s.data.dataset == "synthetic" and not s.train_backbone and not s.dilate_last_stage


def bank_stages(s: DenseSettings, strides: list[int]) -> list[int]:
    """Stages this task reads from the feature bank (to reserve before extraction)."""
    return [len(strides) - 1] if uses_bank(s) else []


def run_dense(ctx: EvalContext, s: DenseSettings, task: DenseTask) -> dict[str, float]:
    """Train a head (and the backbone when ``s.train_backbone``) and score it on validation."""
    t0 = time.perf_counter()
    head, backbone = fit_dense(ctx, s, task)
    result = _score(ctx, s, task, head, backbone)
    ctx.log(f"{s.name}: {result} in {time.perf_counter() - t0:.1f} s")
    return result


def fit_dense(
    ctx: EvalContext, s: DenseSettings, task: DenseTask
) -> tuple[nn.Module, nn.Module | None]:
    """Train a head (and the backbone when ``s.train_backbone``) on the training split.

    Returns the head and the backbone it was trained on (None when the head read stored frozen
    features), both in eval mode.
    """
    t0 = time.perf_counter()
    dev = ctx.device
    train = ctx.store.get(s.data, "train")
    n_classes = num_classes(train) if task.target_key == "semantic" else 1
    cached = uses_bank(s)
    backbone: nn.Module | None = None
    if cached:
        last = ctx.bank.last_stage()
        channels, stride = ctx.bank.stages.channels[last], ctx.bank.stages.strides[last]
        train_x = ctx.bank.maps(s.data, "train", last)
        train_y = torch.stack([train[i][task.target_key] for i in range(len(train))]).to(dev)
    else:
        backbone = ctx.backbone(dilate_last_stage=s.dilate_last_stage, trainable=s.train_backbone)
        channels, stride = backbone.out_channels, backbone.stride
    ctx.log(f"{s.name}: features ready after {time.perf_counter() - t0:.1f} s")

    torch.manual_seed(ctx.seed_for(s.name, "init"))
    head = task.make_head(channels, stride, s, n_classes)
    task.init_head(
        head,
        [train_y.cpu()]
        if cached
        else [train[i][task.target_key] for i in range(min(len(train), 16))],
    )
    head.to(dev)
    params = list(head.parameters())
    if backbone is not None and s.train_backbone:
        params += list(backbone.parameters())
    optimizer = make_optimizer(params, s.optim)
    gen = ctx.generator(s.name, "order")
    head.train()
    if backbone is not None and s.train_backbone:
        backbone.train()
    for step, idx in enumerate(batch_indices(len(train), s.optim.batch_size, s.optim.steps, gen)):
        set_lr(optimizer, lr_at(step, s.optim))
        if cached:
            feats, target = train_x[idx], train_y[idx]
        else:
            items = [train[i] for i in idx]  # each read (decoded) once
            pairs = [
                random_scale_crop(
                    item["image"],
                    item[task.target_key],
                    scale_range=s.scale_range,
                    crop=s.crop_size,
                    flip=s.flip,
                    fill=task.fill,
                    generator=gen,
                )
                for item in items
            ]
            images = torch.stack([p[0] for p in pairs]).to(dev)
            target = torch.stack([p[1] for p in pairs]).to(dev)
            with torch.set_grad_enabled(s.train_backbone):
                feats = backbone(to_input(images))
        loss = task.loss(head(feats, target.shape[-2:]), target)
        optimizer_step(optimizer, loss, name=s.name, step=step, steps=s.optim.steps, log=ctx.log)

    head.eval()
    if backbone is not None:
        backbone.eval()
    return head, backbone


def _score(
    ctx: EvalContext,
    s: DenseSettings,
    task: DenseTask,
    head: nn.Module,
    backbone: nn.Module | None,
) -> dict[str, float]:
    """The task's metrics of a fitted head on the validation split."""
    dev = ctx.device
    val = ctx.store.get(s.data, "val")
    cached = backbone is None
    total: Tensor | None = None
    with torch.no_grad():
        if cached:
            last = ctx.bank.last_stage()
            val_x = ctx.bank.maps(s.data, "val", last)
            for start in range(0, len(val), 64):
                target = torch.stack(
                    [val[i][task.target_key] for i in range(start, min(start + 64, len(val)))]
                ).to(dev)
                pred = head(val_x[start : start + len(target)], target.shape[-2:])
                total = _add(total, task.stats(pred, target))
        else:
            for i in range(len(val)):
                item = val[i]
                target = item[task.target_key][None].to(dev)
                pred = head(backbone(to_input(item["image"][None]).to(dev)), target.shape[-2:])
                total = _add(total, task.stats(pred, target))
    return task.scores(total.cpu())


def _add(total: Tensor | None, stats: Tensor) -> Tensor:
    return stats if total is None else total + stats
