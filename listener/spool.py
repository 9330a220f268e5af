"""The durable spool: every received instance, written atomically before Success.

Layout (all names are validated UIDs, so nothing a peer sends can leave the spool)::

    <spool>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
    <spool>/<StudyInstanceUID>/.study.json          first arrival, calling AE titles
    <spool>/<StudyInstanceUID>/.handed-over.json    written after the hand-off to the queue

Each instance is checked by :mod:`neuroseg.listener.header_check` and made
durable by one flush of the intake journal (:mod:`neuroseg.listener.journal`)
before Success; its file at the final name (temporary file and rename) is
written behind, by a background thread (:mod:`neuroseg.listener.write_behind`),
and every checkpoint of the journal waits for those files. An instance
too large for the journal is flushed the two-flush way instead
(:mod:`neuroseg.listener.durable_write`: file, then folder).
:meth:`Spool.recover` replays the journals of crashed processes and removes
leftover temporary files at start-up; the peer never got Success for those, so
it sends them again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from neuroseg.common.files import atomic_write
from neuroseg.listener import durable_write
from neuroseg.listener.write_behind import WriteBehind
from neuroseg.listener.journal import JOURNAL_DIR, SEGMENT_BYTES, IntakeJournal, replay_abandoned
from neuroseg.listener.header_check import UID_PATTERN, InstanceHeader, check_uid

log = logging.getLogger(__name__)

STUDY_STATE_FILE = ".study.json"
HANDED_OVER_FILE = ".handed-over.json"
INSTANCE_SUFFIX = ".dcm"
JOURNAL_RETRY_SECONDS = 60.0
"""After the journal could not be created (a full spool disk), how long to flush the two-flush way."""


@dataclass(frozen=True)
class StoredInstance:
    """The outcome of :meth:`Spool.store`."""

    path: Path
    created: bool  # False: the SOP Instance UID was already in the spool; nothing was written
    new_study: bool


class Spool:
    """The folder of received instances, one sub-folder per study and series.

    Parameters
    ----------
    root: Path
        The spool folder (``settings.spool_dir``); created if missing.
    durable: bool
        Make every instance durable before :meth:`store` returns (default). Only
        tests of unrelated logic turn it off.
    journal_bytes: int
        Size of the intake journal (:mod:`neuroseg.listener.journal`); 0 makes
        every instance durable the two-flush way (file, then folder).

    Thread safety: :meth:`store` may be called from several association
    threads at once; a SOP Instance UID is stored once even when two peers
    send it at the same moment.
    """

    def __init__(self, root: Path, durable: bool = True, journal_bytes: int = SEGMENT_BYTES) -> None:
        self.root = Path(root)
        self.durable = durable
        self.journal_bytes = journal_bytes
        self._lock = threading.Lock()
        self._index_lock = threading.Lock()
        self._known_dirs: set[Path] = set()
        self._index: dict[str, Path] | None = None
        self._flusher = durable_write.FolderFlusher()
        self._journal: IntakeJournal | None = None
        self._journal_lock = threading.Lock()
        self._journal_retry_at = 0.0
        self._write_behind = WriteBehind(self._write_spool_file)

    # --- writing ---------------------------------------------------------------
    def store(self, header: InstanceHeader, parts: Sequence[bytes | memoryview]) -> StoredInstance:
        """Store one instance durably unless its SOP Instance UID is already in the spool.

        Parameters
        ----------
        header: InstanceHeader
            From :func:`inspect_instance`; its UIDs are already validated.
        parts: sequence of bytes
            The file content (preamble, file meta, dataset as received), written in order.

        Raises
        ------
        OSError
            If the file cannot be written (disk full, permissions); nothing is left
            at the final name then.
        """
        path = self._instance_path(header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid)
        series_dir = path.parent
        existing = self._existing(header.sop_instance_uid)
        if existing is not None:
            return StoredInstance(existing, created=False, new_study=False)
        new_study = self._make_dirs(series_dir)
        name = path.relative_to(self.root).as_posix()
        journal = self.open_journal()
        if journal is not None and journal.fits(name, sum(len(part) for part in parts)):
            failure = self._write_behind.failure
            if failure is not None:  # a full disk: refuse now rather than fill the journal
                raise OSError(failure.errno, f"spool files cannot be written: {failure.strerror or failure}")
            with self._lock:
                existing = self._existing(header.sop_instance_uid)
                if existing is not None:  # another association stored it meanwhile
                    return StoredInstance(existing, created=False, new_study=False)
                # queued before its record: a checkpoint between the two still waits for the file
                pending = self._write_behind.submit(header.sop_instance_uid, path, parts)
                self._index_add(header.sop_instance_uid, path)
            try:
                journal.append(name, parts)
            except BaseException:
                with self._lock:  # not durable: the peer gets a failure and sends it again
                    self._write_behind.cancel(pending)
                    self._index_forget(header.sop_instance_uid, path)
                raise
            return StoredInstance(path, created=True, new_study=new_study)
        temp = durable_write.temp_name(path)
        try:
            new_study = self._write_file(temp, parts, self.durable) or new_study
            with self._lock:
                existing = self._existing(header.sop_instance_uid)
                if existing is not None:  # another association stored it meanwhile
                    durable_write.unlink_quietly(temp)
                    return StoredInstance(existing, created=False, new_study=False)
                os.replace(temp, path)
                self._index_add(header.sop_instance_uid, path)
        except BaseException:
            durable_write.unlink_quietly(temp)
            raise
        if self.durable:
            self._flusher.flush(series_dir)
        return StoredInstance(path, created=True, new_study=new_study)

    def _write_file(self, temp: Path, parts: Sequence[bytes | memoryview], flush: bool) -> bool:
        """Write ``temp``; True if its study folder had to be made again (it was removed since)."""
        try:
            durable_write.write_new_file(temp, parts, flush)
            return False
        except FileNotFoundError:
            # the folders were removed since we made them (retention): make them again
            series_dir = temp.parent
            self._known_dirs.difference_update({series_dir, series_dir.parent})
            new_study = self._make_dirs(series_dir)
            durable_write.write_new_file(temp, parts, flush)
            return new_study

    def _write_spool_file(self, path: Path, parts: Sequence[bytes | memoryview]) -> None:
        """The write-behind thread's write: temp file and rename, unflushed (the checkpoint flushes)."""
        temp = durable_write.temp_name(path)
        try:
            self._write_file(temp, parts, flush=False)
            os.replace(temp, path)
        except BaseException:
            durable_write.unlink_quietly(temp)
            raise

    def wait_for_files(self) -> None:
        """Return once every acknowledged instance has its spool file (before listing them to classify).

        Raises OSError while a file cannot be written (it stays in the journal).
        """
        self._write_behind.drain()

    # --- intake journal -------------------------------------------------------------
    def open_journal(self) -> IntakeJournal | None:
        """This process's intake journal, created on first use (the listener opens it at start); None when off."""
        if not self.durable or self.journal_bytes <= 0:
            return None
        if self._journal is None:
            if time.monotonic() < self._journal_retry_at:
                return None
            with self._journal_lock:
                if self._journal is None:
                    try:
                        self._journal = IntakeJournal(self.root / JOURNAL_DIR, self.journal_bytes,
                                                      before_checkpoint=self._write_behind.drain).open()
                    except OSError as exc:  # a full or small spool disk: it needs journal_bytes free
                        self._journal_retry_at = time.monotonic() + JOURNAL_RETRY_SECONDS
                        log.warning("cannot create the %d MB intake journal in %s (%s); instances are flushed "
                                    "the two-flush way, trying again in %.0f s", self.journal_bytes >> 20,
                                    self.root, exc, JOURNAL_RETRY_SECONDS)
                        return None
        if self._journal.failed is not None:
            log.error("the intake journal failed (%s); instances are flushed the two-flush way until the "
                      "listener restarts, which replays it", self._journal.failed)
            self.journal_bytes = 0  # kept open until close(), which checkpoints it; after a crash, replayed
            return None
        return self._journal

    def checkpoint(self, older_than: float | None = None) -> bool:
        """Make every stored instance durable in the spool itself and empty the journal; True if it ran.

        The assembly calls it before each hand-off (the worker reads the spool
        files) and, with ``older_than``, a few seconds after the last arrival.
        """
        journal = self._journal
        return journal.checkpoint(older_than) if journal is not None else False

    def close(self) -> None:
        """Checkpoint and remove this process's journal (a clean stop leaves nothing to replay)."""
        with self._journal_lock:
            journal, self._journal = self._journal, None
        if journal is not None:
            journal.close()  # its checkpoint waits for the files written behind
        self._write_behind.close()

    def _restore(self, name: str, payload: bytes) -> None:
        path = self._journaled_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, payload, fsync=False)  # the replay flushes once, at the end

    def _holds(self, name: str, payload: bytes) -> bool:
        path = self._journaled_path(name)
        try:
            return path.stat().st_size == len(payload) and path.read_bytes() == payload
        except FileNotFoundError:
            return False

    def _journaled_path(self, name: str) -> Path:
        study, series, file_name = name.split("/")
        if not file_name.endswith(INSTANCE_SUFFIX):
            raise ValueError(f"journal record {name!r} is not an instance path")
        return self._instance_path(study, series, file_name[: -len(INSTANCE_SUFFIX)])

    def _instance_path(self, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str) -> Path:
        """``<root>/<study>/<series>/<sop>.dcm``, each UID validated (so no name leaves the spool)."""
        return (self.study_dir(study_instance_uid) / check_uid(series_instance_uid, "SeriesInstanceUID")
                / f"{check_uid(sop_instance_uid, 'SOPInstanceUID')}{INSTANCE_SUFFIX}")

    def _make_dirs(self, series_dir: Path) -> bool:
        """Create the study and series folders (flushing their parents); True if the study is new."""
        if series_dir in self._known_dirs:
            return False
        study_dir = series_dir.parent
        new_study = False
        for folder in (self.root, study_dir, series_dir):
            if folder in self._known_dirs:
                continue
            try:
                folder.mkdir(parents=folder is self.root)
                created = True
            except FileExistsError:
                created = False
            if created:
                if folder is study_dir:
                    new_study = True
                if self.durable:
                    durable_write.fsync_directory(folder.parent)
            self._known_dirs.add(folder)
        return new_study

    # --- duplicate index ------------------------------------------------------------
    def _existing(self, sop_instance_uid: str) -> Path | None:
        """The stored file of this SOP Instance UID, if any (the index is built on first use)."""
        pending = self._write_behind.holds(sop_instance_uid)
        if pending is not None:  # acknowledged, its file not written yet
            return pending
        if self._index is None:
            with self._index_lock:
                if self._index is None:
                    self._index = {path.stem: path for path in self.instance_files()}
        path = self._index.get(sop_instance_uid)
        if path is not None and not path.exists():  # removed by retention since
            self._index.pop(sop_instance_uid, None)
            return None
        return path

    def _index_add(self, sop_instance_uid: str, path: Path) -> None:
        if self._index is not None:
            self._index[sop_instance_uid] = path

    def _index_forget(self, sop_instance_uid: str, path: Path) -> None:
        if self._index is not None and self._index.get(sop_instance_uid) == path:
            del self._index[sop_instance_uid]

    # --- reading ---------------------------------------------------------------------
    def study_dir(self, study_instance_uid: str) -> Path:
        """The folder of a study (the UID is validated)."""
        return self.root / check_uid(study_instance_uid, "StudyInstanceUID")

    def studies(self) -> list[str]:
        """Study Instance UIDs with a folder in the spool."""
        if not self.root.is_dir():
            return []
        return sorted(
            entry.name for entry in os.scandir(self.root) if entry.is_dir() and UID_PATTERN.fullmatch(entry.name)
        )

    def series_dirs(self, study_instance_uid: str) -> list[Path]:
        """The series folders of a study, sorted by name."""
        study_dir = self.study_dir(study_instance_uid)
        if not study_dir.is_dir():
            return []
        return sorted(
            Path(entry.path) for entry in os.scandir(study_dir)
            if entry.is_dir() and UID_PATTERN.fullmatch(entry.name)
        )

    @staticmethod
    def instances(series_dir: Path) -> list[Path]:
        """The stored instance files of a series folder, sorted by name."""
        return sorted(
            Path(entry.path) for entry in os.scandir(series_dir)
            if entry.name.endswith(INSTANCE_SUFFIX) and not entry.name.startswith(".")
        )

    def instance_files(self) -> Iterator[Path]:
        """Every stored instance in the spool, once the files written behind are there (see :meth:`wait_for_files`)."""
        self.wait_for_files()
        for study in self.studies():
            for series_dir in self.series_dirs(study):
                yield from self.instances(series_dir)

    def recover(self) -> int:
        """Replay crashed processes' journals and remove leftover temporary files; return how many were removed.

        Replayed instances were acknowledged and are written back where a
        power loss left them missing or incomplete. Temporary files were never
        acknowledged, so the peer sends them again.
        """
        restored = replay_abandoned(self.root / JOURNAL_DIR, self._restore, self._holds)
        if restored:
            log.warning("restored %d instance(s) from the intake journal of a crashed listener in %s",
                        restored, self.root)
        removed = 0
        for study in self.studies():
            study_dir = self.root / study
            folders = [study_dir, *self.series_dirs(study)]
            for folder in folders:
                for entry in os.scandir(folder):
                    if entry.name.startswith(".") and entry.name.endswith(durable_write.TEMP_SUFFIX):
                        durable_write.unlink_quietly(Path(entry.path))
                        removed += 1
        if removed:
            log.warning("removed %d unfinished temporary file(s) from the spool %s", removed, self.root)
        return removed

