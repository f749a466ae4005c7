"""Readers for the real datasets of the paper profile, in their native on-disk layouts.

The paper profile's datasets: docs/design.md §1 (pretraining) and §5 (evaluation).

Nothing here downloads: each reader expects the dataset already on disk as its publisher ships it,
checks that layout when it is built (a missing or malformed root fails at once, naming the layout it
expected) and decodes one sample per ``__getitem__``. Every sample is a dict holding ``image``, a
``torch.uint8`` tensor ``(3, H, W)`` in RGB, plus the keys of its task:

=====================  ==================================================================
``ImageFolderDataset``  ``label`` (class index), ``key`` (relative path; mask-store lookup)
``CocoInstances``       ``key``, ``image_id``, ``instances`` (DetCon ground-truth id map),
                        ``boxes``, ``labels``, ``masks`` (Mask R-CNN targets)
``VocSegmentation``     ``key``, ``semantic`` (21 classes, 255 = ignore)
``Cityscapes``          ``key``, ``semantic`` (19 train ids, 255 = ignore)
``NyuDepthV2``          ``key``, ``depth`` (float32 metres, 0 = invalid)
=====================  ==================================================================

Samples are returned at their native resolution; resizing, cropping and normalisation belong to the
task's transform. A corrupt or truncated file raises ``ValueError`` naming the file.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

__all__ = [
    "CITYSCAPES_LABEL_TO_TRAIN_ID",
    "Cityscapes",
    "CocoInstances",
    "ImageFolderDataset",
    "NyuDepthV2",
    "VocSegmentation",
    "instance_id_map",
    "read_image",
]

IGNORE_INDEX = 255

# Extensions torchvision's ImageFolder accepts for images (ImageNet ships ``.JPEG``).
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


# ------------------------------------------------------------------------------------------------
# decoding shared by every reader


def _open_image(path: Path) -> Image.Image:
    """Open and fully decode one image file with PIL; a corrupt file names itself in the error.

    ``Image.open`` only reads the header, so ``load()`` is called here to catch truncated or
    damaged pixel data now rather than somewhere inside a transform.
    """
    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"corrupt or unreadable image file {path}: {err}") from err
    return img


def read_image(path: str | os.PathLike[str]) -> torch.Tensor:
    """Decode an image file to RGB.

    Returns:
        ``torch.uint8`` tensor ``(3, H, W)``, values in [0, 255]; grey, palette, CMYK and RGBA
        files are converted to RGB (alpha dropped). Its memory is the decoder's interleaved
        (H, W, 3) buffer seen channel-first (a permuted, non-contiguous view): the resize
        kernels run about twice as fast on it as on planar memory, and no copy is made
        (benchmarks/bench_augment.py). Call ``.contiguous()`` where planar memory is needed.
    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a decodable image (the message names the file).
    """
    img = _open_image(Path(path)).convert("RGB")
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)


def _read_label_map(path: Path, *, modes: Sequence[str], size: tuple[int, int]) -> np.ndarray:
    """Decode a single-channel label/depth PNG to its raw stored values (no colour conversion).

    ``modes`` are the PIL modes the dataset ships (palette ``P``, 8-bit ``L``, 16-bit ``I;16``);
    anything else, e.g. an RGB-coloured visualisation saved in place of the label file, is an
    error. ``size`` is the ``(H, W)`` of the paired image, which the label must match.
    """
    img = _open_image(path)
    if img.mode not in modes:
        raise ValueError(
            f"{path}: label image has PIL mode {img.mode!r}, expected one of {list(modes)} "
            "(raw ids, not a colour visualisation)"
        )
    arr = np.asarray(img)
    if arr.shape != size:
        raise ValueError(f"{path}: label size {arr.shape} does not match its image size {size}")
    return arr


def _hw(image: torch.Tensor) -> tuple[int, int]:
    """``(H, W)`` of a ``(3, H, W)`` image tensor."""
    return int(image.shape[1]), int(image.shape[2])


def _require_dir(path: Path, layout: str) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"directory not found: {path}; expected {layout}")


def _require_file(path: Path, layout: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}; expected {layout}")


def _read_id_list(path: Path, layout: str) -> list[str]:
    """Read a split file with one sample id per line (VOC ``ImageSets``, NYU split lists). A
    line that starts with a path (DeepLab's ``train_aug.txt``: ``/JPEGImages/<id>.jpg
    /SegmentationClassAug/<id>.png``) gives the file name's stem."""
    _require_file(path, layout)
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    ids = [Path(i).stem if "/" in i else i for i in ids]
    if not ids:
        raise ValueError(f"split file {path} lists no samples; expected one id per line")
    return ids


