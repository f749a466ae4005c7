"""Evaluation data: the datasets named by a :class:`DataSpec`, input normalisation, training
augmentation for fine-tuning, and Mask R-CNN targets from instance-id maps.

The synthetic scenes are generated once per evaluation and kept in memory (all tasks of the cpu
profile share one train/val set); the real datasets are read lazily by
:mod:`detcon.data.readers`, dispatched on ``DataSpec.dataset``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from detcon.augment import normalize
from detcon.evaluate.settings import DataSpec

__all__ = [
    "DataStore",
    "boxes_from_masks",
    "instance_targets",
    "num_classes",
    "random_scale_crop",
    "resize_center_crop",
    "to_input",
]

IGNORE_INDEX = 255


def to_input(images: Tensor) -> Tensor:
    """uint8 ``(B, 3, H, W)`` RGB -> float ImageNet-normalised, as in pretraining."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"images: expected uint8 (B, 3, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    return normalize(images.float().div_(255.0))


class _Materialised(Dataset):
    """A dataset held in memory as a list of items (generated synthetic scenes)."""

    def __init__(self, items: list[dict[str, Any]], num_classes: int) -> None:
        self.items = items
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]


class _Capped(Dataset):
    """``n`` items of a dataset drawn without replacement from ``seed``, in their original order.

    Not the first ``n``: readers list their samples sorted (ImageFolder by class, COCO by image
    id, Cityscapes by city), so a prefix would keep a few classes or one city.
    """

    def __init__(self, base: Dataset, n: int, seed: int) -> None:
        self.base = base
        rng = np.random.default_rng(seed)
        self.indices = np.sort(rng.choice(len(base), size=min(n, len(base)), replace=False))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.indices):
            raise IndexError(index)
        return self.base[int(self.indices[index])]

    def __getattr__(self, name: str) -> Any:  # num_classes, coco, category_ids, ...
        if name in ("base", "indices"):
            raise AttributeError(name)
        if name == "samples":  # per item (ImageFolder's (key, label) list): this subset's
            return [self.base.samples[int(i)] for i in self.indices]
        return getattr(self.base, name)


class DataStore:
    """Datasets of one evaluation, keyed by (spec, ``"train"`` | ``"val"``), built once.

    Relative ``DataSpec.root`` paths are resolved against ``data_root``.
    """

    def __init__(self, data_root: str | Path | None = None) -> None:
        self.data_root = Path(data_root) if data_root is not None else None
        self._cache: dict[tuple[DataSpec, str], Dataset] = {}

    def get(self, spec: DataSpec, which: str) -> Dataset:
        if which not in ("train", "val"):
            raise ValueError(f"which={which!r}: expected 'train' or 'val'")
        key = (spec, which)
        if key not in self._cache:
            self._cache[key] = self._build(spec, which)
        return self._cache[key]

    def _root(self, spec: DataSpec) -> Path:
        if not spec.root:
            raise ValueError(f"DataSpec(dataset={spec.dataset!r}) needs a root directory")
        root = Path(spec.root)
        if not root.is_absolute():
            if self.data_root is None:
                raise ValueError(
                    f"dataset {spec.dataset!r} has the relative root {spec.root!r}: pass "
                    "data_root (the folder holding the paper's datasets)"
                )
            root = self.data_root / root
        return root

    def _build(self, spec: DataSpec, which: str) -> Dataset:
        split = spec.train_split if which == "train" else spec.val_split
        n = spec.num_train if which == "train" else spec.num_val
        if spec.dataset == "synthetic":
            from detcon.data.synthetic import SyntheticScenes

            if n < 1:
                raise ValueError(f"synthetic data needs num_{which} >= 1, got {n}")
            scenes = SyntheticScenes(
                split=split,
                num_images=n,
                size=spec.image_size,
                seed=spec.seed,
                difficulty=spec.difficulty,
            )
            return _Materialised([scenes[i] for i in range(n)], scenes.num_classes)
        from detcon.data import readers

        root = self._root(spec)
        if spec.dataset == "coco":
            base: Dataset = readers.CocoInstances(root, split=split)
        elif spec.dataset == "voc":
            base = readers.VocSegmentation(root, split=split)
        elif spec.dataset == "cityscapes":
            base = readers.Cityscapes(root, split=split)
        elif spec.dataset == "nyu":
            base = readers.NyuDepthV2(root, split=split)
        elif spec.dataset == "imagefolder":
            base = readers.ImageFolderDataset(root / split)
        else:
            raise ValueError(f"unknown dataset {spec.dataset!r}")
        return _Capped(base, n, spec.seed) if n > 0 else base


