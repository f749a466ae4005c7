"""The sharded mask store: round trips, restart after a kill, parallel writers, manifests."""

import functools
import json
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


@pytest.mark.parametrize("start", ["fork", "spawn"])  # spawn: macOS's default, and Windows'
def test_two_workers_write_the_same_bytes_as_one(tmp_path, monkeypatch, start):
    monkeypatch.setattr("detcon.masks.store.POOL_START_METHOD", start)
    dataset = FakeScenes(n=9)
    one = precompute_store(dataset, FH, tmp_path / "one", shard_size=2, progress=False)
    two = precompute_store(dataset, FH, tmp_path / "two", shard_size=2, workers=2, progress=False)
    assert one.complete and two.complete
    locks = {".lock", ".precompute.lock"}
    names = sorted(p.name for p in (tmp_path / "one").iterdir() if p.name not in locks)
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir() if p.name not in locks)
    assert len(names) == 1 + 5  # the manifest (with the shards' checksums) and the shards
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
    # zipfile may quote a whole misread header: the cause is cut, the repair command kept
    message = str(MaskStore(out)._damaged(shard_path(out, 1), "damaged (" + "\\xed" * 2000 + ")"))
    assert len(message) < 800 and message.endswith("redoes damaged ones)")
    assert "detcon masks precompute" in message


def test_bad_dataset_items_are_rejected(tmp_path):
    class Floats(FakeScenes):
        def __getitem__(self, i):
            return {"image": torch.zeros(3, 4, 4)}

    with pytest.raises(ValueError, match=r"expected uint8 \(3, H, W\)"):
        precompute_store(Floats(n=2), GRID, tmp_path / "s", progress=False)


def _manifest(out):
    return json.loads((out / "manifest.json").read_text())


