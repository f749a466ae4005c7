"""Pretraining mask sources: grid, Felzenszwalb–Huttenlocher, MCG-style, ground truth, whole
image, and externally computed masks (docs/design.md §4.10).

Masks are computed once per image at full resolution, before any cropping, as the release does
(``generate_fh_masks_for_imagenet.py`` stores one segmentation per ImageNet image next to it).
Two output formats, fixed for the rest of the package:

* a *partition*: ``int32`` id map ``(H, W)``, ids ``>= 0``, every pixel in exactly one mask;
* *overlapping* masks: ``bool`` stack ``(M, H, W)``; a pixel may be in several masks or in none.

``build_mask_source(cfg)`` turns a :class:`detcon.config.MaskConfig` into a :class:`MaskSource`,
a small frozen, picklable callable (so DataLoader workers and store worker processes can use it).
"""

from __future__ import annotations

import functools
import os
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import skimage.segmentation
from PIL import Image

from detcon.config import MaskConfig
from detcon.masks.mcg import combinatorial_grouping_proposals

__all__ = [
    "MAX_GROUND_TRUTH_INSTANCES",
    "MaskKind",
    "MaskSource",
    "build_mask_source",
    "external_kind",
    "felzenszwalb_masks",
    "grid_masks",
    "ground_truth_masks",
    "image_masks",
    "read_external_masks",
]

MaskKind = Literal["partition", "overlapping"]

# Paper §4 (COCO pretraining with ground-truth masks): "up to 16 instances" per image.
MAX_GROUND_TRUTH_INSTANCES = 16


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array (H, W, 3) uint8, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image has shape {image.shape}: expected (H, W, 3) with H, W >= 1")
    if image.dtype != np.uint8:
        raise ValueError(f"image has dtype {image.dtype}: expected uint8 in [0, 255]")
    return image


# --------------------------------------------------------------------------- partitions


def grid_masks(height: int, width: int, n: int) -> np.ndarray:
    """``n x n`` tiling of an ``(height, width)`` image (paper §3 "spatial heuristic").

    Returns an ``int32 (height, width)`` partition with ids ``row * n + col`` in ``[0, n*n)``.
    When a side is not a multiple of ``n`` the tiles differ by at most one pixel; when a side is
    shorter than ``n`` some ids are absent.
    """
    if n < 1:
        raise ValueError(f"grid size n={n}: expected n >= 1")
    if height < 1 or width < 1:
        raise ValueError(f"image size ({height}, {width}): expected both sides >= 1")
    rows = (np.arange(height) * n) // height  # tile row of each pixel row, in [0, n)
    cols = (np.arange(width) * n) // width
    return (rows[:, None] * n + cols[None, :]).astype(np.int32)


def felzenszwalb_masks(
    image: np.ndarray, *, scale: float, sigma: float, min_size: int
) -> np.ndarray:
    """Felzenszwalb–Huttenlocher segmentation of the full image (docs/design.md §4.10).

    ``image``: uint8 ``(H, W, 3)``. Returns an ``int32 (H, W)`` partition with ids ``0..n-1``.
    """
    _check_image(image)
    labels = skimage.segmentation.felzenszwalb(
        image, scale=scale, sigma=sigma, min_size=int(min_size)
    )
    # The release casts the labels to uint8 (generate_fh_masks_for_imagenet.py,
    # compute_fh_segmentation: ``astype(np.dtype('<u1'))``), so segment 256 wraps onto segment 0
    # and two unrelated regions share an id. We keep int32 ids: a documented deviation.
    return labels.astype(np.int32)


def ground_truth_masks(
    instances: np.ndarray, max_instances: int = MAX_GROUND_TRUTH_INSTANCES
) -> np.ndarray:
    """Ground-truth instances as a partition (paper: COCO, "up to 16 instances").

    ``instances``: integer ``(H, W)``, 0 = background, ``1..n`` objects (gaps allowed). The
    background is a mask too (as in the release, where every id present is sampled). When more
    than ``max_instances`` objects are present, the largest ``max_instances`` are kept (ties: lower
    id first) and the rest are merged into the background. Returns ``int32 (H, W)`` with
    background 0 and the kept objects relabelled ``1..k`` in increasing original id.
    """
    if not isinstance(instances, np.ndarray) or instances.ndim != 2:
        shape = getattr(instances, "shape", None)
        raise ValueError(f"instances must be an integer array (H, W), got shape {shape}")
    if not np.issubdtype(instances.dtype, np.integer):
        raise ValueError(
            f"instances has dtype {instances.dtype}: expected integer ids "
            "(0 = background, 1..n objects)"
        )
    if instances.size and instances.min() < 0:
        raise ValueError(f"instances has a negative id {int(instances.min())}: expected ids >= 0")
    if max_instances < 0:
        raise ValueError(f"max_instances={max_instances}: expected >= 0")
    ids, inverse, counts = np.unique(instances, return_inverse=True, return_counts=True)
    is_object = ids > 0
    obj_ids, obj_counts = ids[is_object], counts[is_object]
    # Largest first; lexsort's last key is primary, so ties fall back to the lower id.
    order = np.lexsort((obj_ids, -obj_counts))
    keep = np.zeros(len(ids), dtype=bool)
    keep[np.flatnonzero(is_object)[order[:max_instances]]] = True
    new_id = np.zeros(len(ids), dtype=np.int32)
    new_id[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)  # ids sorted: kept in order
    return new_id[inverse.reshape(instances.shape)]


