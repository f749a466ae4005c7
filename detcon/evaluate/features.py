"""Frozen-backbone features, computed once per evaluation and shared by the tasks.

With a frozen backbone (the cpu profile's probes) every task sees the same stage outputs of the
same un-augmented images, so they are extracted in one pass per (dataset, split) and kept in
memory: the segmentation and depth heads, the linear probe and the Mask R-CNN FPN then train on
stored tensors, and a whole evaluation runs the backbone once per image instead of once per
image, task and step.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor
from torch.utils.data import Dataset

from detcon.evaluate.backbones import BackboneStages
from detcon.evaluate.data import DataStore, resize_center_crop, to_input
from detcon.evaluate.settings import DataSpec

__all__ = ["FeatureBank", "extract_stages"]


@torch.no_grad()
def extract_stages(
    stages: BackboneStages,
    dataset: Dataset,
    keep: Iterable[int],
    *,
    batch_size: int = 64,
    image_size: int = 0,
    pooled: bool = False,
) -> dict[int, Tensor]:
    """Stage outputs of every image of ``dataset`` (eval mode, no gradient).

    Args:
        keep: stage indices to return.
        image_size: > 0 resizes + centre-crops each image to this side (variable-size datasets).
        pooled: return global-average-pooled ``(N, C)`` vectors instead of maps ``(N, C, h, w)``.
    Raises:
        ValueError: images of different sizes without ``image_size``.
    """
    keep = sorted(set(keep))
    was_training = stages.training
    stages.eval()
    out: dict[int, list[Tensor]] = {k: [] for k in keep}
    try:
        for start in range(0, len(dataset), batch_size):
            images = [
                dataset[i]["image"] for i in range(start, min(start + batch_size, len(dataset)))
            ]
            if image_size:
                images = [resize_center_crop(im, image_size) for im in images]
            if len({tuple(im.shape) for im in images}) > 1:
                raise ValueError(
                    "images of different sizes cannot be batched for feature extraction: set the "
                    "DataSpec's image_size or fine-tune (train_backbone=True)"
                )
            device = next(stages.parameters()).device
            feats = stages(to_input(torch.stack(images)).to(device))
            for k in keep:
                out[k].append(feats[k].mean((2, 3)) if pooled else feats[k])
    finally:
        stages.train(was_training)
    return {k: torch.cat(v) for k, v in out.items()}


class FeatureBank:
    """Stage outputs of a frozen backbone per (data spec, split), computed on first use.

    Call :meth:`reserve` for every stage any task will need before the first :meth:`maps`, so
    one pass extracts them all.
    """

    def __init__(self, stages: BackboneStages, store: DataStore, batch_size: int = 64) -> None:
        self.stages = stages
        self.store = store
        self.batch_size = batch_size
        self._wanted: dict[DataSpec, set[int]] = {}
        self._maps: dict[tuple[DataSpec, str], dict[int, Tensor]] = {}

    def last_stage(self) -> int:
        return len(self.stages.channels) - 1

    def reserve(self, spec: DataSpec, stage_ids: Iterable[int]) -> None:
        self._wanted.setdefault(spec, set()).update(stage_ids)

    def maps(self, spec: DataSpec, which: str, stage: int) -> Tensor:
        """``(N, C, h, w)`` output of ``stage`` for every image of the split."""
        key = (spec, which)
        have = self._maps.get(key, {})
        if stage not in have:
            wanted = self._wanted.setdefault(spec, set())
            wanted.add(stage)
            todo = wanted - set(have)
            have.update(
                extract_stages(
                    self.stages,
                    self.store.get(spec, which),
                    todo,
                    batch_size=self.batch_size,
                    image_size=_size(spec),
                )
            )
            self._maps[key] = have
        return have[stage]

    def pooled(self, spec: DataSpec, which: str) -> Tensor:
        """``(N, C)`` global-average-pooled last-stage features; from stored maps when this spec
        is shared with a dense task, else streamed without storing maps (ImageNet)."""
        last = self.last_stage()
        if last in self._wanted.get(spec, set()) or last in self._maps.get((spec, which), {}):
            return self.maps(spec, which, last).mean((2, 3))
        return extract_stages(
            self.stages,
            self.store.get(spec, which),
            [last],
            batch_size=self.batch_size,
            image_size=_size(spec),
            pooled=True,
        )[last]


def _size(spec: DataSpec) -> int:
    """Resize side for feature extraction: synthetic scenes already share one size."""
    return 0 if spec.dataset == "synthetic" else spec.image_size
