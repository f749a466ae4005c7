"""The sharded mask store: round trips, restart after a kill, parallel writers, manifests."""

import functools
import pickle

import numpy as np
import pytest
import torch

from detcon.config import MaskConfig
from detcon.masks.sources import build_mask_source
from detcon.masks.store import MaskStore, precompute_shard, precompute_store, shard_path

torch.set_num_threads(1)


class FakeScenes:
    """Deterministic random-ish images with a few rectangular instances, in the dataset format
    (``image`` uint8 (3, H, W) tensor, ``instances`` int64 (H, W) tensor)."""

    def __init__(self, n=10, h=20, w=24, seed=0, fail_at=None):
        self.n, self.h, self.w, self.seed, self.fail_at = n, h, w, seed, fail_at
        self.calls: list[int] = []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.calls.append(i)
        if i == self.fail_at:
            raise RuntimeError(f"simulated crash at image {i}")
        rng = np.random.default_rng([self.seed, i])
        image = rng.integers(0, 256, (3, self.h, self.w), dtype=np.uint8)
        instances = np.zeros((self.h, self.w), dtype=np.int64)
        for k in range(1, 1 + i % 4):
            y, x = rng.integers(0, self.h - 5), rng.integers(0, self.w - 5)
            instances[y : y + 5, x : x + 5] = k
            image[:, y : y + 5, x : x + 5] = rng.integers(0, 256, (3, 1, 1), dtype=np.uint8)
        return {"image": torch.from_numpy(image), "instances": torch.from_numpy(instances)}


def _expected(dataset, cfg, i):
    item = dataset[i]
    image = item["image"].permute(1, 2, 0).numpy().copy()
    return build_mask_source(cfg)(image, item["instances"].numpy())


GRID = MaskConfig(source="grid", grid_size=3)
FH = MaskConfig(source="fh", fh_scale=100.0, fh_min_size=8)
MCG = MaskConfig(source="mcg", mcg_num_proposals=4)


@pytest.mark.parametrize(
    "cfg", [FH, MaskConfig(source="ground_truth"), MCG], ids=["fh", "ground_truth", "mcg"]
)
def test_round_trip(tmp_path, cfg):
    dataset = FakeScenes(n=7)
    store = precompute_store(dataset, cfg, tmp_path / "s", shard_size=3, progress=False)
    assert len(store) == 7 and store.num_shards == 3 and store.complete
    assert store.kind == build_mask_source(cfg).kind
    for i in range(7):
        got = store[i]
        want = _expected(dataset, cfg, i)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(store[-1], store[6])
    with pytest.raises(IndexError, match="out of range"):
        store[7]


def test_restart_after_kill_computes_only_what_is_missing(tmp_path):
    out = tmp_path / "s"
    crashing = FakeScenes(n=10, fail_at=5)  # shard 1 = images 4..7
    with pytest.raises(RuntimeError, match="simulated crash"):
        precompute_store(crashing, GRID, out, shard_size=4, progress=False)
    assert shard_path(out, 0).exists() and not shard_path(out, 1).exists()
    assert not list(out.glob(".*tmp*"))  # an exception leaves no temp file behind
    # A hard kill mid-write leaves a temp file: it must never be taken for the shard.
    (out / ".shard-00001.npz.x1y2z3.tmp").write_bytes(b"half a zip")
    store = MaskStore(out)
    assert not store.complete and store.missing_shards() == [1, 2]
    with pytest.raises(FileNotFoundError, match=r"shard-00001\.npz \(images 4\.\.7\)"):
        store[5]
    first = shard_path(out, 0).read_bytes()

    dataset = FakeScenes(n=10)
    store = precompute_store(dataset, GRID, out, shard_size=4, progress=False)
    assert store.complete
    assert sorted(set(dataset.calls)) == [0, *range(4, 10)]  # image 0: the fingerprint only
    assert shard_path(out, 0).read_bytes() == first
    assert not list(out.glob(".*tmp*"))
    np.testing.assert_array_equal(store[5], _expected(dataset, GRID, 5))


