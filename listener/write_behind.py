"""Spool files written behind the intake journal, off the association's path.

With the intake journal on, an instance is durable once its journal record is
flushed; the spool file is only needed by the time the journal is checkpointed
(the worker reads spool files, and a checkpoint discards records). Creating a
file on the association's thread cost about half of the handler's time per
instance (`neuroseg bench ingest`), so one background thread writes the files
instead, and every checkpoint first waits for it (:meth:`WriteBehind.drain`).

An instance is submitted *before* its record is appended, so a checkpoint that
runs between the two still waits for its file. If the append then fails, the
instance is cancelled: its file is removed if it was already written, and the
peer, which gets a failure status, sends it again. A kill before the file is
written loses nothing: the record is replayed at the next start.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from neuroseg.listener import durable_write

log = logging.getLogger(__name__)

MAX_PENDING_BYTES = 64 * 1024 * 1024
"""Instances waiting for their file; a slower disk makes the associations wait, memory stays bounded."""
RETRY_SECONDS = 1.0

WriteFile = Callable[[Path, Sequence[bytes | memoryview]], None]


@dataclass(eq=False)
class PendingFile:
    """One instance whose spool file is not written yet."""

    sop_instance_uid: str
    path: Path
    parts: Sequence[bytes | memoryview]
    size: int
    state: str = field(default="queued")  # queued -> writing -> written, or cancelled


class WriteBehind:
    """One thread that writes submitted spool files in order; :meth:`drain` waits for all of them.

    Parameters
    ----------
    write_file: callable
        Writes one file completely at its final name (the spool's temporary file
        and rename); raises OSError on failure, after which it is tried again
        every :data:`RETRY_SECONDS` and :meth:`drain` raises meanwhile.
    """

    def __init__(self, write_file: WriteFile, max_pending_bytes: int = MAX_PENDING_BYTES) -> None:
        self._write_file = write_file
        self._max_pending_bytes = max_pending_bytes
        self._condition = threading.Condition()
        self._queue: deque[PendingFile] = deque()
        self._by_uid: dict[str, PendingFile] = {}
        self._pending_bytes = 0
        self._writing: PendingFile | None = None
        self._error: OSError | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    def submit(self, sop_instance_uid: str, path: Path, parts: Sequence[bytes | memoryview]) -> PendingFile:
        """Queue a file; waits while the queue holds more than its byte limit."""
        size = sum(len(part) for part in parts)
        pending = PendingFile(sop_instance_uid, path, parts, size)
        with self._condition:
            while self._pending_bytes and self._pending_bytes + size > self._max_pending_bytes:
                self._condition.wait()
            if self._thread is None or self._stopping:
                self._stopping = False
                self._thread = threading.Thread(target=self._run, name="neuroseg-spool-writer", daemon=True)
                self._thread.start()
            self._queue.append(pending)
            self._by_uid[sop_instance_uid] = pending
            self._pending_bytes += size
            self._condition.notify_all()
        return pending

    @property
    def failure(self) -> OSError | None:
        """The error of the last write while it keeps failing (a full disk), else None."""
        return self._error

    def holds(self, sop_instance_uid: str) -> Path | None:
        """The path of a submitted instance whose file is not written yet, else None."""
        with self._condition:
            pending = self._by_uid.get(sop_instance_uid)
            return pending.path if pending is not None else None

    def cancel(self, pending: PendingFile) -> None:
        """Withdraw an instance whose record could not be made durable; remove its file if written."""
        with self._condition:
            while pending.state == "writing":
                self._condition.wait()
            if pending.state == "queued":
                self._queue.remove(pending)
                self._forget(pending)
                if not self._queue and self._writing is None:
                    self._error = None  # the file that failed was this one: nothing is left to refuse for
            written = pending.state == "written"
            pending.state = "cancelled"
        if written:
            durable_write.unlink_quietly(pending.path)

    def drain(self) -> None:
        """Return once every file submitted so far is written.

        Raises
        ------
        OSError
            If a file cannot be written (its instance stays in the journal, which
            must not be checkpointed then).
        """
        with self._condition:
            while self._queue or self._writing is not None:
                if self._error is not None:
                    raise OSError(self._error.errno, f"a spool file could not be written: {self._error.strerror or self._error}")
                self._condition.wait()

    def close(self) -> None:
        """Drain (see :meth:`drain`), then stop the thread."""
        self.drain()
        with self._condition:
            self._stopping = True
            thread, self._thread = self._thread, None
            self._condition.notify_all()
        if thread is not None:
            thread.join(timeout=30)

    def _forget(self, pending: PendingFile) -> None:
        if self._by_uid.get(pending.sop_instance_uid) is pending:
            del self._by_uid[pending.sop_instance_uid]
        self._pending_bytes -= pending.size
        self._condition.notify_all()

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._queue and not self._stopping:
                    self._condition.wait()
                if not self._queue:
                    return
                pending = self._queue.popleft()
                pending.state = "writing"
                self._writing = pending
            try:
                self._write_file(pending.path, pending.parts)
            except Exception as exc:  # OSError mostly; anything else must not end the thread either
                if not isinstance(exc, OSError):
                    exc = OSError(None, repr(exc))
                log.error("cannot write the spool file %s (kept in the intake journal; retrying in %.0f s): %s",
                          pending.path, RETRY_SECONDS, exc)
                with self._condition:
                    pending.state = "queued"
                    self._queue.appendleft(pending)
                    self._writing = None
                    self._error = exc
                    self._condition.notify_all()
                    self._condition.wait(RETRY_SECONDS)
                continue
            with self._condition:
                pending.state = "written"
                self._writing = None
                self._error = None
                self._forget(pending)
