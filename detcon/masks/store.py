"""A sharded on-disk store of precomputed pretraining masks (docs/design.md §4.10, §7).

Masks are computed once per full-resolution image, before cropping, as the release precomputes FH
masks for ImageNet (``generate_fh_masks_for_imagenet.py``, sharded TFRecords). Layout of a store
directory::

    manifest.json        source, its parameters, dataset length and fingerprint, shard size,
                         format version; written first, checked on every reopen and by
                         training (:func:`open_for_training`); the size and SHA-256 of each
                         shard written; the command that made the store, when a command did
    shard-00000.npz      masks of images [0, shard_size)
    shard-00001.npz      masks of images [shard_size, 2 * shard_size) ...

Each shard is a zip of ``.npy`` members, one per image (``00000`` ... relative to the shard
start) plus ``shapes`` and ``first_index``, so that one image is read (and inflated) alone;
partitions are stored as ``uint16`` when their ids allow it (else ``int32``), overlapping masks as
bits packed along the flattened ``(M, H, W)`` stack. Shards are written atomically (a temporary
file in the same directory, then ``os.replace``) with fixed zip timestamps, so the same inputs
give byte-identical shards whatever the number of workers, and a shard file that exists is
complete. A killed run is resumed by running again: shards that match their manifest record
are skipped, missing or damaged ones (a truncated copy, a disk error) are computed again, and
leftover temporary files are never read (and are removed by the next :func:`precompute_store`).

Three ways to fill a store: :func:`precompute_store` (serial, or a process pool with
``workers > 1``), or :func:`precompute_shard` as the function of a submitit job array, one shard
per array task.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import multiprocessing as mp
import os
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from detcon.atomic import atomic_write
from detcon.config import MaskConfig, to_dict
from detcon.masks.sources import MaskSource, build_mask_source
from detcon.progress import ProgressLines
from detcon.runs import (
    POOL_START_METHOD,
    PointBusyError,
    init_pool_worker,
    lock_holder,
    point_lock,
)

__all__ = [
    "FORMAT_VERSION",
    "MaskStore",
    "num_shards",
    "open_for_training",
    "precompute_shard",
    "precompute_store",
    "shard_path",
]

# 2: the dataset fingerprint hashes the items' keys (a store of version 1 is refused: delete it
# and run its precompute command again)
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
# held by precompute_store for its whole run (the manifest has a short-lived lock of its own)
WRITER_LOCK = ".precompute.lock"
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
# What reading a damaged shard raises (a cut zip, a bad CRC, deflate data that does not inflate).
_READ_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error)


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
    """A hash of the first image and, for datasets that list them (``item_keys()``: image
    folders, COCO), of every item's key in order; for generated ones
    (``fingerprint_text()``: the synthetic scenes), of what generates them. A store is
    positional: the keys catch an image added, removed or renamed in a folder of the same
    length, which would pair every later image with another's masks, and the generator's
    settings other scenes whose first one is the same; the first image catches a store reused
    for another dataset, or a dataset that augments in ``__getitem__`` (masks must come from
    the raw images). An image edited in place under its old name is not caught."""
    if len(dataset) == 0:
        return "empty"
    image, _, _ = _item_arrays(dataset[0], 0)
    digest = hashlib.sha256(str(image.shape).encode() + image.tobytes())
    item_keys = getattr(dataset, "item_keys", None)
    if item_keys is not None:
        digest.update("\n".join(item_keys()).encode())
    generated = getattr(dataset, "fingerprint_text", None)
    if generated is not None:
        digest.update(generated().encode())
    return f"sha256:{digest.hexdigest()[:16]}"


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
    source: MaskSource,
    cfg: MaskConfig,
    dataset_length: int,
    fingerprint: str,
    shard_size: int,
    command: str | None = None,
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
                "command": command,  # informational: how to finish or repair the store
                "shards": {},  # shard file name -> {"size", "sha256"}, added as they are written
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


def _write_manifest(out_dir: Path, manifest: Mapping[str, Any]) -> None:
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    atomic_write(out_dir / MANIFEST, lambda fh: fh.write(text.encode()))


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``key: store has X, asked for Y`` for each checked manifest field of ``new`` that differs."""
    return [
        f"{k}: store has {old[k]!r}, asked for {new[k]!r}"
        for k in _CHECKED
        if k in new and old[k] != new[k]
    ]


