"""The pretraining input pipeline: images + masks -> two geometrically augmented views.

Every random draw is a function of ``(seed, epoch, index)`` (geometry) or ``(seed, epoch)`` (the
data order), never of a process's RNG history: a resumed run, a run with more DataLoader workers
and a run split across processes see the same views of the same images in the same order.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from detcon.config import PretrainConfig

__all__ = [
    "MASK_CACHE_BYTES",
    "SCENE_CACHE_BYTES",
    "BoundedCache",
    "PretrainDataset",
    "StepBatchSampler",
    "build_base_dataset",
    "build_pretrain_dataset",
    "collate_views",
    "derive_seed",
]


def derive_seed(*parts: int | str) -> int:
    """A stable 63-bit seed from ints and strings (numpy SeedSequence; never Python's ``hash``)."""
    words = []
    for p in parts:
        if isinstance(p, str):
            words.extend(p.encode())
        else:
            words.append(int(p))
    return int(np.random.SeedSequence(words).generate_state(2, np.uint64)[0] >> np.uint64(1))


def build_base_dataset(cfg: PretrainConfig) -> Dataset:
    """The image dataset named by ``cfg.data`` (items: dict with ``image`` and, where known,
    ``instances`` and ``key``)."""
    data = cfg.data
    if data.dataset == "synthetic":
        from detcon.data.synthetic import SceneSpec, SyntheticScenes

        return SyntheticScenes(
            split="train",
            num_images=data.num_images,
            size=data.scene_size,
            seed=cfg.seed,
            difficulty=SceneSpec.from_config(data),
        )
    from detcon.data import readers

    if not data.root.strip():  # "" is the current directory: refused, not read
        raise ValueError(
            f"data.dataset={data.dataset!r} reads its images from data.root, which is empty: "
            "set it, e.g. --set data.root=data/imagenet/train (data/coco for COCO)"
        )
    if data.dataset == "imagefolder":
        return readers.ImageFolderDataset(data.root)
    if data.dataset == "coco":
        return readers.CocoInstances(data.root, split="train2017")
    raise ValueError(f"data.dataset={data.dataset!r}: no reader")  # config already validated


# Bytes of computed masks a PretrainDataset of synthetic scenes keeps per process (each
# DataLoader worker has its own): all of the cpu profile's 1,024 scenes of 64 x 64 px (FH int32 id
# maps: 16 MiB; 16 MCG-style bool masks each: 64 MiB). Real datasets keep none (below). Not a
# config field: it changes no result, and a new field would change every run id.
MASK_CACHE_BYTES = 256 * 2**20

# Bytes of generated synthetic scenes (image and instance map) a PretrainDataset keeps per
# process: the cpu profile's 1,024 scenes of 64 px take 44 MiB. Generating a scene cost nearly
# three times the rest of its item (crops, resizing, seeding; benchmarks/bench_augment.py: 2.91
# ms an item against 0.76 ms with the scene kept), every epoch, for the same pixels. Files of
# real datasets are not kept (the OS caches them; an ImageNet would not fit). Not a config
# field, for the reason above.
SCENE_CACHE_BYTES = 256 * 2**20


def _nbytes(value: Any) -> int:
    if isinstance(value, Mapping):
        return sum(_nbytes(v) for v in value.values())
    return int(value.nbytes)


class BoundedCache:
    """Values by image index (arrays, tensors, or mappings of them), least recently used dropped
    first so they never hold more than ``max_bytes`` together; a value larger than the budget
    alone is not kept."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._items: OrderedDict[int, tuple[Any, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list[int]:
        return list(self._items)

    def get(self, index: int) -> Any | None:
        item = self._items.get(index)
        if item is None:
            return None
        self._items.move_to_end(index)
        return item[0]

    def put(self, index: int, value: Any) -> None:
        if index in self._items:
            self.nbytes -= self._items.pop(index)[1]
        size = _nbytes(value)
        if size > self.max_bytes:
            return
        self._items[index] = (value, size)
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            self.nbytes -= self._items.popitem(last=False)[1][1]


class PretrainDataset(Dataset):
    """Items are keyed by ``(epoch, index)``; each returns two views of image ``index``.

    Masks are computed once per image at full resolution, before cropping (docs/design.md
    §4.10), read from a mask store when one is configured, else computed and kept in a
    per-process :class:`BoundedCache` of ``cache_bytes`` (default: :data:`MASK_CACHE_BYTES` for
    synthetic scenes, none for real datasets; a miss computes them again: same masks). Synthetic
    scenes are kept the same way, in ``scene_cache_bytes`` (a miss generates
    the scene again: same pixels).
    """

    def __init__(
        self,
        base: Dataset,
        cfg: PretrainConfig,
        *,
        cache_bytes: int | None = None,
        scene_cache_bytes: int = SCENE_CACHE_BYTES,
    ) -> None:
        from detcon.augment import TwoViewGeometry
        from detcon.data.synthetic import SyntheticScenes
        from detcon.masks.sources import build_mask_source

        self.base = base
        self.seed = cfg.seed
        self.source = build_mask_source(cfg.masks)
        if self.source.name == "external" and isinstance(base, SyntheticScenes):
            raise ValueError(
                "masks.source='external' reads <external_dir>/<image key>.png|.npz, and "
                "synthetic scenes have no image keys: expected data.dataset 'imagefolder' or "
                "'coco' (a scene's own masks are masks.source='ground_truth')"
            )
        aug = cfg.augment
        self.geometry = TwoViewGeometry(
            aug.crop_size,
            crop_scale=aug.crop_scale,
            crop_ratio=aug.crop_ratio,
            flip_prob=aug.flip_prob,
            single_view=aug.single_view,
        )
        self.store = None
        if cfg.masks.store:  # must hold what self.source would compute from base
            from detcon.masks.store import open_for_training

            self.store = open_for_training(cfg.masks.store, self.source, base)
        # Only synthetic datasets keep what they compute: a real one's images come back to a
        # worker an epoch later, long evicted (ImageNet at 32 ranks x 16 workers: 1 hit in
        # 80,128 lookups, and 256 MiB a worker held for nothing).
        synthetic = isinstance(base, SyntheticScenes)
        if cache_bytes is None:  # given: kept whatever the data (the benchmarks time a full one)
            cache_bytes = MASK_CACHE_BYTES if synthetic else 0
        self.cache = BoundedCache(cache_bytes)
        self.scenes = BoundedCache(scene_cache_bytes if synthetic else 0)

    def __len__(self) -> int:
        return len(self.base)

    def sample(self, index: int) -> Mapping[str, Any]:
        """``base[index]``, from the scene cache for synthetic scenes (only what the views and
        the masks read: nothing here writes into its tensors)."""
        sample = self.scenes.get(index)
        if sample is None:
            sample = self.base[index]
            if self.scenes.max_bytes:
                sample = {k: sample[k] for k in ("image", "instances")}
                self.scenes.put(index, sample)
        return sample

    def masks_for(self, index: int, sample: Mapping[str, Any]) -> np.ndarray:
        if self.store is not None:
            return self.store[index]
        masks = self.cache.get(index)
        if masks is None:
            image = sample["image"].permute(1, 2, 0).numpy()
            instances = sample.get("instances")
            kwargs = {}
            if self.source.name == "external":
                kwargs["key"] = sample.get("key")
            masks = self.source(
                image, None if instances is None else np.asarray(instances), **kwargs
            )
            self.cache.put(index, masks)
        return masks

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Tensor]:
        epoch, index = key
        sample = self.sample(index)
        masks = torch.from_numpy(np.ascontiguousarray(self.masks_for(index, sample)))
        if masks.dtype != torch.bool:
            masks = masks.long()
        # The geometry draws from torch's global (CPU) RNG as tv2 does: seed it per (seed, epoch,
        # index), restoring the caller's state afterwards. Only the CPU generator is touched:
        # torch.manual_seed would also reseed every accelerator generator, which nothing here
        # draws from, and costs more than the rest of the seeding (~0.2 ms per sample).
        rng = torch.default_generator
        state = rng.get_state()
        rng.manual_seed(derive_seed(self.seed, "geometry", epoch, index))
        try:
            (img1, m1), (img2, m2) = self.geometry(sample["image"], masks)
        finally:
            rng.set_state(state)
        return {
            "view1": img1,
            "view2": img2,
            "masks1": m1,
            "masks2": m2,
            "index": torch.tensor(index),
        }


def _stack_masks(masks: list[Tensor]) -> Tensor:
    if masks[0].dtype != torch.bool:
        # Id maps travel to the training process (through shared memory, from loader workers)
        # in the smallest type that holds the batch's ids, not int64: at 224 px and batch 128
        # int64 maps were 73% of a batch's bytes. ``mask_weights`` widens them on the device.
        ids = torch.stack(masks)
        return ids.to(torch.uint8 if int(ids.max()) < 256 else torch.int32)
    m = max(x.shape[0] for x in masks)  # pad overlapping stacks with empty (absent) masks
    out = torch.zeros(len(masks), m, *masks[0].shape[1:], dtype=torch.bool)
    for i, x in enumerate(masks):
        out[i, : x.shape[0]] = x
    return out


def collate_views(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Stack views (uint8) and masks: id maps as uint8 or int32 (what holds the batch's ids),
    overlapping mask stacks padded with empty masks."""
    return {
        "view1": torch.stack([it["view1"] for it in items]),
        "view2": torch.stack([it["view2"] for it in items]),
        "masks1": _stack_masks([it["masks1"] for it in items]),
        "masks2": _stack_masks([it["masks2"] for it in items]),
        "index": torch.stack([it["index"] for it in items]),
    }


class StepBatchSampler(Sampler):
    """Yields this process's share of the global batch for steps ``start..stop-1``.

    The data stream is the concatenation of one permutation of the images per epoch, epoch e's
    seeded by ``(seed, e)`` (the release shuffles shards locally instead: docs/deviations.md
    A12); step s takes stream positions ``s*B .. s*B+B-1``, so, as the release's
    ``dataset.repeat()`` before ``batch``, a batch may span two epochs and no image is dropped.
    Rank r takes the r-th contiguous part of the global batch. Items are ``(epoch, index)``.
    """

    def __init__(
        self,
        num_images: int,
        global_batch: int,
        seed: int,
        start: int,
        stop: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if global_batch % world_size:
            raise ValueError(
                f"batch size {global_batch} is not divisible by the {world_size} "
                "processes; expected a multiple"
            )
        if not 1 <= global_batch <= num_images:
            raise ValueError(
                f"batch size {global_batch}: expected between 1 and the {num_images} images"
            )
        self.n, self.batch = num_images, global_batch
        self.seed, self.start, self.stop = seed, start, stop
        self.rank, self.world = rank, world_size
        self._perms: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def _perm(self, epoch: int) -> Tensor:
        if epoch not in self._perms:
            if len(self._perms) >= 2:  # a batch touches at most two epochs
                del self._perms[min(self._perms)]
            g = torch.Generator().manual_seed(derive_seed(self.seed, "order", epoch))
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def global_items(self, step: int) -> list[tuple[int, int]]:
        """The ``(epoch, index)`` items of the global batch of ``step``."""
        positions = range(step * self.batch, (step + 1) * self.batch)
        return [(p // self.n, int(self._perm(p // self.n)[p % self.n])) for p in positions]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        local = self.batch // self.world
        for step in range(self.start, self.stop):
            yield self.global_items(step)[self.rank * local : (self.rank + 1) * local]


def build_pretrain_dataset(cfg: PretrainConfig) -> PretrainDataset:
    """The pretraining dataset (items keyed by ``(epoch, index)``)."""
    return PretrainDataset(build_base_dataset(cfg), cfg)
