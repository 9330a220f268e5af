"""The delivery log: a job's output objects and, per destination, how delivering them went."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from neuroseg.worker.jobs.base import StoreBase
from neuroseg.worker.jobs.records import OutputRecord
from neuroseg.worker.jobs.tables import DeliveryRow, OutputRow, utcnow
from neuroseg.worker.jobs.timeline import add_event

#: ``DeliveryRow.status`` values; only ``delivered`` means every object arrived.
DELIVERY_STATUSES = ("pending", "retrying", "delivered", "partial", "failed")


def reset_deliveries(session: Session, job_id: str) -> None:
    """Mark every destination of the job pending again (a re-delivery sends to all of them)."""
    session.execute(update(DeliveryRow).where(DeliveryRow.job_id == job_id).values(status="pending"))


class DeliveryLog(StoreBase):
    """Writes a job's outputs and delivery attempts; counts the failed attempts."""

    def record_outputs(self, job_id: str, outputs: Iterable[OutputRecord]) -> list[OutputRecord]:
        """Make ``outputs`` the job's whole output set; return the earlier objects it no longer has.

        The earlier objects are this job's own from a previous run and those of
        the job it replaces (a reprocess). The ones whose SOP Instance UID is
        not in the new set (a kind switched off since, a region now empty) are
        no longer current: they are dropped from the job and named in a
        ``superseded`` event, because a PACS that received them keeps them
        (DICOM has no delete; the deterministic UIDs only overwrite what is
        made again).
        """
        outputs = list(outputs)
        current = {item.sop_instance_uid for item in outputs}
        with self.session() as session:
            job = self._get_row(session, job_id)
            earlier = [job_id] + ([job.replaces_job_id] if job.replaces_job_id else [])
            rows = session.scalars(select(OutputRow).where(OutputRow.job_id.in_(earlier))
                                   .order_by(OutputRow.kind)).all()
            stale = list({row.sop_instance_uid: OutputRecord.model_validate(row) for row in rows
                          if row.sop_instance_uid not in current}.values())
            session.execute(delete(OutputRow).where(OutputRow.job_id == job_id))
            session.add_all(OutputRow(job_id=job_id, **item.model_dump()) for item in outputs)
            if stale:
                add_event(session, "superseded",
                          f"{len(stale)} object(s) of an earlier run are no longer made and stay wherever they "
                          f"were delivered: " + ", ".join(f"{item.kind} {item.sop_instance_uid}" for item in stale),
                          study_instance_uid=job.study_instance_uid, job_id=job_id)
            session.commit()
        return stale

    def record_delivery_attempt(self, job_id: str, destination: str, *, status: str, sent: int = 0,
                                failed: int = 0, error: str = "") -> None:
        """Record one attempt to deliver the job's outputs to ``destination``.

        ``status`` is ``delivered``, ``partial``, ``retrying`` or ``failed``.
        Also writes an event, so the timeline shows every attempt.
        """
        if status not in DELIVERY_STATUSES:
            raise ValueError(f"unknown delivery status {status!r}; use one of {', '.join(DELIVERY_STATUSES)}")
        now = utcnow()
        with self.session() as session:
            job = self._get_row(session, job_id)
            row = session.scalar(select(DeliveryRow).where(DeliveryRow.job_id == job_id,
                                                           DeliveryRow.destination == destination))
            if row is None:
                row = DeliveryRow(job_id=job_id, destination=destination, attempts=0, failed_attempts=0)
                session.add(row)
            row.status = status
            row.attempts = (row.attempts or 0) + 1
            row.failed_attempts = (row.failed_attempts or 0) + (status != "delivered")
            row.sent, row.failed, row.last_error, row.last_attempt_at = sent, failed, error[:4000], now
            if status == "delivered":
                row.delivered_at = now
            add_event(session, "delivery", f"{destination}: {status}, {sent} sent, {failed} failed"
                      + (f": {error}" if error else ""), study_instance_uid=job.study_instance_uid, job_id=job_id,
                      at=now)
            session.commit()

    def delivery_failure_count(self) -> int:
        """Delivery attempts that did not deliver everything (retrying, partial or failed)."""
        with self.session() as session:
            return int(session.scalar(select(func.coalesce(func.sum(DeliveryRow.failed_attempts), 0))))
