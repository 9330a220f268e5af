"""atomic_write: all or nothing at the destination, nothing left behind."""

from __future__ import annotations

import pytest

from neuroseg.common.files import atomic_target, atomic_write


def test_bytes_text_and_writers_replace_the_destination(tmp_path):
    path = tmp_path / "data.bin"
    assert atomic_write(path, b"old") == path
    atomic_write(path, "né")
    assert path.read_bytes() == "né".encode()
    atomic_write(path, lambda stream: stream.write(b"from a writer"))
    assert path.read_bytes() == b"from a writer"
    assert [item.name for item in tmp_path.iterdir()] == ["data.bin"]


def test_a_failing_writer_leaves_the_old_content_and_no_temporary_file(tmp_path):
    path = tmp_path / "report.json"
    atomic_write(path, "{}")

    def half_then_fail(stream):
        stream.write(b'{"half":')
        raise RuntimeError("disk went away")

    with pytest.raises(RuntimeError, match="disk went away"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "{}"
    assert [item.name for item in tmp_path.iterdir()] == ["report.json"]


def test_a_target_for_writers_that_want_a_file_name_keeps_the_suffix(tmp_path):
    path = tmp_path / "image.nii.gz"
    with atomic_target(path, suffix=".nii.gz") as temp:
        assert temp.parent == tmp_path and temp.name.endswith(".nii.gz") and temp != path
        temp.write_bytes(b"nifti")
        assert not path.exists(), "nothing at the destination before the rename"
    assert path.read_bytes() == b"nifti" and not temp.exists()
