"""Durable writes for the spool: a name reported stored survives ``kill -9`` and power loss.

An instance is written to a temporary file in its series folder, flushed with
``fsync``, renamed to its final name and then the folder itself is flushed, so a
file at its final name is always complete. Folder flushes are shared between
association threads (:class:`FolderFlusher`). Leftover temporary files (names
ending in :data:`TEMP_SUFFIX`) are what a crash leaves; the spool removes them
at start-up.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuroseg.common.files import atomic_write

TEMP_SUFFIX = ".tmp"


def fsync_directory(path: Path) -> None:
    """Flush a directory so that the names created in it survive a crash."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FolderFlusher:
    """Group commit of folder flushes across association threads.

    A thread that renamed a file into a folder calls :meth:`flush` and returns
    only once an fsync of that folder has *started after* its rename and
    finished, so its name is durable. Threads that renamed while a flush was
    running share the next one: with several associations writing into one
    series, one folder fsync covers all of them instead of one each. Nothing
    is acknowledged before its own name is on disk.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._folders: dict[Path, _FolderFlushState] = {}

    def flush(self, folder: Path) -> None:
        """Flush ``folder``, sharing the fsync with other threads (raises OSError as fsync does)."""
        with self._condition:
            state = self._folders.setdefault(folder, _FolderFlushState())
            state.requested += 1
            mine = state.requested
            while state.flushed < mine:
                if not state.busy:
                    break
                self._condition.wait()
            else:
                return  # a flush that began after our rename has finished
            state.busy = True
            covers = state.requested
        done = False
        try:
            fsync_directory(folder)
            done = True
        finally:
            with self._condition:
                state.busy = False
                if done:
                    state.flushed = max(state.flushed, covers)
                if state.flushed >= state.requested:
                    self._folders.pop(folder, None)
                self._condition.notify_all()


@dataclass
class _FolderFlushState:
    requested: int = 0  # renames that asked for a flush
    flushed: int = 0    # renames covered by a finished flush
    busy: bool = False


def temp_name(path: Path) -> Path:
    """A hidden, unique temporary name next to ``path``, removed by the spool's recovery after a crash."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}")


def write_new_file(path: Path, parts: Sequence[bytes | memoryview], durable: bool) -> None:
    """Create ``path`` (it must not exist), write ``parts`` and flush it when ``durable``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        for part in parts:
            view = memoryview(part)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any, durable: bool = True) -> None:
    """Write ``data`` as JSON to ``path`` atomically (:func:`neuroseg.common.files.atomic_write`)."""
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True).encode(), fsync=durable)


def unlink_quietly(path: Path) -> None:
    """Remove ``path`` if it is there; a cleanup that must not hide the error being handled."""
    try:
        os.unlink(path)
    except OSError:
        pass