def num_classes(dataset: Dataset) -> int:
    """Classes a head predicts, background included where the task has one."""
    if hasattr(dataset, "num_categories"):  # COCO: categories + background
        return int(dataset.num_categories) + 1
    if hasattr(dataset, "classes"):  # ImageFolder
        return len(dataset.classes)
    if hasattr(dataset, "num_classes"):
        return int(dataset.num_classes)
    raise ValueError(f"cannot tell the number of classes of {type(dataset).__name__}")


# ---------------------------------------------------------------------------------- transforms


def resize_center_crop(image: Tensor, size: int) -> Tensor:
    """uint8 ``(3, H, W)`` -> ``(3, size, size)``: shorter side to ``size * 256 / 224``
    (bilinear, antialiased), then the centre crop (the standard ImageNet evaluation crop)."""
    h, w = image.shape[-2:]
    short = round(size * 256 / 224)
    scale = short / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(
        image[None].float(), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False
    )[0]
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[:, top : top + size, left : left + size].round().clamp(0, 255).to(torch.uint8)


def random_scale_crop(
    image: Tensor,
    target: Tensor,
    *,
    scale_range: tuple[float, float],
    crop: tuple[int, int],
    flip: bool,
    fill: float,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Joint training augmentation for dense tasks: random rescale (image bilinear, target
    nearest-exact: both with half-pixel centres), pad to at least ``crop`` (image 0, target
    ``fill``: ignore / invalid depth), random crop ``crop = (h, w)`` (0 keeps the full size),
    horizontal flip p=0.5 if ``flip``.

    Args:
        image: uint8 ``(3, H, W)``; target: ``(H, W)`` labels or depth.
    Returns: the augmented uint8 image and the target, in the target's dtype.
    """
    u = torch.rand(4, generator=generator).tolist()
    lo, hi = scale_range
    s = lo + (hi - lo) * u[0]
    h, w = image.shape[-2:]
    if s != 1.0:
        size = (max(1, round(h * s)), max(1, round(w * s)))
        image = (
            F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)[0]
            .round()
            .clamp(0, 255)
            .to(torch.uint8)
        )
        # nearest-exact: half-pixel centres, as the image's bilinear (align_corners=False);
        # legacy "nearest" shifted labels against the image by up to a pixel (deviations A3)
        target = F.interpolate(target[None, None].float(), size=size, mode="nearest-exact")[
            0, 0
        ].to(target.dtype)
        h, w = size
    ch, cw = crop[0] or h, crop[1] or w
    ph, pw = max(0, ch - h), max(0, cw - w)
    if ph or pw:
        image = F.pad(image, (0, pw, 0, ph), value=0)
        target = F.pad(target, (0, pw, 0, ph), value=fill)
        h, w = h + ph, w + pw
    top = math.floor(u[1] * (h - ch + 1))
    left = math.floor(u[2] * (w - cw + 1))
    image = image[:, top : top + ch, left : left + cw]
    target = target[top : top + ch, left : left + cw]
    if flip and u[3] < 0.5:
        image, target = image.flip(-1), target.flip(-1)
    return image, target


# ------------------------------------------------------------------------------ instance targets


def boxes_from_masks(masks: Tensor) -> Tensor:
    """Boxes ``(N, 4)`` float32 xyxy in pixel *edges* (a pixel i covers [i, i+1)) of binary
    masks ``(N, H, W)``; COCO's ``toBbox`` of the same masks gives the same boxes as xywh."""
    n = masks.shape[0]
    boxes = torch.zeros(n, 4)
    for i in range(n):
        ys, xs = torch.nonzero(masks[i], as_tuple=True)
        if len(ys):
            boxes[i] = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
    return boxes


def instance_targets(instances: Tensor, semantic: Tensor) -> dict[str, Tensor]:
    """Mask R-CNN targets from an instance-id map ``(H, W)`` (0 background, 1..n objects) and
    the semantic map (the class of each object pixel): ``boxes`` float32 ``(n, 4)`` xyxy,
    ``labels`` int64 ``(n,)`` (the majority class of the instance's pixels), ``masks`` uint8
    ``(n, H, W)``. Ids without pixels are skipped."""
    ids = [int(i) for i in torch.unique(instances) if i > 0]
    masks = (
        torch.stack([instances == i for i in ids]).to(torch.uint8)
        if ids
        else torch.zeros(0, *instances.shape, dtype=torch.uint8)
    )
    labels = torch.tensor(
        [int(torch.mode(semantic[instances == i]).values) for i in ids], dtype=torch.int64
    )
    return {"boxes": boxes_from_masks(masks), "labels": labels, "masks": masks}