# ------------------------------------------------------------------------------------------------
# ImageNet-style folders


class ImageFolderDataset(Dataset):
    """ImageNet-style class folders: ``<root>/<class>/<image>.JPEG``.

    Classes are the sorted sub-directory names of ``root`` (the same indices as torchvision's
    ``ImageFolder``); images are files with a common image extension, any case, in sorted order.
    A class folder without images is an error, as in torchvision, so class indices never shift
    silently.

    Sample: ``image`` uint8 ``(3, H, W)``; ``label`` int in ``[0, len(classes))``; ``key`` the
    POSIX path relative to ``root`` (``"n01440764/n01440764_10026.JPEG"``), the key under which
    precomputed masks are stored.
    """

    LAYOUT = "<root>/<class>/<image>.JPEG (one sub-directory of images per class)"

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        _require_dir(self.root, self.LAYOUT)
        self.classes = sorted(e.name for e in os.scandir(self.root) if e.is_dir())
        if not self.classes:
            raise FileNotFoundError(
                f"no class sub-directories in {self.root}; expected {self.LAYOUT}"
            )
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.samples: list[tuple[str, int]] = []
        for name in self.classes:
            files = sorted(
                e.name
                for e in os.scandir(self.root / name)
                if e.is_file() and e.name.lower().endswith(_IMAGE_EXTENSIONS)
            )
            if not files:
                raise FileNotFoundError(
                    f"class folder {self.root / name} holds no images "
                    f"({', '.join(_IMAGE_EXTENSIONS)}); expected {self.LAYOUT}"
                )
            self.samples.extend((f"{name}/{f}", self.class_to_idx[name]) for f in files)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        key, label = self.samples[index]
        return {"image": read_image(self.root / key), "label": label, "key": key}

    def item_keys(self) -> list[str]:
        """Every item's ``key``, in index order, without reading an image (mask stores record
        a hash of them: a store is positional)."""
        return [key for key, _ in self.samples]


# ------------------------------------------------------------------------------------------------
# COCO instances


