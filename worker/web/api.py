"""The JSON API behind the admin pages (every route needs a login; actions need CSRF proof).

Reads go through :class:`neuroseg.worker.jobstore.JobStore`; actions through
:mod:`neuroseg.worker.queue`, which also publishes the task. An unknown job or
study id answers 404; an action that does not fit the job's state answers 409
with the reason.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status

from neuroseg.worker.web.auth import ApiUser, CsrfUser
from neuroseg.worker.web.schemas import (
    ActionResult,
    JobDetailOut,
    JobListOut,
    OverviewOut,
    ReprocessRequest,
    StudyOut,
)

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api", tags=["admin API"])


def get_store(request: Request):  # -> JobStore
    """The job store, or 503 naming the database error."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return request.app.state.jobstore.get()
    except (SQLAlchemyError, OSError) as exc:
        log.warning("job store unavailable: %s", exc)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=f"job store unavailable: {exc}") from exc


Store = Annotated[Any, Depends(get_store)]


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def has_results(request: Request, job_id: str) -> bool:
    from neuroseg.worker.web.viewer_data import has_viewer_data

    return has_viewer_data(request.app.state.settings.results_dir, job_id)


def summary_dict(request: Request, summary, durations: dict[str, float]) -> dict[str, Any]:
    return {**dict(summary), "stage_durations": durations, "has_results": has_results(request, summary.id)}


def allowed_actions(state: str, has_outputs: bool) -> dict[str, bool]:
    """Which admin actions fit a job in ``state``."""
    from neuroseg.worker.jobstore import FINAL_STATES, RUNNING_STATES, WAITING_STATES, JobState

    job_state = JobState(state)
    final = job_state in FINAL_STATES
    return {
        "retry": final and job_state is not JobState.DONE,
        "redeliver": final and has_outputs and job_state is not JobState.CANCELLED,
        "cancel": job_state in WAITING_STATES or job_state in RUNNING_STATES,
        "reprocess": final,
    }


def job_detail_dict(request: Request, store, job_id: str) -> dict[str, Any]:
    """The job page's data; raises 404 for an unknown id."""
    detail = store.get_job(job_id)
    if detail is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no job {job_id!r}")
    durations = store.latest_stage_durations([job_id]).get(job_id, {})
    data = summary_dict(request, detail, durations)
    now = datetime.now(UTC)
    data.update(
        stages=[
            item.model_copy(update={"duration_s": item.duration_s if item.duration_s is not None
                                    else (now - item.started_at).total_seconds()})
            for item in detail.stages
        ],
        study_jobs=[
            {"id": item.id, "state": item.state, "reason": item.reason, "created_at": item.created_at}
            for item in store.list_jobs(study_instance_uid=detail.study_instance_uid, limit=50)
        ],
        actions=allowed_actions(detail.state, bool(detail.outputs)),
    )
    return data


def overview_dict(request: Request, store) -> dict[str, Any]:
    """Queue depth, workers and job counts for the dashboard header."""
    from neuroseg.worker.jobstore import RUNNING_STATES, WAITING_STATES
    from neuroseg.worker.web.monitor import workers_view

    snapshot = request.app.state.monitor.snapshot()
    counts = store.counts_by_state()
    running = [
        job.to_dict() for job in store.list_jobs(state=[state.value for state in RUNNING_STATES], limit=200)
    ]
    settings = request.app.state.settings
    return {
        "generated_at": datetime.now(UTC),
        "queue_depth": snapshot.queue_depth,
        "broker_ok": snapshot.broker_ok,
        "broker_error": snapshot.broker_error,
        "jobs_by_state": counts,
        "waiting_jobs": sum(counts.get(state.value, 0) for state in WAITING_STATES),
        "running_jobs": sum(counts.get(state.value, 0) for state in RUNNING_STATES),
        "workers": workers_view(snapshot, running),
        "flower_url": settings.flower_url,
    }


@router.get("/overview", response_model=OverviewOut, summary="Queue depth, workers online and jobs by state")
def get_overview(request: Request, user: ApiUser, store: Store) -> dict[str, Any]:
    return overview_dict(request, store)


