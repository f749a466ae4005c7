"""Optimiser, learning-rate schedule and batch order shared by the trained evaluation heads."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from detcon.evaluate.settings import OptimSettings

__all__ = ["batch_indices", "lr_at", "make_optimizer", "set_lr"]


def lr_at(step: int, opt: OptimSettings) -> float:
    """Learning rate at ``step`` in ``[0, opt.steps)``: linear warmup from 0, then the schedule."""
    if step < opt.warmup_steps:
        return opt.lr * (step + 1) / opt.warmup_steps
    t = step / max(1, opt.steps)
    if opt.schedule == "constant":
        return opt.lr
    if opt.schedule == "cosine":
        return opt.lr * 0.5 * (1 + math.cos(math.pi * t))
    if opt.schedule == "poly":
        return opt.lr * (1 - t) ** 0.9
    if opt.schedule == "step":
        return opt.lr * 0.1 ** sum(t >= m for m in opt.milestones)
    raise ValueError(f"schedule={opt.schedule!r}: expected constant, cosine, poly or step")


def make_optimizer(params: Iterable[nn.Parameter], opt: OptimSettings) -> torch.optim.Optimizer:
    """SGD (momentum) or Adam over ``params``; weight decay on weights only (not on biases and
    normalisation parameters, whose decay only shrinks them)."""
    params = [p for p in params if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": opt.weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if opt.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=opt.lr, momentum=opt.momentum)
    if opt.optimizer == "adam":
        return torch.optim.Adam(groups, lr=opt.lr)
    raise ValueError(f"optimizer={opt.optimizer!r}: expected 'sgd' or 'adam'")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def batch_indices(
    n: int, batch_size: int, steps: int, generator: torch.Generator
) -> Iterator[list[int]]:
    """``steps`` batches of dataset indices: shuffled epochs, reshuffled each pass, the last
    incomplete batch of an epoch dropped (or the whole set when it is smaller than a batch)."""
    if n < 1:
        raise ValueError("cannot train on an empty dataset")
    b = min(batch_size, n)
    done = 0
    while True:
        order = torch.randperm(n, generator=generator).tolist()
        for start in range(0, n - b + 1, b):
            if done == steps:
                return
            yield order[start : start + b]
            done += 1


def optimizer_step(
    optimizer: torch.optim.Optimizer, loss: torch.Tensor, *, name: str, step: int, steps: int, log
) -> None:
    """One checked update of a downstream head: stop on a non-finite loss, step, log every 50."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{name}: non-finite loss {loss.item()} at step {step}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if step % 50 == 0 or step == steps - 1:
        log(f"{name}: step {step + 1}/{steps} loss {loss.item():.4f}")