class CocoInstances(Dataset):
    """COCO instances: ``<root>/annotations/instances_<split>.json`` and ``<root>/<split>/*.jpg``.

    Sample (``H, W`` the image size, ``N`` the non-crowd instances with a non-empty box):

    - ``image`` uint8 ``(3, H, W)``; ``key`` the file name (``"000000000139.jpg"``); ``image_id``
      the COCO image id (for pycocotools' ``COCOeval``).
    - ``instances`` int64 ``(H, W)``: DetCon's ground-truth masks (docs/design.md §4.10, up to 16):
      0 is background, ids ``1..n`` the ``max_instances`` largest non-crowd instances by mask
      area, id 1 the largest. They are painted largest first, so where instances overlap the
      smaller one stays visible instead of being swallowed by the larger one.
    - Mask R-CNN targets, following torchvision's detection references (``coco_utils.py``:
      crowd annotations are dropped from training targets; boxes clamped to the image and
      degenerate boxes removed): ``boxes`` float32 ``(N, 4)`` xyxy in pixels, ``labels`` int64
      ``(N,)`` contiguous category indices in ``1..len(category_ids)`` (0 is background),
      ``masks`` uint8 ``(N, H, W)`` in {0, 1}.

    Images without annotations are kept (empty targets, an all-zero ``instances`` map).

    ``category_ids[i]`` is the COCO category id of contiguous label ``i + 1`` (sorted COCO ids;
    for COCO 2017 that maps the 80 ids in 1..90 onto 1..80).

    Only the annotation file and the image directory are checked when the dataset is built;
    listing 118k images up front would make start-up slow on cluster file systems, so a missing
    image file is reported when it is read.
    """

    LAYOUT = (
        "<root>/annotations/instances_<split>.json and <root>/<split>/*.jpg "
        "(the COCO 2017 download, e.g. split='train2017')"
    )

    def __init__(
        self, root: str | os.PathLike[str], split: str = "train2017", max_instances: int = 16
    ) -> None:
        from pycocotools.coco import COCO  # import here: only COCO users need pycocotools

        if max_instances < 1:
            raise ValueError(f"max_instances must be >= 1, got {max_instances}")
        self.root = Path(root)
        self.split = split
        self.max_instances = max_instances
        _require_dir(self.root, self.LAYOUT)
        self.ann_file = self.root / "annotations" / f"instances_{split}.json"
        _require_file(self.ann_file, self.LAYOUT)
        self.image_dir = self.root / split
        _require_dir(self.image_dir, self.LAYOUT)
        try:
            data = json.loads(self.ann_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"annotation file {self.ann_file} is not valid JSON: {err}") from err
        missing = [
            k
            for k in ("images", "annotations", "categories")
            if not isinstance(data, dict) or k not in data
        ]
        if missing:
            raise ValueError(
                f"annotation file {self.ann_file} lacks {missing}; expected a COCO "
                "instances file with 'images', 'annotations' and 'categories'"
            )
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress to stdout
            self.coco.createIndex()
        self.ids = sorted(self.coco.imgs)
        if not self.ids:
            raise ValueError(f"annotation file {self.ann_file} lists no images")
        self.category_ids = tuple(sorted(self.coco.cats))
        self.cat_to_label = {c: i + 1 for i, c in enumerate(self.category_ids)}

    @property
    def num_categories(self) -> int:
        """Object categories, background excluded (80 for COCO 2017)."""
        return len(self.category_ids)

    def __len__(self) -> int:
        return len(self.ids)

    def item_keys(self) -> list[str]:
        """Every item's ``key`` (the image's file name), in index order, without reading an
        image (mask stores record a hash of them: a store is positional)."""
        return [self.coco.imgs[i]["file_name"] for i in self.ids]

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        image = read_image(path)
        h, w = _hw(image)
        if (h, w) != (info["height"], info["width"]):
            raise ValueError(
                f"{path}: decoded size {(h, w)} differs from the annotation's "
                f"{(info['height'], info['width'])} in {self.ann_file}"
            )
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        masks = np.zeros((len(anns), h, w), dtype=np.uint8)
        for i, ann in enumerate(anns):
            masks[i] = self.coco.annToMask(ann)  # polygons and RLE alike

        boxes = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)  # xywh
        boxes[:, 2:] += boxes[:, :2]  # -> xyxy
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        unknown = {a["category_id"] for a in anns} - self.cat_to_label.keys()
        if unknown:
            raise ValueError(
                f"{self.ann_file}: image {image_id} has annotations with category "
                f"ids {sorted(unknown)} not listed in 'categories'"
            )
        labels = np.array([self.cat_to_label[a["category_id"]] for a in anns], dtype=np.int64)

        return {
            "image": image,
            "key": info["file_name"],
            "image_id": int(image_id),
            "instances": torch.from_numpy(instance_id_map(masks, self.max_instances)),
            "boxes": torch.from_numpy(boxes[keep]),
            "labels": torch.from_numpy(labels[keep]),
            "masks": torch.from_numpy(masks[keep]),
        }


def instance_id_map(masks: np.ndarray, max_instances: int) -> np.ndarray:
    """Flatten overlapping binary masks into one id map, keeping the largest ones.

    Args:
        masks: ``(N, H, W)`` array, non-zero inside each instance.
        max_instances: keep at most this many instances, the largest by pixel area (ties: the
            earlier mask first); empty masks are never kept.
    Returns:
        int64 ``(H, W)``: 0 background, ``k`` (1-based) for the k-th largest kept instance.
        Larger instances are painted first so smaller ones drawn over them remain visible.
    """
    out = np.zeros(masks.shape[1:], dtype=np.int64)
    areas = masks.astype(bool).sum(axis=(1, 2))
    order = np.argsort(-areas, kind="stable")[:max_instances]
    for new_id, i in enumerate(order, start=1):
        if areas[i] == 0:
            break
        out[masks[i] != 0] = new_id
    return out


