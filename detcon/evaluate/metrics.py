"""Downstream metrics as pure functions: mIoU, depth RMSE / delta1, average precision, COCO AP.

COCO AP^bb / AP^mk use pycocotools' ``COCOeval`` (AP at IoU .50:.95, 101-point interpolation);
for the synthetic scenes the ground truth is a COCO object built in memory from instance masks.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor

__all__ = [
    "coco_average_precision",
    "coco_detections",
    "coco_ground_truth",
    "confusion_matrix",
    "depth_scores",
    "depth_sums",
    "mean_average_precision",
    "segmentation_scores",
]


# ------------------------------------------------------------------------------ segmentation


def confusion_matrix(
    pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255
) -> Tensor:
    """Pixel counts ``(num_classes, num_classes)`` int64: row = true class, column = predicted.

    Args:
        pred: int ``(...)`` predicted classes in ``[0, num_classes)``.
        target: int, same shape, true classes in ``[0, num_classes)`` or ``ignore_index``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    keep = target != ignore_index
    t, p = target[keep].long(), pred[keep].long()
    bad_t, bad_p = (t < 0) | (t >= num_classes), (p < 0) | (p >= num_classes)
    if bad_t.any() or bad_p.any():
        which = [
            f"{name} {ids[bad].unique().tolist()[:5]}"
            for name, ids, bad in (("target", t, bad_t), ("pred", p, bad_p))
            if bad.any()
        ]
        raise ValueError(
            f"class ids must lie in [0, {num_classes}) (or be ignore_index={ignore_index}); "
            f"out of range: {', '.join(which)}"
        )
    counts = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def segmentation_scores(confusion: Tensor) -> dict[str, float]:
    """``miou``: mean over classes of TP / (TP + FP + FN), background included, classes that
    appear neither in the ground truth nor in the predictions left out; ``pixel_acc``."""
    conf = confusion.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    seen = union > 0
    if not seen.any():
        raise ValueError("empty confusion matrix: no labelled pixel was evaluated")
    return {
        "miou": float((tp[seen] / union[seen]).mean()),
        "pixel_acc": float(tp.sum() / conf.sum()),
    }


# ------------------------------------------------------------------------------------- depth


def depth_sums(
    pred: Tensor, target: Tensor, *, min_depth: float = 0.0, max_depth: float = float("inf")
) -> Tensor:
    """Sufficient statistics ``[sum squared error, count delta<1.25, count]`` (float64) over the
    valid pixels ``min_depth < target <= max_depth``; add them over batches, then
    :func:`depth_scores`. Predictions are clamped to ``>= 1e-3`` for the ratio."""
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    valid = (target > min_depth) & (target <= max_depth)
    p, t = pred[valid].double(), target[valid].double()
    ratio = torch.maximum(p.clamp_min(1e-3) / t, t / p.clamp_min(1e-3))
    return torch.stack(
        [
            ((p - t) ** 2).sum(),
            (ratio < 1.25).sum().double(),
            torch.tensor(float(t.numel()), dtype=torch.float64, device=t.device),
        ]
    )


def depth_scores(sums: Tensor) -> dict[str, float]:
    """``rmse`` (metres over all valid pixels of the split) and ``delta1`` (fraction with
    max(pred/gt, gt/pred) < 1.25; Eigen et al. 2014) from summed :func:`depth_sums`."""
    sq, good, n = (float(v) for v in sums)
    if n == 0:
        raise ValueError("no valid depth pixel was evaluated")
    return {"rmse": (sq / n) ** 0.5, "delta1": good / n}


# ------------------------------------------------------------------------- multi-label probe


def mean_average_precision(scores: Tensor, labels: Tensor) -> float:
    """Mean over classes of average precision (area under the precision-recall steps, i.e. the
    mean of the precisions at each positive's rank), for classes with at least one positive.
    Equal scores are one threshold (sklearn's ``average_precision_score``): the positives of a
    tie share the precision at its end, whatever the images' order (a collapsed encoder's
    constant scores scored 1.0 or 0.2 by the order of the scenes).

    Args:
        scores: float ``(N, C)``; labels: bool/0-1 ``(N, C)``.
    """
    if scores.shape != labels.shape or scores.ndim != 2:
        raise ValueError(
            f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)}: expected equal (N, C)"
        )
    labels = labels.to(scores.device)
    aps = []
    for c in range(scores.shape[1]):
        pos = labels[:, c].bool()
        if not pos.any():
            continue
        order = torch.argsort(scores[:, c], descending=True, stable=True)
        ranked, hits = scores[order, c], pos[order].double()
        ranks = torch.arange(1, len(hits) + 1, dtype=torch.float64, device=hits.device)
        found = hits.cumsum(0)
        ends = torch.ones_like(pos)  # the last rank of each run of equal scores
        ends[:-1] = ranked[1:] != ranked[:-1]
        at_ends = found[ends]  # without ties: every rank, and the sum below is the plain one
        new_hits = torch.diff(at_ends, prepend=at_ends.new_zeros(1))
        aps.append(float((at_ends / ranks[ends] * new_hits).sum() / hits.sum()))
    if not aps:
        raise ValueError("no class has a positive label")
    return float(np.mean(aps))


