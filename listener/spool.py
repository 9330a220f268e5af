"""The durable spool: every received instance, written atomically before Success.

Layout (all names are validated UIDs, so nothing a peer sends can leave the spool)::

    <spool>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
    <spool>/<StudyInstanceUID>/.study.json          first arrival, calling AE titles
    <spool>/<StudyInstanceUID>/.handed-over.json    written after the hand-off to the queue

Each instance is written with :mod:`neuroseg.listener.durable_write` (temporary file,
fsync, rename, folder flush) after :mod:`neuroseg.listener.header_check` has
checked it. Leftover temporary files are removed by :meth:`Spool.recover` at
start-up; the peer never got Success for them, so it sends them again.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from neuroseg.listener import durable_write
from neuroseg.listener.header_check import UID_PATTERN, InstanceHeader, check_uid

log = logging.getLogger(__name__)

STUDY_STATE_FILE = ".study.json"
HANDED_OVER_FILE = ".handed-over.json"
INSTANCE_SUFFIX = ".dcm"


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
        Flush every file and folder before :meth:`store` returns (default). Only
        tests of unrelated logic turn it off.

    Thread safety: :meth:`store` may be called from several association
    threads at once; a SOP Instance UID is stored once even when two peers
    send it at the same moment.
    """

    def __init__(self, root: Path, durable: bool = True) -> None:
        self.root = Path(root)
        self.durable = durable
        self._lock = threading.Lock()
        self._index_lock = threading.Lock()
        self._known_dirs: set[Path] = set()
        self._index: dict[str, Path] | None = None
        self._flusher = durable_write.FolderFlusher()

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
        study_dir = self.root / check_uid(header.study_instance_uid, "StudyInstanceUID")
        series_dir = study_dir / check_uid(header.series_instance_uid, "SeriesInstanceUID")
        path = series_dir / f"{check_uid(header.sop_instance_uid, 'SOPInstanceUID')}{INSTANCE_SUFFIX}"
        existing = self._existing(header.sop_instance_uid)
        if existing is not None:
            return StoredInstance(existing, created=False, new_study=False)
        new_study = self._make_dirs(series_dir)
        temp = durable_write.temp_name(path)
        try:
            try:
                durable_write.write_new_file(temp, parts, self.durable)
            except FileNotFoundError:
                # the folders were removed since we made them (retention): make them again
                self._known_dirs.difference_update({series_dir, series_dir.parent})
                new_study = self._make_dirs(series_dir)
                durable_write.write_new_file(temp, parts, self.durable)
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
        """Every stored instance in the spool."""
        for study in self.studies():
            for series_dir in self.series_dirs(study):
                yield from self.instances(series_dir)

    def recover(self) -> int:
        """Remove temporary files left by a crash; return how many were removed.

        Those instances were never acknowledged, so the peer sends them again.
        """
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

