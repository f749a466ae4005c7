"""Losses as pure, keyword-only functions.

``detcon_loss`` is the contrastive detection objective of Hénaff et al. 2021 (§3.1, Eq. 3), with the
exact semantics of the official release's ``byol_nce_detcon`` (google-deepmind/detcon,
``utils/losses.py``) when ``negative_groups=1``; docs/design.md §4.6 restates it. ``byol_loss``
is BYOL's normalised regression loss (Grill et al. 2020, Eq. 2) symmetrised over the two views.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["byol_loss", "detcon_loss", "gather_along_batch"]

# The release subtracts this from logits it removes from the softmax (``infinity_proxy``).
_INFINITY_PROXY = 1e9


def gather_along_batch(x: Tensor) -> tuple[Tensor, int]:
    """All-gather ``x`` (B, ...) from every rank along dim 0, keeping gradients.

    Returns the gathered tensor and this rank's offset in it. Without an initialised process
    group (or with one rank) it returns ``x`` and 0. The gather is differentiable (its backward
    sums each rank's gradient back to the owner), so DetCon-S, whose targets are its own
    projections, gets the same gradient as one process holding the whole batch.
    """
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    return _AllGather.apply(x.contiguous()), dist.get_rank() * x.shape[0]


class _AllGather(torch.autograd.Function):
    """Concatenate every rank's (B, ...) tensor; backward sums the gathered gradient over ranks
    and returns this rank's slice (the transpose of a gather)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D102
        dist = torch.distributed
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        ctx.rank, ctx.batch = dist.get_rank(), x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        grad = grad.contiguous()
        torch.distributed.all_reduce(grad)
        return grad[ctx.rank * ctx.batch : (ctx.rank + 1) * ctx.batch]


def _check_inputs(
    pred1, pred2, target1, target2, pred_ids1, pred_ids2, target_ids1, target_ids2
) -> None:
    named = {"pred1": pred1, "pred2": pred2, "target1": target1, "target2": target2}
    shape = pred1.shape
    for name, t in named.items():
        if t.dim() != 3 or t.shape != shape:
            raise ValueError(
                f"detcon_loss: {name} has shape {tuple(t.shape)}; expected "
                f"(B, K, D) equal to pred1's {tuple(shape)}"
            )
        if not t.is_floating_point():
            raise ValueError(f"detcon_loss: {name} has dtype {t.dtype}; expected a float tensor")
    ids = {
        "pred_ids1": pred_ids1,
        "pred_ids2": pred_ids2,
        "target_ids1": target_ids1,
        "target_ids2": target_ids2,
    }
    for name, t in ids.items():
        if tuple(t.shape) != tuple(shape[:2]):
            raise ValueError(
                f"detcon_loss: {name} has shape {tuple(t.shape)}; expected (B, K) = "
                f"{tuple(shape[:2])}"
            )
        if t.is_floating_point():
            raise ValueError(f"detcon_loss: {name} has dtype {t.dtype}; expected integer mask ids")


class _OwnMaskedLogSumExp(torch.autograd.Function):
    """Row-wise logsumexp of ``queries @ cands^T``, own-image entries penalised first.

    The logits of both views' queries against both views' candidates are one batched matmul,
    (G, nq*2*K, D) @ (G, D, nc*2*K); ``penalty`` is subtracted in place on a strided view of the
    own-image blocks (the release's ``- infinity_proxy`` removal); the exponentials are formed in
    place and kept, so the backward is only matmuls. The autograd graph this replaces (division
    by the temperature, an index_put, ``logsumexp``) read, wrote and in backward re-created the
    full logits matrix several times; those passes, not the matmul, were most of the loss's time.
    The value is ``torch.logsumexp``'s max-shifted formula on the same logits (the temperature is
    applied to the queries instead), so only float rounding changes.
    """

    @staticmethod
    def forward(ctx, queries: Tensor, cands: Tensor, penalty: Tensor, offset: int) -> Tensor:  # noqa: D102
        # queries (G, nq, 2, K, D); cands (G, nc, 2, K, D); penalty (G, 2, K, 2, K, nq) for
        # query image i against candidate image i + offset, in the diagonal view's order.
        g, nq, _, k, d = queries.shape
        nc = cands.shape[1]
        q_flat, c_flat = queries.reshape(g, nq * 2 * k, d), cands.reshape(g, nc * 2 * k, d)
        logits = torch.bmm(q_flat, c_flat.transpose(1, 2))  # (G, nq*2*K, nc*2*K)
        own = logits.view(g, nq, 2, k, nc, 2, k).diagonal(offset, dim1=1, dim2=4)
        own.sub_(penalty)
        row_max = logits.amax(-1, keepdim=True)
        exp = logits.sub_(row_max).exp_()  # in place: the matmul's output is ours alone
        total = exp.sum(-1, keepdim=True)
        ctx.save_for_backward(q_flat, c_flat, exp, total)
        ctx.shapes = (queries.shape, cands.shape)
        return (total.log() + row_max).view(g, nq, 2, k)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:  # noqa: D102
        if torch.is_grad_enabled():  # create_graph=True: the saved exp/total have no graph
            raise RuntimeError(
                "detcon_loss has no second derivative (its backward reuses the forward's "
                "softmax terms); call backward/autograd.grad without create_graph=True"
            )
        q_flat, c_flat, exp, total = ctx.saved_tensors
        q_shape, c_shape = ctx.shapes
        grad_q = grad_c = None
        # Full precision even when backward() is called under autocast, as in forward.
        with torch.autocast(device_type=grad.device.type, enabled=False):
            # d logsumexp / d logits is the softmax, exp / total (0 where penalised). The per-row
            # factor grad / total is applied to the small operands, never to the (rows, cols)
            # matrix: no full-size pass or buffer, and ``exp`` stays intact for another backward.
            scale = grad.reshape(total.shape) / total  # (G, rows, 1)
            if ctx.needs_input_grad[0]:
                grad_q = (torch.bmm(exp, c_flat) * scale).view(q_shape)
            if ctx.needs_input_grad[1]:
                grad_c = torch.bmm(exp.transpose(1, 2), q_flat * scale).view(c_shape)
        return grad_q, grad_c, None, None


def _slot_losses(
    queries: Tensor,
    cands: Tensor,
    q_ids: Tensor,
    own_ids: Tensor,
    offset: int,
    same_image_negatives: bool,
) -> Tensor:
    """Weighted cross-entropy of every query slot of both views; returns (G, nq, 2, K).

    Tensors are laid out images first, then views: the stacked inputs' own order, so no copies.

    Args:
        queries: (G, nq, 2, K, D) normalised predictions of views 1 and 2 over the temperature.
        cands: (G, nc, 2, K, D) normalised targets of views 1 and 2, the candidates.
        q_ids: (G, nq, 2, K) ids of the queries.
        own_ids: (G, nq, 2, K) ids of the targets of each query's own image.
        offset: query image i's own image is candidate image i + offset.
        same_image_negatives: see ``detcon_loss``.
    """
    # Query slot (i, v, k) against own-image target slot (i, w, l): ids equal, per view pair.
    same_same = q_ids.unsqueeze(-1) == own_ids.unsqueeze(-2)  # w = v; (G, nq, 2, K, K)
    same_other = q_ids.unsqueeze(-1) == own_ids.flip(2).unsqueeze(-2)  # w = the other view
    # Own-image candidates leave the softmax where the release removes them: same view and same
    # id always; every other id too without same-image negatives. Layout (G, nq, 2, K, 2, K).
    same_view = torch.eye(2, dtype=torch.bool, device=q_ids.device)[:, None, :, None]
    if same_image_negatives:
        removed = same_view & same_same.unsqueeze(-2)
    else:
        removed = same_view | ~same_other.unsqueeze(-2)
    # Into the own-image diagonal view's order, (G, 2, K, 2, K, nq).
    penalty = removed.permute(0, 2, 3, 4, 5, 1).to(queries.dtype) * _INFINITY_PROXY
    log_z = _OwnMaskedLogSumExp.apply(queries, cands, penalty, offset)  # (G, nq, 2, K)

    # Positives: own image, other view, same id. With labels divided by their number the CE
    # is log Z - mean(positive logits); those logits come from a small K x K matmul per image.
    own_other = cands.narrow(1, offset, queries.shape[1]).flip(2)  # (G, nq, 2, K, D)
    own_logits = queries @ own_other.transpose(-1, -2)  # (G, nq, 2, K, K)
    positives = same_other.to(queries.dtype)
    num_pos = positives.sum(-1)  # (G, nq, 2, K)
    ce = log_z - (positives * own_logits).sum(-1) / num_pos.clamp_min(1.0)
    area = (q_ids.unsqueeze(-1) == q_ids.unsqueeze(-2)).sum(-1).to(queries.dtype)
    weight = (num_pos > 0).to(queries.dtype) / area
    return weight * ce


def detcon_loss(
    *,
    pred1: Tensor,
    pred2: Tensor,
    target1: Tensor,
    target2: Tensor,
    pred_ids1: Tensor,
    pred_ids2: Tensor,
    target_ids1: Tensor,
    target_ids2: Tensor,
    temperature: float = 0.1,
    same_image_negatives: bool = True,
    negative_groups: int = 1,
    gather_targets: bool = True,
) -> Tensor:
    """Contrastive detection loss (paper Eq. 3; release ``byol_nce_detcon``).

    Args:
        pred1, pred2: (B, K, D) float, online predictions of the K sampled masks of views 1 and 2
            (any scale: L2-normalised here).
        target1, target2: (B, K, D) float, target projections of the same masks. DetCon-B passes
            the EMA network's projections (detached); DetCon-S passes ``target = pred``.
        pred_ids1, pred_ids2, target_ids1, target_ids2: (B, K) integer mask ids of each slot.
        temperature: softmax temperature (paper: 0.1).
        same_image_negatives: other masks of the query's own image are negatives (release
            ``local_negatives=True``); False removes them from the softmax too.
        negative_groups: G; the global batch is split into G contiguous groups of equal size and
            a query only sees candidates from its own group (the "negatives ÷128" ablation).
        gather_targets: under ``torch.distributed``, gather the targets of every rank as
            candidates (release ``use_replicator_loss``); only targets are gathered.

    Returns:
        Scalar loss: for each view, the weighted cross-entropy averaged over all B*K slots (slots
        with no positive count with weight 0), summed over the two directions.

    For a query (image i, slot k, view a) the candidates are the other view's targets of every
    image and slot, then view a's targets of every image and slot (2*N*K candidates for N
    candidate images). Positives: image i, same id, other view; labels are divided by their
    number. View a's own-image same-id targets are removed from the softmax. Each slot is weighted
    1 / (number of slots of its view with its id) if it has a positive, else 0.
    """
    _check_inputs(pred1, pred2, target1, target2, pred_ids1, pred_ids2, target_ids1, target_ids2)
    b, k, _ = pred1.shape
    if negative_groups < 1:
        raise ValueError(f"detcon_loss: negative_groups={negative_groups}; expected >= 1")

    # The loss runs in at least float32, even under autocast: in half precision the release's
    # 1e9 removal overflows to -inf (0 * -inf = NaN). One dtype for all four inputs.
    floats = (pred1, pred2, target1, target2)
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in floats), torch.float32)

    def norm(x1: Tensor, x2: Tensor) -> Tensor:
        """Both views stacked on dim 1, (B, 2, K, D), each vector L2-normalised.

        The squared norm is clamped at 1e-12 as the release's l2_normalize does. Stacking first
        halves the number of small ops, which set the time at the cpu profile's B=32.
        """
        x = torch.stack([x1, x2], dim=1).to(dtype)
        return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True).clamp_min(1e-12))

    with torch.autocast(device_type=pred1.device.type, enabled=False):
        preds, targets = norm(pred1, pred2), norm(target1, target2)
        all_targets, offset = gather_along_batch(targets) if gather_targets else (targets, 0)
        n = all_targets.shape[0]
        if n % negative_groups:
            raise ValueError(
                f"detcon_loss: negative_groups={negative_groups} must divide the global batch {n}"
            )
        size = n // negative_groups  # images per group

        if size >= b:
            # The local batch lies inside one group (always true for G=1).
            if size % b and negative_groups > 1:
                raise ValueError(
                    f"detcon_loss: group size {size} is not a multiple of the local "
                    f"batch {b}; expected the local batch to tile the groups"
                )
            start = (offset // size) * size
            cands = all_targets[start : start + size][None]  # (1, nc, 2, K, D)
            own_offset, shape = offset - start, (1, b)
        else:
            if b % size:
                raise ValueError(
                    f"detcon_loss: local batch {b} is not a multiple of the group size {size}"
                )
            cands = all_targets[offset : offset + b].reshape(b // size, size, 2, k, -1)
            own_offset, shape = 0, (b // size, size)

        def grouped(x: Tensor) -> Tensor:
            """(B, 2, K, ...) -> (G, nq, 2, K, ...), a view."""
            return x.reshape(*shape, *x.shape[1:])

        losses = _slot_losses(
            grouped(preds) / temperature,
            cands,
            grouped(torch.stack([pred_ids1, pred_ids2], dim=1)),
            grouped(torch.stack([target_ids1, target_ids2], dim=1)),
            own_offset,
            same_image_negatives,
        )
        # Mean over the B*K slots of each view, the two directions summed.
        return losses.mean(dim=(0, 1, 3)).sum()


def byol_loss(*, pred1: Tensor, pred2: Tensor, target1: Tensor, target2: Tensor) -> Tensor:
    """BYOL's normalised regression loss, both directions summed (Grill et al. 2020, Eq. 2).

    Args:
        pred1, pred2: (B, D) or (B, K, D) online predictions of views 1 and 2.
        target1, target2: same shape, target projections (detached by the caller).

    Returns:
        Scalar ``mean(2 - 2 cos(pred1, target2)) + mean(2 - 2 cos(pred2, target1))``.
    """
    for name, t in {"pred2": pred2, "target1": target1, "target2": target2}.items():
        if t.shape != pred1.shape:
            raise ValueError(
                f"byol_loss: {name} has shape {tuple(t.shape)}; expected pred1's "
                f"{tuple(pred1.shape)}"
            )

    def reg(p: Tensor, t: Tensor) -> Tensor:
        return (2 - 2 * (F.normalize(p, dim=-1) * F.normalize(t, dim=-1)).sum(-1)).mean()

    return reg(pred1, target2) + reg(pred2, target1)
