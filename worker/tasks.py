"""The Celery task: a thin wrapper that claims a job and runs the pipeline.

It loads nothing heavy at import, so :mod:`neuroseg.worker.queue` can
register it without importing torch; each worker process imports the
pipeline's libraries when it starts (:func:`warm_up`). The task receives a job id, re-reads
the world from the job store, and maps errors:

- :class:`~neuroseg.worker.errors.InputError` -> ``failed`` with the reason, no retry;
- :class:`~neuroseg.worker.errors.TransientError` -> ``retrying``, retried with
  exponential backoff (``settings.delivery_max_retries`` times, over hours),
  then ``failed``;
- soft time limit -> ``failed`` saying so; the hard limit kills the process and
  :func:`record_hard_time_limit` (called by Celery in the worker's main
  process) fails the job, so it is not run again in a loop;
- a cancel request -> ``cancelled``;
- anything else -> ``failed`` naming the stage and the error (logged with its
  traceback once); the worker goes on with the next job.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from neuroseg.worker.errors import InputError, TransientError
from neuroseg.worker.jobstore import RUNNING_STATES, ClaimOutcome, JobState, JobStore, worker_identity
from neuroseg.worker.settings import get_settings

if TYPE_CHECKING:
    from celery import Celery, Task

log = logging.getLogger(__name__)


class Heartbeat:
    """Context manager: a daemon thread that beats the job's heartbeat every ``interval`` seconds."""

    def __init__(self, store: JobStore, job_id: str, interval: float) -> None:
        self.store, self.job_id, self.interval = store, job_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id[:8]}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.store.heartbeat(self.job_id)
            except Exception as exc:  # noqa: BLE001 - a missed beat is not fatal
                log.warning("job %s: heartbeat failed: %s", self.job_id, exc)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)


def process_study(task: "Task", job_id: str) -> str:
    """Body of ``neuroseg.process_study``: claim ``job_id``, run the pipeline, record the outcome.

    Returns the job's final (or waiting) state, for logs.
    """
    from celery.exceptions import SoftTimeLimitExceeded

    settings = get_settings()
    store = JobStore.from_settings(settings)
    claim = store.claim(job_id, worker=worker_identity(), max_attempts=settings.job_max_attempts)
    if claim.outcome is ClaimOutcome.BUSY:
        log.info("job %s is running on another worker (%s); checking again later", job_id, claim.state)
        raise task.retry(countdown=settings.job_stale_seconds, max_retries=None)
    if claim.outcome is not ClaimOutcome.CLAIMED:
        log.info("job %s: nothing to do (%s %s)", job_id, claim.outcome.value, claim.state)
        return claim.state
    from neuroseg.worker import pipeline

    with Heartbeat(store, job_id, interval=max(1.0, settings.job_stale_seconds / 6)):
        try:
            state = pipeline.run_job(store, job_id, settings)
        except pipeline.JobCancelled as exc:
            store.finish(job_id, JobState.CANCELLED, message=str(exc))
            return JobState.CANCELLED.value
        except InputError as exc:
            log.warning("job %s failed: %s", job_id, exc)
            store.finish(job_id, JobState.FAILED, error=str(exc))
            return JobState.FAILED.value
        except TransientError as exc:
            retries = task.request.retries
            if retries >= settings.delivery_max_retries:
                reason = f"gave up after {retries + 1} attempts: {exc}"
                log.error("job %s: %s", job_id, reason)
                final = JobState.PARTIAL if pipeline.has_outputs(store, job_id) else JobState.FAILED
                store.finish(job_id, final, error=reason)
                return final.value
            from neuroseg.worker.queue import retry_countdown

            countdown = retry_countdown(retries)
            log.warning("job %s: transient error, retry %d in %.0f s: %s", job_id, retries + 1, countdown, exc)
            store.mark_retrying(job_id, str(exc), countdown)
            raise task.retry(exc=exc, countdown=countdown, max_retries=None) from exc
        except SoftTimeLimitExceeded:
            reason = (f"stopped: the job ran longer than the soft time limit of "
                      f"{settings.task_soft_time_limit} s (NEUROSEG_TASK_SOFT_TIME_LIMIT)")
            store.finish(job_id, JobState.FAILED, error=reason)
            return JobState.FAILED.value
        except Exception as exc:  # noqa: BLE001 - a bug must fail this job, not the worker
            detail = store.get_job(job_id)
            stage = detail.stage if detail else "?"
            log.exception("job %s: unexpected error during %s", job_id, stage)
            store.finish(job_id, JobState.FAILED,
                         error=f"unexpected error during {stage}: {type(exc).__name__}: {exc}")
            return JobState.FAILED.value
    return state


WARM_UP_MODULES = ("neuroseg.model.inference", "monai.inferers", "neuroseg.model.registration", "SimpleITK",
                   "neuroseg.model.io", "neuroseg.dicom_out", "neuroseg.worker.delivery")
"""What the first job would otherwise import, in each worker process before its first job."""


def warm_up(**_: object) -> None:
    """Import the pipeline's heavy libraries (torch, MONAI, SimpleITK, highdicom) in a new worker process.

    Two reasons: the first job should not pay seconds of imports, and an
    import must not run inside a job, where MONAI's optional imports (which
    catch ``Exception``) could swallow Celery's soft-time-limit exception and
    let an over-long job run on.
    """
    import importlib

    started = time.perf_counter()
    for name in WARM_UP_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as exc:  # the job will report it with context
            log.warning("warm-up: cannot import %s: %s", name, exc)
    log.info("worker process warmed up in %.1f s", time.perf_counter() - started)


def record_hard_time_limit(job_id: str) -> None:
    """Fail a job whose process was killed at the hard time limit (else it would be retried in a loop)."""
    settings = get_settings()
    store = JobStore.from_settings(settings)
    if store.job_state(job_id) in {state.value for state in RUNNING_STATES}:
        reason = (f"killed: the job ran longer than the hard time limit of {settings.task_time_limit} s "
                  "(NEUROSEG_TASK_TIME_LIMIT)")
        log.error("job %s %s", job_id, reason)
        store.finish(job_id, JobState.FAILED, error=reason)


def register(app: "Celery") -> None:
    """Register ``neuroseg.process_study`` on ``app``.

    ``autoretry_for`` names only :class:`TransientError` as a safety net;
    the body already turns it into a recorded ``retrying`` state and a
    retry with backoff.
    """
    from celery import Task
    from celery.signals import worker_process_init

    from neuroseg.worker.queue import RETRY_BACKOFF_MAX_S, TASK_NAME

    # prefork children only: importing torch before the fork could leave its thread pools unusable in the children
    worker_process_init.connect(warm_up, weak=False)

    class JobTask(Task):
        """Records a job killed by the hard time limit (Celery calls this in the worker's main process)."""

        def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:  # noqa: ANN001
            from celery.exceptions import TimeLimitExceeded

            if isinstance(exc, TimeLimitExceeded) and args:
                record_hard_time_limit(str(args[0]))

    @app.task(name=TASK_NAME, base=JobTask, bind=True, shared=False, acks_late=True, reject_on_worker_lost=True,
              autoretry_for=(TransientError,), retry_backoff=30, retry_backoff_max=int(RETRY_BACKOFF_MAX_S),
              max_retries=None)
    def process_study_task(self: "Task", job_id: str) -> str:
        return process_study(self, job_id)
