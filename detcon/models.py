"""Backbones, MLP heads, cross-process BatchNorm and the one pretraining model.

DetCon-B, DetCon-S, BYOL and SimCLR are configurations of :class:`PretrainModel` (docs/design.md
§4.5, §4.9, §4.11): the image-level baselines are the special case of one whole-image mask per view.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from detcon.config import ModelConfig, PretrainConfig
from detcon.losses import byol_loss, detcon_loss
from detcon.masks.features import mask_weights, pool_masks, present_masks, sample_mask_ids

__all__ = [
    "MLP",
    "Backbone",
    "PretrainModel",
    "RepeatedRows",
    "SmallResNet",
    "build_backbone",
    "convert_sync_batchnorm",
    "export_backbone",
    "first_non_finite",
    "haiku_init_",
    "repeated_rows",
    "set_bn_momentum",
]

# ResNet depths: torchvision's constructors for 18-152; ResNet-200 is the bottleneck [3, 24, 36, 3]
# of He et al. 2016 ("Identity mappings"), built from torchvision's ResNet class.
_RESNET_LAYERS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
    "resnet152": (Bottleneck, [3, 8, 36, 3]),
    "resnet200": (Bottleneck, [3, 24, 36, 3]),
}


class Backbone(nn.Module):
    """A ResNet trunk returning its final feature map (B, C, H/stride, W/stride).

    Wraps a torchvision :class:`ResNet` (v1.5: stride on the 3x3 conv) without its pooling and
    classifier, so ``net.state_dict()`` loads into a plain torchvision ResNet (``strict=False`` for
    the missing ``fc``).
    """

    def __init__(self, net: ResNet, out_channels: int, stride: int) -> None:
        super().__init__()
        net.fc = nn.Identity()
        self.net = net
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))


class SmallResNet(nn.Module):
    """A narrow ResNet of the same family for the cpu profile (BasicBlocks, one per stage).

    Widths w, 2w, 4w, 8w; a stride-2 3x3 stem without max-pool, stages at strides 1, 2, 2 and
    1 (output stride 8) or 2 (output stride 16), so a 64 px crop gives an 8x8 feature grid as a
    224 px crop gives ResNet-50 a 7x7 one. Zero-initialised last BN gamma as ``zero_init_residual``.
    ``stem_stride=1`` keeps the stem and the first stage at full resolution (about twice the
    convolution of stride 2) and moves the stride to the later stages: 1, 2, 2, 2 (output stride
    8) or 2, 2, 2, 2 (16).
    """

    def __init__(self, width: int = 32, stride: int = 8, stem_stride: int = 2) -> None:
        super().__init__()
        if stride not in (8, 16):
            raise ValueError(f"SmallResNet: stride={stride}; expected 8 or 16")
        if stem_stride not in (1, 2):
            raise ValueError(f"SmallResNet: stem_stride={stem_stride}; expected 1 or 2")
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=stem_stride, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        strides = [1, 2, 2, 1 if stride == 8 else 2]
        if stem_stride == 1:
            strides = [1 if stride == 8 else 2, 2, 2, 2]
        widths = [width, 2 * width, 4 * width, 8 * width]
        layers, cin = [], width
        for cout, s in zip(widths, strides):
            down = None
            if s != 1 or cin != cout:
                down = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride=s, bias=False), nn.BatchNorm2d(cout)
                )
            layers.append(BasicBlock(cin, cout, stride=s, downsample=down))
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.out_channels = widths[-1]
        self.stride = stride
        haiku_init_(self)
        for block in self.layers:
            nn.init.zeros_(block.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(self.stem(x))


def haiku_init_(module: nn.Module) -> nn.Module:
    """Initialise every conv and linear layer of ``module`` as Haiku's defaults, in place.

    The release builds its networks with Haiku (``utils/networks.py``), whose ``Conv2D`` and
    ``Linear`` draw weights from a normal with std ``1/sqrt(fan_in)`` truncated at two standard
    deviations, and start biases at zero; BatchNorm starts at scale 1, offset 0 (as torch). It
    replaces torchvision's kaiming fan-out convs and torch's uniform Linear weights and biases.
    BatchNorm scales that callers zero (the last of each residual block) are left alone.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            std = m.weight[0].numel() ** -0.5  # fan_in = in_channels * kernel area
            nn.init.trunc_normal_(m.weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def build_backbone(cfg: ModelConfig) -> nn.Module:
    """The configured encoder; it has ``out_channels`` and ``stride`` attributes."""
    if cfg.backbone == "small":
        net: nn.Module = SmallResNet(cfg.small_width, cfg.small_stride, cfg.small_stem_stride)
    else:
        block, layers = _RESNET_LAYERS[cfg.backbone]
        # zero_init_residual: the last BN gamma of each block starts at 0 (docs/design.md §4.9).
        resnet = haiku_init_(ResNet(block, layers, zero_init_residual=True))
        net = Backbone(resnet, 512 * block.expansion, 32)
    return set_bn_momentum(net, cfg.bn_momentum)


def set_bn_momentum(net: nn.Module, momentum: float) -> nn.Module:
    """Every BatchNorm of ``net`` uses ``momentum`` (torch convention; ``model.bn_momentum``)."""
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum
    return net


class RepeatedRows(NamedTuple):
    """Which of N rows repeat an earlier one: row ``r`` equals distinct row ``inverse[r]``, and
    distinct row ``u`` is first found at row ``first[u]``.

    DetCon samples K mask ids per image *with replacement*, so the B*K pooled vectors repeat
    (at the cpu profile's sizes ~6 distinct of K=16): the heads' matrix products only need the
    distinct rows (see :meth:`MLP.forward`).
    """

    first: Tensor  # (U,) int64
    inverse: Tensor  # (N,) int64


def repeated_rows(ids: Tensor, num_ids: int) -> RepeatedRows | None:
    """The repeats among the B*K sampled ``ids`` (B, K) of ids in [0, num_ids), row-major;
    None when no id repeats within an image (nothing to save)."""
    b, k = ids.shape
    if k == 1:
        return None
    key = (torch.arange(b, device=ids.device)[:, None] * num_ids + ids).reshape(-1)
    uniq, inverse = torch.unique(key, return_inverse=True)
    if uniq.numel() == key.numel():
        return None
    positions = torch.arange(key.numel(), device=ids.device)
    first = torch.full_like(uniq, key.numel()).scatter_reduce_(0, inverse, positions, "amin")
    return RepeatedRows(first=first, inverse=inverse)


class MLP(nn.Sequential):
    """Projector / predictor: Linear(hidden) -> BatchNorm -> ReLU -> Linear(out, no bias).

    Paper §3.2 / BYOL: "a multi-layer perceptron with a hidden layer of 4096 units ... batch
    normalization ... rectified linear units, and a linear output layer of 256 units". Applied to
    every pooled mask vector: BN statistics are over all B*K vectors.
    """

    def __init__(self, in_dim: int, hidden: int, out: int) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, out, bias=False),
        )
        haiku_init_(self)

    def forward(self, x: Tensor, rows: RepeatedRows | None = None) -> Tensor:
        """(..., in) -> (..., out), row by row except for the BN statistics over all rows.

        With ``rows`` (the repeats among the flattened rows of ``x``, which must be equal rows,
        e.g. one pooled mask sampled twice) the two Linear layers run on the distinct rows only
        and their outputs are expanded back: the BatchNorm still sees every row (the same
        statistics, running averages and cross-process synchronisation). Outputs and parameter
        gradients are those of the plain computation up to float rounding; the gradient of a
        repeated row lands whole on its first copy (the others get 0), which is the same
        gradient for whatever the copies were computed from.
        """
        lead = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        if rows is None:
            return super().forward(flat).reshape(*lead, -1)
        linear1, norm, relu, linear2 = self
        h = linear1(flat.index_select(0, rows.first)).index_select(0, rows.inverse)
        y = relu(norm(h).index_select(0, rows.first))
        return linear2(y).index_select(0, rows.inverse).reshape(*lead, -1)


