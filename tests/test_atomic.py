"""Atomic writes (detcon.atomic): a full disk names the file and keeps its previous version."""

import errno

import pytest

from detcon.atomic import DiskFullError, atomic_write, write_text


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
