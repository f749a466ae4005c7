import pytest
import torch
import torchvision
from torchvision.models.resnet import BasicBlock, Bottleneck

from detcon.config import ModelConfig, load_pretrain_config
from detcon.losses import byol_loss, detcon_loss
from detcon.masks.features import mask_weights, pool_masks, sample_mask_ids
from detcon.models import (
    MLP,
    PretrainModel,
    SmallResNet,
    build_backbone,
    export_backbone,
    torchvision_resnet,
)


@pytest.mark.parametrize("name,channels", [("resnet18", 512), ("resnet50", 2048)])
def test_resnet_backbone_returns_the_stride_32_feature_map(name, channels):
    net = build_backbone(ModelConfig(backbone=name)).eval()
    assert (net.out_channels, net.stride) == (channels, 32)
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 224, 224)).shape == (1, channels, 7, 7)
    # zero_init_residual: last BN gamma of every block is 0 (docs/design.md §4.9)
    last_bns = [
        b.bn3 if hasattr(b, "bn3") else b.bn2
        for layer in (net.net.layer1, net.net.layer4)
        for b in layer
    ]
    assert all(float(bn.weight.detach().abs().sum()) == 0 for bn in last_bns)


def test_resnet200_is_the_bottleneck_3_24_36_3():
    net = build_backbone(ModelConfig(backbone="resnet200"))
    assert [len(getattr(net.net, f"layer{i}")) for i in range(1, 5)] == [3, 24, 36, 3]
    n_params = sum(p.numel() for p in net.parameters())
    assert 62e6 < n_params < 65e6  # ResNet-200 without fc: ~62.6M


@pytest.mark.parametrize("stem_stride", [1, 2])
@pytest.mark.parametrize("stride,grid", [(8, 8), (16, 4)])
def test_small_backbone_stride(stride, grid, stem_stride):
    cfg = ModelConfig(
        backbone="small", small_width=8, small_stride=stride, small_stem_stride=stem_stride
    )
    net = build_backbone(cfg)
    assert net(torch.zeros(2, 3, 64, 64)).shape == (2, 64, grid, grid)
    assert net.stem[0].stride == (stem_stride, stem_stride)


def test_small_backbone_rejects_a_stem_stride_it_cannot_build():
    with pytest.raises(ValueError, match="stem_stride=4; expected 1 or 2"):
        SmallResNet(8, 8, stem_stride=4)


@pytest.mark.parametrize("backbone", ["small", "resnet18"])
def test_weights_start_as_haiku_defaults(backbone):
    """Release networks are Haiku modules: conv/linear weights ~ normal(0, 1/sqrt(fan_in))
    truncated at 2 std (so their std is 0.88/sqrt(fan_in)), zero biases, BN scale 1 / offset 0
    except the zeroed last BN of each block."""
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=backbone, small_width=16)
    layers = [m for m in build_backbone(cfg).modules() if isinstance(m, torch.nn.Conv2d)]
    layers += [m for m in MLP(256, 512, 64) if isinstance(m, torch.nn.Linear)]
    checked = 0
    for m in layers:
        w = m.weight.detach()
        bound = 2 * w[0].numel() ** -0.5
        assert float(w.abs().max()) <= bound + 1e-7
        if m.bias is not None:
            assert float(m.bias.detach().abs().max()) == 0.0
        if w.numel() >= 4000:  # enough draws to pin the std to a few percent
            assert float(w.std()) / bound * 2 == pytest.approx(0.8796, rel=0.05)
            checked += 1
    assert checked >= 3
    net = build_backbone(cfg)
    blocks = [b for b in net.modules() if isinstance(b, (BasicBlock, Bottleneck))]
    last = {id(b.bn3 if isinstance(b, Bottleneck) else b.bn2) for b in blocks}
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(blocks) >= 4 and len(bns) > len(last)
    for bn in bns:
        assert float(bn.bias.detach().abs().max()) == 0.0
        assert bool((bn.weight.detach() == (0.0 if id(bn) in last else 1.0)).all())


def test_mlp_head_shapes_and_layout():
    head = MLP(16, 32, 8)
    assert head(torch.randn(4, 5, 16)).shape == (4, 5, 8)
    assert isinstance(head[1], torch.nn.BatchNorm1d) and head[3].bias is None


