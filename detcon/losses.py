"""Losses as pure, keyword-only functions.

``detcon_loss`` is the contrastive detection objective of Hénaff et al. 2021 (§3.1, Eq. 3), with the
exact semantics of the official release's ``byol_nce_detcon`` (google-deepmind/detcon,
``utils/losses.py``) when ``negative_groups=1``; DESIGN §5.6 restates it. ``byol_loss`` is BYOL's
normalised regression loss (Grill et al. 2020, Eq. 2) symmetrised over the two views.
"""

from __future__ import annotations

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


def _one_direction(
    query: Tensor,  # (G, nq, K, D) normalised predictions of one view
    cand_other: Tensor,  # (G, nc, K, D) normalised targets of the other view
    cand_same: Tensor,  # (G, nc, K, D) normalised targets of the same view
    q_ids: Tensor,  # (G, nq, K) ids of the queries
    own_other_ids: Tensor,  # (G, nq, K) ids of the other view's targets of the query's image
    own_same_ids: Tensor,  # (G, nq, K) ids of the same view's targets of the query's image
    own: Tensor,  # (nq,) index of each query's own image among the nc candidates
    temperature: float,
    same_image_negatives: bool,
) -> Tensor:
    """Weighted cross-entropy of every query slot; returns (G, nq, K) per-slot losses."""
    g, nq, k, d = query.shape
    nc = cand_other.shape[1]
    # One matmul over both candidate blocks: (G, nq*K, D) @ (G, D, 2*nc*K).
    cands = torch.cat([cand_other, cand_same], dim=1).reshape(g, 2 * nc * k, d)
    logits = torch.bmm(query.reshape(g, nq * k, d), cands.transpose(1, 2)) / temperature
    logits = logits.view(g, nq, k, 2, nc, k)

    same_other = q_ids.unsqueeze(-1) == own_other_ids.unsqueeze(-2)  # (G, nq, K, K)
    same_same = q_ids.unsqueeze(-1) == own_same_ids.unsqueeze(-2)
    # Candidates of the query's own image: removed from the softmax where the release removes
    # them (same view and same id always; every other id too without same-image negatives).
    # Own-image entries (G, nq, K, 2, K); advanced indices (rows, own) put their dim first.
    rows = torch.arange(nq, device=query.device)
    own_block = logits[:, rows, :, :, own, :].transpose(0, 1)
    removed = torch.stack(
        [
            torch.zeros_like(same_other) if same_image_negatives else ~same_other,
            same_same if same_image_negatives else torch.ones_like(same_same),
        ],
        dim=3,
    )
    own_block = own_block - removed.to(logits.dtype) * _INFINITY_PROXY
    logits[:, rows, :, :, own, :] = own_block.transpose(0, 1)  # in place: a fresh tensor

    log_z = torch.logsumexp(logits.reshape(g, nq, k, 2 * nc * k), dim=-1)  # (G, nq, K)
    positives = same_other.to(logits.dtype)  # labels before normalisation (other view only)
    num_pos = positives.sum(-1)  # (G, nq, K)
    pos_logit_sum = (positives * own_block[:, :, :, 0, :]).sum(-1)
    # CE with labels divided by the number of positives: log Z - mean(positive logits).
    ce = log_z - pos_logit_sum / num_pos.clamp_min(1.0)
    area = (q_ids.unsqueeze(-1) == q_ids.unsqueeze(-2)).sum(-1).to(logits.dtype)
    weight = (num_pos > 0).to(logits.dtype) / area
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

    def norm(x: Tensor) -> Tensor:
        # The loss runs in at least float32: in half precision the release's 1e9 removal
        # overflows to -inf (0 * -inf = NaN). Clamp the squared norm at 1e-12 as the release's
        # l2_normalize does.
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True).clamp_min(1e-12))

    # Full precision even under autocast (see norm()).
    with torch.autocast(device_type=pred1.device.type, enabled=False):
        pred1, pred2, target1, target2 = norm(pred1), norm(pred2), norm(target1), norm(target2)
        if gather_targets:
            all_t1, offset = gather_along_batch(target1)
            all_t2, _ = gather_along_batch(target2)
        else:
            all_t1, all_t2, offset = target1, target2, 0
        n = all_t1.shape[0]
        if n % negative_groups:
            raise ValueError(
                f"detcon_loss: negative_groups={negative_groups} must divide the global batch {n}"
            )
        size = n // negative_groups  # images per group
        dev = pred1.device

        if size >= b:
            # The local batch lies inside one group (always true for G=1).
            if size % b and negative_groups > 1:
                raise ValueError(
                    f"detcon_loss: group size {size} is not a multiple of the local "
                    f"batch {b}; expected the local batch to tile the groups"
                )
            start = (offset // size) * size
            c1, c2 = all_t1[start : start + size][None], all_t2[start : start + size][None]
            own = torch.arange(b, device=dev) + (offset - start)
            shape = (1, b, k)
        else:
            if b % size:
                raise ValueError(
                    f"detcon_loss: local batch {b} is not a multiple of the group size {size}"
                )
            groups = b // size
            c1 = all_t1[offset : offset + b].reshape(groups, size, k, -1)
            c2 = all_t2[offset : offset + b].reshape(groups, size, k, -1)
            own = torch.arange(size, device=dev)
            shape = (groups, size, k)

        def q(x: Tensor) -> Tensor:
            return x.reshape(*shape, x.shape[-1])

        def ids(x: Tensor) -> Tensor:
            return x.reshape(shape)

        loss_a = _one_direction(
            q(pred1),
            c2,
            c1,
            ids(pred_ids1),
            ids(target_ids2),
            ids(target_ids1),
            own,
            temperature,
            same_image_negatives,
        )
        loss_b = _one_direction(
            q(pred2),
            c1,
            c2,
            ids(pred_ids2),
            ids(target_ids1),
            ids(target_ids2),
            own,
            temperature,
            same_image_negatives,
        )
        return loss_a.mean() + loss_b.mean()


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
