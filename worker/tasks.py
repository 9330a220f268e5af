"""The Celery task: a thin wrapper that claims a job and runs the pipeline.

It loads nothing heavy at import, so :mod:`neuroseg.worker.queue` can
register it without importing torch; each worker process imports the
pipeline's libraries when it starts (:func:`warm_up`). The task receives a job id, re-reads
the world from the job store, and classifies errors by type
(:mod:`neuroseg.worker.errors`). Retries are Celery's, in one place:

- :class:`~neuroseg.worker.errors.InputError` -> ``failed`` with the reason, no retry;
- :class:`~neuroseg.worker.errors.TransientError` (PACS or DICOMweb server
  down) -> Celery's ``autoretry_for`` with exponential backoff and full
  jitter (up to 30 s doubling to 1 h), at most ``NEUROSEG_DELIVERY_MAX_RETRIES``
  times; the task's ``on_retry`` hook records ``retrying`` and ``on_failure``
  the give-up (``partial`` when the objects exist, else ``failed``);
- :class:`~neuroseg.worker.errors.GpuOutOfMemory` -> retried the same way
  but counted against its own limit, ``NEUROSEG_OOM_MAX_RETRIES``;
- soft time limit -> ``failed`` saying so; the hard limit kills the process and
  :func:`record_hard_time_limit` (called by Celery in the worker's main
  process) fails the job, so it is not run again in a loop;
- a cancel request -> ``cancelled``;
- anything else is a bug: its traceback goes to the job's timeline and the
  job is retried once (:data:`BUG_MAX_RETRIES`), then ``failed`` naming the
  stage and the error; the worker goes on with the next job.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import traceback
from collections.abc import Mapping
from typing import TYPE_CHECKING

from neuroseg.worker.errors import GpuOutOfMemory, InputError, NeurosegError, TransientError
from neuroseg.worker.jobstore import FINAL_STATES, RUNNING_STATES, ClaimOutcome, JobState, JobStore, worker_identity
from neuroseg.worker.queue import retry_countdown
from neuroseg.worker.settings import Settings, get_settings

if TYPE_CHECKING:
    from celery import Celery, Task

log = logging.getLogger(__name__)

#: Retries of a job that failed with an unexpected error (a bug), in case it was a passing condition.
BUG_MAX_RETRIES = 1
#: Full jitter: each retry waits a random time up to the exponential backoff, so jobs that failed
#: together (one PACS outage) do not all come back at once.
RETRY_JITTER = True


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


def process_study(task: "Task", job_id: str, retried: Mapping[str, int] | None = None) -> str:
    """Body of ``neuroseg.process_study``: claim ``job_id``, run the pipeline, record the outcome.

    ``retried`` counts the retries so far by kind (``out-of-memory``, ``bug``)
    that have their own limit; Celery passes it back on each retry. Returns the
    job's final (or waiting) state, for logs.
    """
    from celery.exceptions import SoftTimeLimitExceeded

    settings = get_settings()
    store = JobStore.from_settings(settings)
    claim = store.claim(job_id, worker=worker_identity(), max_attempts=settings.job_max_attempts)
    if claim.outcome is ClaimOutcome.BUSY:
        log.info("job %s is running on another worker (%s); checking again later", job_id, claim.state)
        # no exc: on_retry records nothing, the job belongs to the other worker
        raise task.retry(countdown=settings.job_stale_seconds, max_retries=task.request.retries + 1)
    if claim.outcome is not ClaimOutcome.CLAIMED:
        log.info("job %s: nothing to do (%s %s)", job_id, claim.outcome.value, claim.state)
        return claim.state
    from neuroseg.worker import pipeline

    with Heartbeat(store, job_id, interval=max(1.0, settings.job_stale_seconds / 6)):
        try:
            return pipeline.run_job(store, job_id, settings)
        except pipeline.JobCancelled as exc:
            store.finish(job_id, JobState.CANCELLED, message=str(exc))
            return JobState.CANCELLED.value
        except InputError as exc:
            log.warning("job %s failed: %s", job_id, exc)
            store.finish(job_id, JobState.FAILED, error=str(exc))
            return JobState.FAILED.value
        except SoftTimeLimitExceeded:
            reason = (f"stopped: the job ran longer than the soft time limit of "
                      f"{settings.task_soft_time_limit} s (NEUROSEG_TASK_SOFT_TIME_LIMIT)")
            store.finish(job_id, JobState.FAILED, error=reason)
            return JobState.FAILED.value
        except GpuOutOfMemory as exc:
            return retry_within_limit(task, store, job_id, exc, kind="out-of-memory", retried=retried,
                                      limit=settings.oom_max_retries, reason=str(exc))
        except TransientError:
            # Celery's autoretry_for (see register) retries it; its limit comes from the settings
            task.override_max_retries = settings.delivery_max_retries
            raise
        except Exception as exc:  # noqa: BLE001 - a bug must fail this job, not the worker
            detail = store.get_job(job_id)
            stage = detail.state if detail else "?"
            log.exception("job %s: unexpected error during %s", job_id, stage)
            store.record_event("error", f"unexpected error during {stage}:\n{traceback.format_exc()}",
                               job_id=job_id)
            return retry_within_limit(task, store, job_id, exc, kind="bug", retried=retried, limit=BUG_MAX_RETRIES,
                                      reason=f"unexpected error during {stage}: {type(exc).__name__}: {exc}")


def retry_within_limit(task: "Task", store: JobStore, job_id: str, exc: BaseException, *, kind: str,
                       retried: Mapping[str, int] | None, limit: int, reason: str) -> str:
    """Retry the job with Celery's backoff unless ``kind`` has had ``limit`` retries; then end it."""
    counts = dict(retried or {})
    done = counts.get(kind, 0)
    if done >= limit:
        return give_up(store, job_id, f"gave up after {done + 1} attempts: {reason}")
    counts[kind] = done + 1
    # our limit decided; Celery's own (NEUROSEG_DELIVERY_MAX_RETRIES) must not
    raise task.retry(exc=exc, countdown=retry_countdown(task.request.retries, jitter=RETRY_JITTER),
                     kwargs={"retried": counts}, max_retries=task.request.retries + 1)


