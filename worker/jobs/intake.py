"""Creating jobs: the de-duplication rule for a study sent more than once, and role overrides."""

from __future__ import annotations

import hashlib
import json
import uuid

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from neuroseg.worker.contracts import SequenceRole, StudyManifest
from neuroseg.worker.jobs.base import StoreBase
from neuroseg.worker.jobs.states import JobState
from neuroseg.worker.jobs.tables import JobRow, SeriesRow, StudyRow, utcnow
from neuroseg.worker.jobs.timeline import add_event


def manifest_fingerprint(manifest: StudyManifest) -> str:
    """A hash of what decides the processing: the study, its series, their roles and sizes.

    Two manifests with the same fingerprint would give the same results, so
    :meth:`JobStore.create_job` returns the existing job for them. Reasons,
    confidences, calling AE titles and the completion reason do not count.
    """
    key = {
        "study": manifest.study_instance_uid,
        "series": sorted(
            (item.series_instance_uid, item.role.value, int(item.instance_count), item.sop_class_uid)
            for item in manifest.series
        ),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


class JobIntake(StoreBase):
    """Makes jobs from manifests."""

    def create_job(
        self,
        manifest: StudyManifest,
        *,
        reason: str = "received",
        replaces_job_id: str | None = None,
        deduplicate: bool = True,
    ) -> tuple[str, bool]:
        """Create the job for ``manifest``, or return the existing one.

        The rule for a study sent more than once: a manifest with the same
        :func:`manifest_fingerprint` as an earlier one (same series, roles
        and instance counts) returns the earlier job, whatever its state;
        a manifest that differs (a series added, more instances, another
        role) creates a new job for the study, recorded as replacing the
        newest earlier job. Its outputs carry the same deterministic UIDs,
        so they replace the old ones in the PACS.

        Parameters
        ----------
        manifest: StudyManifest
            The study as the listener assembled it.
        reason: str
            Why the job exists (``received``, ``reprocess``, ``role override``).
        replaces_job_id: str or None
            The job this one supersedes; found automatically when None.
        deduplicate: bool
            False for admin reprocesses, which always create a new job.

        Returns
        -------
        tuple of (str, bool)
            The job id and whether it was created now.
        """
        fingerprint = manifest_fingerprint(manifest)
        dedup_key = f"{manifest.study_instance_uid}:{fingerprint}" if deduplicate else None
        now = utcnow()
        with self.session() as session:
            if dedup_key is not None:
                existing = session.scalar(select(JobRow.id).where(JobRow.dedup_key == dedup_key))
                if existing is not None:
                    return existing, False
            study = session.get(StudyRow, manifest.study_instance_uid)
            if study is None:
                study = StudyRow(study_instance_uid=manifest.study_instance_uid, first_seen_at=now)
                session.add(study)
            study.patient_id = manifest.patient_id
            study.patient_name = manifest.patient_name
            study.accession_number = manifest.accession_number
            study.study_description = manifest.study_description
            study.last_seen_at = now
            if replaces_job_id is None:
                replaces_job_id = session.scalar(
                    select(JobRow.id)
                    .where(JobRow.study_instance_uid == manifest.study_instance_uid)
                    .order_by(JobRow.created_at.desc())
                    .limit(1)
                )
            job_id = uuid.uuid4().hex
            session.add(JobRow(
                id=job_id, study_instance_uid=manifest.study_instance_uid, dedup_key=dedup_key,
                fingerprint=fingerprint, manifest=manifest.to_dict(), state=JobState.QUEUED.value,
                percent=0.0, message="waiting for a worker", error="",
                attempts=0, reason=reason, replaces_job_id=replaces_job_id, created_at=now, updated_at=now,
                sequences_used=[], volumes_ml={}, resume_stage="", cancel_requested=0,
            ))
            for item in manifest.series:
                session.add(SeriesRow(
                    job_id=job_id, series_instance_uid=item.series_instance_uid, folder=item.folder,
                    role=item.role.value, classified_role=item.role.value, confidence=float(item.confidence),
                    reasons=list(item.reasons), modality=item.modality,
                    series_description=item.series_description, series_number=item.series_number,
                    sop_class_uid=item.sop_class_uid, instance_count=int(item.instance_count),
                ))
            add_event(session, "queued", f"job created ({reason}; {len(manifest.series)} series"
                      + (f"; replaces job {replaces_job_id}" if replaces_job_id else "") + ")",
                      study_instance_uid=manifest.study_instance_uid, job_id=job_id, at=now)
            try:
                session.commit()
            except IntegrityError:
                # another process created the same job a moment ago
                session.rollback()
                existing = session.scalar(select(JobRow.id).where(JobRow.dedup_key == dedup_key))
                if existing is None:
                    raise
                return existing, False
        return job_id, True

    def manifest_with_roles(self, job_id: str, roles: dict[str, SequenceRole | str]) -> StudyManifest:
        """The job's manifest with some series' roles replaced (``{series_uid: role}``)."""
        with self.session() as session:
            manifest = StudyManifest.from_dict(dict(self._get_row(session, job_id).manifest))
        known = {item.series_instance_uid for item in manifest.series}
        unknown = sorted(set(roles) - known)
        if unknown:
            raise ValueError(f"series {', '.join(unknown)} not in job {job_id}; its series: {', '.join(sorted(known))}")
        data = manifest.to_dict()
        for item in data["series"]:
            if item["series_instance_uid"] in roles:
                role = SequenceRole.parse(getattr(roles[item["series_instance_uid"]], "value",
                                                  roles[item["series_instance_uid"]]))
                if role.value != item["role"]:
                    item["reasons"] = [*item["reasons"], f"role set to {role.value} by an admin (was {item['role']})"]
                    item["role"] = role.value
                    item["confidence"] = 1.0
        return StudyManifest.from_dict(data)
