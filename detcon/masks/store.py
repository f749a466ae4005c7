"""A sharded on-disk store of precomputed pretraining masks (docs/design.md §4.10, §7).

Masks are computed once per full-resolution image, before cropping, as the release precomputes FH
masks for ImageNet (``generate_fh_masks_for_imagenet.py``, sharded TFRecords). Layout of a store
directory::

    manifest.json        source, its parameters, dataset length and fingerprint, shard size,
                         format version; written first, checked on every reopen
    shard-00000.npz      masks of images [0, shard_size)
    shard-00001.npz      masks of images [shard_size, 2 * shard_size) ...

Each shard is a zip of ``.npy`` members, one per image (``00000`` ... relative to the shard
start) plus ``shapes`` and ``first_index``, so that one image is read (and inflated) alone;
partitions are stored as ``uint16`` when their ids allow it (else ``int32``), overlapping masks as
bits packed along the flattened ``(M, H, W)`` stack. Shards are written atomically (a temporary
file in the same directory, then ``os.replace``) with fixed zip timestamps, so the same inputs
give byte-identical shards whatever the number of workers, and a shard file that exists is
complete. A killed run is resumed by running again: complete shards are skipped, leftover
temporary files are never read (and are removed by the next :func:`precompute_store`).

Three ways to fill a store: :func:`precompute_store` (serial, or a process pool with
``workers > 1``), or :func:`precompute_shard` as the function of a submitit job array, one shard
per array task.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing as mp
import os
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from detcon.atomic import atomic_write
from detcon.config import MaskConfig, to_dict
from detcon.masks.sources import MaskSource, build_mask_source

__all__ = [
    "FORMAT_VERSION",
    "MaskStore",
    "num_shards",
    "precompute_shard",
    "precompute_store",
    "shard_path",
]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# Manifest fields that must agree for a store to be reused (the rest is informational).
_CHECKED = (
    "format_version",
    "source",
    "kind",
    "params",
    "dataset_length",
    "dataset_fingerprint",
    "shard_size",
)
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: byte-identical shards


def num_shards(dataset_length: int, shard_size: int) -> int:
    """Number of shards of a store: ``ceil(dataset_length / shard_size)``."""
    return -(-dataset_length // shard_size)


def shard_path(out_dir: str | os.PathLike, shard_index: int) -> Path:
    """Path of shard ``shard_index``: ``<out_dir>/shard-<index, 5 digits>.npz``."""
    return Path(out_dir) / f"shard-{shard_index:05d}.npz"


# --------------------------------------------------------------------------- dataset items


def _item_arrays(
    item: Mapping[str, Any], index: int
) -> tuple[np.ndarray, np.ndarray | None, str | None]:
    """``(image (H, W, 3) uint8, instances (H, W) or None, key or None)`` of a dataset item."""
    if not isinstance(item, Mapping) or "image" not in item:
        raise ValueError(
            f"dataset[{index}] must be a dict with an 'image' entry, got {type(item).__name__}"
        )
    image = item["image"]
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[0] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"dataset[{index}]['image'] has shape {image.shape} and dtype "
            f"{image.dtype}: expected uint8 (3, H, W)"
        )
    instances = item.get("instances")
    if isinstance(instances, torch.Tensor):
        instances = instances.detach().cpu().numpy()
    key = item.get("key")
    return _to_hwc(image), instances, key


def _to_hwc(image: np.ndarray) -> np.ndarray:
    """A C-contiguous ``(H, W, 3)`` view or copy of a ``(3, H, W)`` image.

    Channel by channel into an empty buffer: the same bytes as
    ``np.ascontiguousarray(image.transpose(1, 2, 0))`` at a quarter of its cost (a strided uint8
    gather is slow, three plane copies are not: 0.14 vs 0.57 ms for a 400x350 image, measured).
    """
    hwc = image.transpose(1, 2, 0)
    if hwc.flags.c_contiguous:  # already interleaved memory (what read_image returns): no copy
        return hwc
    out = np.empty(image.shape[1:] + image.shape[:1], dtype=image.dtype)
    for c in range(image.shape[0]):
        out[..., c] = image[c]
    return out


def _fingerprint(dataset: Any) -> str:
    """A hash of the first image: catches a store reused for another dataset of the same length,
    or a dataset that augments in ``__getitem__`` (masks must come from the raw images)."""
    if len(dataset) == 0:
        return "empty"
    image, _, _ = _item_arrays(dataset[0], 0)
    digest = hashlib.sha256(str(image.shape).encode() + image.tobytes()).hexdigest()
    return f"sha256:{digest[:16]}"


# --------------------------------------------------------------------------- files


def _encode_masks(masks: np.ndarray, kind: str) -> np.ndarray:
    if kind == "partition":
        if masks.size and int(masks.max()) < 2**16:
            return masks.astype(np.uint16)
        return masks.astype(np.int32)
    return np.packbits(masks.reshape(-1))


def _write_shard_file(path: Path, first_index: int, masks: list[np.ndarray], kind: str) -> None:
    shapes = np.asarray([m.shape for m in masks], dtype=np.int64).reshape(len(masks), -1)
    members = {"first_index": np.asarray(first_index, dtype=np.int64), "shapes": shapes}
    for j, m in enumerate(masks):
        members[f"{j:05d}"] = _encode_masks(m, kind)

    def write(fh: io.BufferedWriter) -> None:
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, array in members.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.asarray(array, order="C"), allow_pickle=False)
                info = zipfile.ZipInfo(name + ".npy", date_time=_ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, buf.getvalue())

    atomic_write(path, write)


def _manifest(
    source: MaskSource, cfg: MaskConfig, dataset_length: int, fingerprint: str, shard_size: int
) -> dict[str, Any]:
    return json.loads(
        json.dumps(
            {  # JSON round trip: compare like with like on reopen
                "format_version": FORMAT_VERSION,
                "source": source.name,
                "kind": source.kind,
                "params": dict(source.params),
                "dataset_length": dataset_length,
                "dataset_fingerprint": fingerprint,
                "shard_size": shard_size,
                "num_shards": num_shards(dataset_length, shard_size),
                "mask_config": to_dict(
                    cfg
                ),  # informational (num_samples, store do not change masks)
            }
        )
    )


def _read_manifest(out_dir: Path) -> dict[str, Any]:
    path = out_dir / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(out_dir)!r} is not a mask store: {MANIFEST} is missing "
            "(create it with precompute_store or `detcon masks precompute`)"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"mask store manifest {str(path)!r} is not valid JSON: {exc}") from exc
    missing = [k for k in _CHECKED if k not in manifest]
    if missing:
        raise ValueError(
            f"mask store manifest {str(path)!r} lacks {missing}: not a store of "
            f"format version {FORMAT_VERSION}"
        )
    return manifest


def _ensure_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest of a new store, or check that an existing store matches it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / MANIFEST
    if not path.exists():
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        atomic_write(path, lambda fh: fh.write(text.encode()))
        return
    old = _read_manifest(out_dir)
    diffs = [
        f"{k}: store has {old[k]!r}, asked for {manifest[k]!r}"
        for k in _CHECKED
        if old[k] != manifest[k]
    ]
    if diffs:
        raise ValueError(
            f"mask store {str(out_dir)!r} was made with other settings ("
            + "; ".join(diffs)
            + "). Use another directory, or delete this one to "
            "recompute it."
        )


# --------------------------------------------------------------------------- computing shards


def _shard_range(shard_index: int, shard_size: int, dataset_length: int) -> range:
    start = shard_index * shard_size
    return range(start, min(start + shard_size, dataset_length))


def _compute_shard(
    dataset: Any,
    source: MaskSource,
    out_dir: Path,
    shard_index: int,
    shard_size: int,
    on_image: Callable[[], None] | None = None,
) -> int:
    """Compute and atomically write one shard; returns the number of images in it."""
    indices = _shard_range(shard_index, shard_size, len(dataset))
    masks = []
    for i in indices:
        image, instances, key = _item_arrays(dataset[i], i)
        masks.append(source(image, instances, key=key))
        if on_image is not None:
            on_image()
    _write_shard_file(shard_path(out_dir, shard_index), indices.start, masks, source.kind)
    return len(indices)


_WORKER: dict[str, Any] = {}


def _init_worker(dataset: Any, source: MaskSource, out_dir: Path, shard_size: int) -> None:
    # One thread per worker process: the processes are the parallelism.
    torch.set_num_threads(1)
    _WORKER.update(dataset=dataset, source=source, out_dir=out_dir, shard_size=shard_size)


def _worker_shard(shard_index: int) -> int:
    return _compute_shard(
        _WORKER["dataset"],
        _WORKER["source"],
        _WORKER["out_dir"],
        shard_index,
        _WORKER["shard_size"],
    )


def precompute_store(
    dataset: Any,
    source_cfg: MaskConfig,
    out_dir: str | os.PathLike,
    *,
    shard_size: int = 256,
    workers: int = 1,
    shards: Iterable[int] | None = None,
    progress: bool = True,
) -> MaskStore:
    """Compute the masks of every image of ``dataset`` into a sharded store at ``out_dir``.

    Args:
        dataset: ``len(dataset)`` and ``dataset[i] -> {"image": uint8 (3, H, W) tensor or array,
            "instances": (H, W) ids (optional), "key": str (optional, external source)}``. Items
            must be deterministic (no augmentation): a fingerprint of image 0 is recorded.
        source_cfg: which masks (``build_mask_source(source_cfg)``).
        out_dir: store directory (created). An existing store must have the same source
            parameters, dataset length/fingerprint and shard size, else ValueError.
        shard_size: images per shard file.
        workers: processes; ``> 1`` uses a process pool over shards ('fork' where available,
            as torch's DataLoader; else 'spawn', which needs a picklable dataset).
        shards: compute only these shard indices (default: all); complete shards are skipped.
        progress: show a tqdm bar (images).

    Returns the :class:`MaskStore` of ``out_dir``. Stale temporary files of an interrupted run
    are removed first, so do not run two ``precompute_store`` on one directory at once (use
    :func:`precompute_shard` for concurrent writers).
    """
    if shard_size < 1:
        raise ValueError(f"shard_size={shard_size}: expected >= 1")
    if workers < 1:
        raise ValueError(f"workers={workers}: expected >= 1")
    out_dir = Path(out_dir)
    source = build_mask_source(source_cfg)
    length = len(dataset)
    manifest = _manifest(source, source_cfg, length, _fingerprint(dataset), shard_size)
    _ensure_manifest(out_dir, manifest)
    for pattern in (".shard-*.npz.*.tmp", f".{MANIFEST}.*.tmp"):  # left by a killed run
        for stale in out_dir.glob(pattern):
            stale.unlink(missing_ok=True)

    total = num_shards(length, shard_size)
    wanted = sorted(set(range(total) if shards is None else shards))
    bad = [s for s in wanted if not 0 <= s < total]
    if bad:
        raise ValueError(
            f"shards {bad}: expected indices in [0, {total}) for {length} images "
            f"and shard_size={shard_size}"
        )
    todo = [s for s in wanted if not shard_path(out_dir, s).exists()]
    num_images = sum(len(_shard_range(s, shard_size, length)) for s in todo)
    with tqdm(
        total=num_images,
        unit="img",
        disable=not progress,
        desc=f"masks[{source.name}] -> {out_dir.name}",
    ) as bar:
        if workers == 1 or len(todo) <= 1:
            for s in todo:
                _compute_shard(dataset, source, out_dir, s, shard_size, on_image=bar.update)
        else:
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            ctx = mp.get_context(method)
            with ctx.Pool(
                min(workers, len(todo)),
                initializer=_init_worker,
                initargs=(dataset, source, out_dir, shard_size),
            ) as pool:
                for count in pool.imap_unordered(_worker_shard, todo):
                    bar.update(count)
    return MaskStore(out_dir)


def precompute_shard(
    dataset_factory: Callable[[], Any],
    cfg: MaskConfig,
    out_dir: str | os.PathLike,
    shard_index: int,
    *,
    shard_size: int = 256,
) -> Path:
    """Compute one shard: the function of one task of a submitit job array.

    ``dataset_factory()`` builds the dataset on the node (datasets need not be picklable);
    the manifest is written by the first task to get there and checked by the others. Safe to
    run concurrently for different shards, and idempotent (a complete shard is skipped). E.g.
    ``executor.map_array(functools.partial(precompute_shard, factory, cfg, out), range(n))``.
    Returns the shard's path.
    """
    out_dir = Path(out_dir)
    dataset = dataset_factory()
    source = build_mask_source(cfg)
    length = len(dataset)
    _ensure_manifest(out_dir, _manifest(source, cfg, length, _fingerprint(dataset), shard_size))
    total = num_shards(length, shard_size)
    if not 0 <= shard_index < total:
        raise ValueError(
            f"shard_index={shard_index}: expected 0 <= index < {total} for "
            f"{length} images and shard_size={shard_size}"
        )
    path = shard_path(out_dir, shard_index)
    if not path.exists():
        _compute_shard(dataset, source, out_dir, shard_index, shard_size)
    return path


# --------------------------------------------------------------------------- reading


class MaskStore:
    """Read access to a mask store: ``store[i]`` is the masks of dataset image ``i``.

    Returns an ``int32 (H, W)`` partition or a ``bool (M, H, W)`` stack (``store.kind``). Shards
    are opened lazily and the last one is kept open (reopened after a fork, so DataLoader workers
    never share a file offset). Asking for an image whose shard is not computed yet raises
    FileNotFoundError naming the shard.
    """

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.out_dir = Path(out_dir)
        self.manifest = _read_manifest(self.out_dir)
        if self.manifest["format_version"] != FORMAT_VERSION:
            raise ValueError(
                f"mask store {str(self.out_dir)!r} has format version "
                f"{self.manifest['format_version']}, expected {FORMAT_VERSION}"
            )
        self.kind: str = self.manifest["kind"]
        self.source: str = self.manifest["source"]
        self.shard_size: int = self.manifest["shard_size"]
        self._open: tuple[int, int, Any, np.ndarray] | None = None  # shard, pid, zip, shapes

    def __len__(self) -> int:
        return int(self.manifest["dataset_length"])

    @property
    def num_shards(self) -> int:
        return num_shards(len(self), self.shard_size)

    def missing_shards(self) -> list[int]:
        """Indices of the shards not written yet."""
        return [s for s in range(self.num_shards) if not shard_path(self.out_dir, s).exists()]

    @property
    def complete(self) -> bool:
        """True when every shard is written."""
        return not self.missing_shards()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_open": None}  # open files do not travel

    def _shard(self, shard_index: int) -> tuple[Any, np.ndarray]:
        pid = os.getpid()
        if self._open is not None and self._open[:2] == (shard_index, pid):
            return self._open[2], self._open[3]
        self.close()
        path = shard_path(self.out_dir, shard_index)
        rng = _shard_range(shard_index, self.shard_size, len(self))
        if not path.exists():
            raise FileNotFoundError(
                f"mask store {str(self.out_dir)!r}: shard {path.name} (images {rng.start}.."
                f"{rng.stop - 1}) is not computed yet; {len(self.missing_shards())} of "
                f"{self.num_shards} shards missing (run precompute_store again to finish)"
            )
        try:
            npz = np.load(path, allow_pickle=False)
            first, shapes = int(npz["first_index"]), npz["shapes"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise ValueError(
                f"mask store shard {str(path)!r} is unreadable ({exc}); delete it "
                "and run precompute_store again"
            ) from exc
        if first != rng.start or len(shapes) != len(rng):
            npz.close()
            raise ValueError(
                f"mask store shard {str(path)!r} holds images from {first}, "
                f"{len(shapes)} of them; expected {len(rng)} from {rng.start}"
            )
        self._open = (shard_index, pid, npz, shapes)
        return npz, shapes

    def close(self) -> None:
        """Close the open shard file (if any)."""
        if self._open is not None:
            if self._open[1] == os.getpid():
                self._open[2].close()
            self._open = None

    def __getitem__(self, index: int) -> np.ndarray:
        n = len(self)
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"mask store index must be an integer, got {type(index).__name__}")
        if not -n <= index < n:
            raise IndexError(f"mask store index {index} out of range for {n} images")
        index = int(index) % n
        shard_index, j = divmod(index, self.shard_size)
        npz, shapes = self._shard(shard_index)
        data = npz[f"{j:05d}"]
        shape = tuple(int(s) for s in shapes[j])
        if self.kind == "partition":
            return data.astype(np.int32).reshape(shape)
        count = int(np.prod(shape))
        return np.unpackbits(data, count=count).astype(bool).reshape(shape)

    def __repr__(self) -> str:
        return (
            f"MaskStore({str(self.out_dir)!r}, source={self.source!r}, kind={self.kind!r}, "
            f"images={len(self)}, shards={self.num_shards}, complete={self.complete})"
        )
