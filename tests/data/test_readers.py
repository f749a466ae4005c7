"""Readers of the real datasets, on tiny fixtures written in each dataset's native layout."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from detcon.data.readers import (
    CITYSCAPES_LABEL_TO_TRAIN_ID,
    Cityscapes,
    CocoInstances,
    ImageFolderDataset,
    NyuDepthV2,
    VocSegmentation,
    instance_id_map,
    read_image,
)

torch.set_num_threads(1)

H, W = 32, 40


# ------------------------------------------------------------------------------------------------
# fixture writers


def _rgb(seed: int, h: int = H, w: int = W) -> np.ndarray:
    """A flat-coloured image with one differently coloured block: survives JPEG almost exactly."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), dtype=np.uint8)
    img[:] = rng.integers(30, 220, size=3, dtype=np.uint8)
    img[h // 4 : h // 2, w // 4 : w // 2] = rng.integers(30, 220, size=3, dtype=np.uint8)
    return img


def _save(path: Path, array: np.ndarray, **kwargs) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return array


def _assert_image(image: torch.Tensor, expected: np.ndarray, lossy: bool = False) -> None:
    assert image.dtype == torch.uint8
    assert tuple(image.shape) == (3, *expected.shape[:2])
    diff = np.abs(image.permute(1, 2, 0).numpy().astype(int) - expected.astype(int))
    assert diff.mean() < (3 if lossy else 1e-9)


def _corrupt(path: Path) -> None:
    path.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG stream " * 4)


# ------------------------------------------------------------------------------------------------
# shared decoding


def test_read_image_converts_grey_and_rgba_to_rgb(tmp_path):
    grey = _save(tmp_path / "g.png", np.full((H, W), 77, dtype=np.uint8))
    rgba = np.zeros((H, W, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    _save(tmp_path / "a.png", rgba)
    _assert_image(read_image(tmp_path / "g.png"), np.repeat(grey[..., None], 3, axis=2))
    assert read_image(tmp_path / "a.png")[:, 0, 0].tolist() == [200, 0, 0]


def test_read_image_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        read_image(tmp_path / "nope.jpg")
    _corrupt(tmp_path / "bad.jpg")
    with pytest.raises(ValueError, match="bad.jpg"):
        read_image(tmp_path / "bad.jpg")
    # a valid header with the pixel data cut off must fail here, not later in a transform
    _save(tmp_path / "t.png", _rgb(0, 64, 64))
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="t.png"):
        read_image(tmp_path / "t.png")


# ------------------------------------------------------------------------------------------------
# ImageFolder


def _imagefolder(root: Path) -> dict[str, np.ndarray]:
    images = {
        "n02/b.png": _rgb(1),
        "n01/a.JPEG": _rgb(2),
        "n01/c.png": _rgb(3, 20, 24),
    }
    for key, img in images.items():
        _save(root / key, img, **({"quality": 95} if key.endswith("JPEG") else {}))
    (root / "n01" / "notes.txt").write_text("not an image")
    return images


def test_imagefolder_returns_image_label_key(tmp_path):
    images = _imagefolder(tmp_path)
    ds = ImageFolderDataset(tmp_path)
    assert ds.classes == ["n01", "n02"]
    assert len(ds) == 3
    seen = {}
    for i in range(len(ds)):
        sample = ds[i]
        assert set(sample) == {"image", "label", "key"}
        seen[sample["key"]] = sample
        _assert_image(sample["image"], images[sample["key"]], lossy=sample["key"].endswith("JPEG"))
    assert [ds[i]["key"] for i in range(3)] == ["n01/a.JPEG", "n01/c.png", "n02/b.png"]
    assert {k: s["label"] for k, s in seen.items()} == {
        "n01/a.JPEG": 0,
        "n01/c.png": 0,
        "n02/b.png": 1,
    }


def test_capped_real_data_is_a_seeded_sample_not_a_prefix(tmp_path):
    """``num_train`` > 0 on a real dataset draws that many samples from the spec's seed; the
    readers list samples sorted by class, so the first ``n`` would hold one or two classes."""
    from detcon.evaluate.data import DataStore
    from detcon.evaluate.settings import DataSpec

    for c in range(10):
        for i in range(5):
            _save(tmp_path / "train" / f"c{c}" / f"{i}.png", _rgb(10 * c + i, 8, 8))

    def keys(**kw):
        spec = DataSpec("imagefolder", str(tmp_path), image_size=0, **kw)
        ds = DataStore().get(spec, "train")
        return [ds[i]["key"] for i in range(len(ds))], ds

    picked, ds = keys(num_train=10)
    assert len(picked) == 10 and ds.classes == [f"c{c}" for c in range(10)]  # attrs pass through
    assert len({k.split("/")[0] for k in picked}) >= 5  # a prefix of 10 covers 2 classes
    assert picked == sorted(picked)  # the readers' order kept
    # per-item lists follow the subset (the linear probe reads its labels from `samples`)
    assert [key for key, _ in ds.samples] == picked
    assert [label for _, label in ds.samples] == [ds[i]["label"] for i in range(len(ds))]
    assert keys(num_train=10)[0] == picked  # deterministic
    assert keys(num_train=10, seed=1)[0] != picked
    assert len(keys(num_train=0)[0]) == 50 and len(keys(num_train=99)[0]) == 50


def test_imagefolder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"<root>/<class>/<image>"):
        ImageFolderDataset(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no class sub-directories"):
        ImageFolderDataset(tmp_path)
    _imagefolder(tmp_path)
    (tmp_path / "n03").mkdir()
    with pytest.raises(FileNotFoundError, match="n03"):
        ImageFolderDataset(tmp_path)
    (tmp_path / "n03").rmdir()
    _corrupt(tmp_path / "n02" / "b.png")
    ds = ImageFolderDataset(tmp_path)
    with pytest.raises(ValueError, match=r"n02/b\.png"):
        ds[2]


# ------------------------------------------------------------------------------------------------
# COCO


def _box_mask(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _coco(root: Path, split: str = "val2017") -> dict:
    """Three images: 1 with polygon, RLE, crowd and degenerate-box annotations; 2 with none."""
    for i in (1, 2, 3):
        _save(root / split / f"{i:012d}.jpg", _rgb(i), quality=95)
    big = _box_mask(2, 30, 2, 38)  # 28 x 36, cat 18, compressed RLE
    rle = mask_utils.encode(np.asfortranarray(big))
    rle["counts"] = rle["counts"].decode("ascii")
    crowd = _box_mask(0, 4, 0, 40)  # crowd, uncompressed RLE as COCO stores crowds
    counts, prev, run = [], 0, 0
    for v in crowd.flatten(order="F"):  # column-major run lengths, starting with zeros
        if v != prev:
            counts.append(run)
            prev, run = v, 0
        run += 1
    counts.append(run)
    empty = mask_utils.encode(np.asfortranarray(np.zeros((H, W), dtype=np.uint8)))
    empty["counts"] = empty["counts"].decode("ascii")
    anns = [
        # a small square polygon inside the big instance, cat 1: 8 x 10 px
        {
            "id": 10,
            "image_id": 1,
            "category_id": 1,
            "iscrowd": 0,
            "area": 80.0,
            "bbox": [10, 8, 10, 8],
            "segmentation": [[10, 8, 20, 8, 20, 16, 10, 16]],
        },
        {
            "id": 11,
            "image_id": 1,
            "category_id": 18,
            "iscrowd": 0,
            "area": float(big.sum()),
            "bbox": [2, 2, 36, 28],
            "segmentation": rle,
        },
        {
            "id": 12,
            "image_id": 1,
            "category_id": 1,
            "iscrowd": 1,
            "area": float(crowd.sum()),
            "bbox": [0, 0, 40, 4],
            "segmentation": {"counts": counts, "size": [H, W]},
        },
        # zero-width box: dropped from the detection targets as torchvision's references do
        {
            "id": 13,
            "image_id": 1,
            "category_id": 90,
            "iscrowd": 0,
            "area": 0.0,
            "bbox": [5, 5, 0, 3],
            "segmentation": empty,
        },
        {
            "id": 14,
            "image_id": 3,
            "category_id": 90,
            "iscrowd": 0,
            "area": 100.0,
            "bbox": [30, 20, 20, 20],
            "segmentation": [[30, 20, 40, 20, 40, 32, 30, 32]],
        },
    ]
    data = {
        "images": [
            {"id": i, "file_name": f"{i:012d}.jpg", "height": H, "width": W} for i in (3, 1, 2)
        ],
        "annotations": anns,
        "categories": [{"id": c, "name": f"c{c}", "supercategory": "x"} for c in (90, 1, 18)],
    }
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return {"big": big}


def test_coco_instances_and_detection_targets(tmp_path, capsys):
    masks = _coco(tmp_path)
    ds = CocoInstances(tmp_path, split="val2017")
    assert capsys.readouterr().out == ""  # pycocotools' progress prints are swallowed
    assert len(ds) == 3 and ds.category_ids == (1, 18, 90) and ds.num_categories == 3

    s = ds[0]
    assert set(s) == {"image", "key", "image_id", "instances", "boxes", "labels", "masks"}
    assert s["key"] == "000000000001.jpg" and s["image_id"] == 1
    _assert_image(s["image"], _rgb(1), lossy=True)

    small = _box_mask(8, 16, 10, 20)
    # instances: 1 = the largest (big RLE), 2 = the small polygon painted over it; crowd excluded
    inst = s["instances"]
    assert inst.dtype == torch.int64 and tuple(inst.shape) == (H, W)
    expected = np.where(small == 1, 2, np.where(masks["big"] == 1, 1, 0))
    assert np.array_equal(inst.numpy(), expected)

    # detection targets: crowd and the zero-width box are dropped; order as in the file
    assert s["boxes"].dtype == torch.float32
    assert s["boxes"].tolist() == [[10, 8, 20, 16], [2, 2, 38, 30]]
    assert s["labels"].dtype == torch.int64 and s["labels"].tolist() == [1, 2]
    assert s["masks"].dtype == torch.uint8 and tuple(s["masks"].shape) == (2, H, W)
    assert np.array_equal(s["masks"][0].numpy(), small)
    assert np.array_equal(s["masks"][1].numpy(), masks["big"])

    empty = ds[1]  # an image without annotations is allowed
    assert empty["image_id"] == 2 and int(empty["instances"].abs().sum()) == 0
    assert tuple(empty["boxes"].shape) == (0, 4) and tuple(empty["labels"].shape) == (0,)
    assert tuple(empty["masks"].shape) == (0, H, W)

    clipped = ds[2]  # box running past the image border is clamped to it
    assert clipped["boxes"].tolist() == [[30, 20, 40, 32]]
    assert clipped["labels"].tolist() == [3]
    assert int((clipped["instances"] == 1).sum()) == 10 * 12


def test_coco_max_instances_keeps_largest(tmp_path):
    _coco(tmp_path)
    inst = CocoInstances(tmp_path, split="val2017", max_instances=1)[0]["instances"]
    assert inst.unique().tolist() == [0, 1] and int((inst == 1).sum()) == 28 * 36


def test_instance_id_map_orders_by_area_and_truncates():
    m = np.zeros((4, 6, 6), dtype=np.uint8)
    m[0, :2, :2] = 1  # area 4
    m[1] = 1  # area 36
    m[2, 4:, 4:] = 1  # area 4, tie with mask 0: the earlier mask wins the id
    out = instance_id_map(m, max_instances=2)  # mask 3 is empty
    assert out.dtype == np.int64
    assert (out[:2, :2] == 2).all() and (out[4:, 4:] == 1).all()
    assert int((out == 1).sum()) == 32 and int((out == 2).sum()) == 4
    out3 = instance_id_map(m, max_instances=16)
    assert sorted(np.unique(out3).tolist()) == [1, 2, 3]


def test_coco_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"instances_<split>\.json"):
        CocoInstances(tmp_path / "missing")
    _coco(tmp_path)
    with pytest.raises(FileNotFoundError, match="instances_train2017.json"):
        CocoInstances(tmp_path)  # default split train2017 has no annotation file
    (tmp_path / "annotations" / "instances_bad.json").write_text("{not json")
    (tmp_path / "bad").mkdir()
    with pytest.raises(ValueError, match="instances_bad.json"):
        CocoInstances(tmp_path, split="bad")
    with pytest.raises(ValueError, match="max_instances"):
        CocoInstances(tmp_path, split="val2017", max_instances=0)
    _corrupt(tmp_path / "val2017" / "000000000002.jpg")
    ds = CocoInstances(tmp_path, split="val2017")
    with pytest.raises(ValueError, match="000000000002.jpg"):
        ds[1]


# ------------------------------------------------------------------------------------------------
# PASCAL VOC


def _voc(root: Path) -> dict[str, np.ndarray]:
    voc = root / "VOCdevkit" / "VOC2012"
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[:21] = np.random.default_rng(0).integers(0, 256, size=(21, 3))
    palette[255] = 224  # VOC draws its ignore borders in a light cream
    labels = {}
    for n, sample_id in enumerate(("2007_000032", "2007_000039")):
        _save(voc / "JPEGImages" / f"{sample_id}.jpg", _rgb(n), quality=95)
        label = np.zeros((H, W), dtype=np.uint8)
        label[8:24, 10:30] = 255  # object border, ignored
        label[10:22, 12:28] = 15 + n  # person / potted plant
        label[0, :] = 20
        img = Image.fromarray(label, mode="P")
        img.putpalette(palette.flatten().tolist())
        (voc / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        img.save(voc / "SegmentationClass" / f"{sample_id}.png")
        labels[sample_id] = label
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000032\n2007_000039\n")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000039\n")
    return labels


def test_voc_returns_palette_indices_with_ignore(tmp_path):
    labels = _voc(tmp_path)
    assert VocSegmentation.num_classes == 21
    for root in (tmp_path, tmp_path / "VOCdevkit" / "VOC2012"):  # devkit parent or VOC2012
        ds = VocSegmentation(root, split="train")
        assert len(ds) == 2
        for i, (sample_id, label) in enumerate(labels.items()):
            s = ds[i]
            assert set(s) == {"image", "semantic", "key"} and s["key"] == sample_id
            _assert_image(s["image"], _rgb(i), lossy=True)
            assert s["semantic"].dtype == torch.int64
            assert np.array_equal(s["semantic"].numpy(), label.astype(np.int64))
            assert set(s["semantic"].unique().tolist()) == {0, 15 + i, 20, 255}
    assert [s["key"] for s in VocSegmentation(tmp_path, split="val")] == ["2007_000039"]


def test_voc_train_aug_in_its_native_layout(tmp_path):
    # The 10,582-image train_aug set ships its grey-level labels in SegmentationClassAug and,
    # from DeepLab, a list of path pairs; the reader looked in SegmentationClass and took
    # "/JPEGImages/<id>.jpg" for an id.
    labels = _voc(tmp_path)
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    aug_only = "2008_000002"  # an SBD image: no SegmentationClass label
    _save(voc / "JPEGImages" / f"{aug_only}.jpg", _rgb(7), quality=95)
    (voc / "SegmentationClassAug").mkdir()
    grey = {**labels, aug_only: np.full((H, W), 3, dtype=np.uint8)}
    for sample_id, label in grey.items():
        Image.fromarray(label, mode="L").save(voc / "SegmentationClassAug" / f"{sample_id}.png")
    lines = [f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png" for i in grey]
    (voc / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("\n".join(lines) + "\n")
    ds = VocSegmentation(tmp_path, split="train_aug")
    assert [s["key"] for s in ds] == list(grey)
    assert set(ds[2]["semantic"].unique().tolist()) == {3}
    assert VocSegmentation(tmp_path, split="train").label_dir == "SegmentationClass"
    # SegmentationClassAug put beside VOC2012, not inside: the error named SegmentationClass only
    (voc / "SegmentationClassAug").rename(voc.parent / "SegmentationClassAug")
    with pytest.raises(FileNotFoundError, match=r"train_aug's labels .* belong in .*VOC2012/Segm"):
        VocSegmentation(tmp_path, split="train_aug")


def test_voc_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"JPEGImages/<id>\.jpg"):
        VocSegmentation(tmp_path / "missing")
    _voc(tmp_path)
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    with pytest.raises(FileNotFoundError, match="trainval.txt"):
        VocSegmentation(tmp_path, split="trainval")
    (voc / "SegmentationClass" / "2007_000039.png").rename(voc / "moved.png")
    with pytest.raises(FileNotFoundError, match="2007_000039.png"):
        VocSegmentation(tmp_path)
    # an RGB colour rendering in place of the palette label is rejected, naming the file
    _save(voc / "SegmentationClass" / "2007_000039.png", _rgb(5))
    with pytest.raises(ValueError, match="2007_000039.png.*mode 'RGB'"):
        VocSegmentation(tmp_path)[1]
    _save(voc / "SegmentationClass" / "2007_000039.png", np.full((H, W), 50, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\[50\]"):
        VocSegmentation(tmp_path)[1]
    _save(voc / "SegmentationClass" / "2007_000039.png", np.zeros((H, W + 1), dtype=np.uint8))
    with pytest.raises(ValueError, match="does not match"):
        VocSegmentation(tmp_path)[1]
    _corrupt(voc / "JPEGImages" / "2007_000032.jpg")
    with pytest.raises(ValueError, match="2007_000032.jpg"):
        VocSegmentation(tmp_path)[0]


# ------------------------------------------------------------------------------------------------
# Cityscapes


def _cityscapes(root: Path, split: str = "val") -> dict[str, np.ndarray]:
    ids = {}
    for n, (city, frame) in enumerate(
        [("aachen", "aachen_000000_000019"), ("bonn", "bonn_000001_000019")]
    ):
        _save(root / "leftImg8bit" / split / city / f"{frame}_leftImg8bit.png", _rgb(n))
        label = np.zeros((H, W), dtype=np.uint8)  # 0 unlabeled
        label[:, 5:10] = 7  # road
        label[:, 10:15] = 26  # car
        label[:, 15:20] = 33  # bicycle
        label[:, 20:25] = 4 + n  # static / dynamic
        label[:, 25:30] = 29  # caravan
        _save(root / "gtFine" / split / city / f"{frame}_gtFine_labelIds.png", label)
        _save(root / "gtFine" / split / city / f"{frame}_gtFine_color.png", _rgb(9))
        ids[f"{city}/{frame}"] = label
    return ids


def test_cityscapes_label_table_is_the_official_one():
    # the 19 evaluated classes, train ids 0..18 in labelId order (cityscapesScripts labels.py)
    assert list(CITYSCAPES_LABEL_TO_TRAIN_ID) == [
        7,
        8,
        11,
        12,
        13,
        17,
        19,
        20,
        21,
        22,
        23,
        24,
        25,
        26,
        27,
        28,
        31,
        32,
        33,
    ]
    assert list(CITYSCAPES_LABEL_TO_TRAIN_ID.values()) == list(range(19))


def test_cityscapes_maps_label_ids_to_train_ids(tmp_path):
    labels = _cityscapes(tmp_path)
    ds = Cityscapes(tmp_path, split="val")
    assert Cityscapes.num_classes == 19 and len(ds) == 2
    for i, key in enumerate(labels):
        s = ds[i]
        assert set(s) == {"image", "semantic", "key"} and s["key"] == key
        _assert_image(s["image"], _rgb(i))
        sem = s["semantic"]
        assert sem.dtype == torch.int64 and tuple(sem.shape) == (H, W)
        assert (sem[:, 5:10] == 0).all() and (sem[:, 10:15] == 13).all()
        assert (sem[:, 15:20] == 18).all()
        assert (sem[:, :5] == 255).all() and (sem[:, 20:] == 255).all()


def test_cityscapes_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"leftImg8bit/<split>/<city>"):
        Cityscapes(tmp_path / "missing")
    _cityscapes(tmp_path)
    with pytest.raises(FileNotFoundError, match="leftImg8bit/train"):
        Cityscapes(tmp_path, split="train")
    label = tmp_path / "gtFine/val/bonn/bonn_000001_000019_gtFine_labelIds.png"
    label.rename(tmp_path / "moved.png")
    with pytest.raises(FileNotFoundError, match="bonn_000001_000019_gtFine_labelIds.png"):
        Cityscapes(tmp_path, split="val")
    (tmp_path / "moved.png").rename(label)
    _corrupt(tmp_path / "leftImg8bit/val/aachen/aachen_000000_000019_leftImg8bit.png")
    with pytest.raises(ValueError, match="aachen_000000_000019_leftImg8bit.png"):
        Cityscapes(tmp_path, split="val")[0]


# ------------------------------------------------------------------------------------------------
# NYU Depth v2


def _nyu_arrays(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` frames (H, W, 3) uint8 and depths (H, W) float32 metres, each frame distinct."""
    images = np.stack([_rgb(10 + i) for i in range(n)])
    yy, xx = np.mgrid[0:H, 0:W]
    depths = np.stack([(0.5 + i + 0.01 * yy + 0.001 * xx).astype(np.float32) for i in range(n)])
    return images, depths


def _nyu_mat(path: Path, n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    h5py = pytest.importorskip("h5py", reason="h5py not installed: the NYU .mat reader needs it")
    images, depths = _nyu_arrays(n)
    with h5py.File(path, "w") as f:  # MATLAB v7.3 layout as h5py sees it: axes reversed
        f["images"] = images.transpose(0, 3, 2, 1)  # (N, 3, W, H)
        f["depths"] = depths.transpose(0, 2, 1)  # (N, W, H)
    return images, depths


@pytest.mark.filterwarnings("ignore:NYU Depth v2. no split_file")
def test_nyu_mat_transposes_and_splits(tmp_path):
    images, depths = _nyu_mat(tmp_path / NyuDepthV2.MAT_NAME)
    train = NyuDepthV2(tmp_path / NyuDepthV2.MAT_NAME, split="train")
    test = NyuDepthV2(tmp_path, split="test")  # the folder holding the .mat works too
    # first-N rule: round(3 * 795 / 1449) = 2 train frames, the rest test
    assert train.keys == ["0", "1"] and test.keys == ["2"]
    for ds, frames in ((train, [0, 1]), (test, [2])):
        for i, frame in enumerate(frames):
            s = ds[i]
            assert set(s) == {"image", "depth", "key"} and s["key"] == str(frame)
            _assert_image(s["image"], images[frame])
            assert s["depth"].dtype == torch.float32
            assert np.array_equal(s["depth"].numpy(), depths[frame])
    # DataLoader workers get a pickled copy: the open HDF5 handle must not travel with it
    clone = pickle.loads(pickle.dumps(train))
    assert np.array_equal(clone[1]["depth"].numpy(), depths[1])


def test_nyu_mat_split_files(tmp_path):
    from scipy.io import savemat

    images, depths = _nyu_mat(tmp_path / "nyu.mat")
    savemat(
        tmp_path / "splits.mat", {"trainNdxs": np.array([[1], [3]]), "testNdxs": np.array([[2]])}
    )
    ds = NyuDepthV2(tmp_path / "nyu.mat", split="train", split_file=tmp_path / "splits.mat")
    assert ds.keys == ["0", "2"]
    assert np.array_equal(ds[1]["depth"].numpy(), depths[2])
    ds = NyuDepthV2(tmp_path / "nyu.mat", split="test", split_file=tmp_path / "splits.mat")
    assert ds.keys == ["1"]
    (tmp_path / "test.txt").write_text("3\n1\n")
    assert NyuDepthV2(tmp_path / "nyu.mat", "test", split_file=tmp_path / "test.txt").keys == [
        "2",
        "0",
    ]
    (tmp_path / "bad.txt").write_text("4\n")
    with pytest.raises(ValueError, match="outside 1..3"):
        NyuDepthV2(tmp_path / "nyu.mat", "test", split_file=tmp_path / "bad.txt")
    # splits.mat beside the data is the split when none is named (the paper profile names none)
    assert NyuDepthV2(tmp_path / "nyu.mat", split="train").keys == ["0", "2"]


def test_nyu_mat_without_a_split_file_warns_that_its_split_is_not_official(tmp_path):
    _nyu_mat(tmp_path / "nyu.mat")
    with pytest.warns(UserWarning, match="not the official split"):
        assert NyuDepthV2(tmp_path / "nyu.mat", split="train").keys == ["0", "1"]


def test_nyu_folder_png_and_npy(tmp_path):
    images, depths = _nyu_arrays(2)
    split = tmp_path / "test"
    for i, stem in enumerate(("0001", "0002")):
        _save(split / "rgb" / f"{stem}.png", images[i])
    millimetres = np.round(depths[0] * 1000).astype(np.uint16)
    millimetres[0, 0] = 0  # invalid pixel
    _save(split / "depth" / "0001.png", millimetres)
    metres = depths[1].copy()
    metres[1, 1] = np.nan  # non-finite is invalid too
    np.save(split / "depth" / "0002.npy", metres)

    ds = NyuDepthV2(tmp_path, split="test")
    assert len(ds) == 2
    a, b = ds[0], ds[1]
    assert a["key"] == "0001" and b["key"] == "0002"
    _assert_image(a["image"], images[0])
    _assert_image(b["image"], images[1])
    assert a["depth"].dtype == torch.float32 and b["depth"].dtype == torch.float32
    np.testing.assert_allclose(a["depth"].numpy(), millimetres / 1000.0, rtol=0, atol=1e-6)
    assert float(a["depth"][0, 0]) == 0.0 and float(a["depth"][5, 5]) > 0.5
    expected = np.where(np.isnan(metres), 0.0, metres)
    assert np.array_equal(b["depth"].numpy(), expected)


def test_nyu_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nyu_depth_v2_labeled\.mat.*rgb"):
        NyuDepthV2(tmp_path / "missing")
    (tmp_path / "train" / "rgb").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="depth"):
        NyuDepthV2(tmp_path)
    _save(tmp_path / "train" / "rgb" / "0001.png", _rgb(0))
    (tmp_path / "train" / "depth").mkdir()
    with pytest.raises(FileNotFoundError, match=r"0001\.npy"):
        NyuDepthV2(tmp_path)
    np.save(tmp_path / "train" / "depth" / "0001.npy", np.zeros((H, W + 2), np.float32))
    with pytest.raises(ValueError, match="does not match"):
        NyuDepthV2(tmp_path)[0]
    # millimetres in a .npy read as metres put every pixel past the 10 m cap: refused
    np.save(tmp_path / "train" / "depth" / "0001.npy", np.full((H, W), 2500, np.uint16))
    with pytest.raises(ValueError, match="dtype uint16; a .npy holds float metres"):
        NyuDepthV2(tmp_path)[0]
    _corrupt(tmp_path / "train" / "rgb" / "0001.png")
    with pytest.raises(ValueError, match="0001.png"):
        NyuDepthV2(tmp_path)[0]
    (tmp_path / "not.mat").write_bytes(b"MATLAB 5.0 MAT-file, not HDF5")
    pytest.importorskip("h5py", reason="h5py not installed: the NYU .mat reader needs it")
    with pytest.raises(ValueError, match=r"not\.mat"):
        NyuDepthV2(tmp_path / "not.mat")