def test_exported_resnet_loads_into_plain_torchvision():
    cfg = load_pretrain_config(
        {"model": {"backbone": "resnet18", "head_hidden": 32, "head_out": 16}}, profile="cpu"
    )
    model = PretrainModel(cfg)
    state = export_backbone(model)
    plain = torchvision.models.resnet18(weights=None)
    missing, unexpected = plain.load_state_dict(state, strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected
    assert set(torchvision_resnet("resnet18").state_dict()) - set(state) == {"fc.weight", "fc.bias"}


def _cpu_model(method, source="fh", k=4, **model):
    cfg = load_pretrain_config(
        {
            "method": method,
            "masks": {"source": source, "num_samples": k},
            "model": {"small_width": 8, "head_hidden": 32, "head_out": 16, **model},
        },
        profile="cpu",
    )
    torch.manual_seed(0)
    return PretrainModel(cfg)


def test_target_is_independently_initialised_and_frozen():
    m = _cpu_model("detcon_b")
    on, tg = m.online.backbone.stem[0].weight, m.target.backbone.stem[0].weight
    assert not torch.equal(on, tg)
    assert not any(p.requires_grad for p in m.target.parameters())
    assert m.online.predictor is not None and m.target.predictor is None


def test_a_copied_target_starts_as_the_online_network_and_later_draws_stay_the_same():
    """model.target_init=copy: the target's backbone and projector (parameters and BN buffers)
    equal the online's; the online weights and the generator's state after building are those
    of the independent init, so nothing else a run draws moves."""
    independent = _cpu_model("detcon_b")
    after_independent = torch.rand(3)
    copied = _cpu_model("detcon_b", target_init="copy")
    assert torch.equal(torch.rand(3), after_independent)
    for name in ("backbone", "projector"):
        online = getattr(copied.online, name).state_dict()
        target = getattr(copied.target, name).state_dict()
        assert online.keys() == target.keys()
        for key in online:
            assert torch.equal(online[key], target[key]), key
            assert torch.equal(online[key], getattr(independent.online, name).state_dict()[key])
    stem = copied.target.backbone.stem[0].weight
    assert not torch.equal(stem, independent.target.backbone.stem[0].weight)
    assert not any(p.requires_grad for p in copied.target.parameters())
    stem.add_(1.0)  # a copy, not shared storage
    assert not torch.equal(stem, copied.online.backbone.stem[0].weight)


def test_ema_update_moves_target_towards_online():
    m = _cpu_model("detcon_b")
    on = m.online.projector[0].weight.detach().clone()
    tg = m.target.projector[0].weight.detach().clone()
    m.update_target(0.9)
    torch.testing.assert_close(m.target.projector[0].weight, 0.9 * tg + 0.1 * on)
    m.update_target(0.0)
    torch.testing.assert_close(m.target.projector[0].weight, m.online.projector[0].weight)


def _loss_from_the_parts(m, x, masks, uniforms):
    """The model's loss rebuilt from its networks and the pure functions, by the release's
    wiring: each view's online prediction against the other view's target (BYOL, DetCon-B: the
    EMA network's projection, no gradient; SimCLR, DetCon-S: the other view's own projection,
    with gradient), positives matched by the sampled mask ids of each view."""
    pred, targets, ids = [], [], []
    for x_v, m_v, u_v in zip(x, masks, uniforms):
        feats = m.online.backbone(x_v)
        w = mask_weights(m_v, tuple(feats.shape[-2:]))
        sel = sample_mask_ids(w, u_v)
        z = m.online.projector(pool_masks(feats, w, sel))
        pred.append(z if m.online.predictor is None else m.online.predictor(z))
        ids.append(sel)
        if m.target is not None:
            with torch.no_grad():
                targets.append(m.target.projector(pool_masks(m.target.backbone(x_v), w, sel)))
    if m.method == "byol":
        return byol_loss(pred1=pred[0], pred2=pred[1], target1=targets[0], target2=targets[1])
    t1, t2 = targets if m.target is not None else pred
    return detcon_loss(
        pred1=pred[0],
        pred2=pred[1],
        target1=t1,
        target2=t2,
        pred_ids1=ids[0],
        pred_ids2=ids[1],
        target_ids1=ids[0],
        target_ids2=ids[1],
        temperature=m.loss_cfg.temperature,
        same_image_negatives=m.loss_cfg.same_image_negatives,
        negative_groups=m.loss_cfg.negative_groups,
    )


@pytest.mark.parametrize(
    "method,source,k",
    [("detcon_b", "fh", 4), ("detcon_s", "fh", 4), ("byol", "image", 1), ("simclr", "image", 1)],
)
def test_the_model_wires_its_networks_to_the_loss_as_the_release(method, source, k):
    # A review's mutations of the forward pass (the two views' target ids swapped, DetCon-B
    # without its predictor, the online backbone as the target's, SimCLR/DetCon-S targets
    # detached, BYOL regressing each view on its own target) all left every test green.
    m = _cpu_model(method, source, k)
    m.dedup_heads = False  # the heads on every sampled mask, as the release (no row sharing)
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(4, 3, 32, 32, generator=g) for _ in range(2)]
    masks = [torch.randint(0, 3, (4, 32, 32), generator=g) for _ in range(2)]
    if source == "image":
        masks = [torch.zeros_like(mk) for mk in masks]
    uniforms = [torch.rand(4, k, generator=g) for _ in range(2)]
    params = list(m.online.parameters())
    loss = m(x, masks, uniforms)["loss"]
    expected = _loss_from_the_parts(m, x, masks, uniforms)
    torch.testing.assert_close(loss, expected)
    got = torch.autograd.grad(loss, params, allow_unused=True)
    want = torch.autograd.grad(expected, params, allow_unused=True)
    assert sum(gr is not None for gr in got) == sum(gr is not None for gr in want) > 0
    for a, b in zip(got, want):
        if a is not None or b is not None:
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "method,source,k",
    [("detcon_b", "fh", 4), ("detcon_s", "fh", 4), ("byol", "image", 1), ("simclr", "image", 1)],
)
def test_every_method_gives_a_finite_loss_and_gradient(method, source, k):
    m = _cpu_model(method, source, k)
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(4, 3, 32, 32, generator=g) for _ in range(2)]
    masks = [torch.randint(0, 3, (4, 32, 32), generator=g) for _ in range(2)]
    if source == "image":
        masks = [torch.zeros_like(mk) for mk in masks]
    out = m(x, masks, [torch.rand(4, k, generator=g) for _ in range(2)])
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    grads = [p.grad for p in m.online.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(gr).all() for gr in grads)
    if m.target is not None:
        assert all(p.grad is None for p in m.target.parameters())
