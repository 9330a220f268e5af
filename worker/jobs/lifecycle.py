"""The state machine at work: claims, stages, progress and heartbeats, endings and admin actions.

Every change goes through :func:`neuroseg.worker.jobs.states.check_transition`
and writes a ``state`` line to the timeline. A worker claims a job with a
conditional UPDATE, so a redelivered message never runs a job twice at the
same time and a finished job is never rerun.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from neuroseg.worker.jobs.base import StoreBase
from neuroseg.worker.jobs.deliveries import reset_deliveries
from neuroseg.worker.jobs.records import Claim, ClaimOutcome
from neuroseg.worker.jobs.states import (
    FINAL_STATES,
    RUNNING_STATES,
    STAGE_ORDER,
    WAITING_STATES,
    JobState,
    check_transition,
)
from neuroseg.worker.jobs.tables import JobRow, StageRow, as_utc, utcnow
from neuroseg.worker.jobs.timeline import add_event, close_open_stages, open_stage, stage_column


def worker_identity() -> str:
    """``hostname:pid`` of this process, stored with a claim."""
    return f"{socket.gethostname()}:{os.getpid()}"


class JobLifecycle(StoreBase):
    """Moves jobs through :data:`neuroseg.worker.jobs.states.TRANSITIONS`."""

    def mark_published(self, job_id: str) -> None:
        """Record that a task message for the job was handed to the broker."""
        self._update(job_id, published_at=utcnow())

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
                return Claim(outcome=ClaimOutcome.MISSING)
            state = JobState(row.state)
            if state in FINAL_STATES:
                return Claim(outcome=ClaimOutcome.FINISHED, state=state.value, attempt=row.attempts)
            if state in RUNNING_STATES and not self._abandoned(row, now):
                return Claim(outcome=ClaimOutcome.BUSY, state=state.value, attempt=row.attempts)
            if row.cancel_requested:
                self._set_state(session, row, JobState.CANCELLED, message="cancelled before it started")
                session.commit()
                return Claim(outcome=ClaimOutcome.FINISHED, state=JobState.CANCELLED.value, attempt=row.attempts)
            if row.attempts >= max_attempts:
                stage = session.scalar(select(stage_column()).where(JobRow.id == job_id))
                reason = (f"gave up after {row.attempts} attempts; the worker stopped during "
                          f"'{stage}' each time (out of memory or killed?)")
                self._set_state(session, row, JobState.FAILED, error=reason, message=reason)
                session.commit()
                return Claim(outcome=ClaimOutcome.FINISHED, state=JobState.FAILED.value, attempt=row.attempts)
            target = JobState.DELIVERING if row.resume_stage == JobState.DELIVERING.value else STAGE_ORDER[0]
            attempt, resume_stage, study_uid = row.attempts + 1, row.resume_stage, row.study_instance_uid
            row_updated_at = row.updated_at
            result = session.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.state == row.state, JobRow.updated_at == row.updated_at)
                .values(state=target.value, worker=worker, attempts=JobRow.attempts + 1,
                        heartbeat_at=now, updated_at=now, started_at=func.coalesce(JobRow.started_at, now),
                        finished_at=None, percent=0.0, error="", retry_at=None,
                        message=f"claimed by {worker}")
            )
            if result.rowcount != 1:
                session.rollback()
                return Claim(outcome=ClaimOutcome.BUSY, state=row.state, attempt=row.attempts)
            close_open_stages(session, job_id, now, "abandoned")
            if state in WAITING_STATES:
                # the wait for a worker is a stage too (queue latency in the timings and metrics)
                waited_from = as_utc(row_updated_at) or now
                session.add(StageRow(job_id=job_id, name=state.value, attempt=attempt, started_at=waited_from,
                                     finished_at=now, duration_s=(now - waited_from).total_seconds(), outcome="ok"))
            open_stage(session, job_id, target.value, attempt, now)
            add_event(session, "claimed", f"attempt {attempt}: {worker} took the job from {state.value}",
                      study_instance_uid=study_uid, job_id=job_id, at=now)
            session.commit()
            return Claim(outcome=ClaimOutcome.CLAIMED, state=target.value, attempt=attempt,
                         resume_stage=resume_stage)

    def enter_stage(self, job_id: str, stage: JobState | str, message: str = "") -> None:
        """Move a running job to the next stage: closes the previous stage's timing, opens this one."""
        stage = JobState(stage)
        now = utcnow()
        with self.session() as session:
            row = self._get_row(session, job_id)
            if row.state == stage.value:
                return
            check_transition(row.state, stage)
            close_open_stages(session, job_id, now, "ok")
            open_stage(session, job_id, stage.value, row.attempts, now)
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

    def set_quality(self, job_id: str, quality: dict[str, Any]) -> None:
        """Record the per-study quality estimate (expected Dice, ``review_recommended``, reasons)."""
        self._update(job_id, review_recommended=bool(quality["review_recommended"]),
                     quality={key: quality[key] for key in ("expected_dice", "review_recommended", "reasons")
                              if key in quality})

    def set_resume_stage(self, job_id: str, stage: JobState | str | None) -> None:
        """Remember the stage a retry should start from (``delivering`` once outputs exist)."""
        self._update(job_id, resume_stage=JobState(stage).value if stage else "")

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
            close_open_stages(session, job_id, now, outcome)
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
            close_open_stages(session, job_id, now, "retry")
            self._set_state(session, row, JobState.RETRYING, error=error,
                            message=f"retry in {retry_in_s:.0f} s: {error}")
            row.retry_at = now + timedelta(seconds=retry_in_s)
            session.commit()

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
                reset_deliveries(session, job_id)
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

    def _set_state(self, session: Session, row: JobRow, state: JobState, *, message: str = "",
                   error: str | None = None, percent: float | None = None) -> None:
        now = utcnow()
        old = row.state
        row.state = state.value
        if error is not None:
            row.error = error[:4000]
        if percent is not None:
            row.percent = percent
        row.message = message[:2000]
        row.updated_at = now
        row.heartbeat_at = now
        text = f"{old} -> {state.value}" + (f": {message}" if message and message != state.value else "")
        add_event(session, "state", text, study_instance_uid=row.study_instance_uid, job_id=row.id, at=now)