def give_up(store: JobStore, job_id: str, reason: str) -> str:
    """End a job that will not be retried: ``partial`` when its objects exist (some may be delivered), else ``failed``."""
    from neuroseg.worker import pipeline

    state = store.job_state(job_id)
    if state is None or state in {item.value for item in FINAL_STATES}:
        return state or ""
    final = JobState.PARTIAL if pipeline.has_outputs(store, job_id) else JobState.FAILED
    log.error("job %s: %s", job_id, reason)
    store.finish(job_id, final, error=reason)
    return final.value


def record_retry(job_id: str, exc: BaseException, when: float | dt.datetime | None) -> None:
    """Record ``retrying`` with the time until the retry (Celery's ``on_retry`` hook)."""
    if isinstance(when, dt.datetime):
        now = dt.datetime.now(when.tzinfo or dt.timezone.utc)
        when = (when - now).total_seconds()
    countdown = max(0.0, float(when or 0.0))
    reason = str(exc) if isinstance(exc, NeurosegError) else f"unexpected error: {type(exc).__name__}: {exc}"
    log.warning("job %s: %s; retry in %.0f s", job_id, reason, countdown)
    JobStore.from_settings(get_settings()).mark_retrying(job_id, reason, countdown)


def record_failure(job_id: str, exc: BaseException, attempts: int) -> None:
    """Record a job whose task failed for good (Celery's ``on_failure`` hook)."""
    from celery.exceptions import TimeLimitExceeded

    if isinstance(exc, TimeLimitExceeded):
        record_hard_time_limit(job_id)
    elif isinstance(exc, TransientError):
        give_up(JobStore.from_settings(get_settings()), job_id, f"gave up after {attempts} attempts: {exc}")


WARM_UP_MODULES = ("neuroseg.model.inference", "monai.inferers", "neuroseg.model.registration", "SimpleITK",
                   "neuroseg.model.io", "neuroseg.dicom_out", "neuroseg.worker.delivery")
"""What the first job would otherwise import, in each worker process before its first job."""


def warm_up(**_: object) -> None:
    """Import the pipeline's heavy libraries (torch, MONAI, SimpleITK, highdicom) in a new worker process.

    It also loads highdicom's tables of the standard (:func:`~neuroseg.worker.pipeline.prepare_process`).

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
    try:
        from neuroseg.worker import pipeline

        pipeline.prepare_process()
    except (ImportError, OSError) as exc:  # the first job loads them itself, and reports a real problem
        log.warning("warm-up: cannot load highdicom's tables: %s", exc)
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
    """Register ``neuroseg.process_study`` on ``app``, with Celery's retries and the hooks that record them."""
    from celery import Task
    from celery.signals import worker_process_init

    from neuroseg.worker.queue import RETRY_BACKOFF_BASE_S, RETRY_BACKOFF_MAX_S, TASK_NAME

    # prefork children only: importing torch before the fork could leave its thread pools unusable in the children
    worker_process_init.connect(warm_up, weak=False)

    class JobTask(Task):
        """Records retries and final failures of a job in the job store."""

        autoretry_for = (TransientError,)
        dont_autoretry_for = (GpuOutOfMemory,)  # its own limit, see retry_within_limit
        retry_backoff = int(RETRY_BACKOFF_BASE_S)
        retry_backoff_max = int(RETRY_BACKOFF_MAX_S)
        retry_jitter = RETRY_JITTER
        max_retries = Settings.model_fields["delivery_max_retries"].default  # per job: override_max_retries

        def on_retry(self, exc, task_id, args, kwargs, einfo) -> None:  # noqa: ANN001 - Celery's signature
            if exc is not None and args:  # no exc: the job is running elsewhere, nothing to record
                record_retry(str(args[0]), exc, getattr(einfo.exception, "when", None))

        def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:  # noqa: ANN001
            if args:  # also called in the worker's main process for the hard time limit
                record_failure(str(args[0]), exc, attempts=int(getattr(self.request, "retries", 0) or 0) + 1)

    @app.task(name=TASK_NAME, base=JobTask, bind=True, shared=False, acks_late=True, reject_on_worker_lost=True)
    def process_study_task(self: "Task", job_id: str, retried: dict[str, int] | None = None) -> str:
        return process_study(self, job_id, retried)
