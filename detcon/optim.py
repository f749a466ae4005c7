"""LARS and the release's schedules (google-deepmind/detcon ``utils/optimizers.py``,
``utils/schedules.py``; docs/design.md §4.8).

LARS (You et al. 2017) as the release chains it: ``u = g + wd * p``, then
``u *= eta * ||p|| / ||u||`` (1 where either norm is 0), then ``m = momentum * m + u`` and
``p -= lr * m``. Biases and normalisation parameters get neither the weight decay nor the trust
ratio (the release's ``exclude_bias_and_norm`` filter).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["LARS", "cosine_decay", "learning_rate", "param_groups", "target_ema"]


def param_groups(modules: Iterable[nn.Module], weight_decay: float) -> list[dict]:
    """Split parameters into LARS-adapted/decayed weights and excluded biases + norm parameters.

    A parameter is excluded when it is 1-D (biases, BatchNorm/LayerNorm/GroupNorm scales and
    offsets) — the torch counterpart of the release's "name is b or the module is a norm" rule.
    """
    regular, excluded = [], []
    for module in modules:
        for p in module.parameters():
            if not p.requires_grad:
                continue
            (excluded if p.ndim <= 1 else regular).append(p)
    return [
        {"params": regular, "weight_decay": weight_decay, "lars": True},
        {"params": excluded, "weight_decay": 0.0, "lars": False},
    ]


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling with momentum, in the release's order of operations.

    Groups may set ``lars=False`` (and ``weight_decay=0``) to exclude biases and norm parameters.
    ``foreach=True`` runs the same arithmetic with multi-tensor (``torch._foreach_*``) kernels,
    a handful of launches per group instead of about ten per parameter (GPU launch overhead).
    """

    def __init__(
        self,
        params,
        lr: float,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        trust_coefficient: float = 1e-3,
        foreach: bool = False,
    ) -> None:
        if lr < 0:
            raise ValueError(f"LARS: lr={lr}; expected >= 0")
        if not 0 <= momentum < 1:
            raise ValueError(f"LARS: momentum={momentum}; expected 0 <= momentum < 1")
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            trust_coefficient=trust_coefficient,
            lars=True,
        )
        super().__init__(params, defaults)
        # An attribute, not a group option: it does not change results, so it is not saved in
        # (or restored from) the optimiser's state dict.
        self.foreach = foreach

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            wd, eta, mom, lr = (
                group["weight_decay"],
                group["trust_coefficient"],
                group["momentum"],
                group["lr"],
            )
            if self.foreach:
                self._foreach_group(group)
                continue
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if wd:
                    update = update.add(p, alpha=wd)
                if group["lars"]:
                    p_norm = torch.linalg.vector_norm(p)
                    u_norm = torch.linalg.vector_norm(update)
                    one = torch.ones_like(p_norm)
                    trust = torch.where(
                        (p_norm > 0) & (u_norm > 0), eta * p_norm / u_norm.clamp_min(1e-30), one
                    )
                    update = update * trust
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(mom).add_(update)
                p.add_(buf, alpha=-lr)
        return loss

    def _foreach_group(self, group: dict) -> None:
        """One group's update with multi-tensor kernels: the arithmetic of :meth:`step`."""
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        wd, eta, mom, lr = (
            group["weight_decay"],
            group["trust_coefficient"],
            group["momentum"],
            group["lr"],
        )
        grads = [p.grad for p in params]
        updates = torch._foreach_add(grads, params, alpha=wd) if wd else grads
        if group["lars"]:
            p_norm = torch.stack(torch._foreach_norm(params))
            u_norm = torch.stack(torch._foreach_norm(updates))
            trust = torch.where(
                (p_norm > 0) & (u_norm > 0),
                eta * p_norm / u_norm.clamp_min(1e-30),
                torch.ones_like(p_norm),
            )
            updates = torch._foreach_mul(updates, list(trust.unbind()))
        bufs = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            bufs.append(state["momentum_buffer"])
        torch._foreach_mul_(bufs, mom)
        torch._foreach_add_(bufs, updates)
        torch._foreach_add_(params, bufs, alpha=-lr)


def cosine_decay(step: int, max_steps: int, initial: float) -> float:
    """TF1's cosine decay as the release writes it: ``initial * (1 + cos(pi * s / max)) / 2``."""
    step = min(step, max_steps)
    if max_steps <= 0:
        return initial
    return initial * 0.5 * (1 + math.cos(math.pi * step / max_steps))


def learning_rate(step: int, *, scaled_lr: float, total_steps: int, warmup_steps: int) -> float:
    """Linear warmup to ``scaled_lr`` over ``warmup_steps``, then cosine decay to 0 at
    ``total_steps`` (release ``learning_schedule``)."""
    if warmup_steps > 0 and step < warmup_steps:
        return scaled_lr * step / warmup_steps
    return cosine_decay(step - warmup_steps, total_steps - warmup_steps, scaled_lr)


def target_ema(step: int, *, base_ema: float, total_steps: int) -> float:
    """BYOL's EMA schedule: ``tau = 1 - (1 - base) * (cos(pi * step / total) + 1) / 2``."""
    return 1.0 - (1.0 - base_ema) * cosine_decay(step, total_steps, 1.0)