def _ensure_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest of a new store, or check that an existing store matches it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with point_lock(out_dir, wait=True):  # array tasks may create the store at the same time
        if not (out_dir / MANIFEST).exists():
            _write_manifest(out_dir, manifest)
            return
    diffs = _differences(_read_manifest(out_dir), manifest)
    if diffs:
        raise ValueError(
            f"mask store {str(out_dir)!r} was made with other settings ("
            + "; ".join(diffs)
            + "). Use another directory, or delete this one to "
            "recompute it."
        )


def _file_record(path: Path) -> dict[str, Any]:
    """``{"size", "sha256"}`` of a shard file, as the manifest records it."""
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": digest.hexdigest()}


def _record_shards(out_dir: Path, records: Mapping[str, Mapping[str, Any]]) -> None:
    """Add shard records to the manifest: a read-modify-write under the store's lock, since
    the tasks of an array job finish shards of one store at the same time."""
    with point_lock(out_dir, wait=True):
        manifest = _read_manifest(out_dir)
        manifest["shards"] = {**manifest.get("shards", {}), **records}
        _write_manifest(out_dir, manifest)


def _shard_problem(path: Path, images: range, record: Mapping[str, Any] | None) -> str | None:
    """Why an existing shard file cannot be trusted, or None. Against its manifest record (size,
    then SHA-256); a shard without one (a run killed between writing and recording it, or a store
    from before records) must open, pass every member's CRC and hold ``images``."""
    if record is not None:
        size = path.stat().st_size
        if size != record["size"]:
            return f"{size} bytes, the manifest records {record['size']}: truncated or overwritten"
        if _file_record(path)["sha256"] != record["sha256"]:
            return "its SHA-256 differs from the manifest's: corrupted"
        return None
    try:
        with zipfile.ZipFile(path) as zf:
            broken = zf.testzip()
        if broken is not None:
            return f"member {broken} fails its CRC check"
        with np.load(path, allow_pickle=False) as npz:
            first, count = int(npz["first_index"]), len(npz["shapes"])
    except _READ_ERRORS as exc:
        return f"unreadable ({exc})"
    if (first, count) != (images.start, len(images)):
        return f"holds {count} images from {first}, expected {len(images)} from {images.start}"
    return None


def _check_shards(
    out_dir: Path, shards: Iterable[int], shard_size: int, length: int
) -> tuple[list[int], dict[int, str]]:
    """``(todo, damaged)``: the shards of ``shards`` to compute (missing or damaged), and why
    each damaged one is. Damaged files are deleted; sound shards without a record get one."""
    recorded = _read_manifest(out_dir).get("shards", {})
    todo, damaged, new_records = [], {}, {}
    for s in shards:
        path = shard_path(out_dir, s)
        if not path.exists():
            todo.append(s)
            continue
        problem = _shard_problem(path, _shard_range(s, shard_size, length), recorded.get(path.name))
        if problem is not None:
            damaged[s] = problem
            path.unlink()
            todo.append(s)
        elif path.name not in recorded:
            new_records[path.name] = _file_record(path)
    if new_records:
        _record_shards(out_dir, new_records)
    return todo, damaged


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
) -> tuple[int, str, dict[str, Any]]:
    """Compute and atomically write one shard; returns the number of images in it, its file
    name and its manifest record (recorded by the caller)."""
    indices = _shard_range(shard_index, shard_size, len(dataset))
    masks = []
    for i in indices:
        image, instances, key = _item_arrays(dataset[i], i)
        masks.append(source(image, instances, key=key))
        if on_image is not None:
            on_image()
    path = shard_path(out_dir, shard_index)
    _write_shard_file(path, indices.start, masks, source.kind)
    return len(indices), path.name, _file_record(path)


_WORKER: dict[str, Any] = {}


def _init_worker(dataset: Any, source: MaskSource, out_dir: Path, shard_size: int) -> None:
    init_pool_worker()
    # One thread per worker process: the processes are the parallelism.
    torch.set_num_threads(1)
    _WORKER.update(dataset=dataset, source=source, out_dir=out_dir, shard_size=shard_size)


