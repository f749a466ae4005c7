"""Mask quality: how well the pretraining masks cover the ground-truth objects (paper §5, mask
quality analysis: "the better each ground truth object is covered by some mask, the better DetCon
performs").

The measure is the *best overlap* of each ground-truth object: the highest IoU between the object
and any pretraining mask; averaged over objects it is the average best overlap (ABO) of the
object-proposal literature (Uijlings et al., Selective Search, IJCV 2013; used by MCG).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["best_overlap", "mask_quality"]


def _check_instances(instances: np.ndarray) -> np.ndarray:
    instances = np.asarray(instances)
    if instances.ndim != 2 or not np.issubdtype(instances.dtype, np.integer):
        raise ValueError(
            f"instances has shape {instances.shape} and dtype {instances.dtype}: "
            "expected an integer id map (H, W), 0 = background, 1..n objects"
        )
    if instances.size and instances.min() < 0:
        raise ValueError(f"instances has a negative id {int(instances.min())}: expected ids >= 0")
    return instances


def best_overlap(instances: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Best IoU of every ground-truth object with any of the masks.

    Args:
        instances: integer ``(H, W)`` id map; 0 is background, every id ``> 0`` is one object.
        masks: either a partition, integer ``(H, W)`` id map with ids ``>= 0`` (each id is one
            mask, 0 included), or overlapping masks, ``bool (M, H, W)``.

    Returns:
        ``float64 (n,)`` best IoU in ``[0, 1]`` per object, in increasing object id (``n`` = the
        number of distinct ids ``> 0``; empty when the image has no object). An object gets 0 when
        no mask touches it (e.g. ``M = 0``).
    """
    instances = _check_instances(instances)
    masks = np.asarray(masks)
    obj_ids, obj_index = np.unique(instances, return_inverse=True)
    obj_index = obj_index.reshape(-1)
    num_ids = len(obj_ids)
    is_object = obj_ids > 0
    if masks.ndim == 2:
        if masks.shape != instances.shape or not np.issubdtype(masks.dtype, np.integer):
            raise ValueError(
                f"partition masks have shape {masks.shape} and dtype {masks.dtype}: "
                f"expected an integer id map of the instances' shape "
                f"{instances.shape} (or a bool stack (M, H, W))"
            )
        if masks.size and masks.min() < 0:
            raise ValueError(
                f"partition masks have a negative id {int(masks.min())}: expected ids >= 0"
            )
        mask_ids, mask_index = np.unique(masks, return_inverse=True)
        num_masks = len(mask_ids)
        # Contingency table: pixels of each (object, mask) pair.
        inter = np.bincount(
            obj_index * num_masks + mask_index.reshape(-1), minlength=num_ids * num_masks
        ).reshape(num_ids, num_masks)
        mask_area = inter.sum(axis=0)
    elif masks.ndim == 3:
        if masks.shape[1:] != instances.shape or masks.dtype != np.bool_:
            raise ValueError(
                f"overlapping masks have shape {masks.shape} and dtype "
                f"{masks.dtype}: expected bool (M, H, W) with (H, W) = "
                f"{instances.shape} (or an integer partition (H, W))"
            )
        flat = masks.reshape(masks.shape[0], instances.size)  # (M, H*W)
        # Intersections (ids, M): the object ids of each mask's pixels, counted.
        inter = (
            np.stack([np.bincount(obj_index[m], minlength=num_ids) for m in flat], axis=1)
            if len(flat)
            else np.zeros((num_ids, 0), dtype=np.int64)
        )
        mask_area = flat.sum(axis=1)
    else:
        raise ValueError(
            f"masks have shape {masks.shape}: expected an integer partition (H, W) "
            "or a bool stack (M, H, W)"
        )
    obj_area = np.bincount(obj_index, minlength=num_ids)
    inter = inter[is_object]
    if inter.shape[1] == 0:
        return np.zeros(int(is_object.sum()))
    union = obj_area[is_object][:, None] + mask_area[None, :] - inter
    return (inter / union).max(axis=1).astype(np.float64)


def mask_quality(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Mask quality over a set of images.

    ``pairs``: ``(instances, masks)`` per image, as :func:`best_overlap` takes them. Returns
    ``mean_best_iou`` (average best overlap over all objects of all images, each object counted
    once), ``coverage_at_50`` (fraction of objects whose best IoU is strictly above 0.5, the
    PASCAL/COCO matching threshold), ``num_objects`` and ``num_images``. Raises ValueError when
    there is no object at all (the averages would be undefined).
    """
    best = []
    num_images = 0
    for instances, masks in pairs:
        best.append(best_overlap(instances, masks))
        num_images += 1
    values = np.concatenate(best) if best else np.zeros(0)
    if values.size == 0:
        raise ValueError(
            f"mask_quality: no ground-truth object (id > 0) in {num_images} "
            "images: expected at least one"
        )
    return {
        "mean_best_iou": float(values.mean()),
        "coverage_at_50": float((values > 0.5).mean()),
        "num_objects": int(values.size),
        "num_images": num_images,
    }
