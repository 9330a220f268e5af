"""Writing files so that a reader never sees half of one.

:func:`atomic_write` writes to a temporary file in the destination's folder,
flushes it to disk, renames it over the destination (atomic on POSIX) and
flushes the folder, so that after a crash the path holds either the old or the
new content, never a mix. :func:`atomic_target` does the same for libraries
that insist on writing a file by name (nibabel picks the format from the
suffix).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

Writer = Callable[[BinaryIO], object]


def fsync_folder(folder: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_target(path: str | os.PathLike[str], *, suffix: str = ".tmp", fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed over ``path``, on error removed.

    ``suffix`` ends the temporary name (use the destination's own, e.g.
    ``.nii.gz``, for writers that choose the format from it).
    """
    path = Path(path)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(handle)
    temp = Path(name)
    try:
        yield temp
        if fsync:
            with open(temp, "rb+") as stream:
                os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_folder(path.parent)


def atomic_write(path: str | os.PathLike[str], data_or_writer: bytes | str | Writer, *, fsync: bool = True) -> Path:
    """Write ``path`` atomically: bytes, text (UTF-8), or whatever ``writer(binary_stream)`` writes.

    Returns the path. The folder must exist.
    """
    with atomic_target(path, fsync=fsync) as temp, open(temp, "wb") as stream:
        if isinstance(data_or_writer, str):
            stream.write(data_or_writer.encode("utf-8"))
        elif isinstance(data_or_writer, (bytes, bytearray, memoryview)):
            stream.write(data_or_writer)
        else:
            data_or_writer(stream)
        stream.flush()
    return Path(path)