def image_masks(height: int, width: int) -> np.ndarray:
    """One mask covering the whole image: ``int32 (H, W)`` zeros (the SimCLR/BYOL special case,
    docs/design.md §4.11)."""
    return np.zeros((height, width), dtype=np.int32)


# --------------------------------------------------------------------------- external masks


def read_external_masks(path: str | os.PathLike, *, max_masks: int | None = None) -> np.ndarray:
    """Read masks computed outside this package (e.g. the official MCG Matlab output, converted).

    * ``.png``: an id map, returned as an ``int32 (H, W)`` partition with its ids relabelled
      ``0..k-1`` in increasing order (each id present is one mask, 0 included). Modes: ``L``/``P``
      (8 bit), ``I;16`` and ``I`` (16/32 bit ids), or ``RGB`` read as ``id = R + 256 G + 256**2 B``
      (the COCO panoptic PNG convention).
    * ``.npz``: key ``masks``, ``bool (M, H, W)`` overlapping masks, and optionally ``scores``
      ``(M,)`` finite floats; with scores the masks are returned best first (stable sort).

    ``max_masks`` keeps only the first ``max_masks`` overlapping masks (after sorting by score).
    Raises FileNotFoundError for a missing file and ValueError for a wrong suffix, mode, key,
    shape or dtype.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"external mask file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".png":
        return _read_png_partition(path)
    if suffix == ".npz":
        return _read_npz_overlapping(path, max_masks)
    raise ValueError(
        f"external mask file {str(path)!r}: expected a .png id map or an .npz with "
        f"'masks' (M, H, W) bool, got suffix {path.suffix!r}"
    )


def _read_png_partition(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            array = np.asarray(img)
    except OSError as exc:
        raise ValueError(f"external mask file {str(path)!r} is not a readable PNG: {exc}") from exc
    if mode in ("L", "P", "I;16", "I;16B", "I;16L", "I"):
        ids = array.astype(np.int64)
    elif mode == "RGB":
        rgb = array.astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
    else:
        raise ValueError(
            f"external mask file {str(path)!r} has PNG mode {mode!r}: expected an id "
            "map in mode L, P, I;16, I or RGB (id = R + 256 G + 256^2 B)"
        )
    if ids.ndim != 2:
        raise ValueError(
            f"external mask file {str(path)!r}: id map has shape {ids.shape}, expected (H, W)"
        )
    if ids.min() < 0 or ids.max() > np.iinfo(np.int32).max:
        raise ValueError(
            f"external mask file {str(path)!r}: ids must lie in [0, 2^31), got "
            f"[{ids.min()}, {ids.max()}]"
        )
    # Relabel 0..k-1 in increasing id: the pooling tensors are dense in the largest id, and a
    # panoptic RGB id such as 1971210 would make them gigabytes for two segments.
    _, dense = np.unique(ids, return_inverse=True)
    return dense.reshape(ids.shape).astype(np.int32)


def _read_npz_overlapping(path: Path, max_masks: int | None) -> np.ndarray:
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):  # a plain .npy under an .npz name
            raise ValueError("it holds a single array, not named arrays")
        with data:
            keys = list(data.files)
            masks = data["masks"] if "masks" in keys else None
            scores = data["scores"] if "scores" in keys else None
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as exc:
        raise ValueError(f"external mask file {str(path)!r} is not a readable .npz: {exc}") from exc
    if masks is None:
        raise ValueError(
            f"external mask file {str(path)!r} has keys {keys}: expected 'masks' "
            "(M, H, W) bool [and optional 'scores' (M,)]"
        )
    if masks.dtype != np.bool_:
        raise ValueError(
            f"external mask file {str(path)!r}: 'masks' has dtype {masks.dtype}, "
            "expected bool (convert with masks.astype(bool))"
        )
    if masks.ndim != 3 or masks.shape[1] < 1 or masks.shape[2] < 1:
        raise ValueError(
            f"external mask file {str(path)!r}: 'masks' has shape {masks.shape}, expected (M, H, W)"
        )
    if scores is not None:
        if scores.shape != (masks.shape[0],) or not np.issubdtype(scores.dtype, np.number):
            raise ValueError(
                f"external mask file {str(path)!r}: 'scores' has shape "
                f"{scores.shape} and dtype {scores.dtype}, expected "
                f"({masks.shape[0]},) numbers, one per mask"
            )
        if not np.all(np.isfinite(scores)):
            raise ValueError(f"external mask file {str(path)!r}: 'scores' must be finite")
        masks = masks[np.argsort(-scores.astype(np.float64), kind="stable")]
    if max_masks is not None:
        if max_masks < 1:
            raise ValueError(f"max_masks={max_masks}: expected >= 1 or None")
        # a copy, not a view: a view keeps every mask of the file in memory (the loader's mask
        # cache counted the 16 kept and held 200)
        masks = masks[:max_masks].copy()
    return np.ascontiguousarray(masks)


_EXTERNAL_SUFFIX: dict[str, MaskKind] = {".png": "partition", ".npz": "overlapping"}


def external_kind(directory: str | os.PathLike) -> MaskKind:
    """Kind of the masks in an external mask directory, from the first mask file found.

    The walk stops at the first ``.png`` (partition) or ``.npz`` (overlapping) file, so it is cheap
    even for an ImageNet-sized tree; every later read checks that its file has the same kind.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"external mask directory {str(directory)!r} does not exist "
            "(set masks.external_dir to the directory holding <key>.png or <key>.npz)"
        )
    for _, dirs, files in os.walk(directory):
        dirs.sort()  # deterministic walk order
        for name in sorted(files):
            kind = _EXTERNAL_SUFFIX.get(Path(name).suffix.lower())
            if kind is not None:
                return kind
    raise ValueError(
        f"external mask directory {str(directory)!r} holds no .png or .npz mask "
        "file: expected <key>.png id maps or <key>.npz overlapping masks"
    )


