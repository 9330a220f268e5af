"""Deliver a job's DICOM objects to each destination, recording every attempt.

One attempt sends the objects to every configured destination
(``settings.destinations``: C-STORE to ``AET@host:port``, STOW-RS to an
``http(s)://.../dicom-web`` base URL) that has not yet received them all. What
happens next:

- every destination has everything -> the job goes on (``done``);
- the PACS answered, but refused some objects -> recorded as ``partial``
  for that destination, the job ends ``partial`` naming them (the same
  objects would be refused again, so no retry);
- a destination cannot be reached, rejects the association, answers
  "out of resources" (0xA7xx) or, over HTTP, 408, 429 or 5xx -> recorded as
  ``retrying`` and a :class:`~neuroseg.worker.errors.TransientError` is
  raised: the task retries the job with Celery's backoff (see
  :mod:`neuroseg.worker.tasks`; there is no retry loop here), resuming at
  delivery with the objects kept on disk; destinations already served are
  not sent again.

Without any destination the objects are written to
``settings.outbox_dir/<StudyInstanceUID>/``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from neuroseg.worker.errors import TransientError
from neuroseg.worker.jobstore import JobStore
from neuroseg.worker.settings import DicomDestination, DicomWebDestination, Settings

log = logging.getLogger(__name__)


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


def send_objects(objects: Sequence[Any], destination: DicomDestination | DicomWebDestination, settings: Settings,
                 *, calling_ae_title: str | None = None,
                 on_result: Callable[[Any], object] | None = None) -> list[Any]:
    """Send the objects to one destination, by C-STORE or STOW-RS (``dicom_out.send``); one result per object.

    Raises ``dicom_out.send.DeliveryUnavailable`` when the destination cannot take them now.
    """
    from neuroseg.dicom_out.send import Peer, deliver, deliver_stow

    if isinstance(destination, DicomWebDestination):
        return deliver_stow(objects, url=destination.url, username=settings.dicomweb_username,
                            password=_secret(settings.dicomweb_password), token=_secret(settings.dicomweb_token),
                            ca_bundle=settings.dicomweb_ca, on_result=on_result)
    peer = Peer(destination.ae_title, destination.host, destination.port,
                calling_ae_title=calling_ae_title or settings.calling_ae_title)
    return deliver(objects, peer, on_result=on_result, associations=settings.delivery_associations)


def send_to(objects: Sequence[Any], destination: DicomDestination | DicomWebDestination,
            settings: Settings) -> DestinationOutcome:
    """Send the objects to one destination (:func:`send_objects`) and summarise.

    An unreachable, refusing or overloaded destination (``DeliveryUnavailable``)
    and "out of resources" statuses (0xA7xx) count as transient; any other
    refusal is permanent for that object.
    """
    from neuroseg.dicom_out.send import DeliveryUnavailable

    try:
        results = send_objects(objects, destination, settings)
    except DeliveryUnavailable as exc:
        stored = sum(1 for item in exc.results if item.ok)
        return DestinationOutcome(str(destination), stored, len(objects) - stored, True, str(exc))
    refused = [item for item in results if not item.ok]
    transient = any(item.status is not None and 0xA700 <= item.status <= 0xA7FF for item in refused)
    error = "; ".join(f"{item.kind}: {item.message}" for item in refused[:5])
    if len(refused) > 5:
        error += f"; and {len(refused) - 5} more"
    return DestinationOutcome(str(destination), len(results) - len(refused), len(refused), transient, error)


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def write_to_outbox(objects: Sequence[Any], settings: Settings, study_instance_uid: str) -> DestinationOutcome:
    """Write the objects to ``outbox/<StudyInstanceUID>/<kind>.dcm`` (atomic; a rewrite replaces the whole set)."""
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
    targets: list[DicomDestination | DicomWebDestination | None] = list(settings.destinations) or [None]
    problems: list[str] = []
    transient: list[str] = []
    for n, target in enumerate(targets):
        name = str(target) if target is not None else outbox_destination(settings, study_instance_uid)
        if name in done_before:
            continue
        if progress:
            progress(100 * n / len(targets), f"sending {len(objects)} objects to {name}")
        outcome = (send_to(objects, target, settings) if target is not None
                   else write_to_outbox(objects, settings, study_instance_uid))
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