@router.get("/jobs", response_model=JobListOut, summary="Jobs, newest first, with filters")
def list_jobs(
    request: Request,
    user: ApiUser,
    store: Store,
    state: Annotated[list[str] | None, Query(description="keep jobs in these states (repeatable)")] = None,
    since: Annotated[datetime | None, Query(description="created at or after (ISO date or date-time, UTC)")] = None,
    until: Annotated[datetime | None, Query(description="created before (ISO date or date-time, UTC)")] = None,
    study: Annotated[str | None, Query(description="StudyInstanceUID", max_length=64)] = None,
    review: Annotated[bool | None, Query(description="true: only jobs whose quality estimate recommends review; "
                                                     "false: only the others")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    from neuroseg.worker.jobstore import JobState

    states = [item for item in (state or []) if item]
    unknown = [item for item in states if item not in {s.value for s in JobState}]
    if unknown:
        raise HTTPException(
            422,
            detail=f"unknown state {', '.join(unknown)}; use {', '.join(s.value for s in JobState)}",
        )
    jobs = store.list_jobs(state=states or None, study_instance_uid=study, since=_utc(since), until=_utc(until),
                           review=review, limit=limit, offset=offset)
    durations = store.latest_stage_durations([job.id for job in jobs])
    return {
        "jobs": [summary_dict(request, job, durations.get(job.id, {})) for job in jobs],
        "limit": limit,
        "offset": offset,
    }


@router.get("/jobs/{job_id}", response_model=JobDetailOut, summary="Everything about one job")
def get_job(request: Request, job_id: str, user: ApiUser, store: Store) -> dict[str, Any]:
    return job_detail_dict(request, store, job_id)


@router.get("/studies/{study_instance_uid}", response_model=StudyOut, summary="A study and all its jobs")
def get_study(request: Request, study_instance_uid: str, user: ApiUser, store: Store) -> dict[str, Any]:
    jobs = store.list_jobs(study_instance_uid=study_instance_uid, limit=200)
    if not jobs:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no study {study_instance_uid!r}")
    durations = store.latest_stage_durations([job.id for job in jobs])
    first = jobs[0]
    return {
        "study_instance_uid": study_instance_uid, "patient_id": first.patient_id,
        "patient_name": first.patient_name, "accession_number": first.accession_number,
        "study_description": first.study_description,
        "jobs": [summary_dict(request, job, durations.get(job.id, {})) for job in jobs],
    }


def _require_job(store, job_id: str):
    detail = store.get_job(job_id)
    if detail is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no job {job_id!r}")
    return detail


def _conflict(detail, action: str) -> HTTPException:
    return HTTPException(
        status.HTTP_409_CONFLICT, detail=f"cannot {action} job {detail.id}: it is {detail.state}"
    )


@router.post("/jobs/{job_id}/retry", response_model=ActionResult,
             summary="Run a failed, partial or cancelled job again")
def retry_job(request: Request, job_id: str, user: CsrfUser, store: Store) -> dict[str, Any]:
    from neuroseg.worker import queue

    detail = _require_job(store, job_id)
    if not allowed_actions(detail.state, bool(detail.outputs))["retry"]:
        raise _conflict(detail, "retry")
    settings = request.app.state.settings
    if not queue.retry_job(settings, job_id):
        raise _conflict(detail, "retry")
    log.info("job %s: retry requested by %s", job_id, user.user)
    return {"ok": True, "job_id": job_id, "state": store.job_state(job_id), "message": "job queued again"}


@router.post("/jobs/{job_id}/redeliver", response_model=ActionResult, summary="Send a job's outputs again")
def redeliver_job(request: Request, job_id: str, user: CsrfUser, store: Store) -> dict[str, Any]:
    from neuroseg.worker import queue

    detail = _require_job(store, job_id)
    if not allowed_actions(detail.state, bool(detail.outputs))["redeliver"]:
        if not detail.outputs:
            raise HTTPException(status.HTTP_409_CONFLICT, detail=f"job {job_id} has no outputs to deliver again")
        raise _conflict(detail, "re-deliver")
    settings = request.app.state.settings
    if not queue.retry_job(settings, job_id, redeliver_only=True):
        raise _conflict(detail, "re-deliver")
    log.info("job %s: re-delivery requested by %s", job_id, user.user)
    return {"ok": True, "job_id": job_id, "state": store.job_state(job_id), "message": "outputs queued for delivery"}


@router.post("/jobs/{job_id}/cancel", response_model=ActionResult, summary="Cancel a waiting or running job")
def cancel_job(request: Request, job_id: str, user: CsrfUser, store: Store) -> dict[str, Any]:
    from neuroseg.worker import queue

    detail = _require_job(store, job_id)
    if not allowed_actions(detail.state, bool(detail.outputs))["cancel"]:
        raise _conflict(detail, "cancel")
    state = queue.cancel_job(request.app.state.settings, job_id)
    log.info("job %s: cancel requested by %s (now %s)", job_id, user.user, state)
    message = "job cancelled" if state == "cancelled" else "cancel requested; the job stops at its next step"
    return {"ok": True, "job_id": job_id, "state": state, "message": message}


@router.post(
    "/jobs/{job_id}/reprocess", response_model=ActionResult,
    summary="Process the study again, optionally with series roles overridden",
)
def reprocess_job(
    request: Request, job_id: str, body: ReprocessRequest, user: CsrfUser, store: Store
) -> dict[str, Any]:
    from neuroseg.worker import queue

    detail = _require_job(store, job_id)
    if not allowed_actions(detail.state, bool(detail.outputs))["reprocess"]:
        raise _conflict(detail, "reprocess")
    known = {item.series_instance_uid for item in detail.series}
    unknown = sorted(set(body.roles) - known)
    if unknown:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"series {', '.join(unknown)} not in job {job_id}")
    try:
        new_id = queue.reprocess_job(request.app.state.settings, job_id, body.roles)
    except ValueError as exc:
        raise HTTPException(422, detail=str(exc)) from exc
    log.info("job %s: reprocess requested by %s as job %s (roles %s)", job_id, user.user, new_id,
             {key: value.value for key, value in body.roles.items()})
    return {"ok": True, "job_id": new_id, "state": store.job_state(new_id), "message": f"new job {new_id} queued"}
