"""Study assembly: decide when a received study is complete and hand it over once.

A study is complete when both hold:

- no new instance has arrived for ``settings.stable_seconds`` (measured with
  :func:`time.monotonic`, so wall-clock jumps do not matter; any arrival in any
  series restarts the timer);
- the classified series include the required roles (``required_roles`` in the
  rules file; by default FLAIR plus one of T1ce/T1/T2), or
  ``settings.max_wait_seconds`` have passed since its first instance.

A study past ``max_wait`` without the required roles is still only handed over
once it is stable, so a study that is still arriving is never cut in half.

Exactly-once hand-off, also across restarts: the state lives in the spool. A
study folder without ``.handed-over.json`` is open; at start-up
:meth:`StudyAssembler.resume` reopens every such folder (its stability timer
starts again; its first-arrival time comes from ``.study.json``). The hand-off
calls ``enqueue(settings, manifest)`` and only then writes the marker. A crash
between the two enqueues again on restart, which ``enqueue_study`` treats as
the same job (it is idempotent for the same manifest).

An instance that arrives for a study that was already handed over reopens it:
the old marker is kept as ``.handed-over.<time>.json`` and the whole study is
handed over again once it is stable (a new manifest, so a new job).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from neuroseg.listener.classify import Classification, RuleSet, SeriesHeader
from neuroseg.listener.durable_write import write_json_atomic
from neuroseg.listener.journal import CHECKPOINT_AFTER_SECONDS
from neuroseg.listener.spool import HANDED_OVER_FILE, STUDY_STATE_FILE, Spool
from neuroseg.worker.contracts import SeriesManifest, StudyManifest
from neuroseg.worker.settings import Settings

log = logging.getLogger(__name__)

Enqueue = Callable[[Settings, StudyManifest], str]
"""``enqueue(settings, manifest) -> job id``; must be idempotent for the same manifest."""

EventSink = Callable[[str, str, str], None]
"""``on_event(kind, message, study_instance_uid)``: a listener decision for the job store's timeline.

