"""Atomic file writes: a temp file in the same directory, fsync, then ``os.replace``.

A reader (or a killed writer) never sees a half-written result, metric table or checkpoint. A
writer killed mid-write leaves its temp file (``.<name>.<8 random characters>.tmp``) behind; the
next writer of the directory removes it (:func:`remove_stale_temp_files`).
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import torch

__all__ = ["atomic_write", "remove_stale_temp_files", "write_json", "write_text", "save_torch"]

# Temp file names: ".<target name>.<8 random characters>.tmp" (tempfile.mkstemp's alphabet, which
# named them before, includes "_"; ours are hex).
_TEMP_NAME = re.compile(r"\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp")


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new, empty temp file next to ``path``, opened for writing.

    Created with mode 0o666 like any file ``open()`` creates, so the umask (and a default ACL)
    decide who may read the result; ``tempfile.mkstemp`` would make every result 0600, unreadable
    to collaborators on shared storage.
    """
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temp file name next to {path}")  # pragma: no cover


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(fileobj)`` on a temp file next to ``path`` and move it into place."""
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
    return atomic_write(path, lambda f: torch.save(obj, f))
