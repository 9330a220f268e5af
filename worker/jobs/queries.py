"""The read model: what the admin app, metrics, recovery and retention ask the job store.

Counts and histograms are SQL aggregates and lists are bounded queries, so
a scrape or a retention pass costs the same with ten jobs or a million.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import and_, case, exists, func, or_, select
from sqlalchemy.sql import Select

from neuroseg.worker.jobs.base import StoreBase
from neuroseg.worker.jobs.records import (
    DeliveryRecord,
    EventRecord,
    JobDetail,
    JobSummary,
    OutputRecord,
    RetentionCandidate,
    SeriesRecord,
    StageRecord,
)
from neuroseg.worker.jobs.states import FINAL_STATES, RUNNING_STATES, JobState
from neuroseg.worker.jobs.tables import (
    DeliveryRow,
    EventRow,
    JobRow,
    OutputRow,
    SeriesRow,
    StageRow,
    StudyRow,
    as_utc,
    utcnow,
)
from neuroseg.worker.jobs.timeline import stage_column

_STUDY_FIELDS = frozenset({"patient_id", "patient_name", "accession_number", "study_description"})
#: The child rows of a job page: record field -> (record type, table).
_JOB_PARTS = {"series": (SeriesRecord, SeriesRow), "stages": (StageRecord, StageRow),
              "events": (EventRecord, EventRow), "outputs": (OutputRecord, OutputRow),
              "deliveries": (DeliveryRecord, DeliveryRow)}


def _job_query(record: type[JobSummary]) -> Select:
    """SELECT of the columns ``record`` reads (by field name), jobs joined with their study."""
    columns = []
    for name in record.model_fields:
        if name == "stage":
            columns.append(stage_column())
        elif name in _STUDY_FIELDS:
            columns.append(getattr(StudyRow, name))
        elif name not in _JOB_PARTS:
            columns.append(getattr(JobRow, name))
    return select(*columns).join(StudyRow, StudyRow.study_instance_uid == JobRow.study_instance_uid)


def _values(states: Sequence[JobState | str] | frozenset[JobState]) -> list[str]:
    return [JobState(state).value for state in states]


class ReadModel(StoreBase):
    """Queries for pages, metrics, recovery and retention."""

    def list_jobs(self, *, state: str | Sequence[str] | None = None, study_instance_uid: str | None = None,
                  since: datetime | None = None, until: datetime | None = None,
                  review: bool | None = None, limit: int = 100, offset: int = 0) -> list[JobSummary]:
        """Jobs, newest first, filtered by state(s), study, creation time (UTC) and the review flag."""
        query = _job_query(JobSummary)
        if review is not None:
            query = query.where(JobRow.review_recommended.is_(True) if review
                                else JobRow.review_recommended.is_not(True))
        if state:
            query = query.where(JobRow.state.in_(_values([state] if isinstance(state, str) else state)))
        if study_instance_uid:
            query = query.where(JobRow.study_instance_uid == study_instance_uid)
        if since is not None:
            query = query.where(JobRow.created_at >= since)
        if until is not None:
            query = query.where(JobRow.created_at < until)
        query = query.order_by(JobRow.created_at.desc(), JobRow.id).limit(limit).offset(offset)
        with self.session() as session:
            return [JobSummary.model_validate(row) for row in session.execute(query)]

    def get_job(self, job_id: str) -> JobDetail | None:
        """Everything about one job, or None when the id is unknown."""
        with self.session() as session:
            row = session.execute(_job_query(JobDetail).where(JobRow.id == job_id)).one_or_none()
            if row is None:
                return None
            parts = {
                name: [record.model_validate(item) for item in
                       session.scalars(select(table).where(table.job_id == job_id).order_by(table.id))]
                for name, (record, table) in _JOB_PARTS.items()
            }
        return JobDetail.model_validate({**row._asdict(), **parts})

    def job_state(self, job_id: str) -> str | None:
        """The state of a job (cheap), or None when the id is unknown."""
        with self.session() as session:
            return session.scalar(select(JobRow.state).where(JobRow.id == job_id))

    def review_count(self) -> int:
        """Jobs whose result the quality estimate flagged for review (for metrics)."""
        with self.session() as session:
            return int(session.scalar(select(func.count()).select_from(JobRow)
                                      .where(JobRow.review_recommended.is_(True))) or 0)

    def counts_by_state(self) -> dict[str, int]:
        """Number of jobs in each state (every state present, zero included), for metrics."""
        counts = {state.value: 0 for state in JobState}
        with self.session() as session:
            for state, count in session.execute(select(JobRow.state, func.count()).group_by(JobRow.state)):
                counts[state] = int(count)
        return counts

    def study_count(self) -> int:
        """Number of distinct studies ever handed to the queue."""
        with self.session() as session:
            return int(session.scalar(select(func.count()).select_from(StudyRow)) or 0)

    def stage_duration_histogram(self, bounds: Sequence[float]) -> dict[str, tuple[list[int], int, float]]:
        """Per stage, of every finished stage run: (runs at or under each bound, runs, total seconds)."""
        under = [func.sum(case((StageRow.duration_s <= bound, 1), else_=0)) for bound in bounds]
        query = (select(StageRow.name, func.count(), func.sum(StageRow.duration_s), *under)
                 .where(StageRow.duration_s.is_not(None)).group_by(StageRow.name))
        with self.session() as session:
            return {name: ([int(value) for value in buckets], int(count), float(total))
                    for name, count, total, *buckets in session.execute(query)}

    def latest_stage_durations(self, job_ids: Sequence[str]) -> dict[str, dict[str, float]]:
        """Seconds per stage of each job's latest attempt (running stages: the time so far)."""
        if not job_ids:
            return {}
        latest = (select(StageRow.job_id, func.max(StageRow.attempt).label("attempt"))
                  .where(StageRow.job_id.in_(list(job_ids))).group_by(StageRow.job_id).subquery())
        query = (select(StageRow.job_id, StageRow.name, StageRow.started_at, StageRow.duration_s)
                 .join(latest, and_(latest.c.job_id == StageRow.job_id, latest.c.attempt == StageRow.attempt))
                 .order_by(StageRow.id))
        now = utcnow()
        result: dict[str, dict[str, float]] = defaultdict(dict)
        with self.session() as session:
            for job_id, name, started, duration in session.execute(query):
                seconds = duration if duration is not None else (now - as_utc(started)).total_seconds()
                result[job_id][name] = round(float(seconds), 3)
        return dict(result)

    def jobs_needing_publish(self, *, queued_grace_s: float) -> list[str]:
        """Jobs whose task message may be lost, to be published again (claims make this safe).

        These are queued jobs never published or published more than
        ``queued_grace_s`` ago, retrying jobs past their retry time by that
        grace, and running jobs whose worker stopped sending heartbeats.
        """
        now = utcnow()
        grace_ago = now - timedelta(seconds=queued_grace_s)
        not_recently_published = or_(JobRow.published_at.is_(None), JobRow.published_at < grace_ago)
        waiting = select(JobRow.id).where(
            not_recently_published,
            or_(JobRow.state == JobState.QUEUED.value,
                and_(JobRow.state == JobState.RETRYING.value, JobRow.retry_at < grace_ago)),
        ).order_by(JobRow.created_at)
        running = select(JobRow).where(JobRow.state.in_(_values(RUNNING_STATES)),
                                       or_(JobRow.published_at.is_(None), JobRow.published_at < now - self.stale_after))
        with self.session() as session:
            found = list(session.scalars(waiting))
            # few jobs run at a time; whether their worker is alive needs a look at the process
            found += [row.id for row in session.scalars(running) if self._abandoned(row, now)]
        return found

    def retention_candidates(self, ended_before: datetime) -> list[RetentionCandidate]:
        """Studies whose jobs have all ended and whose newest job ended before ``ended_before``.

        Newest study first; each with its newest job, that job's state and
        whether every one of its deliveries (at least one) was delivered.
        """
        newest_first = func.row_number().over(partition_by=JobRow.study_instance_uid,
                                               order_by=(JobRow.created_at.desc(), JobRow.id))
        ranked = select(JobRow.study_instance_uid, JobRow.id, JobRow.state, JobRow.created_at, JobRow.finished_at,
                        newest_first.label("rank")).subquery()
        open_studies = select(JobRow.study_instance_uid).where(JobRow.state.not_in(_values(FINAL_STATES)))
        delivered = and_(exists().where(DeliveryRow.job_id == ranked.c.id),
                         ~exists().where(DeliveryRow.job_id == ranked.c.id, DeliveryRow.status != "delivered"))
        query = (select(ranked.c.study_instance_uid, ranked.c.id.label("job_id"), ranked.c.state,
                        case((delivered, True), else_=False).label("delivered"))
                 .where(ranked.c.rank == 1, ranked.c.finished_at <= ended_before,
                        ranked.c.study_instance_uid.not_in(open_studies))
                 .order_by(ranked.c.created_at.desc()))
        with self.session() as session:
            return [RetentionCandidate.model_validate(row) for row in session.execute(query)]

    def jobs_of_studies(self, study_uids: Sequence[str], *, ended_before: datetime) -> list[str]:
        """Ids of the jobs of these studies that ended before ``ended_before`` (or never recorded an end)."""
        found: list[str] = []
        with self.session() as session:
            for start in range(0, len(study_uids), 500):  # bounded IN lists
                found += session.scalars(select(JobRow.id).where(
                    JobRow.study_instance_uid.in_(list(study_uids[start:start + 500])),
                    or_(JobRow.finished_at.is_(None), JobRow.finished_at <= ended_before))
                    .order_by(JobRow.created_at))
        return found
