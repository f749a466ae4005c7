"""Masks on the backbone's feature grid: downsampling, sampling K ids per view, pooling.

docs/design.md §4.2-4.4; the release does this in ``detcon_b.py`` (``create_binary_mask``,
``sample_masks``, the masked mean in ``run_detcon_b_forward_on_view``).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["mask_weights", "pool_masks", "present_masks", "sample_mask_ids"]


def _cell_index(size: int, cells: int, device: torch.device) -> Tensor:
    """Feature-grid cell of each pixel along one axis: floor(i * cells / size).

    With ``size`` divisible by ``cells`` this is the release's VALID average pool with stride
    size / cells (e.g. 224 px / 32 = 7 cells).
    """
    return torch.div(torch.arange(size, device=device) * cells, size, rounding_mode="floor")


def mask_weights(masks: Tensor, grid: tuple[int, int], num_ids: int | None = None) -> Tensor:
    """Per-mask weights on the (h, w) feature grid, shape (B, M, h*w), float.

    - Partition masks, int (B, H, W) id map: one-hot the ids, average-pool to the grid, give each
      cell to its majority id (argmax; ties go to the lowest id as ``jnp.argmax``), one-hot again.
      ``M = num_ids`` (default: max id + 1 in the batch). A mask that is the majority in no cell
      is absent (all-zero row).
    - Overlapping masks, bool (B, M, H, W): a soft average pool per mask (our extension for
      proposals that overlap, docs/design.md §4.2): each cell holds the fraction of its pixels
      (the same cells as partitions') the mask covers.

    The pooled one-hot is computed with a scatter-add of pixel counts, so no (B, M, H, W) one-hot
    is materialised.
    """
    h, w = grid
    if masks.dim() == 3 and not masks.is_floating_point() and masks.dtype != torch.bool:
        b, hh, ww = masks.shape
        if hh < h or ww < w:
            raise ValueError(f"mask_weights: masks of {hh}x{ww} px cannot cover a {h}x{w} grid")
        ids = masks.long()
        lo, hi = (int(v) for v in torch.aminmax(ids)) if ids.numel() else (0, 0)  # one pass
        if lo < 0:
            raise ValueError(f"mask_weights: negative mask id {lo}; expected ids >= 0")
        m = hi + 1 if num_ids is None else num_ids
        if hi >= m:
            raise ValueError(f"mask_weights: mask id {hi} >= num_ids={m}")
        cy = _cell_index(hh, h, masks.device)
        cx = _cell_index(ww, w, masks.device)
        cell = (cy[:, None] * w + cx[None, :]).expand(b, hh, ww)  # (B, H, W)
        flat = (torch.arange(b, device=masks.device)[:, None, None] * m + ids) * (h * w) + cell
        counts = torch.zeros(b * m * h * w, device=masks.device)
        counts.scatter_add_(0, flat.reshape(-1), torch.ones(flat.numel(), device=masks.device))
        # argmax over ids along the contiguous last dim (over dim 1 it is a slow strided
        # reduction on CPU); the first maximum wins either way.
        majority = counts.view(b, m, h * w).transpose(1, 2).contiguous().argmax(dim=2)  # (B, h*w)
        onehot = torch.zeros(b, m, h * w, device=masks.device)
        onehot.scatter_(1, majority[:, None, :], 1.0)
        return onehot
    if masks.dim() == 4 and masks.dtype == torch.bool:
        b, m, hh, ww = masks.shape
        if hh < h or ww < w:
            raise ValueError(f"mask_weights: masks of {hh}x{ww} px cannot cover a {h}x{w} grid")
        # the same pixel-to-cell map as partitions (adaptive pooling's windows overlap by a
        # pixel when the size is not a multiple of the grid)
        cy = _cell_index(hh, h, masks.device)
        cx = _cell_index(ww, w, masks.device)
        cell = (cy[:, None] * w + cx[None, :]).reshape(-1)
        area = torch.bincount(cell, minlength=h * w).float()
        covered = torch.zeros(b * m, h * w, device=masks.device)
        covered.index_add_(1, cell, masks.reshape(b * m, hh * ww).float())
        return (covered / area).view(b, m, h * w)
    raise ValueError(
        f"mask_weights: masks have shape {tuple(masks.shape)} and dtype "
        f"{masks.dtype}; expected an integer id map (B, H, W) or a bool stack "
        "(B, M, H, W)"
    )


def present_masks(weights: Tensor) -> Tensor:
    """Which masks appear on the grid of each image: (B, M) bool (release: area > 1e-3)."""
    return weights.sum(-1) > 1e-3


def sample_mask_ids(weights: Tensor, uniforms: Tensor) -> Tensor:
    """Draw K mask ids per image uniformly with replacement among the present ones.

    An image with no mask present on the grid (possible only with overlapping masks: a crop
    that no proposal reaches) draws uniformly among all M ids, as the release does: its
    categorical over ``log(present + 1e-11)`` is uniform when nothing is present
    (``detcon_b.py``, ``sample_masks``). Those ids pool to zero vectors where their grid area
    is 0, else (a sliver at or under the presence threshold) to the mean over what they touch
    (:func:`pool_masks`).

    Args:
        weights: (B, M, h*w) from :func:`mask_weights`.
        uniforms: (B, K) float in [0, 1): the randomness, passed in so the draw for an image does
            not depend on how the batch is split across processes (each rank slices the global
            batch's uniforms).

    Returns:
        (B, K) int64 ids, each present in its image when one is (docs/design.md §4.3: no
        "present in both views" filter; the other view may lack a sampled id, which then has no
        positive).

    Raises:
        ValueError: ``weights`` has no mask at all (M = 0).
    """
    if weights.shape[1] == 0:
        raise ValueError(
            f"sample_mask_ids: weights of shape {tuple(weights.shape)} hold no mask (M = 0); "
            "expected (B, M >= 1, h*w)"
        )
    present = present_masks(weights)
    n_present = present.sum(-1)  # (B,)
    # Present ids first, in increasing id order (stable sort of "absent" flags); with none
    # present that is every id, 0..M-1, each drawn alike.
    order = torch.sort((~present).to(torch.uint8), dim=1, stable=True).indices  # (B, M)
    n_draw = torch.where(n_present == 0, present.shape[1], n_present)[:, None]
    rank = (uniforms * n_draw).long().clamp_max(n_draw - 1)
    return order.gather(1, rank)


def pool_masks(features: Tensor, weights: Tensor, ids: Tensor) -> Tensor:
    """Mean of the feature map over each sampled mask: (B, C, h, w) -> (B, K, C).

    The release divides the mask sum by max(area, 1); for one-hot grid masks of sampled (hence
    present) ids the area is >= 1, so this equals dividing by the area, which we do so that soft
    (overlapping) masks give a weighted mean as well.
    """
    b, c = features.shape[:2]
    sel = weights.gather(1, ids[:, :, None].expand(-1, -1, weights.shape[-1]))  # (B, K, h*w)
    sel = sel / sel.sum(-1, keepdim=True).clamp_min(1e-6)
    return torch.bmm(sel.to(features.dtype), features.reshape(b, c, -1).transpose(1, 2))
