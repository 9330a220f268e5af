"""Retention: prune what is no longer needed, never before delivery succeeded.

After ``settings.retention_days`` (7 by default):

- a study's spool folder is removed when every job of the study has ended,
  its newest job delivered its results (``done``, or ``partial`` with
  every destination ``delivered``), that job ended before the cut-off, and
  no file in the folder is newer than the cut-off (nothing is arriving);
- the encoded DICOM copies under the job folder (``results/<job>/dicom``) of
  such jobs are removed; the viewer data stays (the admin app shows it);
- consumed messages of the embedded broker (``broker/processed``) are removed.

Failed and cancelled studies are kept (an admin may retry them); they are
listed in the report so an admin can decide. ``retention_days = 0`` prunes
as soon as delivery succeeded.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from neuroseg.worker.jobstore import JobState, JobStore, utcnow
from neuroseg.worker.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class RetentionReport:
    """What one pruning pass removed (or would remove, in a dry run) and what it kept."""

    studies_removed: list[str] = field(default_factory=list)
    job_outputs_removed: list[str] = field(default_factory=list)
    broker_messages_removed: int = 0
    bytes_freed: int = 0
    kept_undelivered: list[str] = field(default_factory=list)


def _size(path: Path) -> int:
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file()) if path.exists() else 0


def _newest_mtime(path: Path) -> float:
    times = [item.stat().st_mtime for item in path.rglob("*") if item.is_file()]
    return max(times, default=path.stat().st_mtime)


def prune(settings: Settings, store: JobStore | None = None, *, now: datetime | None = None,
          dry_run: bool = False) -> RetentionReport:
    """Remove spool data, encoded copies and broker leftovers older than the retention time.

    Parameters
    ----------
    settings: Settings
        ``retention_days`` and the folders.
    store: JobStore or None
        The job store (built from the settings when None).
    now: datetime or None
        The current time (UTC); tests pass their own.
    dry_run: bool
        Report without removing anything.
    """
    store = store or JobStore.from_settings(settings)
    now = now or utcnow()
    cutoff = now - timedelta(days=settings.retention_days)
    report = RetentionReport()
    delivered_studies = []
    for candidate in store.retention_candidates(ended_before=cutoff):
        if candidate.state not in (JobState.DONE.value, JobState.PARTIAL.value) or not candidate.delivered:
            report.kept_undelivered.append(candidate.study_instance_uid)
            continue
        delivered_studies.append(candidate.study_instance_uid)
        folder = settings.spool_dir / candidate.study_instance_uid
        if folder.is_dir() and _newest_mtime(folder) <= cutoff.timestamp():
            report.bytes_freed += _size(folder)
            report.studies_removed.append(candidate.study_instance_uid)
            if not dry_run:
                shutil.rmtree(folder, ignore_errors=True)
                store.record_event("retention", f"spool data of study removed after {settings.retention_days} days",
                                   study_instance_uid=candidate.study_instance_uid)
    for job_id in store.jobs_of_studies(delivered_studies, ended_before=cutoff):
        encoded = settings.results_dir / job_id / "dicom"
        if encoded.is_dir():
            report.bytes_freed += _size(encoded)
            report.job_outputs_removed.append(job_id)
            if not dry_run:
                shutil.rmtree(encoded, ignore_errors=True)
    processed = settings.broker_dir / "processed"
    if processed.is_dir():
        limit = time.time() - settings.retention_days * 86400
        for message in processed.iterdir():
            if message.is_file() and message.stat().st_mtime < limit:
                report.broker_messages_removed += 1
                report.bytes_freed += message.stat().st_size
                if not dry_run:
                    message.unlink(missing_ok=True)
    log.info("retention%s: %d studies, %d job output folders, %d broker messages, %.1f MB; %d kept undelivered",
             " (dry run)" if dry_run else "", len(report.studies_removed), len(report.job_outputs_removed),
             report.broker_messages_removed, report.bytes_freed / 1e6, len(report.kept_undelivered))
    return report
