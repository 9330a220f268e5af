"""What the job store hands out: one frozen pydantic record per thing, read straight from rows.

Every record is built with ``Record.model_validate(row)`` from an ORM row or
a selected SQL row (``from_attributes``); the admin API returns the same
records (``worker/web/schemas.py`` adds only what the API computes on top).
Times are timezone-aware UTC datetimes; ``to_dict()`` gives JSON-ready values.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, computed_field

from neuroseg.worker.contracts import StudyManifest
from neuroseg.worker.jobs.tables import as_utc, utcnow

#: A datetime read from the database, made aware (SQLite hands back naive UTC).
UtcTime = Annotated[datetime, AfterValidator(as_utc)]


class Record(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class SeriesRecord(Record):
    """A series of a job, with the role used and the classifier's role and reasons."""

    series_instance_uid: str
    folder: str
    role: str = Field(description="the role used for processing")
    classified_role: str = Field(description="the role the classifier gave")
    confidence: float
    reasons: list[str]
    modality: str
    series_description: str
    series_number: int | None
    sop_class_uid: str
    instance_count: int


class StageRecord(Record):
    """One run of one stage; ``duration_s`` is None while it runs."""

    name: str
    attempt: int
    started_at: UtcTime
    finished_at: UtcTime | None
    duration_s: float | None
    outcome: str = Field(description="running, ok, retry, failed, partial, cancelled or abandoned")


class EventRecord(Record):
    at: UtcTime
    kind: str
    message: str
    job_id: str | None = None
    study_instance_uid: str = ""


class OutputRecord(Record):
    """One DICOM object made for a job (``path`` is its file under the job folder)."""

    kind: str
    sop_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    path: str = ""

    def __init__(self, *args: Any, **values: Any) -> None:
        # positional construction, as the pipeline writes it: OutputRecord(kind, sop, series, sop_class, path)
        values.update(zip(("kind", "sop_instance_uid", "series_instance_uid", "sop_class_uid", "path"), args))
        super().__init__(**values)


class DeliveryRecord(Record):
    """Delivery of a job's outputs to one destination (``AET@host:port`` or ``outbox:<folder>``)."""

    destination: str
    status: str = Field(description="pending, retrying, delivered, partial or failed")
    attempts: int
    sent: int
    failed: int
    last_error: str
    last_attempt_at: UtcTime | None
    delivered_at: UtcTime | None


class JobSummary(Record):
    """A row of the jobs list (patient identity included: reading it needs a login)."""

    id: str
    study_instance_uid: str
    patient_id: str
    patient_name: str
    accession_number: str
    study_description: str
    state: str
    stage: str = Field(description="the state while waiting or running; the last stage run once finished")
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
    review_recommended: bool | None = Field(default=None, description="quality flag: review this result "
                                            "(null until the model has run)")
    created_at: UtcTime
    updated_at: UtcTime
    started_at: UtcTime | None
    finished_at: UtcTime | None

    @computed_field
    @property
    def duration_s(self) -> float | None:
        if self.started_at is None:
            return None
        return ((self.finished_at or utcnow()) - self.started_at).total_seconds()


class JobDetail(JobSummary):
    """Everything about one job: series, stage timings, events, outputs and deliveries."""

    manifest: dict[str, Any] = Field(default_factory=dict)
    sequences_used: list[str] = Field(default_factory=list)
    volumes_ml: dict[str, float] = Field(default_factory=dict)
    quality: dict[str, Any] = Field(default_factory=dict, description="expected Dice, review flag and reasons")
    resume_stage: str = ""
    cancel_requested: bool = False
    series: list[SeriesRecord] = Field(default_factory=list)
    stages: list[StageRecord] = Field(default_factory=list)
    events: list[EventRecord] = Field(default_factory=list)
    outputs: list[OutputRecord] = Field(default_factory=list)
    deliveries: list[DeliveryRecord] = Field(default_factory=list)

    def study_manifest(self) -> StudyManifest:
        return StudyManifest.from_dict(self.manifest)


class ClaimOutcome(str, Enum):
    """What :meth:`JobStore.claim` decided."""

    CLAIMED = "claimed"        # this worker runs the job now
    FINISHED = "finished"      # already done/failed/cancelled: drop the message
    BUSY = "busy"              # another live worker runs it: try again later
    MISSING = "missing"        # no such job id


class Claim(Record):
    outcome: ClaimOutcome
    state: str = ""
    attempt: int = 0
    resume_stage: str = ""


class RetentionCandidate(Record):
    """A study whose jobs have all ended, with its newest job (the one whose delivery counts)."""

    study_instance_uid: str
    job_id: str
    state: str
    delivered: bool = Field(description="the job has deliveries and every one is delivered")
