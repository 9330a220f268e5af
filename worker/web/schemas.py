"""Response and request bodies of the admin JSON API (they make its OpenAPI document)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from neuroseg.worker.contracts import SequenceRole


class StageTiming(BaseModel):
    name: str
    attempt: int
    started_at: datetime
    finished_at: datetime | None
    duration_s: float | None = Field(description="seconds; for a running stage, the time so far")
    outcome: str = Field(description="running, ok, retry, failed, partial, cancelled or abandoned")


class JobSummaryOut(BaseModel):
    """One row of the jobs list (patient identity included: the API needs a login)."""

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
    duration_s: float | None
    stage_durations: dict[str, float] = Field(description="seconds per stage of the latest attempt")
    has_results: bool = Field(description="the 3D viewer can open this job")


class SeriesOut(BaseModel):
    series_instance_uid: str
    series_number: int | None
    series_description: str
    modality: str
    instance_count: int
    role: str = Field(description="the role used for processing")
    classified_role: str = Field(description="the role the classifier gave")
    confidence: float
    reasons: list[str]


class EventOut(BaseModel):
    at: datetime
    kind: str
    message: str


class OutputOut(BaseModel):
    kind: str
    sop_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str


class DeliveryOut(BaseModel):
    destination: str
    status: str = Field(description="pending, retrying, delivered, partial or failed")
    attempts: int
    sent: int
    failed: int
    last_error: str
    last_attempt_at: datetime | None
    delivered_at: datetime | None


class RelatedJob(BaseModel):
    id: str
    state: str
    reason: str
    created_at: datetime


class AllowedActions(BaseModel):
    retry: bool
    redeliver: bool
    cancel: bool
    reprocess: bool


class JobDetailOut(JobSummaryOut):
    """Everything the job page shows."""

    sequences_used: list[str]
    volumes_ml: dict[str, float]
    cancel_requested: bool
    series: list[SeriesOut]
    stages: list[StageTiming]
    events: list[EventOut]
    outputs: list[OutputOut]
    deliveries: list[DeliveryOut]
    study_jobs: list[RelatedJob] = Field(description="every job of the same study, newest first")
    actions: AllowedActions


class WorkerOut(BaseModel):
    name: str
    online: bool
    source: str = Field(description="broker (answered an inspect broadcast) or job store (holds a running job)")
    device: str
    current_jobs: list[dict[str, Any]]


class OverviewOut(BaseModel):
    generated_at: datetime
    queue_depth: int | None = Field(description="task messages waiting in the broker; null when unreachable")
    broker_ok: bool
    broker_error: str
    jobs_by_state: dict[str, int]
    waiting_jobs: int
    running_jobs: int
    workers: list[WorkerOut]
    flower_url: str | None


class JobListOut(BaseModel):
    jobs: list[JobSummaryOut]
    limit: int
    offset: int


class StudyOut(BaseModel):
    study_instance_uid: str
    patient_id: str
    patient_name: str
    accession_number: str
    study_description: str
    jobs: list[JobSummaryOut]


class ActionResult(BaseModel):
    ok: bool
    job_id: str
    state: str | None = None
    message: str


class ReprocessRequest(BaseModel):
    roles: dict[str, SequenceRole] = Field(
        default_factory=dict,
        description="SeriesInstanceUID -> role (T1, T1ce, T2, FLAIR, other) chosen by the admin",
    )