def _worker_shard(shard_index: int) -> tuple[int, str, dict[str, Any]]:
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
    progress: bool | None = True,
    command: str | None = None,
    echo: Callable[[str], None] = print,
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
        workers: processes; ``> 1`` uses a process pool over shards ('fork' on Linux, the
            platform's default elsewhere: 'spawn' on macOS and Windows, which needs a picklable
            dataset, as torch's DataLoader workers there).
        shards: compute only these shard indices (default: all); shards that match their
            manifest record (size and SHA-256) are skipped, damaged ones computed again.
        progress: show a tqdm bar (images); None: a bar on an interactive terminal, else a
            plain line a minute on stderr (:class:`detcon.progress.ProgressLines`).
        command: the command line that makes this store, recorded in a new store's manifest so
            that errors can say how to finish or repair it.
        echo: receives a line naming each damaged shard that is computed again.

    Returns the :class:`MaskStore` of ``out_dir``. Stale temporary files of an interrupted run
    are removed first, holding the store's writer lock: a second ``precompute_store`` on the same
    directory meanwhile is refused, naming the first (use :func:`precompute_shard` for
    concurrent writers, one shard each).

    Raises:
        PointBusyError: another ``precompute_store`` is computing this store now.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size={shard_size}: expected >= 1")
    if workers < 1:
        raise ValueError(f"workers={workers}: expected >= 1")
    out_dir = Path(out_dir)
    source = build_mask_source(source_cfg)
    length = len(dataset)
    manifest = _manifest(source, source_cfg, length, _fingerprint(dataset), shard_size, command)
    _ensure_manifest(out_dir, manifest)
    with contextlib.ExitStack() as hold:
        try:
            hold.enter_context(point_lock(out_dir, name=WRITER_LOCK))
        except PointBusyError:
            holder = lock_holder(out_dir / WRITER_LOCK)
            raise PointBusyError(
                f"mask store {str(out_dir)!r} is being computed by another process ({holder}): "
                "two runs into one store compute the same shards twice and remove each other's "
                "files; wait for it to finish (run the command again afterwards to check the "
                "store and finish it)"
            ) from None
        return _precompute_locked(
            dataset, source, out_dir, length, shard_size, workers, shards, progress, echo
        )


def _precompute_locked(
    dataset: Any,
    source: MaskSource,
    out_dir: Path,
    length: int,
    shard_size: int,
    workers: int,
    shards: Iterable[int] | None,
    progress: bool | None,
    echo: Callable[[str], None],
) -> MaskStore:
    """The body of :func:`precompute_store`, holding the store's writer lock."""
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
    todo, damaged = _check_shards(out_dir, wanted, shard_size, length)
    for s, problem in damaged.items():
        name = shard_path(out_dir, s).name
        echo(f"mask store {str(out_dir)!r}: {name}: {problem}; computing it again")
    num_images = sum(len(_shard_range(s, shard_size, length)) for s in todo)
    desc = f"masks[{source.name}] -> {out_dir.name}"
    interactive = sys.stderr.isatty()
    lines = ProgressLines(desc, num_images, "img") if progress is None and not interactive else None
    done = 0

    def advance(count: int = 1) -> None:
        nonlocal done
        done += count
        bar.update(count)
        if lines is not None:
            lines.update(done)

    with tqdm(
        total=num_images,
        unit="img",
        disable=not (interactive if progress is None else progress),
        desc=desc,
    ) as bar:
        if workers == 1 or len(todo) <= 1:
            for s in todo:
                _, name, record = _compute_shard(
                    dataset, source, out_dir, s, shard_size, on_image=advance
                )
                _record_shards(out_dir, {name: record})
        else:
            ctx = mp.get_context(POOL_START_METHOD)
            with ctx.Pool(
                min(workers, len(todo)),
                initializer=_init_worker,
                initargs=(dataset, source, out_dir, shard_size),
            ) as pool:
                for count, name, record in pool.imap_unordered(_worker_shard, todo):
                    _record_shards(out_dir, {name: record})
                    advance(count)
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
    run concurrently for different shards, and idempotent (a shard that matches its manifest
    record is skipped; a damaged one is computed again). E.g.
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
    if _check_shards(out_dir, [shard_index], shard_size, length)[0]:
        _, name, record = _compute_shard(dataset, source, out_dir, shard_index, shard_size)
        _record_shards(out_dir, {name: record})
    return shard_path(out_dir, shard_index)


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
                f"{self.manifest['format_version']}, expected {FORMAT_VERSION}: delete it and "
                "run the `detcon masks precompute` command that made it again"
                + (f" ({self.manifest['command']})" if self.manifest.get("command") else "")
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

    def repair_hint(self) -> str:
        """How to compute missing or damaged shards: the command that made the store (recorded
        by ``detcon masks precompute``), else the generic form of it."""
        command = self.manifest.get("command")
        if command:
            return f"run `{command}` again"
        return (
            f"run `detcon masks precompute --source {self.source} --out {self.out_dir} "
            f"--shard-size {self.shard_size}` with the --profile and --set values the store "
            "was made with (or its precompute_store call) again"
        )

    def truncated_shards(self) -> dict[str, str]:
        """Shards whose file size differs from their manifest record (a truncated copy), with
        why: a check of every shard at the cost of a ``stat`` each, done when training opens
        the store. (Same-size damage shows when the shard is read: its zip CRCs.)"""
        problems = {}
        for name, record in self.manifest.get("shards", {}).items():
            path = self.out_dir / name
            if path.exists() and path.stat().st_size != record["size"]:
                problems[name] = (
                    f"{path.stat().st_size} bytes, the manifest records {record['size']}"
                )
        return problems

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
                f"{self.num_shards} shards missing: {self.repair_hint()} to finish it"
            )
        try:
            npz = np.load(path, allow_pickle=False)
            first, shapes = int(npz["first_index"]), npz["shapes"]
        except _READ_ERRORS as exc:
            raise self._damaged(path, f"unreadable ({exc})") from exc
        if first != rng.start or len(shapes) != len(rng):
            npz.close()
            raise self._damaged(
                path,
                f"holds images from {first}, {len(shapes)} of them; expected {len(rng)} "
                f"from {rng.start}",
            )
        self._open = (shard_index, pid, npz, shapes)
        return npz, shapes

    def _damaged(self, path: Path, problem: str) -> ValueError:
        # zipfile can quote a whole misread header (kilobytes of bytes): the cause is cut short so
        # that the repair command stays in sight
        problem = " ".join(problem.split())
        if len(problem) > 300:
            problem = problem[:300] + "...)"
        return ValueError(
            f"mask store shard {str(path)!r}: {problem}; {self.repair_hint()} to compute it "
            "again (precompute checks every shard and redoes damaged ones)"
        )

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
        try:
            data = npz[f"{j:05d}"]
        except _READ_ERRORS as exc:  # e.g. a bad CRC
            raise self._damaged(shard_path(self.out_dir, shard_index), f"damaged ({exc})") from exc
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