def test_precompute_redoes_truncated_and_corrupted_shards(tmp_path):
    """A rerun used to report a store with a truncated shard "complete" (the file existed)."""
    out, dataset = tmp_path / "s", FakeScenes(n=6)
    precompute_store(dataset, FH, out, shard_size=2, progress=False)
    good = [shard_path(out, s).read_bytes() for s in range(3)]
    records = _manifest(out)["shards"]
    assert [records[shard_path(out, s).name]["size"] for s in range(3)] == [len(g) for g in good]
    shard_path(out, 1).write_bytes(good[1][: len(good[1]) // 2])  # a copy cut short
    flipped = bytearray(good[2])
    flipped[len(flipped) // 2] ^= 0xFF  # one bad byte, the size unchanged
    shard_path(out, 2).write_bytes(bytes(flipped))
    lines = []
    store = precompute_store(dataset, FH, out, shard_size=2, progress=False, echo=lines.append)
    assert store.complete
    assert [shard_path(out, s).read_bytes() for s in range(3)] == good
    assert len(lines) == 2
    assert "shard-00001.npz: " in lines[0] and "truncated" in lines[0]
    assert "shard-00002.npz: " in lines[1] and "SHA-256" in lines[1]
    # An array task checks its shard the same way.
    shard_path(out, 0).write_bytes(good[0][:10])
    precompute_shard(functools.partial(FakeScenes, n=6), FH, out, 0, shard_size=2)
    assert shard_path(out, 0).read_bytes() == good[0]


def test_shards_without_a_record_are_checked_then_recorded(tmp_path):
    """A store written before shard records (or killed between a shard and its record)."""
    out, dataset = tmp_path / "s", FakeScenes(n=6)
    precompute_store(dataset, GRID, out, shard_size=2, progress=False)
    good = [shard_path(out, s).read_bytes() for s in range(3)]
    manifest = _manifest(out)
    del manifest["shards"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    shard_path(out, 1).write_bytes(good[1][:-7])
    lines = []
    precompute_store(dataset, GRID, out, shard_size=2, progress=False, echo=lines.append)
    assert [shard_path(out, s).read_bytes() for s in range(3)] == good
    assert len(lines) == 1 and "shard-00001.npz: unreadable" in lines[0]
    assert sorted(_manifest(out)["shards"]) == [shard_path(out, s).name for s in range(3)]


def test_training_refuses_a_store_of_other_masks_naming_both(tmp_path):
    """A store of FH masks used to train a run configured with grid masks, silently."""
    from dataclasses import replace

    from detcon.masks.store import open_for_training

    out, dataset = tmp_path / "s", FakeScenes(n=6)
    precompute_store(dataset, FH, out, shard_size=2, progress=False)
    assert open_for_training(out, build_mask_source(FH), dataset).complete
    with pytest.raises(ValueError, match=r"source: store has 'fh', asked for 'grid'"):
        open_for_training(out, build_mask_source(GRID), dataset)
    with pytest.raises(ValueError, match=r"'fh_scale': 100\.0.*asked for .*'fh_scale': 50\.0"):
        open_for_training(out, build_mask_source(replace(FH, fh_scale=50.0)), dataset)
    with pytest.raises(ValueError, match=r"dataset_fingerprint: store has 'sha256:"):
        open_for_training(out, build_mask_source(FH), FakeScenes(n=6, seed=1))
    with pytest.raises(ValueError, match=r"dataset_length: store has 6, asked for 7"):
        open_for_training(out, build_mask_source(FH), FakeScenes(n=7))
    # Settings that do not change the masks (num_samples) may differ.
    assert open_for_training(out, build_mask_source(replace(FH, num_samples=2)), dataset)


def test_training_refuses_a_store_of_a_folder_whose_images_moved(tmp_path):
    """A store is positional: one image renamed in a folder of the same length paired every
    later image with another's masks, silently when the sizes matched."""
    from PIL import Image

    from detcon.data.readers import ImageFolderDataset
    from detcon.masks.store import open_for_training

    rng = np.random.default_rng(0)
    for i in range(4):
        (tmp_path / "data" / "a").mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "data" / "a" / f"img{i}.png")
    out = tmp_path / "s"
    precompute_store(ImageFolderDataset(tmp_path / "data"), GRID, out, progress=False)
    assert open_for_training(out, build_mask_source(GRID), ImageFolderDataset(tmp_path / "data"))
    (tmp_path / "data" / "a" / "img1.png").rename(tmp_path / "data" / "a" / "img9.png")
    with pytest.raises(ValueError, match=r"dataset_fingerprint: store has 'sha256:"):
        open_for_training(out, build_mask_source(GRID), ImageFolderDataset(tmp_path / "data"))


def test_training_names_a_missing_truncated_or_damaged_shard_and_the_repair(tmp_path):
    from detcon.masks.store import open_for_training

    out, dataset = tmp_path / "s", FakeScenes(n=6)
    precompute_store(dataset, GRID, out, shard_size=2, progress=False, command="make-it")
    source = build_mask_source(GRID)
    good = shard_path(out, 1).read_bytes()
    shard_path(out, 1).write_bytes(good[:-3])
    with pytest.raises(ValueError, match=r"shard-00001\.npz': \d+ bytes.*run `make-it` again"):
        open_for_training(out, source, dataset)
    shard_path(out, 1).unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 3 shards missing.*run `make-it` again"):
        open_for_training(out, source, dataset)
    # Same-size damage is caught when the shard is read (its members' CRCs).
    flipped = bytearray(good)
    start = flipped.index(b"00001.npy") + len("00001.npy") + 100  # inside a member's data
    flipped[start] ^= 0xFF
    shard_path(out, 1).write_bytes(bytes(flipped))
    store = open_for_training(out, source, dataset)
    with pytest.raises(ValueError, match=r"shard-00001\.npz': (damaged|unreadable).*make-it"):
        [store[i] for i in (2, 3)]
    # A store made through the API (no command recorded) names the command's generic form.
    precompute_store(dataset, GRID, tmp_path / "api", shard_size=2, progress=False)
    hint = MaskStore(tmp_path / "api").repair_hint()
    assert f"detcon masks precompute --source grid --out {tmp_path / 'api'} --shard-size 2" in hint


def test_training_refuses_a_store_of_other_synthetic_scenes_with_the_same_first_scene(tmp_path):
    # Only scene 0 was hashed: the cpu profile's scenes with 1-4 or 3-4 objects instead of 2-4
    # often share it, and the store gave many images another scene's masks without a word.
    from detcon.config import load_pretrain_config
    from detcon.data.pretrain import build_base_dataset
    from detcon.masks.store import open_for_training

    def scenes(objects):
        data = {"num_images": 16, "scene_objects": list(objects)}
        return build_base_dataset(load_pretrain_config({"data": data}, profile="cpu"))

    same_first = [
        o
        for o in ((1, 4), (3, 4))
        if np.array_equal(scenes(o)[0]["image"], scenes((2, 4))[0]["image"])
    ]
    assert same_first  # scenes the first-image hash could not tell apart
    out = tmp_path / "s"
    precompute_store(scenes((2, 4)), GRID, out, progress=False)
    assert open_for_training(out, build_mask_source(GRID), scenes((2, 4)))
    with pytest.raises(ValueError, match=r"dataset_fingerprint: store has 'sha256:"):
        open_for_training(out, build_mask_source(GRID), scenes(same_first[0]))


def test_a_second_precompute_into_a_store_being_computed_is_refused(tmp_path, lock_held_elsewhere):
    """Two runs into one store computed the same shards twice, and the second's clean-up of
    temp files removed a shard the first was writing (its rename then failed)."""
    from detcon.masks.store import WRITER_LOCK
    from detcon.runs import PointBusyError

    out = tmp_path / "s"
    precompute_store(FakeScenes(n=4), GRID, out, shard_size=2, progress=False)
    with lock_held_elsewhere(out, WRITER_LOCK):
        temp = out / ".shard-00000.npz.0a1b2c3d.tmp"  # the other run's shard being written
        temp.write_bytes(b"PK")
        with pytest.raises(PointBusyError, match=r"is being computed by another process \(pid"):
            precompute_store(FakeScenes(n=4), GRID, out, shard_size=2, progress=False)
        assert temp.exists()
    precompute_store(FakeScenes(n=4), GRID, out, shard_size=2, progress=False)  # then it runs
    assert not temp.exists()
