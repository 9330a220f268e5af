"""What the job store hands out: plain, frozen records (no database session attached).

Re-exported by :mod:`neuroseg.worker.jobstore`; import them from there.
Times are timezone-aware UTC datetimes; ``to_dict()`` gives JSON-ready values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from neuroseg.worker.contracts import StudyManifest
from neuroseg.worker.jobschema import utcnow


@dataclass(frozen=True)
class SeriesRecord:
    """A series of a job, with the role used and the classifier's role and reasons."""

    series_instance_uid: str
    folder: str
    role: str
    classified_role: str
    confidence: float
    reasons: list[str]
    modality: str
    series_description: str
    series_number: int | None
    sop_class_uid: str
    instance_count: int


@dataclass(frozen=True)
class StageRecord:
    """One run of one stage; ``duration_s`` is None while it runs."""

    name: str
    attempt: int
    started_at: datetime
    finished_at: datetime | None
    duration_s: float | None
    outcome: str


@dataclass(frozen=True)
class EventRecord:
    at: datetime
    kind: str
    message: str
    job_id: str | None = None
    study_instance_uid: str = ""


@dataclass(frozen=True)
class OutputRecord:
    """One DICOM object made for a job (``path`` is its file under the job folder)."""

    kind: str
    sop_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    path: str


@dataclass(frozen=True)
class DeliveryRecord:
    """Delivery of a job's outputs to one destination (``AET@host:port`` or ``outbox:<folder>``).

    ``status`` is ``pending``, ``retrying``, ``delivered``, ``partial`` or ``failed``.
    """

    destination: str
    status: str
    attempts: int
    sent: int
    failed: int
    last_error: str
    last_attempt_at: datetime | None
    delivered_at: datetime | None


@dataclass(frozen=True)
class JobSummary:
    """A row of the jobs list."""

    id: str
    study_instance_uid: str
    patient_id: str
    patient_name: str
    accession_number: str
    study_description: str
    state: str
    stage: str
    percent: float
    message: str
    error: str
    attempts: int
    worker: str
    device: str
    model_name: str
    model_version: str
    reason: str
    replaces_job_id: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or utcnow()
        return (end - self.started_at).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["duration_s"] = self.duration_s
        return _jsonable(data)


@dataclass(frozen=True)
class JobDetail(JobSummary):
    """Everything about one job: series, stage timings, events, outputs and deliveries."""

    manifest: dict[str, Any] = field(default_factory=dict)
    sequences_used: list[str] = field(default_factory=list)
    volumes_ml: dict[str, float] = field(default_factory=dict)
    resume_stage: str = ""
    cancel_requested: bool = False
    series: list[SeriesRecord] = field(default_factory=list)
    stages: list[StageRecord] = field(default_factory=list)
    events: list[EventRecord] = field(default_factory=list)
    outputs: list[OutputRecord] = field(default_factory=list)
    deliveries: list[DeliveryRecord] = field(default_factory=list)

    def study_manifest(self) -> StudyManifest:
        return StudyManifest.from_dict(self.manifest)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


class ClaimOutcome(str, Enum):
    """What :meth:`JobStore.claim` decided."""

    CLAIMED = "claimed"        # this worker runs the job now
    FINISHED = "finished"      # already done/failed/cancelled: drop the message
    BUSY = "busy"              # another live worker runs it: try again later
    MISSING = "missing"        # no such job id


@dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    state: str = ""
    attempt: int = 0
    resume_stage: str = ""
