"""The timeline: events (what happened, for a job, a study or the service) and stage runs.

Stage runs (``stages`` rows) time each step of an attempt; the job's current
or last stage is read from them, not stored twice (:func:`stage_column`).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from neuroseg.worker.jobs.base import StoreBase
from neuroseg.worker.jobs.records import EventRecord
from neuroseg.worker.jobs.states import FINAL_STATES, JobState
from neuroseg.worker.jobs.tables import EventRow, JobRow, StageRow, as_utc, utcnow


def add_event(session: Session, kind: str, message: str, *, study_instance_uid: str = "",
              job_id: str | None = None, at: datetime | None = None) -> None:
    """Add a timeline line in ``session`` (committed with the change it describes)."""
    session.add(EventRow(at=at or utcnow(), study_instance_uid=study_instance_uid, job_id=job_id,
                         kind=kind[:32], message=message))


def open_stage(session: Session, job_id: str, name: str, attempt: int, now: datetime) -> None:
    session.add(StageRow(job_id=job_id, name=name, attempt=attempt, started_at=now))


def close_open_stages(session: Session, job_id: str, now: datetime, outcome: str) -> None:
    for stage in session.scalars(select(StageRow).where(StageRow.job_id == job_id, StageRow.finished_at.is_(None))):
        stage.finished_at = now
        stage.duration_s = (now - as_utc(stage.started_at)).total_seconds()
        stage.outcome = outcome


def stage_column() -> ColumnElement[str]:
    """The job's stage: its state while waiting or running, the last stage it ran once finished."""
    last_run = (select(StageRow.name).where(StageRow.job_id == JobRow.id)
                .order_by(StageRow.id.desc()).limit(1).scalar_subquery())
    return case(
        (JobRow.state.in_([state.value for state in FINAL_STATES]), func.coalesce(last_run, JobState.QUEUED.value)),
        else_=JobRow.state,
    ).label("stage")


class Timeline(StoreBase):
    """Writes and reads the timeline."""

    def record_event(self, kind: str, message: str, *, study_instance_uid: str = "",
                     job_id: str | None = None) -> None:
        """Add a line to the timeline (of a job, of a study, or of the service)."""
        with self.session() as session:
            add_event(session, kind, message, study_instance_uid=study_instance_uid, job_id=job_id)
            session.commit()

    def events(self, *, study_instance_uid: str | None = None, limit: int = 200) -> list[EventRecord]:
        """The newest timeline lines, optionally of one study."""
        query = select(EventRow).order_by(EventRow.id.desc()).limit(limit)
        if study_instance_uid:
            query = query.where(EventRow.study_instance_uid == study_instance_uid)
        with self.session() as session:
            return [EventRecord.model_validate(row) for row in session.scalars(query)]
