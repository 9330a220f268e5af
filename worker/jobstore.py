"""The job store: every study, series, job, stage, output and delivery, in SQL.

The job store is the truth about the work (the broker only carries job ids).
It is a SQLite file in the data dir by default and PostgreSQL (or any
SQLAlchemy URL) through ``NEUROSEG_DATABASE_URL``. Every state change is
written here; nothing lives only in memory.

:class:`JobStore` is made of one part per concern, each in ``worker/jobs/``:

- :mod:`~neuroseg.worker.jobs.states`: the state machine, with the one declared
  stage order (:data:`STAGE_ORDER`) everything else derives from;
- :mod:`~neuroseg.worker.jobs.intake`: :meth:`JobStore.create_job` and its
  de-duplication rule (the listener, through :func:`neuroseg.worker.queue.enqueue_study`);
- :mod:`~neuroseg.worker.jobs.lifecycle`: :meth:`JobStore.claim`, stages,
  progress, :meth:`JobStore.finish`, :meth:`JobStore.mark_retrying` and the
  database side of the admin actions (``queue.py`` publishes the task);
- :mod:`~neuroseg.worker.jobs.deliveries`: outputs and the delivery log;
- :mod:`~neuroseg.worker.jobs.timeline`: events and stage runs;
- :mod:`~neuroseg.worker.jobs.queries`: the read model of the admin app,
  metrics, recovery and retention (SQL aggregates);
- :mod:`~neuroseg.worker.jobs.followups`: each job's time point (patient
  identity, study date) and the prior it was compared with;
- :mod:`~neuroseg.worker.jobs.records`: the pydantic records handed out;
- :mod:`~neuroseg.worker.jobs.tables` and :mod:`~neuroseg.worker.jobs.database`:
  the tables, engines and Alembic migrations, run on start-up under a lock.
"""

from __future__ import annotations

from neuroseg.worker.jobs.database import SCHEMA_VERSION, engine_for, migrate, schema_version
from neuroseg.worker.jobs.deliveries import DELIVERY_STATUSES, DeliveryLog
from neuroseg.worker.jobs.followups import FollowupLog, PatientIdentity, PriorSearch, TimePoint
from neuroseg.worker.jobs.intake import JobIntake, manifest_fingerprint
from neuroseg.worker.jobs.lifecycle import JobLifecycle, worker_identity
from neuroseg.worker.jobs.queries import ReadModel
from neuroseg.worker.jobs.records import (
    Claim,
    ClaimOutcome,
    DeliveryRecord,
    EventRecord,
    JobDetail,
    JobSummary,
    OutputRecord,
    RetentionCandidate,
    SeriesRecord,
    StageRecord,
)
from neuroseg.worker.jobs.states import (
    FINAL_STATES,
    RUNNING_STATES,
    STAGE_ORDER,
    STAGE_RANK,
    TIMED_STEPS,
    TRANSITIONS,
    WAITING_STATES,
    JobState,
    TransitionError,
    check_transition,
)
from neuroseg.worker.jobs.tables import (
    Base,
    DeliveryRow,
    EventRow,
    JobRow,
    OutputRow,
    SeriesRow,
    StageRow,
    StudyRow,
    utcnow,
)
from neuroseg.worker.jobs.timeline import Timeline
from neuroseg.worker.settings import Settings

__all__ = [
    "DELIVERY_STATUSES", "FINAL_STATES", "RUNNING_STATES", "SCHEMA_VERSION", "STAGE_ORDER", "STAGE_RANK",
    "TIMED_STEPS", "TRANSITIONS", "WAITING_STATES", "Base", "Claim", "ClaimOutcome", "DeliveryRecord",
    "DeliveryRow", "EventRecord", "EventRow", "JobDetail", "JobRow", "JobState", "JobStore", "JobSummary",
    "FollowupLog", "PatientIdentity", "PriorSearch", "TimePoint",
    "OutputRecord", "OutputRow", "RetentionCandidate", "SeriesRecord", "SeriesRow", "StageRecord", "StageRow",
    "StudyRow", "TransitionError", "check_transition", "engine_for", "manifest_fingerprint", "migrate",
    "schema_version", "utcnow", "worker_identity",
]


class JobStore(JobIntake, JobLifecycle, DeliveryLog, Timeline, ReadModel, FollowupLog):
    """Reads and writes the job store; one instance per process is enough (thread-safe).

    ``JobStore(url, stale_after_s=120.0)``: see :class:`~neuroseg.worker.jobs.base.StoreBase`.
    """

    @classmethod
    def from_settings(cls, settings: Settings) -> "JobStore":
        """The job store named by ``settings.effective_database_url`` (creates the data dir)."""
        if settings.database_url is None:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        return cls(settings.effective_database_url, stale_after_s=settings.job_stale_seconds)