def open_for_training(
    out_dir: str | os.PathLike, source: MaskSource, dataset: Any | None = None
) -> MaskStore:
    """The store at ``out_dir`` for a run that would otherwise compute ``source``'s masks of
    ``dataset`` itself: made by the same source with the same parameters from the same dataset
    (length and fingerprint), every shard written at its recorded size. ``dataset`` None skips
    the dataset's checks (the launcher, before submitting: reading data is the job's).

    Raises:
        ValueError: the store was made with another source, other parameters or from another
            dataset (naming the store's and the run's), or a shard is truncated (naming it and
            the command that repairs it).
        FileNotFoundError: not a store, or shards are missing (with the command that finishes
            them).
    """
    store = MaskStore(out_dir)
    asked = {"source": source.name, "kind": source.kind, "params": dict(source.params)}
    if dataset is not None:
        asked.update(dataset_length=len(dataset), dataset_fingerprint=_fingerprint(dataset))
    asked = json.loads(json.dumps(asked))
    diffs = _differences(store.manifest, asked)
    if diffs:
        raise ValueError(
            f"mask store {str(out_dir)!r} was made for other masks than this run's ("
            + "; ".join(diffs)
            + "): training on it would not train this config. Set masks.store to a store made "
            "for this run "
            f"(`detcon masks precompute --source {source.name} --out NEW_DIR` with the run's "
            "--profile and --set values), or leave it empty to compute the masks on the fly"
        )
    missing = store.missing_shards()
    if missing:
        raise FileNotFoundError(
            f"mask store {str(out_dir)!r} is incomplete: {len(missing)} of {store.num_shards} "
            f"shards missing (first: {shard_path(out_dir, missing[0]).name}); "
            f"{store.repair_hint()} to finish it"
        )
    truncated = store.truncated_shards()
    if truncated:
        name, problem = next(iter(truncated.items()))
        raise ValueError(
            f"mask store shard {str(Path(out_dir) / name)!r}: {problem}, truncated or "
            f"overwritten ({len(truncated)} damaged shards in all); {store.repair_hint()} to "
            "compute them again"
        )
    return store
