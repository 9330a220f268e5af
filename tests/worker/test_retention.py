"""Retention never removes data before delivery succeeded."""

from __future__ import annotations

import os
from datetime import timedelta

from neuroseg.worker.jobstore import JobState, JobStore, utcnow
from neuroseg.worker.retention import prune
from tests.worker.helpers import build_study


def finished_job(settings, store, seed, state, delivered):
    study = build_study(settings.spool_dir, seed, roles=("FLAIR",))
    job_id, _ = store.create_job(study.manifest())
    store.claim(job_id, worker="t:1")
    (settings.results_dir / job_id / "dicom").mkdir(parents=True)
    (settings.results_dir / job_id / "dicom" / "seg.dcm").write_bytes(b"x")
    if delivered is not None:
        store.record_delivery_attempt(job_id, "PACS@h:104", status="delivered" if delivered else "retrying")
    store.finish(job_id, state)
    old = (utcnow() - timedelta(days=10)).timestamp()
    for path in (settings.spool_dir / study.study_instance_uid).rglob("*"):
        os.utime(path, (old, old))
    return study.study_instance_uid, job_id


def test_delivered_studies_are_pruned_and_undelivered_kept(make_settings):
    settings = make_settings(retention_days=7)
    store = JobStore.from_settings(settings)
    delivered, delivered_job = finished_job(settings, store, "ret-a", JobState.DONE, True)
    failed, _ = finished_job(settings, store, "ret-b", JobState.FAILED, None)
    undelivered, _ = finished_job(settings, store, "ret-c", JobState.PARTIAL, False)
    later = utcnow() + timedelta(days=8)
    dry = prune(settings, store, now=later, dry_run=True)
    assert dry.studies_removed == [delivered] and (settings.spool_dir / delivered).exists()
    report = prune(settings, store, now=later)
    assert report.studies_removed == [delivered]
    assert not (settings.spool_dir / delivered).exists()
    assert not (settings.results_dir / delivered_job / "dicom").exists()
    assert (settings.spool_dir / failed).exists() and (settings.spool_dir / undelivered).exists()
    assert set(report.kept_undelivered) == {failed, undelivered}


def test_nothing_is_pruned_before_the_retention_time(make_settings):
    settings = make_settings(retention_days=7)
    store = JobStore.from_settings(settings)
    study_uid, _ = finished_job(settings, store, "ret-d", JobState.DONE, True)
    assert prune(settings, store, now=utcnow() + timedelta(days=3)).studies_removed == []
    assert (settings.spool_dir / study_uid).exists()