# ------------------------------------------------------------------------------------------------
# PASCAL VOC 2012 segmentation


class VocSegmentation(Dataset):
    """PASCAL VOC 2012 semantic segmentation in the ``VOCdevkit/VOC2012`` layout.

    ``root`` is the ``VOC2012`` folder (or a folder holding ``VOCdevkit/VOC2012``). The split's ids
    come from ``ImageSets/Segmentation/<split>.txt``, images from ``JPEGImages/<id>.jpg`` and labels
    from ``<label_dir>/<id>.png``: the official palette PNGs in ``SegmentationClass``, or the
    grey-level ``SegmentationClassAug`` of the 10,582-image ``train_aug`` set (SBD + VOC) that
    BYOL/DetCon fine-tune on, with its ``train_aug.txt`` placed in ``ImageSets/Segmentation``
    (one id a line, or DeepLab's pairs of paths). ``label_dir`` None: ``SegmentationClassAug``
    for ``train_aug`` where that folder exists, else ``SegmentationClass``.

    Sample: ``image`` uint8 ``(3, H, W)``; ``semantic`` int64 ``(H, W)`` with classes
    ``0..20`` (0 background) and 255 = ignore (the object borders); ``key`` the image id.
    """

    num_classes = 21
    LAYOUT = (
        "<root>/ImageSets/Segmentation/<split>.txt, <root>/JPEGImages/<id>.jpg and "
        "<root>/SegmentationClass/<id>.png (root = VOCdevkit/VOC2012)"
    )

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        label_dir: str | None = None,
    ) -> None:
        root = Path(root)
        if not (root / "JPEGImages").is_dir() and (root / "VOCdevkit" / "VOC2012").is_dir():
            root = root / "VOCdevkit" / "VOC2012"
        if label_dir is None:
            aug = split == "train_aug" and (root / "SegmentationClassAug").is_dir()
            label_dir = "SegmentationClassAug" if aug else "SegmentationClass"
        self.root, self.split, self.label_dir = root, split, label_dir
        label_layout = self.LAYOUT
        if split == "train_aug" and label_dir == "SegmentationClass":
            label_layout += (
                f"; train_aug's labels (VOC and SBD, 10,582 images) belong in "
                f"{root / 'SegmentationClassAug'}, which does not exist"
            )
        _require_dir(root, self.LAYOUT)
        _require_dir(root / "JPEGImages", self.LAYOUT)
        _require_dir(root / label_dir, label_layout)
        self.ids = _read_id_list(root / "ImageSets" / "Segmentation" / f"{split}.txt", self.LAYOUT)
        for sample_id in self.ids:
            _require_file(self._image_path(sample_id), self.LAYOUT)
            _require_file(self._label_path(sample_id), label_layout)

    def _image_path(self, sample_id: str) -> Path:
        return self.root / "JPEGImages" / f"{sample_id}.jpg"

    def _label_path(self, sample_id: str) -> Path:
        return self.root / self.label_dir / f"{sample_id}.png"

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample_id = self.ids[index]
        image = read_image(self._image_path(sample_id))
        path = self._label_path(sample_id)
        # Palette PNG: the stored values are the class indices, the palette only colours them.
        label = _read_label_map(path, modes=("P", "L"), size=_hw(image))
        bad = np.setdiff1d(np.unique(label), [*range(self.num_classes), IGNORE_INDEX])
        if bad.size:
            raise ValueError(f"{path}: label values {bad.tolist()} outside 0..20 and 255")
        return {
            "image": image,
            "semantic": torch.from_numpy(label.astype(np.int64)),
            "key": sample_id,
        }


# ------------------------------------------------------------------------------------------------
# Cityscapes


