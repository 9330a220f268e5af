"""The queue: the Celery app, and handing studies and admin actions to it.

This module is light on purpose: the listener and the admin app import it, so
it never imports torch, the model or the pipeline (a test checks this). The
task body lives in :mod:`neuroseg.worker.tasks`, which imports the pipeline
only when a job runs.

The broker carries job ids only; the job store (:mod:`neuroseg.worker.jobstore`)
is the truth. A message that a broker loses (the embedded filesystem broker
drops the message of a worker killed mid-job; Redis without persistence loses
its queue on a restart) is published again by :func:`recover_lost_jobs`, which
every worker runs at start and then periodically. Claims in the job store make
a duplicate message harmless.

Brokers
-------
``settings.broker_url`` (Redis in production, ``redis://host:6379/0``), or,
when unset, kombu's filesystem transport under ``settings.broker_dir``
(``queue/`` holds waiting messages, ``processed/`` the consumed ones,
``control/`` the exchange tables): durable across restarts, no server needed,
for one machine.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

from neuroseg.worker.contracts import SequenceRole, StudyManifest
from neuroseg.worker.jobstore import JobState, JobStore
from neuroseg.worker.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

TASK_NAME = "neuroseg.process_study"
QUEUE_NAME = "neuroseg"
#: Backoff of transient-error retries: BASE * 2**n seconds, at most MAX.
RETRY_BACKOFF_BASE_S = 30.0
RETRY_BACKOFF_MAX_S = 3600.0

_APPS: dict[tuple[str, str], "Celery"] = {}
_APPS_LOCK = threading.Lock()


def retry_countdown(retries: int, *, jitter: bool = False) -> float:
    """Celery's exponential backoff before retry number ``retries + 1`` (30 s, 1 min, 2 min, ... at most 1 h).

    The task's ``retry_backoff`` uses the same; with ``jitter`` the wait is a
    random part of it (full jitter). Without jitter the default 12 retries
    span about 6.5 hours.
    """
    from celery.utils.time import get_exponential_backoff_interval

    return float(get_exponential_backoff_interval(factor=int(RETRY_BACKOFF_BASE_S), retries=max(0, retries),
                                                  maximum=int(RETRY_BACKOFF_MAX_S), full_jitter=jitter))


def broker_description(settings: Settings) -> str:
    """The broker in words, for logs and banners (no password)."""
    if settings.broker_url:
        from kombu.utils.url import maybe_sanitize_url

        return maybe_sanitize_url(settings.broker_url)
    return f"embedded filesystem broker in {settings.broker_dir}"


def _filesystem_options(settings: Settings) -> dict[str, object]:
    folders = {name: settings.broker_dir / name for name in ("queue", "processed", "control")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(folders["queue"]),
        "data_folder_out": str(folders["queue"]),
        "processed_folder": str(folders["processed"]),
        "store_processed": True,
        "control_folder": str(folders["control"]),
    }


def _atomic_filesystem_transport() -> type:
    """kombu's filesystem transport with atomic message files.

    kombu writes a message by opening ``<name>.msg`` and then writing it, and
    reads any ``*.msg`` it finds without waiting for the writer's lock: a worker
    polling at that moment read an empty file, died with "Unrecoverable error:
    JSONDecodeError" and the message was consumed (found by the reliability
    round trip through Orthanc; the job came back only after the stale-job
    recovery, minutes later). Here the message is written to a hidden temporary
    name that the reader ignores, flushed, and renamed into place.

    kombu 5.7 still writes in place. pyproject.toml pins kombu to the versions
    this override was checked against; tests/worker/test_kombu_override.py
    fails when the private method's signature or kombu's behaviour changes.
    """
    import os
    import uuid
    from time import monotonic

    from kombu.transport import filesystem
    from kombu.utils.json import dumps

    from neuroseg.common.files import atomic_write

    class AtomicChannel(filesystem.Channel):
        def _put(self, queue, payload, **kwargs):  # noqa: ANN001, ANN202 - kombu's signature
            name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
            final = os.path.join(self.data_folder_out, name)
            try:
                atomic_write(final, dumps(payload).encode())  # the temporary name does not end in .msg
            except OSError as exc:
                raise filesystem.ChannelError(f"Cannot add file {final!r} to directory") from exc

    class AtomicFilesystemTransport(filesystem.Transport):
        Channel = AtomicChannel

    return AtomicFilesystemTransport


#: ``broker_transport`` of the embedded broker (resolved by kombu by name).
ATOMIC_FILESYSTEM_TRANSPORT = "neuroseg.worker.queue:AtomicFilesystemTransport"


def __getattr__(name: str) -> object:
    # built on first use, so importing this module stays free of kombu
    if name == "AtomicFilesystemTransport":
        transport = _atomic_filesystem_transport()
        globals()[name] = transport
        return transport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def create_celery_app(settings: Settings) -> "Celery":
    """Build the Celery app from ``settings`` (never at import) with the task registered.

    Reliability settings: ``acks_late`` with ``task_reject_on_worker_lost``
    (a job whose worker dies is delivered again), one message prefetched per
    worker process, soft and hard time limits from the settings, and a Redis
    ``visibility_timeout`` longer than the hard limit and the longest retry
    countdown (else Redis redelivers a running job). Results are not stored:
    the job store holds the outcome.
    """
    from celery import Celery

    app = Celery("neuroseg", set_as_current=False)
    longest_hold = max(settings.task_time_limit, int(RETRY_BACKOFF_MAX_S))
    if settings.broker_url:
        broker_url = settings.broker_url
        transport_options: dict[str, object] = {"visibility_timeout": longest_hold + 600}
    else:
        broker_url = "filesystem://"
        transport_options = _filesystem_options(settings)
    broker_transport = None if settings.broker_url else ATOMIC_FILESYSTEM_TRANSPORT
    app.conf.update(
        broker_url=broker_url,
        broker_transport=broker_transport,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        result_backend=None,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=QUEUE_NAME,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # a new pool process imports torch, MONAI and highdicom before it reports ready (tasks.warm_up)
        worker_proc_alive_timeout=120.0,
        task_soft_time_limit=settings.task_soft_time_limit,
        task_time_limit=settings.task_time_limit,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        enable_utc=True,
        # publishing: a few quick retries, then the job waits in the job store for recovery
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5,
                                   "interval_max": 2.0},
    )
    from neuroseg.worker import tasks

    tasks.register(app)
    return app


def get_celery_app(settings: Settings) -> "Celery":
    """The process-wide Celery app for these settings' broker (built once)."""
    key = (settings.broker_url or "", str(settings.broker_dir.resolve()))
    with _APPS_LOCK:
        app = _APPS.get(key)
        if app is None:
            app = _APPS[key] = create_celery_app(settings)
        return app


