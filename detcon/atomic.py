"""Atomic file writes: a temp file in the same directory, fsync, then ``os.replace``.

A reader (or a killed writer) never sees a half-written result, metric table or checkpoint.
A full disk is reported as :class:`DiskFullError`, naming the file, with its previous version
kept.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch

__all__ = [
    "DiskFullError",
    "atomic_write",
    "naming_full_disk",
    "write_json",
    "write_text",
    "save_torch",
]

_FULL = (errno.ENOSPC, errno.EDQUOT)


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
    """
    with naming_full_disk(path):
        return _atomic_write(path, write)


def _atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def save_torch(path: str | Path, obj: Any) -> Path:
    return atomic_write(path, lambda f: torch.save(obj, f))