def test_two_workers_write_the_same_bytes_as_one(tmp_path):
    dataset = FakeScenes(n=9)
    one = precompute_store(dataset, FH, tmp_path / "one", shard_size=2, progress=False)
    two = precompute_store(dataset, FH, tmp_path / "two", shard_size=2, workers=2, progress=False)
    assert one.complete and two.complete
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir())
    assert len(names) == 1 + 5
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_manifest_mismatch_is_a_clear_error(tmp_path):
    out = tmp_path / "s"
    precompute_store(FakeScenes(n=5), GRID, out, shard_size=2, progress=False)
    with pytest.raises(ValueError, match="grid_size.*other settings|other settings.*grid_size"):
        precompute_store(
            FakeScenes(n=5),
            MaskConfig(source="grid", grid_size=4),
            out,
            shard_size=2,
            progress=False,
        )
    with pytest.raises(ValueError, match="shard_size: store has 2, asked for 3"):
        precompute_store(FakeScenes(n=5), GRID, out, shard_size=3, progress=False)
    with pytest.raises(ValueError, match="dataset_length: store has 5, asked for 6"):
        precompute_store(FakeScenes(n=6), GRID, out, shard_size=2, progress=False)
    with pytest.raises(ValueError, match="dataset_fingerprint"):
        precompute_store(FakeScenes(n=5, seed=1), GRID, out, shard_size=2, progress=False)
    # Settings that do not change the masks (num_samples) reuse the store.
    store = precompute_store(
        FakeScenes(n=5),
        MaskConfig(source="grid", grid_size=3, num_samples=4),
        out,
        shard_size=2,
        progress=False,
    )
    assert store.complete


def test_precompute_shard_as_one_array_task(tmp_path):
    out = tmp_path / "s"
    factory = functools.partial(FakeScenes, n=7)
    path = precompute_shard(factory, FH, out, 1, shard_size=3)
    assert path == shard_path(out, 1) and path.exists()
    store = MaskStore(out)
    assert store.missing_shards() == [0, 2]
    np.testing.assert_array_equal(store[4], _expected(factory(), FH, 4))
    before = path.read_bytes()
    precompute_shard(factory, FH, out, 1, shard_size=3)  # idempotent
    assert path.read_bytes() == before
    for s in (0, 2):
        precompute_shard(factory, FH, out, s, shard_size=3)
    assert MaskStore(out).complete
    with pytest.raises(ValueError, match="shard_index=3"):
        precompute_shard(factory, FH, out, 3, shard_size=3)


def test_store_pickles_without_its_open_file(tmp_path):
    dataset = FakeScenes(n=4)
    store = precompute_store(dataset, GRID, tmp_path / "s", shard_size=2, progress=False)
    first = store[3]
    clone = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(clone[3], first)
    np.testing.assert_array_equal(clone[0], store[0])


def test_unreadable_store_and_shard_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
        MaskStore(tmp_path)
    out = tmp_path / "s"
    precompute_store(FakeScenes(n=4), GRID, out, shard_size=2, progress=False)
    shard_path(out, 1).write_bytes(b"garbage")
    with pytest.raises(ValueError, match="unreadable"):
        MaskStore(out)[2]
    with pytest.raises(ValueError, match="shards"):
        precompute_store(FakeScenes(n=4), GRID, out, shard_size=2, shards=[5], progress=False)


def test_bad_dataset_items_are_rejected(tmp_path):
    class Floats(FakeScenes):
        def __getitem__(self, i):
            return {"image": torch.zeros(3, 4, 4)}

    with pytest.raises(ValueError, match=r"expected uint8 \(3, H, W\)"):
        precompute_store(Floats(n=2), GRID, tmp_path / "s", progress=False)