def warm_up(settings: Settings) -> None:
    """Open the job store and build the Celery app now, so that the first hand-off does not pay for it.

    The listener calls this before it accepts associations; it needs no other
    worker module for it.
    """
    JobStore.from_settings(settings)
    get_celery_app(settings)


def publish_job(settings: Settings, job_id: str, countdown: float | None = None) -> bool:
    """Send the task message for ``job_id`` to the broker and record it.

    Returns False (and logs) when the broker cannot be reached: the job
    stays ``queued`` in the job store and :func:`recover_lost_jobs` sends
    it later.
    """
    app = get_celery_app(settings)
    try:
        app.send_task(TASK_NAME, args=[job_id], queue=QUEUE_NAME, countdown=countdown)
    except Exception as exc:  # noqa: BLE001 - any broker failure leaves the job for recovery
        log.warning("job %s: could not reach the broker (%s): %s; it stays queued and is sent again "
                    "when a worker recovers lost jobs", job_id, broker_description(settings), exc)
        return False
    JobStore.from_settings(settings).mark_published(job_id)
    return True


def enqueue_study(settings: Settings, manifest: StudyManifest) -> str:
    """Hand a complete study to the workers; return its job id.

    Idempotent: the same manifest (same series, roles and instance counts;
    see :func:`neuroseg.worker.jobstore.manifest_fingerprint`) returns the
    job created the first time, whatever its state, and publishes nothing
    new unless that job was never published. A different manifest for the
    same study (more or changed series, another role) creates a reprocess
    job; its outputs replace the old ones in the PACS because output UIDs
    are derived from (study, model version, object).

    The job is written to the job store before the message is published,
    so it survives a crash or a broker outage at any point; a job that was
    not published is sent by the next :func:`recover_lost_jobs`.

    Parameters
    ----------
    settings: Settings
        Names the job store and the broker.
    manifest: StudyManifest
        The complete study with the series roles.

    Returns
    -------
    str
        The job id (32 hex characters).

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the job store cannot be written; the listener keeps the study
        and tries again.
    """
    store = JobStore.from_settings(settings)
    job_id, created = store.create_job(manifest)
    detail_state = store.job_state(job_id)
    if created:
        log.info("study %s: job %s queued (%d series)", manifest.study_instance_uid, job_id, len(manifest.series))
        publish_job(settings, job_id)
    elif detail_state == JobState.QUEUED.value and not _was_published(store, job_id):
        log.info("study %s: job %s exists but was never published; publishing", manifest.study_instance_uid, job_id)
        publish_job(settings, job_id)
    else:
        log.info("study %s: same manifest as job %s (%s); no new job", manifest.study_instance_uid, job_id,
                 detail_state)
    return job_id