class _CrossProcessBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics span every process (torch's SyncBatchNorm is GPU-only).

    Sums and squared sums are all-reduced with a differentiable collective, so gradients match one
    process holding the whole batch. Outside an initialised process group it is plain BatchNorm.
    """

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: Tensor) -> Tensor:
        dist = torch.distributed
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        count = torch.full((1,), x.numel() / c, dtype=x.dtype, device=x.device)
        stats = all_reduce(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp_min(1), alpha=m)
                self.num_batches_tracked.add_(1)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Make every BatchNorm synchronise its statistics across processes (docs/design.md §4.5).

    On CUDA torch's SyncBatchNorm is used; on CPU (gloo) our all-reduce BatchNorm.
    """
    if any(p.is_cuda for p in module.parameters()):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_cross_process_bn(module)


def _to_cross_process_bn(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            new = _CrossProcessBatchNorm(
                child.num_features,
                child.eps,
                child.momentum,
                child.affine,
                child.track_running_stats,
            )
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            setattr(module, name, new)
        else:
            _to_cross_process_bn(child)
    return module


class _Branch(nn.Module):
    """Encoder + projector (+ predictor on the online side)."""

    def __init__(self, cfg: ModelConfig, predictor: bool) -> None:
        super().__init__()
        self.backbone = build_backbone(cfg)
        self.projector = MLP(self.backbone.out_channels, cfg.head_hidden, cfg.head_out)
        self.predictor = MLP(cfg.head_out, cfg.head_hidden, cfg.head_out) if predictor else None


def _featurewise_std(x: Tensor) -> Tensor:
    """Mean over features of the std over all vectors, mask slots pooled (the release's
    ``featurewise_std`` takes it per slot; docs/deviations.md L16).

    Two-pass (mean, then mean squared deviation): the same value as ``std(dim=0,
    unbiased=False)`` up to rounding, without torch's slow strided Welford reduction on CPU.
    """
    x = x.reshape(-1, x.shape[-1])
    return (x - x.mean(dim=0)).pow(2).mean(dim=0).sqrt().mean()


class PretrainModel(nn.Module):
    """One model for the four methods.

    - ``detcon_b``: online backbone+projector+predictor; target = EMA of backbone+projector,
      initialised independently (release ``_make_initial_state``; ``model.target_init=copy``
      starts it as the online's copy), no gradient, train-mode BN;
      contrastive detection loss.
    - ``detcon_s``: one backbone+projector; the loss with ``target = pred`` (SimCLR-style).
    - ``byol``: as detcon_b with one whole-image mask and BYOL's regression loss.
    - ``simclr``: as detcon_s with one whole-image mask (then the loss is NT-Xent).
    """

    def __init__(self, cfg: PretrainConfig) -> None:
        super().__init__()
        self.method = cfg.method
        self.loss_cfg = cfg.loss
        self.uses_target = cfg.method in ("detcon_b", "byol")
        self.online = _Branch(cfg.model, predictor=self.uses_target)
        # Built after the online branch, so it draws different initial weights; built (and the
        # generator advanced) with target_init "copy" too, so later draws are the same.
        self.target = _Branch(cfg.model, predictor=False) if self.uses_target else None
        if self.target is not None:
            if cfg.model.target_init == "copy":
                for name in ("backbone", "projector"):
                    getattr(self.target, name).load_state_dict(
                        getattr(self.online, name).state_dict()
                    )
            self.target.requires_grad_(False)
        # Heads compute each distinct sampled mask once (same results up to float rounding);
        # a speed switch, not a config field.
        self.dedup_heads = True

    def online_modules(self) -> list[nn.Module]:
        return [self.online]

    @torch.no_grad()
    def update_target(self, tau: float, *, foreach: bool = False) -> None:
        """target <- tau * target + (1 - tau) * online, parameters only (release ``_update_fn``);
        the target's BN running statistics are its own.

        ``foreach=True`` does it with one multi-tensor lerp (a few kernel launches instead of one
        per parameter on GPU); the arithmetic is the same.
        """
        if self.target is None:
            return
        online = dict(self.online.named_parameters())
        pairs = [(p, online[name].detach()) for name, p in self.target.named_parameters()]
        if foreach:
            torch._foreach_lerp_([t for t, _ in pairs], [o for _, o in pairs], 1.0 - tau)
            return
        for t, o in pairs:
            t.lerp_(o, 1.0 - tau)

    def compile_networks(self, heads: bool = False, **options) -> None:
        """``torch.compile`` the backbones (and with ``heads`` the projectors and predictor) in
        place (``nn.Module.compile``: parameter names and checkpoints stay the same).

        The mask handling and the loss stay eager: their data-dependent shapes and host checks
        would only break the graphs. The heads are left eager by default: a few matrix products
        with little to fuse, whose row count varies per step (distinct sampled masks), which
        would cost recompilations. ``options`` go to ``torch.compile`` (e.g. ``mode``).
        """
        for branch in (self.online, self.target):
            if branch is None:
                continue
            nets = [branch.backbone] + ([branch.projector, branch.predictor] if heads else [])
            for net in nets:
                if net is not None:
                    net.compile(**options)

    def forward(
        self, images: list[Tensor], masks: list[Tensor], uniforms: list[Tensor]
    ) -> dict[str, Tensor]:
        """Loss and monitors for one batch of two views.

        Args:
            images: two (B, 3, S, S) normalised views.
            masks: two mask batches on the views' pixels: int id maps (B, S, S) or bool stacks
                (B, M, S, S).
            uniforms: two (B, K) uniforms in [0, 1) that pick the K mask ids of each view.
        """
        proj, pred, ids, targets, present = [], [], [], [], []
        for x, m, u in zip(images, masks, uniforms):
            feats = self.online.backbone(x)
            w = mask_weights(m, tuple(feats.shape[-2:]))
            sel = sample_mask_ids(w, u)
            rows = repeated_rows(sel, w.shape[1]) if self.dedup_heads else None
            z = self.online.projector(pool_masks(feats, w, sel), rows)  # (B, K, D)
            proj.append(z)
            predictor = self.online.predictor
            pred.append(predictor(z, rows) if predictor is not None else z)
            ids.append(sel)
            present.append(present_masks(w).sum(-1).float().mean())
            if self.target is not None:
                with torch.no_grad():
                    tf = self.target.backbone(x)
                    targets.append(self.target.projector(pool_masks(tf, w, sel), rows).detach())
        if self.method in ("detcon_b", "detcon_s", "simclr"):
            t1, t2 = targets if self.target is not None else pred
            loss = detcon_loss(
                pred1=pred[0],
                pred2=pred[1],
                target1=t1,
                target2=t2,
                pred_ids1=ids[0],
                pred_ids2=ids[1],
                target_ids1=ids[0],
                target_ids2=ids[1],
                temperature=self.loss_cfg.temperature,
                same_image_negatives=self.loss_cfg.same_image_negatives,
                negative_groups=self.loss_cfg.negative_groups,
            )
        else:  # byol
            loss = byol_loss(pred1=pred[0], pred2=pred[1], target1=targets[0], target2=targets[1])
        with torch.no_grad():
            norm_std = _featurewise_std(F.normalize(proj[0].float(), dim=-1))
        return {
            "loss": loss,
            "normalized_proj_std": norm_std,
            "masks_present": (present[0] + present[1]) / 2,
        }


def export_backbone(model: PretrainModel) -> dict[str, Tensor]:
    """The online encoder's weights. For ResNets the keys are those of a plain torchvision ResNet
    (load with ``strict=False``: no ``fc``); for the small backbone, its own keys."""
    backbone = model.online.backbone
    state = backbone.net.state_dict() if isinstance(backbone, Backbone) else backbone.state_dict()
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def torchvision_resnet(name: str) -> nn.Module:
    """A plain torchvision ResNet of the given depth (for loading exported weights)."""
    block, layers = _RESNET_LAYERS[name]
    return ResNet(block, layers)


def first_non_finite(tensors: Mapping[str, Any]) -> str | None:
    """The name of the first floating-point tensor of ``tensors`` (nested mappings and lists, as
    an optimiser's state dict holds them, are searched) with a NaN or infinite value, or None."""
    for name, value in tensors.items():
        if isinstance(value, Mapping):
            found = first_non_finite(value)
        elif isinstance(value, (list, tuple)):
            found = first_non_finite({str(i): v for i, v in enumerate(value)})
        elif isinstance(value, torch.Tensor) and value.is_floating_point():
            found = None if bool(torch.isfinite(value).all()) else ""
        else:
            found = None
        if found is not None:
            return f"{name}.{found}" if found else str(name)
    return None