# labelId -> trainId for the 19 evaluated classes, from the label definitions of the official
# cityscapesScripts (cityscapesscripts/helpers/labels.py, mcordts/cityscapesScripts). Every other
# labelId (unlabeled, ego vehicle, rectification border, out of roi, static, dynamic, ground,
# parking, rail track, guard rail, bridge, tunnel, polegroup, caravan, trailer; license plate has
# labelId -1 and is never stored) has trainId 255 = ignore.
CITYSCAPES_LABEL_TO_TRAIN_ID: dict[int, int] = {
    7: 0,  # road
    8: 1,  # sidewalk
    11: 2,  # building
    12: 3,  # wall
    13: 4,  # fence
    17: 5,  # pole
    19: 6,  # traffic light
    20: 7,  # traffic sign
    21: 8,  # vegetation
    22: 9,  # terrain
    23: 10,  # sky
    24: 11,  # person
    25: 12,  # rider
    26: 13,  # car
    27: 14,  # truck
    28: 15,  # bus
    31: 16,  # train
    32: 17,  # motorcycle
    33: 18,  # bicycle
}

_CITYSCAPES_LUT = np.full(256, IGNORE_INDEX, dtype=np.int64)
for _label_id, _train_id in CITYSCAPES_LABEL_TO_TRAIN_ID.items():
    _CITYSCAPES_LUT[_label_id] = _train_id


class Cityscapes(Dataset):
    """Cityscapes fine annotations: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with
    ``gtFine/<split>/<city>/*_gtFine_labelIds.png``.

    Sample: ``image`` uint8 ``(3, H, W)``; ``semantic`` int64 ``(H, W)`` in the 19 train ids
    ``0..18`` with 255 = ignore (mapping: ``CITYSCAPES_LABEL_TO_TRAIN_ID``); ``key``
    ``"<city>/<city>_<seq>_<frame>"``.
    """

    num_classes = 19
    LAYOUT = (
        "<root>/leftImg8bit/<split>/<city>/*_leftImg8bit.png and "
        "<root>/gtFine/<split>/<city>/*_gtFine_labelIds.png"
    )

    def __init__(self, root: str | os.PathLike[str], split: str = "train") -> None:
        self.root, self.split = Path(root), split
        image_root = self.root / "leftImg8bit" / split
        label_root = self.root / "gtFine" / split
        _require_dir(image_root, self.LAYOUT)
        _require_dir(label_root, self.LAYOUT)
        self.keys = sorted(
            f"{p.parent.name}/{p.name[: -len('_leftImg8bit.png')]}"
            for p in image_root.glob("*/*_leftImg8bit.png")
        )
        if not self.keys:
            raise FileNotFoundError(
                f"no *_leftImg8bit.png under {image_root}; expected {self.LAYOUT}"
            )
        for key in self.keys:
            _require_file(self._label_path(key), self.LAYOUT)

    def _image_path(self, key: str) -> Path:
        return self.root / "leftImg8bit" / self.split / f"{key}_leftImg8bit.png"

    def _label_path(self, key: str) -> Path:
        return self.root / "gtFine" / self.split / f"{key}_gtFine_labelIds.png"

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> dict[str, Any]:
        key = self.keys[index]
        image = read_image(self._image_path(key))
        label_ids = _read_label_map(self._label_path(key), modes=("L", "P"), size=_hw(image))
        return {
            "image": image,
            "semantic": torch.from_numpy(_CITYSCAPES_LUT[label_ids]),
            "key": key,
        }


# ------------------------------------------------------------------------------------------------
# NYU Depth v2


NYU_NUM_TRAIN = 795  # the standard split of the 1449 labelled frames (splits.mat): 795 / 654
NYU_NUM_LABELLED = 1449


