"""Atomic file writes: a temp file in the same directory, fsync, then ``os.replace``.

A reader (or a killed writer) never sees a half-written result, metric table or checkpoint. A
writer killed mid-write leaves its temp file (``.<name>.<8 random characters>.tmp``) behind; the
next writer of the directory removes it (:func:`remove_stale_temp_files`). A full disk is reported
as :class:`DiskFullError`, naming the file, with its previous version kept.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = [
    "DiskFullError",
    "atomic_write",
    "naming_full_disk",
    "remove_stale_temp_files",
    "write_json",
    "write_text",
    "save_torch",
    "load_torch",
    "temp_name",
]

_FULL = (errno.ENOSPC, errno.EDQUOT)

# Temp file names: ".<target name>.<8 random characters>.tmp" (tempfile.mkstemp's alphabet, which
# named them before, includes "_"; ours are hex).
_TEMP_NAME = re.compile(r"\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp")


def temp_name(path: Path) -> Path:
    """A fresh temp name next to ``path`` (``.<name>.<8 hex>.tmp``): what
    :func:`remove_stale_temp_files` recognises as left by a killed writer."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new, empty temp file next to ``path``, opened for writing.

    Created with mode 0o666 like any file ``open()`` creates, so the umask (and a default ACL)
    decide who may read the result; ``tempfile.mkstemp`` would make every result 0600, unreadable
    to collaborators on shared storage.
    """
    for _ in range(100):
        tmp = temp_name(path)
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temp file name next to {path}")  # pragma: no cover


class DiskFullError(OSError):
    """No space left on the disk (or over quota) while writing a file; the message names the
    file and the space left, and says that the file's previous version is kept."""

    def __str__(self) -> str:
        return str(self.strerror)


def _free_space(path: Path) -> str:
    try:
        free = shutil.disk_usage(path.parent if not path.is_dir() else path).free
    except OSError:
        return "an unknown amount of space"
    return f"{free / 2**20:,.0f} MiB"


@contextmanager
def naming_full_disk(path: str | Path) -> Iterator[None]:
    """Turn ENOSPC / EDQUOT raised in the block into a :class:`DiskFullError` naming ``path``:
    the OS error names no file, and "No space left on device" in the middle of a traceback does
    not say which of a run's files was lost (none: the previous version is kept)."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as exc:
        if exc.errno not in _FULL:
            raise
        path = Path(path)
        why = "over the disk quota" if exc.errno == errno.EDQUOT else "no space left on the disk"
        raise DiskFullError(
            exc.errno,
            f"{why} while writing {path} ({_free_space(path)} free there); its previous "
            "version, if any, is kept: free some space (or write elsewhere) and run the "
            "command again",
        ) from exc


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(fileobj)`` on a temp file next to ``path`` and move it into place.

    Raises:
        DiskFullError: the disk is full (or over quota); ``path`` is left as it was.
        IsADirectoryError: ``path`` is a directory (named, before anything is written).
    """
    if Path(path).is_dir():
        raise IsADirectoryError(f"{path} is a directory: expected the path of a file to write")
    with naming_full_disk(path):
        return _atomic_write(path, write)


def _atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def remove_stale_temp_files(
    directory: str | Path, names: Iterable[str] | None = None
) -> list[Path]:
    """Remove the temp files killed writers left in ``directory`` (only of ``names``, when given).

    Call it only as the directory's one writer, when it starts: a temp file that another live
    process is still writing would be removed under it. Returns the removed paths, sorted.
    """
    directory = Path(directory)
    wanted = None if names is None else set(names)
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for entry in entries:
        match = _TEMP_NAME.fullmatch(entry.name)
        if (
            match
            and (wanted is None or match["target"] in wanted)
            and entry.is_file(follow_symlinks=False)
        ):
            Path(entry.path).unlink(missing_ok=True)
            removed.append(Path(entry.path))
    return sorted(removed)


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def save_torch(path: str | Path, obj: Any) -> Path:
    import torch  # here: readers of results (report, status, export) need no torch (seconds)

    return atomic_write(path, lambda f: torch.save(obj, f))


def load_torch(path: str | Path) -> Any:
    """What :func:`save_torch` wrote, read safely (``weights_only``, onto the CPU), its records'
    checksums checked first: ``torch.load`` reads a zip's records without checking their
    CRC-32s, so a flipped byte of a tensor on disk would load as other weights. (Records saved
    with a CRC of 0, as ``torch.serialization.set_crc32_options(False)`` writes them, are not
    checked; a damaged zip header is caught only where zipfile or torch notices it.)

    Raises:
        ValueError: the file is empty, truncated or corrupt; the message is the cause alone
            (callers add what to do about it).
    """
    import zipfile

    import torch

    path = Path(path)
    if path.stat().st_size == 0:
        raise ValueError("an empty file")
    try:
        if zipfile.is_zipfile(path):  # torch.save's format; a legacy pickle has no checksums
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    if info.CRC or not info.file_size:
                        with archive.open(info) as record:  # reading to the end checks its CRC
                            while record.read(1 << 24):
                                pass
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - zipfile and torch raise several types
        cause = " ".join(str(exc).split())[:300]
        raise ValueError(cause or type(exc).__name__) from exc