def _was_published(store: JobStore, job_id: str) -> bool:
    from sqlalchemy import select

    from neuroseg.worker.jobstore import JobRow

    with store.session() as session:
        return session.scalar(select(JobRow.published_at).where(JobRow.id == job_id)) is not None


def retry_job(settings: Settings, job_id: str, *, redeliver_only: bool = False) -> bool:
    """Admin action: run a finished job (``failed``, ``partial``, ``done``, ``cancelled``) again.

    With ``redeliver_only`` the outputs already made are sent again without
    new inference. Returns False when the job is waiting or running.
    Raises ``KeyError`` for an unknown id.
    """
    store = JobStore.from_settings(settings)
    resume = JobState.DELIVERING.value if redeliver_only else ""
    if redeliver_only and not store.get_job(job_id).outputs:
        raise ValueError(f"job {job_id} has no outputs to deliver again; retry it without redeliver_only")
    if not store.requeue(job_id, resume_stage=resume, why="re-deliver" if redeliver_only else "retry"):
        return False
    publish_job(settings, job_id)
    return True


def cancel_job(settings: Settings, job_id: str) -> str:
    """Admin action: cancel a job; a waiting job ends now, a running one at its next step.

    Returns the state after the request. Raises ``KeyError`` for an unknown id.
    """
    return JobStore.from_settings(settings).request_cancel(job_id)


def reprocess_job(settings: Settings, job_id: str,
                  roles: Mapping[str, SequenceRole | str] | None = None) -> str:
    """Admin action: process the study of ``job_id`` again, optionally with some roles overridden.

    ``roles`` maps SeriesInstanceUID to the role an admin chose. A new job
    is always created (recorded as replacing ``job_id``); its outputs replace
    the old ones through the deterministic UIDs. Returns the new job id.
    """
    store = JobStore.from_settings(settings)
    manifest = store.manifest_with_roles(job_id, dict(roles or {}))
    new_id, _ = store.create_job(manifest, reason="role override" if roles else "reprocess",
                                 replaces_job_id=job_id, deduplicate=False)
    publish_job(settings, new_id)
    return new_id


def recover_lost_jobs(settings: Settings) -> list[str]:
    """Publish again the jobs whose message may be lost; return their ids.

    Finds queued jobs that were never published (or long ago), retrying jobs
    well past their retry time, and running jobs whose worker stopped
    sending heartbeats (killed). A duplicate message is harmless: the claim
    in the job store lets only one run.
    """
    store = JobStore.from_settings(settings)
    grace = max(settings.job_stale_seconds, 60.0) * 5
    lost = store.jobs_needing_publish(queued_grace_s=grace)
    for job_id in lost:
        log.warning("job %s: its task message may be lost; publishing it again", job_id)
        store.record_event("recovered", "task message published again by recovery", job_id=job_id)
        publish_job(settings, job_id)
    return lost


def queue_depth(settings: Settings) -> int | None:
    """Messages waiting in the broker (None when the broker cannot be asked)."""
    try:
        if settings.broker_url:
            app = get_celery_app(settings)
            with app.connection_for_write() as connection:
                return int(connection.default_channel.client.llen(QUEUE_NAME))
        folder = settings.broker_dir / "queue"
        return sum(1 for path in folder.glob(f"*.{QUEUE_NAME}.msg")) if folder.is_dir() else 0
    except Exception as exc:  # noqa: BLE001 - metrics must not fail the caller
        log.debug("queue depth unavailable: %s", exc)
        return None
