"""Deliver a job's DICOM objects to each destination, recording every attempt.

One attempt sends the objects to every configured destination
(``settings.destinations``) that has not yet received them all, with a short
in-attempt retry for network blips. What happens next:

- every destination has everything -> the job goes on (``done``);
- the PACS answered, but refused some objects -> recorded as ``partial``
  for that destination, the job ends ``partial`` naming them (the same
  objects would be refused again, so no retry);
- a destination cannot be reached, rejects the association, or answers
  "out of resources" -> recorded as ``retrying`` and a
  :class:`~neuroseg.worker.errors.TransientError` is raised: the task
  retries the job with exponential backoff (30 s doubling to 1 h, for
  ``settings.delivery_max_retries`` retries, about 6.5 hours by default),
  resuming at delivery with the objects kept on disk; destinations already
  served are not sent again.

Without any destination the objects are written to
``settings.outbox_dir/<StudyInstanceUID>/``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from neuroseg.worker.errors import TransientError
from neuroseg.worker.jobstore import JobStore
from neuroseg.worker.settings import DicomDestination, Settings

log = logging.getLogger(__name__)

#: Quick retries inside one attempt (seconds to wait before each), for blips.
IN_ATTEMPT_RETRY_DELAYS = (2.0,)


@dataclass(frozen=True)
class DestinationOutcome:
    """What one attempt to one destination gave."""

    destination: str
    sent: int
    failed: int
    transient: bool
    error: str = ""

    @property
    def status(self) -> str:
        if self.failed == 0:
            return "delivered"
        return "retrying" if self.transient else "partial"


def outbox_destination(settings: Settings, study_instance_uid: str) -> str:
    return f"outbox:{settings.outbox_dir / study_instance_uid}"


def send_to(objects: Sequence[Any], destination: DicomDestination, settings: Settings) -> DestinationOutcome:
    """Send the objects to one DICOM destination with ``dicom_out.send.deliver`` and summarise.

    Unreachable, rejected or aborted associations (``DeliveryUnavailable``)
    and "out of resources" statuses (0xA7xx) count as transient; any other
    refusal is permanent for that object.
    """
    from neuroseg.dicom_out.send import DeliveryUnavailable, deliver

    try:
        results = deliver(objects, ae_title=destination.ae_title, host=destination.host, port=destination.port,
                          calling_ae_title=settings.calling_ae_title)
    except DeliveryUnavailable as exc:
        stored = sum(1 for item in exc.results if item.ok)
        return DestinationOutcome(str(destination), stored, len(objects) - stored, True, str(exc))
    refused = [item for item in results if not item.ok]
    transient = any(item.status is not None and 0xA700 <= item.status <= 0xA7FF for item in refused)
    error = "; ".join(f"{item.kind}: {item.message}" for item in refused[:5])
    if len(refused) > 5:
        error += f"; and {len(refused) - 5} more"
    return DestinationOutcome(str(destination), len(results) - len(refused), len(refused), transient, error)


def write_to_outbox(objects: Sequence[Any], settings: Settings, study_instance_uid: str) -> DestinationOutcome:
    """Write the objects to ``outbox/<StudyInstanceUID>/<kind>.dcm`` (atomic; a rewrite replaces)."""
    from neuroseg.dicom_out.send import write_outbox

    destination = outbox_destination(settings, study_instance_uid)
    try:
        write_outbox(objects, settings.outbox_dir / study_instance_uid)
    except OSError as exc:
        return DestinationOutcome(destination, 0, len(objects), True, f"outbox not writable: {exc}")
    return DestinationOutcome(destination, len(objects), 0, False)


def deliver_job_outputs(store: JobStore, job_id: str, settings: Settings, objects: Sequence[Any], *,
                        study_instance_uid: str,
                        progress: Callable[[float, str | None], None] | None = None) -> list[str]:
    """Deliver ``objects`` for a job; record each attempt; return reasons for a ``partial`` ending.

    Raises
    ------
    TransientError
        When some destination could not take the objects now (the job is
        retried later, resuming here).
    """
    detail = store.get_job(job_id)
    done_before = {item.destination for item in (detail.deliveries if detail else []) if item.status == "delivered"}
    targets: list[DicomDestination | None] = list(settings.destinations) or [None]
    problems: list[str] = []
    transient: list[str] = []
    for n, target in enumerate(targets):
        name = str(target) if target is not None else outbox_destination(settings, study_instance_uid)
        if name in done_before:
            continue
        if progress:
            progress(100 * n / len(targets), f"sending {len(objects)} objects to {name}")
        outcome = None
        for delay in (0.0, *IN_ATTEMPT_RETRY_DELAYS):
            if delay:
                time.sleep(delay)
            outcome = (send_to(objects, target, settings) if target is not None
                       else write_to_outbox(objects, settings, study_instance_uid))
            if not (outcome.failed and outcome.transient):
                break
        assert outcome is not None
        store.record_delivery_attempt(job_id, name, status=outcome.status, sent=outcome.sent,
                                      failed=outcome.failed, error=outcome.error)
        log.info("job %s: delivery to %s: %s (%d sent, %d failed)%s", job_id, name, outcome.status,
                 outcome.sent, outcome.failed, f": {outcome.error}" if outcome.error else "")
        if outcome.status == "retrying":
            transient.append(f"{name}: {outcome.error}")
        elif outcome.status == "partial":
            problems.append(f"{name} refused {outcome.failed} of {len(objects)} objects: {outcome.error}")
    if transient:
        raise TransientError("delivery not finished: " + "; ".join(transient))
    if progress:
        progress(100, "delivered")
    return problems
