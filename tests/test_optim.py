import math

import pytest
import torch
from torch import nn

from detcon.optim import LARS, learning_rate, param_groups, target_ema


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2, bias=False))


def test_param_groups_exclude_biases_and_norms():
    m = _model()
    regular, excluded = param_groups([m], weight_decay=0.1)
    assert {id(p) for p in regular["params"]} == {id(m[0].weight), id(m[2].weight)}
    assert {id(p) for p in excluded["params"]} == {id(m[0].bias), id(m[1].weight), id(m[1].bias)}
    assert excluded["weight_decay"] == 0 and excluded["lars"] is False


def test_lars_step_matches_the_release_formula():
    torch.manual_seed(1)
    w = nn.Parameter(torch.randn(3, 4))
    b = nn.Parameter(torch.randn(3))
    w.grad, b.grad = torch.randn(3, 4), torch.randn(3)
    w0, b0, gw, gb = w.detach().clone(), b.detach().clone(), w.grad.clone(), b.grad.clone()
    opt = LARS(
        [
            {"params": [w], "weight_decay": 0.01, "lars": True},
            {"params": [b], "weight_decay": 0.0, "lars": False},
        ],
        lr=0.5,
        momentum=0.9,
        trust_coefficient=1e-3,
    )
    opt.step()
    u = gw + 0.01 * w0
    u = u * (1e-3 * w0.norm() / u.norm())
    torch.testing.assert_close(w.detach(), w0 - 0.5 * u)
    torch.testing.assert_close(b.detach(), b0 - 0.5 * gb)  # no decay, no trust ratio
    # second step: momentum accumulates the adapted update
    w.grad = gw.clone()
    opt.step()
    w1 = w0 - 0.5 * u
    u2 = gw + 0.01 * w1
    u2 = u2 * (1e-3 * w1.norm() / u2.norm())
    torch.testing.assert_close(w.detach(), w1 - 0.5 * (0.9 * u + u2))


def test_lars_zero_norm_falls_back_to_plain_update():
    w = nn.Parameter(torch.zeros(2, 2))
    w.grad = torch.ones(2, 2)
    LARS([w], lr=1.0, momentum=0.0).step()
    torch.testing.assert_close(w.detach(), -torch.ones(2, 2))


def test_learning_rate_schedule_values():
    kw = dict(scaled_lr=3.2, total_steps=1000, warmup_steps=100)
    assert learning_rate(0, **kw) == 0.0
    assert learning_rate(50, **kw) == pytest.approx(1.6)
    assert learning_rate(100, **kw) == pytest.approx(3.2)
    assert learning_rate(550, **kw) == pytest.approx(1.6)
    assert learning_rate(1000, **kw) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate(0, scaled_lr=1.0, total_steps=10, warmup_steps=0) == 1.0


def test_ema_schedule_values():
    assert target_ema(0, base_ema=0.996, total_steps=100) == pytest.approx(0.996)
    assert target_ema(50, base_ema=0.996, total_steps=100) == pytest.approx(0.998)
    assert target_ema(100, base_ema=0.996, total_steps=100) == pytest.approx(1.0)
    mid = 1 - 0.004 * (math.cos(math.pi * 0.25) + 1) / 2
    assert target_ema(25, base_ema=0.996, total_steps=100) == pytest.approx(mid)
