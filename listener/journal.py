"""The intake journal: one flush per received instance instead of two.

Making a new file durable takes two flushes: the file (its data) and its folder
(its name). On this kind of disk each is a journal commit of the file system,
and together they were most of the listener's time per instance. The journal
makes an instance durable with one flush of a file that already exists:

1. the instance is queued for its spool file (temp file and rename, without
   a flush), which a background thread writes
   (:mod:`neuroseg.listener.write_behind`);
2. it is appended as a record to a journal file whose blocks were
   zero-filled and flushed when it was created, and the journal is flushed
   with ``fdatasync`` (an overwrite inside allocated blocks: the data and a
   cache flush, no file-system metadata). Only then is Success answered;
3. a **checkpoint** flushes the whole file system once (``syncfs``), after
   which every spool file written before it is durable on its own, and the
   journal is emptied by starting a new generation. A checkpoint first waits
   until every queued spool file is written (its ``before_checkpoint``), and an
   instance is queued before its record is appended, so every record a
   checkpoint discards belongs to a file that checkpoint flushed. Checkpoints
   happen when
   the journal is full, a few seconds after the last record, before a study
   is handed over to the queue (so the worker never reads an instance that
   exists only in the journal) and when the listener stops.

After a crash, :meth:`IntakeJournal.replay` writes every record of the
current generation whose spool file is missing or differs (a file renamed
but not yet flushed can be empty after a power loss), then checkpoints.

Record layout (little endian)::

    "NSJR"  u32 generation  u32 name length  u64 payload length  u32 crc32
    name (UTF-8, the path relative to the spool)  payload

The CRC covers the generation, the name and the payload; replay stops at the
first record that does not check (a torn last record, never acknowledged, or
the end of the records). The first 4 KiB of the file hold ``"NSJH"`` and the
current generation, rewritten and flushed at each checkpoint, so records of
an older generation are never replayed.

Several association threads share one journal: a record is written under a
lock and the flush is shared (group commit), as with
:class:`~neuroseg.listener.durable_write.FolderFlusher`. Each listener process
has its own journal file and holds an exclusive ``flock`` on it; at start-up
every journal nobody holds (a crashed process's) is replayed and removed.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from neuroseg.listener import durable_write

log = logging.getLogger(__name__)

JOURNAL_DIR = ".journal"
JOURNAL_SUFFIX = ".journal"
SEGMENT_BYTES = 64 * 1024 * 1024
"""Size of a journal file: about 400 MR slices between checkpoints."""
CHECKPOINT_AFTER_SECONDS = 2.0
"""A journal with records is checkpointed this long after its first unflushed record."""

_HEADER_BYTES = 4096
_FILE_MAGIC = b"NSJH"
_RECORD_MAGIC = b"NSJR"
_FILE_HEADER = struct.Struct("<4sI")
_RECORD_HEADER = struct.Struct("<4sIIQI")
_ZEROS = bytes(1024 * 1024)

Restore = Callable[[str, bytes], None]
"""``restore(relative_path, payload)`` writes one replayed instance into the spool."""


def _libc_syncfs() -> Callable[[int], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_SYNCFS = _libc_syncfs()


def sync_file_system(fd: int) -> None:
    """Flush every file of the file system that holds ``fd`` (``syncfs``; ``sync`` where it is missing)."""
    if _SYNCFS is None:
        os.sync()
        return
    if _SYNCFS(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"syncfs failed: {os.strerror(code)}")


class IntakeJournal:
    """This process's journal file in ``<spool>/.journal/`` (see the module docstring).

    Parameters
    ----------
    folder: Path
        The journal folder; created if missing.
    segment_bytes: int
        Size of the journal file. An instance larger than this minus the
        header is not journaled: :meth:`append` returns False and the caller
        writes it the two-flush way.
    """

    def __init__(self, folder: Path, segment_bytes: int = SEGMENT_BYTES,
                 before_checkpoint: Callable[[], None] | None = None) -> None:
        if segment_bytes <= _HEADER_BYTES:
            raise ValueError(f"segment_bytes={segment_bytes}: must exceed the {_HEADER_BYTES}-byte header")
        self.folder = Path(folder)
        self.segment_bytes = segment_bytes
        self.path = self.folder / f"intake-{uuid.uuid4().hex}{JOURNAL_SUFFIX}"
        self._before_checkpoint = before_checkpoint  # waits for spool files written behind (write_behind)
        self._condition = threading.Condition()
        self._fd: int | None = None
        self._generation = 1
        self._offset = _HEADER_BYTES   # where the next record goes
        self._durable = _HEADER_BYTES  # records before this offset are flushed
        self._flushing = False
        self._first_unflushed: float | None = None  # monotonic time of the oldest record not checkpointed
        self.failed: OSError | None = None
        """The flush error that ended this journal: after a failed flush Linux may drop the
        unwritten pages and report success later, so no flush of this file is trusted again."""

    # --- life cycle ---------------------------------------------------------------
    def open(self) -> "IntakeJournal":
        """Create and zero-fill this process's journal file, flush it and its folder, and lock it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            for offset in range(0, self.segment_bytes, len(_ZEROS)):
                os.pwrite(fd, _ZEROS[: min(len(_ZEROS), self.segment_bytes - offset)], offset)
            os.pwrite(fd, _FILE_HEADER.pack(_FILE_MAGIC, self._generation), 0)
            os.fsync(fd)
            durable_write.fsync_directory(self.folder)
        except BaseException:
            os.close(fd)
            durable_write.unlink_quietly(self.path)
            raise
        self._fd = fd
        return self

    def close(self) -> None:
        """Checkpoint, then remove the journal file (a clean stop leaves nothing to replay)."""
        if self._fd is None:
            return
        self.checkpoint()
        with self._condition:
            fd, self._fd = self._fd, None
        durable_write.unlink_quietly(self.path)
        os.close(fd)

    # --- writing ------------------------------------------------------------------
    def fits(self, name: str, length: int) -> bool:
        """Whether a record of ``length`` payload bytes fits in an empty journal."""
        return _HEADER_BYTES + _RECORD_HEADER.size + len(name.encode()) + length <= self.segment_bytes

    def append(self, name: str, parts: Sequence[bytes | memoryview]) -> bool:
        """Append one instance and return once it is flushed; False if it is too large for the journal.

        Raises
        ------
        OSError
            If the write or the flush fails; the instance must then be refused.
        """
        encoded_name = name.encode()
        length = sum(len(part) for part in parts)
        if not self.fits(name, length):
            return False
        size = _RECORD_HEADER.size + len(encoded_name) + length
        with self._condition:
            if self._fd is None:
                raise OSError(errno.EBADF, "the intake journal is closed")
            if self.failed is not None:
                raise OSError(errno.EIO, f"the intake journal failed earlier: {self.failed}")
            if self._offset + size > self.segment_bytes:
                self._checkpoint_locked()
            crc = zlib.crc32(struct.pack("<I", self._generation))
            crc = zlib.crc32(encoded_name, crc)
            for part in parts:
                crc = zlib.crc32(part, crc)
            header = _RECORD_HEADER.pack(_RECORD_MAGIC, self._generation, len(encoded_name), length, crc)
            offset = self._offset
            for chunk in (header, encoded_name, *parts):
                view = memoryview(chunk)
                while view:
                    written = os.pwrite(self._fd, view, offset)
                    offset += written
                    view = view[written:]
            self._offset = offset
            if self._first_unflushed is None:
                self._first_unflushed = time.monotonic()
            mine, generation = offset, self._generation
            while True:
                if self._generation != generation or self._durable >= mine:
                    # a flush that began after our write has finished, or a checkpoint
                    # made the spool file (written before this record) durable itself
                    return True
                if not self._flushing:
                    break
                self._condition.wait()
            self._flushing = True
            covers = self._offset
            fd = self._fd
        done = False
        try:
            os.fdatasync(fd)
            done = True
        except OSError as exc:
            self.failed = exc
            raise
        finally:
            with self._condition:
                self._flushing = False
                if done:
                    self._durable = max(self._durable, covers)
                self._condition.notify_all()
        return True

    def checkpoint(self, older_than: float | None = None) -> bool:
        """Make every spool file written so far durable and empty the journal; True if it ran.

        With ``older_than`` (seconds), only when the oldest record not yet
        checkpointed is at least that old.
        """
        with self._condition:
            if self._fd is None or self._first_unflushed is None:
                return False
            if older_than is not None and time.monotonic() - self._first_unflushed < older_than:
                return False
            self._checkpoint_locked()
            return True

    def _checkpoint_locked(self) -> None:
        while self._flushing:  # a shared flush of the current generation is in progress
            self._condition.wait()
        assert self._fd is not None
        if self._before_checkpoint is not None:
            self._before_checkpoint()  # raises while a file cannot be written: its record is kept
        sync_file_system(self._fd)
        self._generation += 1
        os.pwrite(self._fd, _FILE_HEADER.pack(_FILE_MAGIC, self._generation), 0)
        os.fdatasync(self._fd)
        self._offset = self._durable = _HEADER_BYTES
        self._first_unflushed = None


