"""Time points of a patient: who the patient of each processed study is, and how it compared with the prior.

One ``time_points`` row per job that reached the follow-up step, written by
:mod:`neuroseg.worker.followup`. The prior of a study is the newest earlier
study of the **same patient**, which here means the same PatientID **and**
IssuerOfPatientID **and** PatientBirthDate **and** PatientSex: two hospitals
may give the same local ID to two people, and a birth date or sex that
differs means a different person or a data error, never a prior.

``patient_key`` is a digest of those four values, so the admin app can link a
patient page without putting the PatientID in a URL.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import Field
from sqlalchemy import JSON, DateTime, ForeignKey, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column

from neuroseg.worker.jobs.base import StoreBase
from neuroseg.worker.jobs.records import Record, UtcTime
from neuroseg.worker.jobs.states import JobState
from neuroseg.worker.jobs.tables import Base, JobRow, utcnow

#: job states whose results a later study may be compared with
COMPARABLE_STATES = (JobState.DONE.value, JobState.PARTIAL.value)
#: the time point status while a prior retrieved from the PACS is being processed
AWAITING_PRIOR = "awaiting_prior"


class TimePointRow(Base):
    __tablename__ = "time_points"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    patient_key: Mapped[str] = mapped_column(String(64), index=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_birth_date: Mapped[str] = mapped_column(String(8), default="")
    patient_sex: Mapped[str] = mapped_column(String(16), default="")
    study_date: Mapped[str] = mapped_column(String(8), default="")
    study_time: Mapped[str] = mapped_column(String(16), default="")
    # compared, no_prior, not_comparable or awaiting_prior (the note says why)
    status: Mapped[str] = mapped_column(String(16), default="no_prior")
    prior_job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class PatientIdentity:
    """The attributes that make two studies one patient's (empty strings when absent)."""

    patient_id: str
    issuer_of_patient_id: str
    patient_birth_date: str
    patient_sex: str

    @classmethod
    def from_dataset(cls, dataset: Any) -> "PatientIdentity":
        return cls(*(str(dataset.get(name, "") or "").strip() for name in
                     ("PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex")))

    @property
    def key(self) -> str:
        text = "\\".join((self.patient_id, self.issuer_of_patient_id, self.patient_birth_date, self.patient_sex))
        return hashlib.sha256(text.encode()).hexdigest()[:32]


class TimePoint(Record):
    """One processed study of a patient, with its job and its comparison with the prior."""

    job_id: str
    study_instance_uid: str
    patient_key: str
    study_date: str
    study_time: str
    status: str = Field(description="compared, no_prior, not_comparable or awaiting_prior")
    prior_job_id: str | None
    note: str
    summary: dict[str, Any]
    recorded_at: UtcTime
    state: str = ""
    volumes_ml: dict[str, float] = Field(default_factory=dict)


@dataclass(frozen=True)
class PriorSearch:
    """The outcome of :meth:`FollowupLog.find_prior`: the prior's time point (or None) and notes on the choice."""

    prior: TimePoint | None
    notes: tuple[str, ...]