def _external_path(directory: Path, kind: MaskKind, key: str | None) -> Path:
    if key is None:
        raise ValueError(
            "the 'external' mask source needs the image key: call "
            "source(image, key='<relative name>') to read <external_dir>/<key>.png|.npz"
        )
    if not key or os.path.isabs(key) or ".." in Path(key).parts:
        raise ValueError(
            f"external mask key {key!r}: expected a non-empty relative path inside "
            f"{str(directory)!r}"
        )
    suffix = ".png" if kind == "partition" else ".npz"
    other = ".npz" if kind == "partition" else ".png"
    path = directory / (key + suffix)
    if not path.is_file():
        if (directory / (key + other)).is_file():
            raise ValueError(
                f"external mask for key {key!r} is {key + other!r} but the directory "
                f"{str(directory)!r} holds {kind} masks ({suffix}): mixed kinds"
            )
        raise FileNotFoundError(f"external mask {str(path)!r} does not exist (key {key!r})")
    return path


# --------------------------------------------------------------------------- the source object


@dataclass(frozen=True)
class MaskSource:
    """A configured mask source; call it on a full-resolution image.

    ``source(image, instances=None, *, key=None)``: ``image`` uint8 ``(H, W, 3)``; ``instances``
    the ground-truth id map ``(H, W)`` (needed by ``ground_truth`` only); ``key`` the image's
    relative name (needed by ``external`` only). Returns an ``int32 (H, W)`` partition when
    ``kind == "partition"`` and a ``bool (M, H, W)`` stack when ``kind == "overlapping"``.
    ``params`` are the configuration values that determine the masks (recorded in mask-store
    manifests; e.g. ``num_samples`` is not among them).
    """

    name: str
    kind: MaskKind
    params: Mapping[str, Any]
    _compute: Callable[..., np.ndarray] = field(repr=False, compare=False)

    def __hash__(self) -> int:
        return hash((self.name, self.kind, tuple(sorted(self.params.items()))))

    def __call__(
        self, image: np.ndarray, instances: np.ndarray | None = None, *, key: str | None = None
    ) -> np.ndarray:
        _check_image(image)
        if instances is not None and np.shape(instances) != image.shape[:2]:
            raise ValueError(
                f"instances has shape {np.shape(instances)}, expected the image's "
                f"(H, W) = {image.shape[:2]}"
            )
        masks = self._compute(image, instances, key)
        # External files can disagree with the image; the other sources cannot (a cheap check).
        ndim = 2 if self.kind == "partition" else 3
        if masks.ndim != ndim or masks.shape[-2:] != image.shape[:2]:
            expected = "(H, W)" if ndim == 2 else "(M, H, W)"
            raise ValueError(
                f"mask source {self.name!r} produced masks of shape {masks.shape} "
                f"for an image of shape {image.shape}: expected {expected} with "
                f"(H, W) = {image.shape[:2]}"
            )
        return masks