# --- recovery ---------------------------------------------------------------------------
def read_records(path: Path) -> Iterator[tuple[str, bytes]]:
    """The records of the current generation of a journal file, in order, up to the first that does not check."""
    with open(path, "rb") as handle:
        data = handle.read()
    if len(data) < _HEADER_BYTES:
        return
    magic, generation = _FILE_HEADER.unpack_from(data, 0)
    if magic != _FILE_MAGIC:
        return
    offset = _HEADER_BYTES
    while offset + _RECORD_HEADER.size <= len(data):
        magic, record_generation, name_length, length, crc = _RECORD_HEADER.unpack_from(data, offset)
        start = offset + _RECORD_HEADER.size
        end = start + name_length + length
        if magic != _RECORD_MAGIC or record_generation != generation or end > len(data):
            return
        check = zlib.crc32(struct.pack("<I", record_generation))
        check = zlib.crc32(data[start:end], check)
        if check != crc:
            return
        try:
            name = data[start:start + name_length].decode()
        except UnicodeDecodeError:
            return
        yield name, data[start + name_length:end]
        offset = end


def replay_abandoned(folder: Path, restore: Restore, is_current: Callable[[str, bytes], bool]) -> int:
    """Replay and remove every journal in ``folder`` that no live process holds; return the instances restored.

    ``is_current(name, payload)`` says whether the spool already holds that
    instance intact; ``restore`` writes it otherwise. A name recorded twice
    keeps its first record, as the spool kept the first copy. The restored
    files are flushed (one ``syncfs``) before a journal is removed.
    """
    if not folder.is_dir():
        return 0
    restored = 0
    for path in sorted(folder.glob(f"*{JOURNAL_SUFFIX}")):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # another listener process is alive and writing it
            seen: set[str] = set()
            for name, payload in read_records(path):
                if name in seen:
                    continue
                seen.add(name)
                if not is_current(name, payload):
                    restore(name, payload)
                    restored += 1
            sync_file_system(fd)
            os.unlink(path)
            durable_write.fsync_directory(folder)
        finally:
            os.close(fd)
        log.info("replayed the intake journal %s", path.name)
    return restored
