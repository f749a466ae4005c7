"""The pretraining dataset (detcon.data.pretrain): masks computed on the fly, and synthetic
scenes, are cached in a bounded number of bytes per process."""

from __future__ import annotations

import pytest
import torch

from detcon.config import load_pretrain_config
from detcon.data.pretrain import MASK_CACHE_BYTES, PretrainDataset, build_base_dataset

SIDE = 48
ID_MAP_BYTES = SIDE * SIDE * 4  # one full-resolution int32 FH id map


def tiny_fh_cfg():
    overrides = {
        "data": {"num_images": 8, "scene_size": SIDE},
        "masks": {"source": "fh", "fh_min_size": 16},
        "augment": {"crop_size": 32},
    }
    return load_pretrain_config(overrides, profile="cpu")


def test_the_mask_cache_stays_within_its_byte_budget_and_keeps_the_recent_masks():
    # Every full-resolution FH id map used to be kept in every loader worker, without a limit
    # (~0.5 MB per ImageNet image: ~700 GB after one epoch at 16 workers).
    cfg = tiny_fh_cfg()
    budget = 3 * ID_MAP_BYTES + ID_MAP_BYTES // 2  # room for three id maps, not four
    ds = PretrainDataset(build_base_dataset(cfg), cfg, cache_bytes=budget)
    for epoch in range(2):
        for index in range(8):
            ds[(epoch, index)]
            assert ds.cache.nbytes <= budget
    assert len(ds.cache) == 3 and ds.cache.nbytes == 3 * ID_MAP_BYTES
    # Least recently used goes first: reading 5 again keeps it when 0 comes in.
    ds[(2, 5)]
    ds[(2, 0)]
    assert sorted(ds.cache.keys()) == [0, 5, 7]


def test_cached_and_recomputed_masks_give_the_same_views():
    cfg = tiny_fh_cfg()
    cached = PretrainDataset(build_base_dataset(cfg), cfg)
    uncached = PretrainDataset(build_base_dataset(cfg), cfg, cache_bytes=0)
    for index in (0, 3, 0):
        a, b = cached[(1, index)], uncached[(1, index)]
        assert all(torch.equal(a[k], b[k]) for k in ("view1", "view2", "masks1", "masks2"))
    assert len(uncached.cache) == 0 and len(cached.cache) == 2
    # By default the cpu profile's masks all fit (FH int32 id maps, MCG-style bool stacks): they
    # are computed once per scene, as before the bound.
    cpu = load_pretrain_config({}, profile="cpu")
    pixels = cpu.data.num_images * cpu.data.scene_size**2
    assert pixels * max(4, cpu.masks.mcg_num_proposals) <= MASK_CACHE_BYTES


class _Counting(torch.utils.data.Dataset):
    """A dataset that is not SyntheticScenes (as a real reader is), counting its reads."""

    def __init__(self, base):
        self.base, self.reads = base, 0

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        self.reads += 1
        return self.base[index]


def test_synthetic_scenes_are_generated_once_per_process_and_give_the_same_views(monkeypatch):
    # Generating a scene cost about three quarters of the cpu profile's loader item, every epoch,
    # for the same pixels: PretrainDataset keeps them (image and instances); real datasets'
    # images it does not keep.
    from detcon.data import synthetic

    generated = []
    real_generate = synthetic.generate_scene
    monkeypatch.setattr(
        synthetic,
        "generate_scene",
        lambda index, **kw: generated.append(index) or real_generate(index, **kw),
    )
    cfg = tiny_fh_cfg()
    kept = PretrainDataset(build_base_dataset(cfg), cfg)
    regenerated = PretrainDataset(build_base_dataset(cfg), cfg, scene_cache_bytes=0)
    for epoch in range(3):
        for index in range(8):
            a, b = kept[(epoch, index)], regenerated[(epoch, index)]
            assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(kept.scenes) == 8 and len(regenerated.scenes) == 0
    assert len(generated) == 8 + 3 * 8  # kept: once each; regenerated: every epoch
    reader = _Counting(build_base_dataset(cfg))
    not_synthetic = PretrainDataset(reader, cfg)
    for epoch in range(2):
        not_synthetic[(epoch, 0)]
    assert reader.reads == 2 and len(not_synthetic.scenes) == 0
    # nor their masks: an image comes back to a worker an epoch later, long evicted
    assert len(not_synthetic.cache) == 0


def test_external_masks_for_synthetic_scenes_are_refused_at_construction(tmp_path):
    # external masks are read by image file name; scenes have none (it failed at the first item
    # with advice for callers of the mask source)
    (tmp_path / "a.png").write_bytes(b"")  # the directory holds a mask file: no earlier error
    cfg = load_pretrain_config(
        {"masks": {"source": "external", "external_dir": str(tmp_path)}}, profile="cpu"
    )
    with pytest.raises(ValueError, match="synthetic scenes have no image keys"):
        PretrainDataset(build_base_dataset(cfg), cfg)


def test_id_maps_travel_in_the_smallest_type_that_holds_the_batch():
    # int64 id maps were 73% of a batch's bytes in the loader workers' shared memory
    from detcon.data.pretrain import collate_views

    cfg = tiny_fh_cfg()
    ds = PretrainDataset(build_base_dataset(cfg), cfg)
    items = [ds[(0, i)] for i in range(4)]
    batch = collate_views(items)
    for key in ("masks1", "masks2"):
        assert batch[key].dtype == torch.uint8
        assert torch.equal(batch[key].long(), torch.stack([it[key] for it in items]))
    items[1]["masks1"][0, 0] = 300  # ids of 256 and more: int32
    wide = collate_views(items)["masks1"]
    assert wide.dtype == torch.int32 and int(wide[1, 0, 0]) == 300