Kinds: ``association-accepted``, ``association-rejected``, ``instance-refused``,
``study-opened``, ``study-complete``, ``hand-off-failed``. Errors raised by the
sink are logged and ignored: recording must never affect DICOM traffic.
"""


def emit(on_event: EventSink | None, kind: str, message: str, study_instance_uid: str = "") -> None:
    """Pass one decision to ``on_event`` (if any), never raising."""
    if on_event is None:
        return
    try:
        on_event(kind, message, study_instance_uid)
    except Exception:
        log.exception("recording the listener event %s failed", kind)

_RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
RESCAN_SECONDS = 30.0


def default_enqueue(settings: Settings, manifest: StudyManifest) -> str:
    """Hand a study to the job queue (imported lazily: the queue module is the worker's)."""
    from neuroseg.worker.queue import enqueue_study

    return enqueue_study(settings, manifest)


@dataclass
class _OpenStudy:
    study_instance_uid: str
    first_arrival: float  # monotonic
    last_arrival: float  # monotonic
    arrivals: int = 0
    calling_ae_titles: set[str] = field(default_factory=set)
    evaluated_at_arrivals: int = -1  # arrivals count when the roles were last checked and found missing
    next_attempt: float = 0.0
    failures: int = 0


@dataclass(frozen=True)
class HandOff:
    """One study handed over to the queue."""

    study_instance_uid: str
    job_id: str
    manifest: StudyManifest


class StudyAssembler:
    """Tracks open studies in the spool and hands each complete one to ``enqueue``.

    Parameters
    ----------
    settings: Settings
        Uses ``stable_seconds`` and ``max_wait_seconds``; passed on to ``enqueue``.
    spool: Spool
        Where the studies are.
    rules: RuleSet
        Classification rules (also give the required roles).
    enqueue: callable, optional
        ``enqueue(settings, manifest) -> job id``; default
        :func:`default_enqueue`. Must be idempotent for the same manifest.
    clock, wall_clock: callable, optional
        Monotonic and wall-clock time sources (seconds), replaceable in tests.
    on_event: callable, optional
        Receives the assembly decisions (see :data:`EventSink`).

    Thread safety: :meth:`note_instance` is called from association threads,
    :meth:`poll` from one background thread.
    """

    def __init__(
        self,
        settings: Settings,
        spool: Spool,
        rules: RuleSet,
        enqueue: Enqueue | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_event: EventSink | None = None,
    ) -> None:
        self.settings = settings
        self.on_event = on_event
        self.spool = spool
        self.rules = rules
        self.enqueue = enqueue or default_enqueue
        self.clock = clock
        self.wall_clock = wall_clock
        self._lock = threading.RLock()
        self._open: dict[str, _OpenStudy] = {}
        self._headers: dict[Path, tuple[int, SeriesHeader, Any]] = {}

    # --- arrivals ------------------------------------------------------------------
    def resume(self) -> list[str]:
        """Reopen every study in the spool that was not handed over; return their UIDs."""
        now, wall = self.clock(), self.wall_clock()
        resumed = []
        with self._lock:
            for study_uid in self.spool.studies():
                study_dir = self.spool.study_dir(study_uid)
                if (study_dir / HANDED_OVER_FILE).exists() or study_uid in self._open:
                    continue
                state = _read_json(study_dir / STUDY_STATE_FILE)
                first_wall = float(state.get("first_received", wall))
                age = min(max(0.0, wall - first_wall), self.settings.max_wait_seconds)
                study = _OpenStudy(study_uid, first_arrival=now - age, last_arrival=now,
                                   calling_ae_titles=set(state.get("calling_ae_titles", [])))
                self._open[study_uid] = study
                resumed.append(study_uid)
        for study_uid in resumed:
            log.info("resumed open study study_uid=%s from the spool", study_uid)
        return resumed

    def note_instance(self, study_instance_uid: str, calling_ae_title: str, created: bool) -> None:
        """Record that an instance of a study was stored (``created``) or was a duplicate.

        Restarts the study's stability timer. A new instance for a study that was
        already handed over reopens it (see the module docstring).
        """
        now = self.clock()
        with self._lock:
            study = self._open.get(study_instance_uid)
            if study is None:
                study_dir = self.spool.study_dir(study_instance_uid)
                marker = study_dir / HANDED_OVER_FILE
                if marker.exists():
                    if not created:
                        return  # a resent duplicate of a study already handed over
                    kept = study_dir / f".handed-over.{int(self.wall_clock() * 1000)}.json"
                    os.replace(marker, kept)
                    log.warning(
                        "new instance for study_uid=%s after it was handed over: reopened; it will be "
                        "handed over again when stable (previous hand-off kept in %s)",
                        study_instance_uid, kept.name,
                    )
                study = _OpenStudy(study_instance_uid, first_arrival=now, last_arrival=now)
                self._open[study_instance_uid] = study
                study.calling_ae_titles.add(calling_ae_title)
                self._write_state(study)
                log.info("study opened study_uid=%s calling_ae=%s", study_instance_uid, calling_ae_title)
                emit(self.on_event, "study-opened", f"first instance from {calling_ae_title}", study_instance_uid)
            elif calling_ae_title not in study.calling_ae_titles:
                study.calling_ae_titles.add(calling_ae_title)
                self._write_state(study)
            study.last_arrival = now
            study.arrivals += 1

    def _write_state(self, study: _OpenStudy) -> None:
        age = self.clock() - study.first_arrival
        write_json_atomic(
            self.spool.study_dir(study.study_instance_uid) / STUDY_STATE_FILE,
            {
                "study_instance_uid": study.study_instance_uid,
                "first_received": self.wall_clock() - age,
                "calling_ae_titles": sorted(study.calling_ae_titles),
            },
            durable=self.spool.durable,
        )

    # --- completion ----------------------------------------------------------------
    @property
    def open_studies(self) -> list[str]:
        """UIDs of the studies still waiting to be handed over."""
        with self._lock:
            return sorted(self._open)

    def poll(self) -> list[HandOff]:
        """Hand over every study that is complete now; return what was handed over."""
        now = self.clock()
        with self._lock:
            due = [
                (study, study.arrivals) for study in self._open.values()
                if now - study.last_arrival >= self.settings.stable_seconds and now >= study.next_attempt
            ]
        handed = []
        for study, arrivals in due:
            waited = now - study.first_arrival
            past_max_wait = waited >= self.settings.max_wait_seconds
            if study.evaluated_at_arrivals == arrivals and not past_max_wait:
                continue  # nothing new since the roles were found missing
            try:
                manifest, missing = self.build_manifest(study.study_instance_uid, study.calling_ae_titles)
            except OSError:
                log.exception("cannot read study_uid=%s from the spool; will retry", study.study_instance_uid)
                self._back_off(study, now)
                continue
            if missing and not past_max_wait:
                study.evaluated_at_arrivals = arrivals
                log.info(
                    "study stable but incomplete study_uid=%s missing=%s; waiting up to %.0f s more",
                    study.study_instance_uid, ", ".join(missing), self.settings.max_wait_seconds - waited,
                )
                continue
            if missing:
                manifest = _with(manifest, completion_reason="max_wait",
                                 notes=(f"handed over after max_wait ({self.settings.max_wait_seconds:g} s) "
                                        f"without: {', '.join(missing)}",))
            result = self._hand_off(study, arrivals, manifest, now)
            if result is not None:
                handed.append(result)
        return handed

    def _hand_off(self, study: _OpenStudy, arrivals: int, manifest: StudyManifest, now: float) -> HandOff | None:
        uid = study.study_instance_uid
        with self._lock:
            if self._open.get(uid) is not study or study.arrivals != arrivals:
                return None  # an instance arrived meanwhile: the timer restarted
            try:
                self.spool.checkpoint()  # the worker reads the spool files, not the journal
                job_id = str(self.enqueue(self.settings, manifest))
            except Exception as exc:
                log.exception("hand-off of study_uid=%s to the queue failed; will retry", uid)
                emit(self.on_event, "hand-off-failed", f"queue refused the study: {exc}; will retry", uid)
                self._back_off(study, now)
                return None
            try:
                write_json_atomic(
                    self.spool.study_dir(uid) / HANDED_OVER_FILE,
                    {"job_id": job_id, "handed_over": self.wall_clock(), "manifest": manifest.to_dict()},
                    durable=self.spool.durable,
                )
            except OSError:
                # the job exists; a later attempt enqueues the same manifest again (idempotent)
                log.exception("job %s queued for study_uid=%s but the marker could not be written", job_id, uid)
                self._back_off(study, now)
                return None
            del self._open[uid]
            study_dir = self.spool.study_dir(uid)
            for series_dir in [key for key in self._headers if key.parent == study_dir]:
                del self._headers[series_dir]
        log.info(
            "study complete study_uid=%s reason=%s series=%d roles=%s job_id=%s",
            uid, manifest.completion_reason, len(manifest.series),
            ",".join(f"{role.value}:{item.series_number}" for role, item in manifest.roles().items()) or "none",
            job_id,
        )
        emit(self.on_event, "study-complete",
             f"{manifest.completion_reason}: job {job_id}; " + "; ".join(
                 f"series {item.series_number} {item.series_description!r} -> {item.role.value} "
                 f"({item.confidence:g})" for item in manifest.series), uid)
        return HandOff(uid, job_id, manifest)

    def _back_off(self, study: _OpenStudy, now: float) -> None:
        delay = _RETRY_SECONDS[min(study.failures, len(_RETRY_SECONDS) - 1)]
        study.failures += 1
        study.next_attempt = now + delay

    # --- manifest ------------------------------------------------------------------
    def build_manifest(
        self, study_instance_uid: str, calling_ae_titles: set[str] | None = None
    ) -> tuple[StudyManifest, list[str]]:
        """Classify the series of a spooled study; return the manifest and the missing roles."""
        self.spool.wait_for_files()  # acknowledged instances whose files are still being written
        headers: list[SeriesHeader] = []
        folders: dict[str, Path] = {}
        first_dataset: Any = None
        for series_dir in self.spool.series_dirs(study_instance_uid):
            found = self._series_header(series_dir)
            if found is None:
                continue
            header, dataset = found
            headers.append(header)
            folders[header.series_instance_uid] = series_dir
            if first_dataset is None:
                first_dataset = dataset
        headers.sort(key=lambda item: (item.series_number is None, item.series_number or 0, item.series_instance_uid))
        results = self.rules.classify_study(headers)
        for result in results:
            _log_role(study_instance_uid, result)
        series = tuple(_series_manifest(result, folders[result.series_instance_uid]) for result in results)
        missing = self.rules.required.missing(result.role for result in results)
        get = first_dataset.get if first_dataset is not None else (lambda key, default="": default)
        manifest = StudyManifest(
            study_instance_uid=study_instance_uid,
            series=series,
            patient_id=str(get("PatientID", "") or ""),
            patient_name=str(get("PatientName", "") or ""),
            accession_number=str(get("AccessionNumber", "") or ""),
            study_description=str(get("StudyDescription", "") or ""),
            calling_ae_titles=tuple(sorted(calling_ae_titles or ())),
            completion_reason="stable",
        )
        return manifest, missing

    def _series_header(self, series_dir: Path) -> tuple[SeriesHeader, Any] | None:
        files = self.spool.instances(series_dir)
        if not files:
            return None
        cached = self._headers.get(series_dir)
        if cached is not None and cached[0] == len(files):
            return cached[1], cached[2]
        for path in files:
            try:
                dataset = pydicom.dcmread(path, stop_before_pixels=True)
            except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
                log.warning("cannot read header of %s: %s", path, exc)
                continue
            header = SeriesHeader.from_dataset(dataset, instance_count=len(files))
            self._headers[series_dir] = (len(files), header, dataset)
            return header, dataset
        return None

    # --- background loop ------------------------------------------------------------
    def run(self, stop: threading.Event, interval: float | None = None) -> None:
        """Poll until ``stop`` is set (the listener runs this in a thread)."""
        if interval is None:
            interval = min(0.5, max(0.05, self.settings.stable_seconds / 5))
        last_rescan = self.clock()
        while not stop.wait(interval):
            try:
                if self.clock() - last_rescan >= RESCAN_SECONDS:
                    # studies that reached the spool without being noted (a failed
                    # state write, another listener on a shared spool) are picked up here
                    last_rescan = self.clock()
                    self.resume()
                self.poll()
                self.spool.checkpoint(older_than=CHECKPOINT_AFTER_SECONDS)
            except Exception:  # the loop must survive anything; the next poll retries
                log.exception("study assembly poll failed")


def _series_manifest(result: Classification, folder: Path) -> SeriesManifest:
    header = result.header or SeriesHeader(result.series_instance_uid)
    return SeriesManifest(
        series_instance_uid=result.series_instance_uid,
        folder=str(folder),
        role=result.role,
        confidence=result.confidence,
        reasons=result.reasons,
        modality=header.modality,
        series_description=header.series_description,
        series_number=header.series_number,
        sop_class_uid=header.sop_class_uid,
        instance_count=header.instance_count,
    )


def _log_role(study_instance_uid: str, result: Classification) -> None:
    header = result.header
    log.info(
        "series classified study_uid=%s series_uid=%s number=%s description=%r role=%s confidence=%.2f rule=%s",
        study_instance_uid, result.series_instance_uid, header.series_number if header else None,
        header.series_description if header else "", result.role.value, result.confidence,
        result.reasons[0].split(" ", 1)[0] if result.reasons else "-",
    )


def _with(manifest: StudyManifest, **changes: Any) -> StudyManifest:
    return replace(manifest, **changes)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