class NyuDepthV2(Dataset):
    """NYU Depth v2, from the labelled ``.mat`` release or from an extracted folder.

    1. ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3, i.e. HDF5; ``root_or_mat`` is the file or a
       folder holding it). h5py sees MATLAB's column-major arrays with their axes reversed:
       ``images`` is ``(N, 3, W, H)`` uint8 and ``depths`` ``(N, W, H)`` float metres, so both are
       transposed back here. The split is chosen by ``split_file``: the official ``splits.mat``
       (``trainNdxs`` / ``testNdxs``, 1-based) or a text file of 1-based frame indices, one per
       line, for that split; without one, ``splits.mat`` beside the ``.mat`` file. Without
       either, the first ``round(N * 795 / 1449)`` frames are ``train`` and the rest ``test``
       (exactly 795 / 654 for the full file), with a warning: that rule is *not* the official
       split, which interleaves scenes.
    2. A folder ``<root>/<split>/rgb/<name>.png`` with ``<root>/<split>/depth/<name>.png`` (uint16
       millimetres) or ``<name>.npy`` (float metres).

    Sample: ``image`` uint8 ``(3, H, W)``; ``depth`` float32 ``(H, W)`` in metres, 0 = invalid
    (zeros in the files and non-finite values); ``key`` the frame index (``.mat``, 0-based) or file
    stem (folder) as a string.
    """

    MAT_NAME = "nyu_depth_v2_labeled.mat"
    LAYOUT = (
        f"either {MAT_NAME} (HDF5 datasets 'images' (N,3,W,H) uint8 and 'depths' (N,W,H)), "
        "or <root>/<split>/rgb/*.png with <root>/<split>/depth/*.png (uint16 mm) or *.npy "
        "(metres)"
    )

    def __init__(
        self,
        root_or_mat: str | os.PathLike[str],
        split: str = "train",
        split_file: str | os.PathLike[str] | None = None,
    ) -> None:
        path = Path(root_or_mat)
        self.root = path.parent if path.is_file() else path
        self.split = split
        self._h5: Any = None  # opened lazily per process: h5py handles do not survive fork/pickle
        self.mat_path: Path | None  # None: the extracted folder layout
        if path.is_file():
            self.mat_path = path
        elif (path / split / "rgb").is_dir():
            self.mat_path = None
        elif (path / self.MAT_NAME).is_file():
            self.mat_path = path / self.MAT_NAME
        else:
            raise FileNotFoundError(
                f"no NYU Depth v2 data at {path} for split {split!r}; expected {self.LAYOUT}"
            )
        if self.mat_path is not None:
            official = self.mat_path.parent / "splits.mat"
            if split_file is None and official.is_file():
                split_file = official  # the official split where it lies beside the data
            self.indices = self._mat_indices(split, split_file)
            if split_file is None:
                warnings.warn(
                    f"NYU Depth v2: no split_file and no splits.mat beside {self.mat_path}: "
                    f"the first {NYU_NUM_TRAIN}/{NYU_NUM_LABELLED} of the frames are train, not "
                    "the official split (which interleaves scenes); numbers will not compare "
                    "with the paper's",
                    stacklevel=2,
                )
            self.keys = [str(i) for i in self.indices]
        else:
            if split_file is not None:
                raise ValueError(
                    "split_file only applies to the .mat release; a folder layout "
                    "takes its split from <root>/<split>/"
                )
            self._scan_folder()

    # -- .mat release ----------------------------------------------------------------------------

    def _mat_indices(self, split: str, split_file: str | os.PathLike[str] | None) -> list[int]:
        import h5py  # import here: only the .mat release needs h5py

        try:
            with h5py.File(self.mat_path, "r") as f:
                shapes = {k: f[k].shape for k in ("images", "depths") if k in f}
        except OSError as err:
            raise ValueError(
                f"{self.mat_path} is not a readable MATLAB v7.3 (HDF5) file: "
                f"{err}; expected {self.LAYOUT}"
            ) from err
        images, depths = shapes.get("images"), shapes.get("depths")
        if (
            images is None
            or depths is None
            or len(images) != 4
            or images[1] != 3
            or tuple(depths) != (images[0], images[2], images[3])
        ):
            raise ValueError(
                f"{self.mat_path}: datasets {shapes} do not match the expected "
                "'images' (N,3,W,H) and 'depths' (N,W,H)"
            )
        n = images[0]
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test' for the .mat release, got {split!r}")
        if split_file is None:
            n_train = round(n * NYU_NUM_TRAIN / NYU_NUM_LABELLED)
            indices = list(range(n_train)) if split == "train" else list(range(n_train, n))
        else:
            indices = [i - 1 for i in _nyu_split_indices(Path(split_file), split)]
        bad = [i + 1 for i in indices if not 0 <= i < n]
        if bad:
            raise ValueError(f"split file {split_file} lists frames {bad[:5]} outside 1..{n}")
        if not indices:
            raise ValueError(f"split {split!r} of {self.mat_path} holds no frames (N={n})")
        return indices

    def _read_mat(self, index: int) -> tuple[torch.Tensor, np.ndarray]:
        import h5py

        if self._h5 is None:
            self._h5 = h5py.File(self.mat_path, "r")
        # (3, W, H) -> (3, H, W) and (W, H) -> (H, W): undo MATLAB's column-major axis order.
        image = np.ascontiguousarray(self._h5["images"][index].transpose(0, 2, 1))
        depth = np.asarray(self._h5["depths"][index], dtype=np.float32).T
        return torch.from_numpy(image.astype(np.uint8)), depth

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_h5"] = None  # DataLoader workers reopen the file themselves
        return state

    # -- extracted folder ------------------------------------------------------------------------

    def _scan_folder(self) -> None:
        rgb_dir = self.root / self.split / "rgb"
        depth_dir = self.root / self.split / "depth"
        _require_dir(depth_dir, self.LAYOUT)
        self.keys = sorted(p.stem for p in rgb_dir.glob("*.png"))
        if not self.keys:
            raise FileNotFoundError(f"no *.png in {rgb_dir}; expected {self.LAYOUT}")
        self.depth_paths: list[Path] = []
        for key in self.keys:
            candidates = [depth_dir / f"{key}{ext}" for ext in (".png", ".npy")]
            found = [p for p in candidates if p.is_file()]
            if not found:
                raise FileNotFoundError(
                    f"no depth for {rgb_dir / key}.png: expected {candidates[0]} or {candidates[1]}"
                )
            self.depth_paths.append(found[0])

    def _read_folder(self, index: int) -> tuple[torch.Tensor, np.ndarray]:
        image = read_image(self.root / self.split / "rgb" / f"{self.keys[index]}.png")
        path = self.depth_paths[index]
        if path.suffix == ".png":
            millimetres = _read_label_map(path, modes=("I;16", "I"), size=_hw(image))
            return image, millimetres.astype(np.float32) / 1000.0
        try:
            depth = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ValueError(f"corrupt or unreadable depth file {path}: {err}") from err
        if depth.shape != _hw(image):
            raise ValueError(
                f"{path}: depth shape {depth.shape} does not match its image size {_hw(image)}"
            )
        if not np.issubdtype(depth.dtype, np.floating):  # millimetres, most likely
            raise ValueError(
                f"{path}: depth of dtype {depth.dtype}; a .npy holds float metres (uint16 "
                "millimetres go in a .png)"
            )
        return image, depth.astype(np.float32)

    # -- both ------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.mat_path is not None:
            image, depth = self._read_mat(self.indices[index])
        else:
            image, depth = self._read_folder(index)
        depth = np.where(np.isfinite(depth), depth, 0.0).astype(np.float32)
        return {"image": image, "depth": torch.from_numpy(depth), "key": self.keys[index]}


def _nyu_split_indices(path: Path, split: str) -> list[int]:
    """1-based frame indices of ``split`` from ``splits.mat`` or a text file of indices."""
    if path.suffix != ".mat":
        try:
            return [int(s) for s in _read_id_list(path, "a text file of 1-based frame indices")]
        except ValueError as err:
            raise ValueError(f"split file {path}: {err}; expected one integer per line") from err
    _require_file(path, "splits.mat with 'trainNdxs' and 'testNdxs'")
    key = "trainNdxs" if split == "train" else "testNdxs"
    try:
        from scipy.io import loadmat

        table = loadmat(path)
    except NotImplementedError:  # a v7.3 (HDF5) copy of splits.mat
        import h5py

        with h5py.File(path, "r") as f:
            table = {k: np.asarray(f[k]) for k in f if k in ("trainNdxs", "testNdxs")}
    except (OSError, ValueError) as err:
        raise ValueError(f"split file {path} is not a readable .mat file: {err}") from err
    if key not in table:
        raise ValueError(f"split file {path} has no {key!r}; expected the NYU splits.mat")
    return [int(i) for i in np.asarray(table[key]).ravel()]
