"""The speed switches of the training step (SpeedOptions) keep its results: foreach LARS and EMA,
heads run on the distinct sampled masks only."""

import copy

import torch
from torch import nn

from detcon.config import load_pretrain_config
from detcon.models import MLP, PretrainModel, repeated_rows
from detcon.optim import LARS, param_groups


def test_foreach_lars_equals_the_per_parameter_loop():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(288, 5))
    twin = copy.deepcopy(net)
    plain = LARS(param_groups([net], 1e-4), lr=0.3)
    multi = LARS(param_groups([twin], 1e-4), lr=0.3, foreach=True)
    for _ in range(3):
        x = torch.randn(4, 3, 8, 8)
        for model, opt in ((net, plain), (twin, multi)):
            opt.zero_grad()
            model(x).pow(2).sum().backward()
            opt.step()
    for a, b in zip(net.state_dict().values(), twin.state_dict().values()):
        assert torch.equal(a, b)
    assert "foreach" not in multi.state_dict()["param_groups"][0]  # not saved in checkpoints


def test_foreach_ema_equals_the_loop():
    cfg = load_pretrain_config(
        {"model": {"small_width": 4, "head_hidden": 16, "head_out": 8}}, profile="cpu"
    )
    a = PretrainModel(cfg)
    with torch.no_grad():  # online != target, so the update moves something
        for q in a.online.parameters():
            q.add_(torch.randn_like(q))
    b = copy.deepcopy(a)
    before = copy.deepcopy(a.target.state_dict())
    a.update_target(0.9)
    b.update_target(0.9, foreach=True)
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(x, y)
    assert not all(
        torch.equal(x, y) for x, y in zip(before.values(), b.target.state_dict().values())
    )


def test_heads_on_distinct_rows_equal_the_plain_heads():
    torch.manual_seed(0)
    ids = torch.randint(0, 3, (4, 8))
    rows = repeated_rows(ids, 3)
    assert rows is not None and len(rows.first) < ids.numel()
    src1 = torch.randn(4, 3, 16, requires_grad=True)  # one vector per (image, mask id)
    src2 = src1.detach().clone().requires_grad_()
    pick = torch.arange(4)[:, None], ids  # sampled rows repeat with their ids
    head = MLP(16, 32, 8)
    twin = copy.deepcopy(head)
    out, ref = head(src1[pick], rows), twin(src2[pick])
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(src1.grad, src2.grad)
    for p, q in zip(head.parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    torch.testing.assert_close(head[1].running_var, twin[1].running_var)
    assert repeated_rows(torch.arange(6).view(2, 3), 6) is None  # nothing repeats