def _grid(image: np.ndarray, instances: Any, key: Any, *, n: int) -> np.ndarray:
    return grid_masks(image.shape[0], image.shape[1], n)


def _fh(
    image: np.ndarray, instances: Any, key: Any, *, scale: float, sigma: float, min_size: int
) -> np.ndarray:
    return felzenszwalb_masks(image, scale=scale, sigma=sigma, min_size=min_size)


def _mcg(image: np.ndarray, instances: Any, key: Any, *, num_proposals: int) -> np.ndarray:
    masks, _ = combinatorial_grouping_proposals(image, num_proposals=num_proposals)
    return masks


def _ground_truth(image: np.ndarray, instances: np.ndarray | None, key: Any) -> np.ndarray:
    if instances is None:
        raise ValueError(
            "mask source 'ground_truth' needs the ground-truth instance map: the "
            "dataset gave no 'instances' for this image (use a dataset with instance "
            "annotations, e.g. synthetic or coco, or another masks.source)"
        )
    return ground_truth_masks(np.asarray(instances))


def _image(image: np.ndarray, instances: Any, key: Any) -> np.ndarray:
    return image_masks(image.shape[0], image.shape[1])


def _external(
    image: np.ndarray,
    instances: Any,
    key: str | None,
    *,
    directory: str,
    kind: MaskKind,
    max_masks: int,
) -> np.ndarray:
    path = _external_path(Path(directory), kind, key)
    return read_external_masks(path, max_masks=max_masks if kind == "overlapping" else None)


def build_mask_source(cfg: MaskConfig) -> MaskSource:
    """The mask source named by ``cfg.source``, configured from ``cfg`` (docs/design.md §4.10).

    ``grid``: ``cfg.grid_size`` x ``cfg.grid_size`` tiles (partition). ``fh``:
    Felzenszwalb–Huttenlocher with ``cfg.fh_scale``, ``cfg.fh_sigma``, ``cfg.fh_min_size``
    (partition). ``mcg``: the top ``cfg.mcg_num_proposals`` MCG-style proposals (overlapping;
    see :mod:`detcon.masks.mcg`). ``ground_truth``: the instance map, up to 16 objects
    (partition). ``image``: one whole-image mask (partition). ``external``:
    ``<cfg.external_dir>/<key>.png`` (partition) or ``.npz`` (overlapping, top
    ``cfg.mcg_num_proposals`` by score).
    """
    if not isinstance(cfg, MaskConfig):
        raise ValueError(
            f"build_mask_source expects a detcon.config.MaskConfig, got {type(cfg).__name__}"
        )
    name = cfg.source
    if name == "grid":
        params = {"grid_size": cfg.grid_size}
        return MaskSource(name, "partition", params, functools.partial(_grid, n=cfg.grid_size))
    if name == "fh":
        params = {
            "fh_scale": cfg.fh_scale,
            "fh_sigma": cfg.fh_sigma,
            "fh_min_size": cfg.fh_min_size,
        }
        return MaskSource(
            name,
            "partition",
            params,
            functools.partial(
                _fh, scale=cfg.fh_scale, sigma=cfg.fh_sigma, min_size=cfg.fh_min_size
            ),
        )
    if name == "mcg":
        params = {"mcg_num_proposals": cfg.mcg_num_proposals}
        return MaskSource(
            name,
            "overlapping",
            params,
            functools.partial(_mcg, num_proposals=cfg.mcg_num_proposals),
        )
    if name == "ground_truth":
        return MaskSource(
            name, "partition", {"max_instances": MAX_GROUND_TRUTH_INSTANCES}, _ground_truth
        )
    if name == "image":
        return MaskSource(name, "partition", {}, _image)
    if name == "external":
        if not cfg.external_dir:
            raise ValueError(
                "masks.source='external' needs masks.external_dir: the directory holding "
                "<key>.png id maps or <key>.npz overlapping masks"
            )
        directory = str(Path(cfg.external_dir).resolve())
        kind = external_kind(directory)
        params = {"external_dir": directory, "mcg_num_proposals": cfg.mcg_num_proposals}
        return MaskSource(
            name,
            kind,
            params,
            functools.partial(
                _external, directory=directory, kind=kind, max_masks=cfg.mcg_num_proposals
            ),
        )
    raise ValueError(
        f"masks.source={name!r}: expected one of grid, fh, mcg, ground_truth, image, external"
    )