# --------------------------------------------------------------------------------------- COCO


def _quiet(fn, *args):
    """Call a pycocotools function that prints progress to stdout, silently."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def _encode(masks: np.ndarray) -> list[dict]:
    """Binary ``(N, H, W)`` masks -> COCO run-length encodings."""
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return list(rles)


def coco_ground_truth(
    image_sizes: Sequence[tuple[int, int]],
    targets: Sequence[dict[str, Tensor]],
    num_classes: int,
) -> COCO:
    """A COCO ground truth built in memory: image ``i`` has id ``i``; categories ``1..C-1``.

    Args:
        image_sizes: ``(H, W)`` of each image.
        targets: per image ``boxes`` float ``(N, 4)`` xyxy pixel edges, ``labels`` int ``(N,)``
            in ``1..num_classes-1``, ``masks`` ``(N, H, W)`` binary.
        num_classes: including background (index 0).
    """
    images, anns = [], []
    for i, ((h, w), t) in enumerate(zip(image_sizes, targets)):
        images.append({"id": i, "height": int(h), "width": int(w)})
        masks = t["masks"].numpy().astype(np.uint8)
        rles = _encode(masks) if len(masks) else []
        for box, label, rle, m in zip(t["boxes"].tolist(), t["labels"].tolist(), rles, masks):
            x0, y0, x1, y1 = box
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": int(label),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": float(m.sum()),
                    "segmentation": rle,
                    "iscrowd": 0,
                }
            )
    gt = COCO()
    gt.dataset = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": c, "name": str(c)} for c in range(1, num_classes)],
    }
    _quiet(gt.createIndex)
    return gt


def coco_detections(
    image_ids: Sequence[int],
    outputs: Sequence[dict[str, Tensor]],
    iou_type: str,
    category_ids: Sequence[int] | None = None,
    mask_threshold: float = 0.5,
) -> list[dict]:
    """Mask R-CNN outputs -> COCO result dicts for one ``iou_type``, as torchvision's detection
    reference prepares them: ``bbox`` (xywh) results, or ``segm`` (RLE of the mask binarised at
    ``mask_threshold``; pycocotools derives its box and area from the mask).

    Args:
        outputs: per image ``boxes`` ``(N, 4)`` xyxy, ``labels`` ``(N,)``, ``scores`` ``(N,)``
            and, for ``segm``, ``masks`` ``(N, 1, H, W)`` probabilities.
        category_ids: COCO category id of each contiguous label (``category_ids[label - 1]``);
            None: the labels are the category ids.
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type={iou_type!r}: expected 'bbox' or 'segm'")
    results = []
    for image_id, out in zip(image_ids, outputs):
        if not len(out["boxes"]):
            continue
        labels = out["labels"].tolist()
        cats = [int(c) if category_ids is None else int(category_ids[int(c) - 1]) for c in labels]
        if iou_type == "bbox":
            geometry = [
                {"bbox": [x0, y0, x1 - x0, y1 - y0]} for x0, y0, x1, y1 in out["boxes"].tolist()
            ]
        else:
            rles = _encode((out["masks"][:, 0] > mask_threshold).numpy())
            geometry = [{"segmentation": rle} for rle in rles]
        for geo, cat, score in zip(geometry, cats, out["scores"].tolist()):
            results.append(
                {"image_id": int(image_id), "category_id": cat, "score": float(score), **geo}
            )
    return results


def coco_average_precision(
    gt: COCO, detections: list[dict], iou_type: str, image_ids: Sequence[int] | None = None
) -> dict[str, float]:
    """``ap`` (IoU .50:.95) and ``ap50`` from pycocotools' COCOeval (``iou_type``: ``bbox`` or
    ``segm``), over ``image_ids`` (default: all ground-truth images). No detection: AP 0."""
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type={iou_type!r}: expected 'bbox' or 'segm'")
    if not gt.getAnnIds():
        raise ValueError("the COCO ground truth has no annotations: AP is undefined")
    ids = None if image_ids is None else sorted(int(i) for i in image_ids)
    if ids is not None and not gt.getAnnIds(imgIds=ids):
        raise ValueError(
            f"none of the {len(ids)} evaluated images has a ground-truth annotation: AP is "
            "undefined"
        )
    if not detections:
        return {"ap": 0.0, "ap50": 0.0}
    dets = _quiet(gt.loadRes, detections)
    ev = COCOeval(gt, dets, iou_type)
    if ids is not None:
        ev.params.imgIds = ids
    _quiet(ev.evaluate)
    _quiet(ev.accumulate)
    _quiet(ev.summarize)
    # stats[k] is -1 when no ground truth falls in the evaluated range: report 0.
    return {"ap": max(float(ev.stats[0]), 0.0), "ap50": max(float(ev.stats[1]), 0.0)}