class FollowupLog(StoreBase):
    """The ``time_points`` table: record a study's patient, find its prior, keep the comparison."""

    def record_time_point(self, job_id: str, study_instance_uid: str, identity: PatientIdentity,
                          study_date: str, study_time: str) -> None:
        """Record (or re-record, on a retry) who the patient of ``job_id`` is and when the study was made."""
        with self.session() as session:
            row = session.get(TimePointRow, job_id) or TimePointRow(job_id=job_id)
            row.study_instance_uid, row.patient_key = study_instance_uid, identity.key
            row.patient_id, row.issuer_of_patient_id = identity.patient_id, identity.issuer_of_patient_id
            row.patient_birth_date, row.patient_sex = identity.patient_birth_date, identity.patient_sex
            row.study_date, row.study_time = study_date, study_time
            row.status, row.prior_job_id, row.note, row.summary = "no_prior", None, "", {}
            row.recorded_at = utcnow()
            session.merge(row)
            session.commit()

    def set_comparison(self, job_id: str, status: str, note: str, prior_job_id: str | None = None,
                       summary: dict[str, Any] | None = None) -> None:
        with self.session() as session:
            row = session.get(TimePointRow, job_id)
            if row is None:
                raise KeyError(f"job {job_id!r} has no time point; record it first")
            row.status, row.note, row.prior_job_id, row.summary = status, note, prior_job_id, summary or {}
            session.commit()

    def _time_points(self, *conditions: Any) -> list[TimePoint]:
        query = (select(TimePointRow, JobRow.state, JobRow.volumes_ml, JobRow.finished_at)
                 .join(JobRow, JobRow.id == TimePointRow.job_id).where(*conditions)
                 .order_by(TimePointRow.study_date, TimePointRow.study_time, JobRow.finished_at))
        with self.session() as session:
            rows = session.execute(query).all()
        return [TimePoint.model_validate({**{column.name: getattr(row, column.name)
                                             for column in TimePointRow.__table__.columns},
                                          "state": state, "volumes_ml": volumes or {}})
                for row, state, volumes, _ in rows]

    def get_time_point(self, job_id: str) -> TimePoint | None:
        found = self._time_points(TimePointRow.job_id == job_id)
        return found[0] if found else None

    def patient_time_line(self, patient_key: str) -> list[TimePoint]:
        """Every finished study of the patient (the newest job of each), oldest first."""
        points = self._time_points(TimePointRow.patient_key == patient_key, JobRow.state.in_(COMPARABLE_STATES))
        newest: dict[str, TimePoint] = {}
        for point in points:  # ordered by finish time within a study: the last one wins
            newest[point.study_instance_uid] = point
        return sorted(newest.values(), key=lambda item: (item.study_date, item.study_time))

    def find_prior(self, job_id: str) -> PriorSearch:
        """The newest finished earlier study of the same patient, and notes on what was left out and why."""
        current = self.get_time_point(job_id)
        if current is None:
            raise KeyError(f"job {job_id!r} has no time point; record it first")
        with self.session() as session:
            me = session.get(TimePointRow, job_id)
            identity = PatientIdentity(me.patient_id, me.issuer_of_patient_id, me.patient_birth_date,
                                       me.patient_sex)
        notes: list[str] = []
        if not identity.patient_id:
            return PriorSearch(None, ("the study has no PatientID: no prior can be looked for",))
        if not current.study_date:
            return PriorSearch(None, ("the study has no StudyDate: no earlier study can be told apart",))
        same_id = self._time_points(TimePointRow.patient_id == identity.patient_id,
                                    TimePointRow.issuer_of_patient_id == identity.issuer_of_patient_id,
                                    TimePointRow.study_instance_uid != current.study_instance_uid,
                                    JobRow.state.in_(COMPARABLE_STATES))
        candidates: dict[str, TimePoint] = {}
        for point in same_id:
            if point.patient_key != identity.key:
                notes.append(f"study {point.study_instance_uid} has the same PatientID and issuer but another "
                             "birth date or sex: a different patient (or an identity error), not used as prior")
                continue
            if (point.study_date, point.study_time) >= (current.study_date, current.study_time):
                continue  # a later study is not a prior
            candidates[point.study_instance_uid] = point  # newest job of each study wins (ordered)
        if not candidates:
            return PriorSearch(None, tuple(notes) or ("no earlier processed study of this patient",))
        ordered = sorted(candidates.values(), key=lambda item: (item.study_date, item.study_time))
        prior = ordered[-1]
        same_day = [item for item in ordered if item.study_date == prior.study_date]
        if len(same_day) > 1:
            if not prior.study_time or prior.study_time == same_day[-2].study_time:
                notes.append(f"{len(same_day)} earlier studies on {prior.study_date} without distinct study "
                             "times: the prior is ambiguous, nothing compared")
                return PriorSearch(None, tuple(notes))
            notes.append(f"{len(same_day)} earlier studies on {prior.study_date}: the later one "
                         f"({prior.study_time}) is the prior")
        return PriorSearch(prior, tuple(notes))

    def identity_of(self, job_id: str) -> PatientIdentity | None:
        """The patient identity recorded for ``job_id`` (None before its time point is recorded)."""
        with self.session() as session:
            row = session.get(TimePointRow, job_id)
            if row is None:
                return None
            return PatientIdentity(row.patient_id, row.issuer_of_patient_id, row.patient_birth_date,
                                   row.patient_sex)

    def mark_awaiting_prior(self, job_id: str, prior_study_instance_uid: str, note: str) -> None:
        """Record that ``job_id`` asked the PACS for ``prior_study_instance_uid`` and waits for its processing."""
        self.set_comparison(job_id, AWAITING_PRIOR, note, summary={"requested_prior": prior_study_instance_uid})

    def prior_requested_by(self, study_instance_uid: str) -> str | None:
        """The job that retrieved ``study_instance_uid`` from the PACS as its prior, if one waits for it.

        A study retrieved as a prior does not query the PACS for priors of its
        own: that would walk the patient's whole history, one study at a time.
        """
        with self.session() as session:
            rows = session.execute(select(TimePointRow.job_id, TimePointRow.summary)
                                   .where(TimePointRow.status == AWAITING_PRIOR)).all()
        return next((job_id for job_id, summary in rows
                     if (summary or {}).get("requested_prior") == study_instance_uid), None)
