"""The job store: every study, series, job, stage, output and delivery, in SQL.

The job store is the truth about the work (the broker only carries job ids).
It is a SQLite file in the data dir by default and PostgreSQL (or any
SQLAlchemy URL) through ``NEUROSEG_DATABASE_URL``. Every state change is
written here; nothing lives only in memory.

Who uses what
-------------
- The listener hands studies over through :func:`neuroseg.worker.queue.enqueue_study`,
  which calls :meth:`JobStore.create_job`, and may log what it decided with
  :meth:`JobStore.record_event`.
- The worker claims a job with :meth:`JobStore.claim` (a conditional UPDATE,
  so a redelivered message never runs a job twice at the same time and a
  finished job is never rerun), then walks the stages with
  :meth:`JobStore.enter_stage`, :meth:`JobStore.report_progress`,
  :meth:`JobStore.record_outputs`, :meth:`JobStore.record_delivery_attempt`
  and ends with :meth:`JobStore.finish` or :meth:`JobStore.mark_retrying`.
- The admin app reads with :meth:`JobStore.list_jobs`, :meth:`JobStore.get_job`,
  :meth:`JobStore.counts_by_state`, :meth:`JobStore.stage_durations` and
  :meth:`JobStore.delivery_failure_count`; its actions (retry, cancel,
  override a role and reprocess) are in :mod:`neuroseg.worker.queue`
  because they also publish a task.

Job states
----------
``queued -> loading -> preprocessing -> inference -> explaining -> encoding
-> delivering -> done``; from any running state a job may end ``failed``
(permanent, with a reason), ``partial`` (some outputs could not be made or
delivered), ``cancelled``, or wait as ``retrying`` (transient error; Celery
retries it). A job resumed after a delivery-only failure is claimed straight
into ``delivering``. :data:`TRANSITIONS` is the complete state machine.

Schema versions
---------------
The schema is created and upgraded by :func:`migrate` (run by
:meth:`JobStore.from_settings`): ``schema_version`` holds one row, and each
entry of :data:`MIGRATIONS` upgrades from its index to the next version.
Add a migration, never edit an old one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from neuroseg.worker.contracts import SequenceRole, StudyManifest
from neuroseg.worker.jobrecords import (
    Claim,
    ClaimOutcome,
    DeliveryRecord,
    EventRecord,
    JobDetail,
    JobSummary,
    OutputRecord,
    SeriesRecord,
    StageRecord,
)
from neuroseg.worker.jobschema import (  # noqa: F401 - the tables and migrations, re-exported
    MIGRATIONS,
    SCHEMA_VERSION,
    Base,
    DeliveryRow,
    EventRow,
    JobRow,
    OutputRow,
    SchemaVersionRow,
    SeriesRow,
    StageRow,
    StudyRow,
    _utc,
    engine_for,
    migrate,
    schema_version,
    utcnow,
)
from neuroseg.worker.settings import Settings

log = logging.getLogger(__name__)


class JobState(str, Enum):
    """Where a job is; the running states double as the recorded stage names."""

    QUEUED = "queued"
    LOADING = "loading"
    PREPROCESSING = "preprocessing"
    INFERENCE = "inference"
    EXPLAINING = "explaining"
    ENCODING = "encoding"
    DELIVERING = "delivering"
    DONE = "done"
    PARTIAL = "partial"
    FAILED = "failed"
    RETRYING = "retrying"
    CANCELLED = "cancelled"


RUNNING_STATES = frozenset(
    {JobState.LOADING, JobState.PREPROCESSING, JobState.INFERENCE, JobState.EXPLAINING,
     JobState.ENCODING, JobState.DELIVERING}
)
WAITING_STATES = frozenset({JobState.QUEUED, JobState.RETRYING})
FINAL_STATES = frozenset({JobState.DONE, JobState.PARTIAL, JobState.FAILED, JobState.CANCELLED})
STAGE_ORDER = (
    JobState.LOADING, JobState.PREPROCESSING, JobState.INFERENCE, JobState.EXPLAINING,
    JobState.ENCODING, JobState.DELIVERING,
)
_ENDINGS = {JobState.DONE, JobState.PARTIAL, JobState.FAILED, JobState.RETRYING, JobState.CANCELLED}

#: state -> states it may move to. Claiming moves a waiting job (or a running
#: job whose worker is gone) into ``loading`` or, to resume delivery, ``delivering``.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.LOADING, JobState.DELIVERING, JobState.FAILED, JobState.CANCELLED}),
    JobState.RETRYING: frozenset({JobState.LOADING, JobState.DELIVERING, JobState.FAILED, JobState.CANCELLED,
                                  JobState.QUEUED}),
    **{
        state: frozenset(
            {*(STAGE_ORDER[i + 1:i + 2]), *_ENDINGS, JobState.LOADING, JobState.DELIVERING}
        )
        for i, state in enumerate(STAGE_ORDER)
    },
    JobState.DONE: frozenset({JobState.QUEUED}),
    JobState.PARTIAL: frozenset({JobState.QUEUED}),
    JobState.FAILED: frozenset({JobState.QUEUED}),
    JobState.CANCELLED: frozenset({JobState.QUEUED}),
}


class TransitionError(ValueError):
    """A state change that the state machine does not allow."""


def check_transition(old: JobState | str, new: JobState | str) -> None:
    """Raise :class:`TransitionError` unless ``old -> new`` is in :data:`TRANSITIONS`."""
    old, new = JobState(old), JobState(new)
    if new not in TRANSITIONS[old]:
        allowed = ", ".join(sorted(state.value for state in TRANSITIONS[old]))
        raise TransitionError(f"a job cannot go from {old.value} to {new.value}; from {old.value}: {allowed}")


def manifest_fingerprint(manifest: StudyManifest) -> str:
    """A hash of what decides the processing: the study, its series, their roles and sizes.

    Two manifests with the same fingerprint would give the same results, so
    :meth:`JobStore.create_job` returns the existing job for them. Reasons,
    confidences, calling AE titles and the completion reason do not count.
    """
    key = {
        "study": manifest.study_instance_uid,
        "series": sorted(
            (item.series_instance_uid, item.role.value, int(item.instance_count), item.sop_class_uid)
            for item in manifest.series
        ),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def worker_identity() -> str:
    """``hostname:pid`` of this process, stored with a claim."""
    return f"{socket.gethostname()}:{os.getpid()}"


# --- the store --------------------------------------------------------------------------------


class JobStore:
    """Reads and writes the job store; one instance per process is enough (thread-safe).

    Parameters
    ----------
    url: str
        SQLAlchemy database URL; the schema is created or upgraded on first use.
    stale_after_s: float
        A running job whose heartbeat is older than this is considered
        abandoned (its worker died) and may be claimed again.
    """

    def __init__(self, url: str, stale_after_s: float = 120.0) -> None:
        self.url = url
        self.engine = engine_for(url)
        self.stale_after = timedelta(seconds=stale_after_s)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> "JobStore":
        """The job store named by ``settings.effective_database_url`` (creates the data dir)."""
        if settings.database_url is None:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        return cls(settings.effective_database_url, stale_after_s=settings.job_stale_seconds)

    def session(self) -> Session:
        return self._sessions()

    # --- creating jobs ----------------------------------------------------------------------

    def create_job(
        self,
        manifest: StudyManifest,
        *,
        reason: str = "received",
        replaces_job_id: str | None = None,
        deduplicate: bool = True,
    ) -> tuple[str, bool]:
        """Create the job for ``manifest``, or return the existing one.

        The rule for a study sent more than once: a manifest with the same
        :func:`manifest_fingerprint` as an earlier one (same series, roles
        and instance counts) returns the earlier job, whatever its state;
        a manifest that differs (a series added, more instances, another
        role) creates a new job for the study, recorded as replacing the
        newest earlier job. Its outputs carry the same deterministic UIDs,
        so they replace the old ones in the PACS.

        Parameters
        ----------
        manifest: StudyManifest
            The study as the listener assembled it.
        reason: str
            Why the job exists (``received``, ``reprocess``, ``role override``).
        replaces_job_id: str or None
            The job this one supersedes; found automatically when None.
        deduplicate: bool
            False for admin reprocesses, which always create a new job.

        Returns
        -------
        tuple of (str, bool)
            The job id and whether it was created now.
        """
        fingerprint = manifest_fingerprint(manifest)
        dedup_key = f"{manifest.study_instance_uid}:{fingerprint}" if deduplicate else None
        now = utcnow()
        with self.session() as session:
            if dedup_key is not None:
                existing = session.scalar(select(JobRow.id).where(JobRow.dedup_key == dedup_key))
                if existing is not None:
                    return existing, False
            study = session.get(StudyRow, manifest.study_instance_uid)
            if study is None:
                study = StudyRow(study_instance_uid=manifest.study_instance_uid, first_seen_at=now)
                session.add(study)
            study.patient_id = manifest.patient_id
            study.patient_name = manifest.patient_name
            study.accession_number = manifest.accession_number
            study.study_description = manifest.study_description
            study.last_seen_at = now
            if replaces_job_id is None:
                replaces_job_id = session.scalar(
                    select(JobRow.id)
                    .where(JobRow.study_instance_uid == manifest.study_instance_uid)
                    .order_by(JobRow.created_at.desc())
                    .limit(1)
                )
            job_id = uuid.uuid4().hex
            session.add(JobRow(
                id=job_id, study_instance_uid=manifest.study_instance_uid, dedup_key=dedup_key,
                fingerprint=fingerprint, manifest=manifest.to_dict(), state=JobState.QUEUED.value,
                stage=JobState.QUEUED.value, percent=0.0, message="waiting for a worker", error="",
                attempts=0, reason=reason, replaces_job_id=replaces_job_id, created_at=now, updated_at=now,
                sequences_used=[], volumes_ml={}, resume_stage="", cancel_requested=0,
            ))
            for item in manifest.series:
                session.add(SeriesRow(
                    job_id=job_id, series_instance_uid=item.series_instance_uid, folder=item.folder,
                    role=item.role.value, classified_role=item.role.value, confidence=float(item.confidence),
                    reasons=list(item.reasons), modality=item.modality,
                    series_description=item.series_description, series_number=item.series_number,
                    sop_class_uid=item.sop_class_uid, instance_count=int(item.instance_count),
                ))
            session.add(EventRow(
                at=now, study_instance_uid=manifest.study_instance_uid, job_id=job_id, kind="queued",
                message=f"job created ({reason}; {len(manifest.series)} series"
                + (f"; replaces job {replaces_job_id}" if replaces_job_id else "") + ")",
            ))
            try:
                session.commit()
            except IntegrityError:
                # another process created the same job a moment ago
                session.rollback()
                existing = session.scalar(select(JobRow.id).where(JobRow.dedup_key == dedup_key))
                if existing is None:
                    raise
                return existing, False
        return job_id, True

    def mark_published(self, job_id: str) -> None:
        """Record that a task message for the job was handed to the broker."""
        self._update(job_id, published_at=utcnow())

    # --- the worker side --------------------------------------------------------------------

    def claim(self, job_id: str, worker: str | None = None, max_attempts: int = 5) -> Claim:
        """Take the job for this worker with a conditional UPDATE.

        A job can be claimed when it waits (``queued``/``retrying``) or when it
        is running but abandoned: its heartbeat is older than ``stale_after_s``
        or its worker is a dead process on this host. The job moves to
        ``loading``, or to ``delivering`` when its outputs were already made
        (``resume_stage``). A job that was claimed ``max_attempts`` times
        without finishing fails instead of looping forever.

        Returns
        -------
        Claim
            ``CLAIMED`` (run it), ``FINISHED`` (drop the message), ``BUSY``
            (another live worker has it: retry the message later) or
            ``MISSING``.
        """
        worker = worker or worker_identity()
        now = utcnow()
        with self.session() as session:
            row = session.get(JobRow, job_id)
            if row is None:
                return Claim(ClaimOutcome.MISSING)
            state = JobState(row.state)
            if state in FINAL_STATES:
                return Claim(ClaimOutcome.FINISHED, state.value, row.attempts)
            if state in RUNNING_STATES and not self._abandoned(row, now):
                return Claim(ClaimOutcome.BUSY, state.value, row.attempts)
            if row.cancel_requested:
                self._set_state(session, row, JobState.CANCELLED, message="cancelled before it started")
                session.commit()
                return Claim(ClaimOutcome.FINISHED, JobState.CANCELLED.value, row.attempts)
            if row.attempts >= max_attempts:
                reason = (f"gave up after {row.attempts} attempts; the worker stopped during "
                          f"'{row.stage}' each time (out of memory or killed?)")
                self._set_state(session, row, JobState.FAILED, error=reason, message=reason)
                session.commit()
                return Claim(ClaimOutcome.FINISHED, JobState.FAILED.value, row.attempts)
            target = JobState.DELIVERING if row.resume_stage == JobState.DELIVERING.value else JobState.LOADING
            attempt, resume_stage, study_uid = row.attempts + 1, row.resume_stage, row.study_instance_uid
            row_updated_at = row.updated_at
            result = session.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.state == row.state, JobRow.updated_at == row.updated_at)
                .values(state=target.value, stage=target.value, worker=worker, attempts=JobRow.attempts + 1,
                        heartbeat_at=now, updated_at=now, started_at=func.coalesce(JobRow.started_at, now),
                        finished_at=None, percent=0.0, error="", retry_at=None,
                        message=f"claimed by {worker}")
            )
            if result.rowcount != 1:
                session.rollback()
                return Claim(ClaimOutcome.BUSY, row.state, row.attempts)
            self._close_open_stages(session, job_id, now, "abandoned")
            if state in WAITING_STATES:
                # the wait for a worker is a stage too (queue latency in the timings and metrics)
                waited_from = _utc(row_updated_at) or now
                session.add(StageRow(job_id=job_id, name=state.value, attempt=attempt, started_at=waited_from,
                                     finished_at=now, duration_s=(now - waited_from).total_seconds(), outcome="ok"))
            session.add(StageRow(job_id=job_id, name=target.value, attempt=attempt, started_at=now))
            session.add(EventRow(at=now, study_instance_uid=study_uid, job_id=job_id, kind="claimed",
                                 message=f"attempt {attempt}: {worker} took the job from {state.value}"))
            session.commit()
            return Claim(ClaimOutcome.CLAIMED, target.value, attempt, resume_stage)

    def _abandoned(self, row: JobRow, now: datetime) -> bool:
        heartbeat = _utc(row.heartbeat_at) or _utc(row.updated_at)
        if heartbeat is None or now - heartbeat > self.stale_after:
            return True
        host, _, pid = row.worker.rpartition(":")
        if host == socket.gethostname() and pid.isdigit():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
        return False

    def enter_stage(self, job_id: str, stage: JobState | str, message: str = "") -> None:
        """Move a running job to the next stage: closes the previous stage's timing, opens this one."""
        stage = JobState(stage)
        now = utcnow()
        with self.session() as session:
            row = self._get_row(session, job_id)
            if row.state == stage.value:
                return
            check_transition(row.state, stage)
            self._close_open_stages(session, job_id, now, "ok")
            session.add(StageRow(job_id=job_id, name=stage.value, attempt=row.attempts, started_at=now))
            self._set_state(session, row, stage, message=message or stage.value, percent=0.0)
            session.commit()

    def report_progress(self, job_id: str, percent: float, message: str | None = None) -> bool:
        """Update the percentage (0-100) of the current stage and the heartbeat.

        Returns True when an admin asked to cancel the job (the pipeline stops).
        """
        values: dict[str, Any] = {"percent": max(0.0, min(100.0, float(percent))), "heartbeat_at": utcnow()}
        if message is not None:
            values["message"] = message[:2000]
        with self.session() as session:
            session.execute(update(JobRow).where(JobRow.id == job_id).values(**values))
            cancel = session.scalar(select(JobRow.cancel_requested).where(JobRow.id == job_id))
            session.commit()
        return bool(cancel)

    def heartbeat(self, job_id: str) -> None:
        """Tell the store the worker holding the job is alive."""
        with self.session() as session:
            session.execute(update(JobRow).where(JobRow.id == job_id).values(heartbeat_at=utcnow()))
            session.commit()

    def set_model(self, job_id: str, *, model_name: str, model_version: str, device: str = "",
                  sequences_used: Sequence[str] = (), volumes_ml: dict[str, float] | None = None) -> None:
        """Record the model, device, sequences used and tumour volumes of a job."""
        values: dict[str, Any] = {"model_name": model_name, "model_version": model_version,
                                  "sequences_used": list(sequences_used)}
        if device:
            values["device"] = device
        if volumes_ml is not None:
            values["volumes_ml"] = {key: float(value) for key, value in volumes_ml.items()}
        self._update(job_id, **values)

    def set_resume_stage(self, job_id: str, stage: JobState | str | None) -> None:
        """Remember the stage a retry should start from (``delivering`` once outputs exist)."""
        self._update(job_id, resume_stage=JobState(stage).value if stage else "")

    def record_outputs(self, job_id: str, outputs: Iterable[OutputRecord]) -> None:
        """Replace the job's list of output objects."""
        with self.session() as session:
            session.query(OutputRow).filter(OutputRow.job_id == job_id).delete()
            for item in outputs:
                session.add(OutputRow(job_id=job_id, **asdict(item)))
            session.commit()

    def record_delivery_attempt(self, job_id: str, destination: str, *, status: str, sent: int = 0,
                                failed: int = 0, error: str = "") -> None:
        """Record one attempt to deliver the job's outputs to ``destination``.

        ``status`` is ``delivered``, ``partial``, ``retrying`` or ``failed``.
        Also writes an event, so the timeline shows every attempt.
        """
        now = utcnow()
        with self.session() as session:
            row = session.scalar(select(DeliveryRow).where(DeliveryRow.job_id == job_id,
                                                           DeliveryRow.destination == destination))
            if row is None:
                row = DeliveryRow(job_id=job_id, destination=destination, status=status, attempts=0)
                session.add(row)
            row.status = status
            row.attempts = (row.attempts or 0) + 1
            row.sent, row.failed, row.last_error, row.last_attempt_at = sent, failed, error[:4000], now
            if status == "delivered":
                row.delivered_at = now
            job = self._get_row(session, job_id)
            session.add(EventRow(at=now, study_instance_uid=job.study_instance_uid, job_id=job_id,
                                 kind="delivery", message=f"{destination}: {status}, {sent} sent, {failed} failed"
                                 + (f": {error}" if error else "")))
            session.commit()

    def finish(self, job_id: str, state: JobState | str, *, error: str = "", message: str = "") -> None:
        """End the job in ``done``, ``partial``, ``failed`` or ``cancelled``; ``error`` is the human reason."""
        state = JobState(state)
        if state not in FINAL_STATES:
            raise ValueError(f"finish() takes a final state ({', '.join(s.value for s in FINAL_STATES)}), not {state.value}")
        now = utcnow()
        with self.session() as session:
            row = self._get_row(session, job_id)
            if row.state == state.value:
                return
            check_transition(row.state, state)
            outcome = "ok" if state is JobState.DONE else state.value
            self._close_open_stages(session, job_id, now, outcome)
            self._set_state(session, row, state, error=error, message=message or error or state.value,
                            percent=100.0 if state is JobState.DONE else row.percent)
            row.finished_at = now
            row.cancel_requested = 0
            session.commit()

    def mark_retrying(self, job_id: str, error: str, retry_in_s: float) -> None:
        """A transient error: the job waits ``retry_in_s`` seconds for Celery to retry it."""
        now = utcnow()
        with self.session() as session:
            row = self._get_row(session, job_id)
            check_transition(row.state, JobState.RETRYING)
            self._close_open_stages(session, job_id, now, "retry")
            self._set_state(session, row, JobState.RETRYING, error=error,
                            message=f"retry in {retry_in_s:.0f} s: {error}")
            row.retry_at = now + timedelta(seconds=retry_in_s)
            session.commit()

    def record_event(self, kind: str, message: str, *, study_instance_uid: str = "",
                     job_id: str | None = None) -> None:
        """Add a line to the timeline (of a job, of a study, or of the service)."""
        with self.session() as session:
            session.add(EventRow(at=utcnow(), study_instance_uid=study_instance_uid, job_id=job_id,
                                 kind=kind[:32], message=message))
            session.commit()

    # --- admin actions (DB part; queue.py publishes) --------------------------------------------

    def requeue(self, job_id: str, *, resume_stage: str | None = None, why: str = "retry") -> bool:
        """Put a finished job (``failed``, ``partial``, ``done``, ``cancelled``) back to ``queued``.

        ``resume_stage="delivering"`` re-delivers the outputs already made
        (to every destination, also those that had them) instead of
        processing again. Returns False when the job is waiting or
        running (nothing to do). The caller publishes the task.
        """
        with self.session() as session:
            row = self._get_row(session, job_id)
            if JobState(row.state) not in FINAL_STATES:
                return False
            check_transition(row.state, JobState.QUEUED)
            self._set_state(session, row, JobState.QUEUED, error="", message=f"queued again ({why})", percent=0.0)
            row.attempts, row.finished_at, row.cancel_requested = 0, None, 0
            if resume_stage is not None:
                row.resume_stage = resume_stage
            if resume_stage == JobState.DELIVERING.value:
                # a re-delivery sends to every destination again, also those served before
                session.execute(update(DeliveryRow).where(DeliveryRow.job_id == job_id).values(status="pending"))
            session.commit()
        return True

    def request_cancel(self, job_id: str) -> str:
        """Cancel a job: a waiting job becomes ``cancelled`` now; a running one stops at its next step.

        Returns the job's state afterwards (a final job is left alone).
        """
        with self.session() as session:
            row = self._get_row(session, job_id)
            state = JobState(row.state)
            if state in WAITING_STATES:
                self._set_state(session, row, JobState.CANCELLED, message="cancelled by an admin")
                row.finished_at = utcnow()
            elif state in RUNNING_STATES:
                row.cancel_requested = 1
                row.message = "cancel requested; stopping at the next step"
            session.commit()
            return row.state

    def manifest_with_roles(self, job_id: str, roles: dict[str, SequenceRole | str]) -> StudyManifest:
        """The job's manifest with some series' roles replaced (``{series_uid: role}``)."""
        detail = self.get_job(job_id)
        if detail is None:
            raise KeyError(f"no job {job_id!r}")
        manifest = detail.study_manifest()
        known = {item.series_instance_uid for item in manifest.series}
        unknown = sorted(set(roles) - known)
        if unknown:
            raise ValueError(f"series {', '.join(unknown)} not in job {job_id}; its series: {', '.join(sorted(known))}")
        data = manifest.to_dict()
        for item in data["series"]:
            if item["series_instance_uid"] in roles:
                role = SequenceRole.parse(getattr(roles[item["series_instance_uid"]], "value",
                                                  roles[item["series_instance_uid"]]))
                if role.value != item["role"]:
                    item["reasons"] = [*item["reasons"], f"role set to {role.value} by an admin (was {item['role']})"]
                    item["role"] = role.value
                    item["confidence"] = 1.0
        return StudyManifest.from_dict(data)

    # --- reading ------------------------------------------------------------------------------

    def list_jobs(self, *, state: str | Sequence[str] | None = None, study_instance_uid: str | None = None,
                  since: datetime | None = None, until: datetime | None = None,
                  limit: int = 100, offset: int = 0) -> list[JobSummary]:
        """Jobs, newest first, filtered by state(s), study and creation time (UTC)."""
        query = select(JobRow, StudyRow).join(StudyRow, StudyRow.study_instance_uid == JobRow.study_instance_uid)
        if state:
            states = [state] if isinstance(state, str) else list(state)
            query = query.where(JobRow.state.in_([JobState(item).value for item in states]))
        if study_instance_uid:
            query = query.where(JobRow.study_instance_uid == study_instance_uid)
        if since is not None:
            query = query.where(JobRow.created_at >= since)
        if until is not None:
            query = query.where(JobRow.created_at < until)
        query = query.order_by(JobRow.created_at.desc(), JobRow.id).limit(limit).offset(offset)
        with self.session() as session:
            return [self._summary(job, study) for job, study in session.execute(query).all()]

    def get_job(self, job_id: str) -> JobDetail | None:
        """Everything about one job, or None when the id is unknown."""
        with self.session() as session:
            job = session.get(JobRow, job_id)
            if job is None:
                return None
            study = session.get(StudyRow, job.study_instance_uid)
            summary = asdict(self._summary(job, study))
            series = [SeriesRecord(
                series_instance_uid=row.series_instance_uid, folder=row.folder, role=row.role,
                classified_role=row.classified_role, confidence=row.confidence, reasons=list(row.reasons or []),
                modality=row.modality, series_description=row.series_description,
                series_number=row.series_number, sop_class_uid=row.sop_class_uid,
                instance_count=row.instance_count,
            ) for row in session.scalars(select(SeriesRow).where(SeriesRow.job_id == job_id).order_by(SeriesRow.id))]
            stages = [StageRecord(row.name, row.attempt, _utc(row.started_at), _utc(row.finished_at),
                                  row.duration_s, row.outcome)
                      for row in session.scalars(select(StageRow).where(StageRow.job_id == job_id)
                                                 .order_by(StageRow.id))]
            events = [EventRecord(_utc(row.at), row.kind, row.message, row.job_id, row.study_instance_uid)
                      for row in session.scalars(select(EventRow).where(EventRow.job_id == job_id)
                                                 .order_by(EventRow.id))]
            outputs = [OutputRecord(row.kind, row.sop_instance_uid, row.series_instance_uid, row.sop_class_uid,
                                    row.path)
                       for row in session.scalars(select(OutputRow).where(OutputRow.job_id == job_id)
                                                  .order_by(OutputRow.id))]
            deliveries = [DeliveryRecord(row.destination, row.status, row.attempts, row.sent, row.failed,
                                         row.last_error, _utc(row.last_attempt_at), _utc(row.delivered_at))
                          for row in session.scalars(select(DeliveryRow).where(DeliveryRow.job_id == job_id)
                                                     .order_by(DeliveryRow.id))]
            return JobDetail(
                **summary, manifest=dict(job.manifest), sequences_used=list(job.sequences_used or []),
                volumes_ml=dict(job.volumes_ml or {}), resume_stage=job.resume_stage,
                cancel_requested=bool(job.cancel_requested), series=series, stages=stages, events=events,
                outputs=outputs, deliveries=deliveries,
            )

    def job_state(self, job_id: str) -> str | None:
        """The state of a job (cheap), or None when the id is unknown."""
        with self.session() as session:
            return session.scalar(select(JobRow.state).where(JobRow.id == job_id))

    def counts_by_state(self) -> dict[str, int]:
        """Number of jobs in each state (every state present, zero included), for metrics."""
        counts = {state.value: 0 for state in JobState}
        with self.session() as session:
            for state, count in session.execute(select(JobRow.state, func.count()).group_by(JobRow.state)):
                counts[state] = int(count)
        return counts

    def stage_durations(self, since: datetime | None = None) -> list[tuple[str, float]]:
        """(stage, seconds) of every finished stage run, for histograms."""
        query = select(StageRow.name, StageRow.duration_s).where(StageRow.duration_s.is_not(None))
        if since is not None:
            query = query.where(StageRow.finished_at >= since)
        with self.session() as session:
            return [(name, float(duration)) for name, duration in session.execute(query)]

    def delivery_failure_count(self) -> int:
        """Delivery attempts that did not deliver everything (retrying, partial or failed)."""
        with self.session() as session:
            return int(session.scalar(
                select(func.count()).select_from(EventRow).where(
                    EventRow.kind == "delivery", ~EventRow.message.like("%: delivered,%"))
            ) or 0)

    def study_count(self) -> int:
        """Number of distinct studies ever handed to the queue."""
        with self.session() as session:
            return int(session.scalar(select(func.count()).select_from(StudyRow)) or 0)

    def events(self, *, study_instance_uid: str | None = None, limit: int = 200) -> list[EventRecord]:
        """The newest timeline lines, optionally of one study."""
        query = select(EventRow).order_by(EventRow.id.desc()).limit(limit)
        if study_instance_uid:
            query = query.where(EventRow.study_instance_uid == study_instance_uid)
        with self.session() as session:
            return [EventRecord(_utc(row.at), row.kind, row.message, row.job_id, row.study_instance_uid)
                    for row in session.scalars(query)]

    def jobs_needing_publish(self, *, queued_grace_s: float) -> list[str]:
        """Jobs whose task message may be lost, to be published again (claims make this safe).

        These are queued jobs never published or published more than
        ``queued_grace_s`` ago, retrying jobs past their retry time by that
        grace, and running jobs whose worker stopped sending heartbeats.
        """
        now = utcnow()
        grace = timedelta(seconds=queued_grace_s)
        found = []
        with self.session() as session:
            rows = session.scalars(select(JobRow).where(
                JobRow.state.in_([state.value for state in (*WAITING_STATES, *RUNNING_STATES)])))
            for row in rows:
                state = JobState(row.state)
                published = _utc(row.published_at)
                if state is JobState.QUEUED:
                    if published is None or now - published > grace:
                        found.append(row.id)
                elif state is JobState.RETRYING:
                    retry_at = _utc(row.retry_at) or now
                    if now - max(retry_at, published or retry_at) > grace:
                        found.append(row.id)
                elif self._abandoned(row, now) and (published is None or now - published > self.stale_after):
                    found.append(row.id)
        return found

    def finished_jobs_before(self, before: datetime) -> list[JobSummary]:
        """Jobs that ended (any final state) before ``before``, oldest first, for retention."""
        query = (select(JobRow, StudyRow).join(StudyRow, StudyRow.study_instance_uid == JobRow.study_instance_uid)
                 .where(JobRow.state.in_([state.value for state in FINAL_STATES]), JobRow.finished_at < before)
                 .order_by(JobRow.finished_at))
        with self.session() as session:
            return [self._summary(job, study) for job, study in session.execute(query).all()]

    # --- helpers ------------------------------------------------------------------------------

    def _get_row(self, session: Session, job_id: str) -> JobRow:
        row = session.get(JobRow, job_id)
        if row is None:
            raise KeyError(f"no job {job_id!r} in the job store")
        return row

    def _update(self, job_id: str, **values: Any) -> None:
        with self.session() as session:
            result = session.execute(update(JobRow).where(JobRow.id == job_id).values(**values))
            if result.rowcount != 1:
                raise KeyError(f"no job {job_id!r} in the job store")
            session.commit()

    def _set_state(self, session: Session, row: JobRow, state: JobState, *, message: str = "",
                   error: str | None = None, percent: float | None = None) -> None:
        now = utcnow()
        old = row.state
        row.state = state.value
        if state in RUNNING_STATES or state in WAITING_STATES:
            row.stage = state.value
        if error is not None:
            row.error = error[:4000]
        if percent is not None:
            row.percent = percent
        row.message = message[:2000]
        row.updated_at = now
        row.heartbeat_at = now
        text = f"{old} -> {state.value}" + (f": {message}" if message and message != state.value else "")
        session.add(EventRow(at=now, study_instance_uid=row.study_instance_uid, job_id=row.id,
                             kind="state", message=text))

    @staticmethod
    def _close_open_stages(session: Session, job_id: str, now: datetime, outcome: str) -> None:
        for stage in session.scalars(select(StageRow).where(StageRow.job_id == job_id,
                                                             StageRow.finished_at.is_(None))):
            stage.finished_at = now
            stage.duration_s = (now - _utc(stage.started_at)).total_seconds()
            stage.outcome = outcome

    @staticmethod
    def _summary(job: JobRow, study: StudyRow | None) -> JobSummary:
        return JobSummary(
            id=job.id, study_instance_uid=job.study_instance_uid,
            patient_id=study.patient_id if study else "", patient_name=study.patient_name if study else "",
            accession_number=study.accession_number if study else "",
            study_description=study.study_description if study else "",
            state=job.state, stage=job.stage, percent=job.percent, message=job.message, error=job.error,
            attempts=job.attempts, worker=job.worker, device=job.device, model_name=job.model_name,
            model_version=job.model_version, reason=job.reason, replaces_job_id=job.replaces_job_id,
            created_at=_utc(job.created_at), updated_at=_utc(job.updated_at), started_at=_utc(job.started_at),
            finished_at=_utc(job.finished_at),
        )
