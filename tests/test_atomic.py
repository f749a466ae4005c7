"""Atomic writes (detcon.atomic): permissions as a normal open gives them, the temp files of a
killed writer are recognised and removed, and a full disk names the file and keeps its previous
version."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from detcon.atomic import (
    DiskFullError,
    atomic_write,
    remove_stale_temp_files,
    save_torch,
    write_json,
    write_text,
)


@pytest.fixture
def umask():
    """Set the process umask for a test; the old one comes back afterwards."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_written_files_honour_the_umask(tmp_path, umask, mask):
    # mkstemp creates 0600 files: collaborators on shared storage could not read the results.
    umask(mask)
    paths = [
        write_json(tmp_path / "summary.json", {"a": 1}),
        write_text(tmp_path / "index.html", "<p>"),
        save_torch(tmp_path / "checkpoint.pt", {"step": 1}),
    ]
    for path in paths:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path.name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)


def _touch(path: Path) -> Path:
    path.write_bytes(b"half")
    return path


def test_stale_temp_files_are_removed_and_nothing_else(tmp_path):
    ours = [
        _touch(tmp_path / ".checkpoint.pt.k2x_9q0a.tmp"),  # named by tempfile.mkstemp (before)
        _touch(tmp_path / ".checkpoint.pt.0f3a9c1e.tmp"),
        _touch(tmp_path / ".status.json.abcdefgh.tmp"),
    ]
    kept = [
        _touch(tmp_path / "checkpoint.pt"),
        _touch(tmp_path / ".notes.tmp"),  # not our pattern
        _touch(tmp_path / "draft.json.abcdefgh.tmp"),  # no leading dot: not ours
        _touch(tmp_path / ".checkpoint.pt.short.tmp"),
    ]
    assert remove_stale_temp_files(tmp_path, ["config.json"]) == []
    assert remove_stale_temp_files(tmp_path, ["checkpoint.pt"]) == sorted(ours[:2])
    assert ours[2].exists()
    assert remove_stale_temp_files(tmp_path) == [ours[2]]
    assert all(p.exists() for p in kept) and not any(p.exists() for p in ours)
    assert remove_stale_temp_files(tmp_path / "missing") == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_names_the_file_and_keeps_its_previous_version(tmp_path, code):
    path = write_text(tmp_path / "result.json", "old")

    def write(f):
        f.write(b"half")
        raise OSError(code, "No space left on device")

    with pytest.raises(DiskFullError) as err:
        atomic_write(path, write)
    assert err.value.errno == code
    assert str(err.value).startswith(
        ("no space left on the disk", "over the disk quota")[code == errno.EDQUOT]
        + f" while writing {path} ("
    )
    assert "MiB free there" in str(err.value) and "previous version" in str(err.value)
    assert path.read_text() == "old" and not list(tmp_path.glob(".*.tmp"))


def test_other_os_errors_pass_unchanged(tmp_path):
    def write(f):
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError) as err:
        atomic_write(tmp_path / "x", write)
    assert type(err.value) is OSError and err.value.errno == errno.EIO


def test_a_directory_in_place_of_the_file_is_named_before_anything_is_written(tmp_path):
    # os.replace failed with "[Errno 21] Is a directory: '.out.<hex>.tmp' -> 'out'", after the
    # work, and the CLI printed a traceback.
    (tmp_path / "out").mkdir()
    with pytest.raises(IsADirectoryError, match=r"out is a directory: expected the path of a file"):
        write_json(tmp_path / "out", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_load_torch_checks_checksums_where_the_file_has_them(tmp_path):
    import torch

    from detcon.atomic import load_torch, save_torch

    path = save_torch(tmp_path / "w.pt", {"w": torch.arange(256.0)})
    assert torch.equal(load_torch(path)["w"], torch.arange(256.0))
    data = bytearray(path.read_bytes())
    data[data.find(b"\x00\x00\x80\x3f")] ^= 0x01  # the bytes of 1.0, one of the tensor's values
    path.write_bytes(data)
    with pytest.raises(ValueError, match="Bad CRC-32 for file"):
        load_torch(path)  # torch.load alone returns another tensor
    # torch can save without checksums (all zero): such a file is read as torch reads it
    torch.serialization.set_crc32_options(False)
    try:
        torch.save({"w": torch.arange(4.0)}, tmp_path / "plain.pt")
    finally:
        torch.serialization.set_crc32_options(True)
    assert torch.equal(load_torch(tmp_path / "plain.pt")["w"], torch.arange(4.0))
    legacy = tmp_path / "legacy.pt"  # the pre-zip format: no checksums to check
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(load_torch(legacy)["w"], torch.ones(2))
    with pytest.raises(ValueError, match="an empty file"):
        (tmp_path / "empty.pt").write_bytes(b"")
        load_torch(tmp_path / "empty.pt")
