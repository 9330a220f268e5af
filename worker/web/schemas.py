"""Response and request bodies of the admin JSON API (they make its OpenAPI document).

Jobs, series, stages, events, outputs and deliveries are the job store's own
records; the classes here add only what the API computes on top of them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from neuroseg.worker.contracts import SequenceRole
from neuroseg.worker.jobstore import DeliveryRecord, EventRecord, JobSummary, OutputRecord, SeriesRecord, StageRecord


class JobSummaryOut(JobSummary):
    """One row of the jobs list: the job store's record plus what the API works out."""

    stage_durations: dict[str, float] = Field(description="seconds per stage of the latest attempt")
    has_results: bool = Field(description="the 3D viewer can open this job")


class StageTiming(StageRecord):
    duration_s: float | None = Field(description="seconds; for a running stage, the time so far")


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
    quality: dict[str, Any] = Field(default_factory=dict,
                                    description="expected Dice, review_recommended and reasons (empty until assessed)")
    cancel_requested: bool
    series: list[SeriesRecord]
    stages: list[StageTiming]
    events: list[EventRecord]
    outputs: list[OutputRecord]
    deliveries: list[DeliveryRecord]
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
