"""The job store: creation rule, claims, the state machine, stage timings, admin reads."""

from __future__ import annotations

from datetime import timedelta

import pytest

from neuroseg.worker.contracts import SequenceRole, SeriesManifest, StudyManifest
from neuroseg.worker.jobstore import (
    SCHEMA_VERSION,
    STAGE_ORDER,
    STAGE_RANK,
    TIMED_STEPS,
    ClaimOutcome,
    JobState,
    JobStore,
    OutputRecord,
    TransitionError,
    check_transition,
    manifest_fingerprint,
    migrate,
    schema_version,
)


def make_manifest(study: str = "1.2.3", counts: tuple[int, ...] = (20, 20), roles=("FLAIR", "T1ce")) -> StudyManifest:
    series = tuple(
        SeriesManifest(series_instance_uid=f"{study}.{i}", folder=f"/spool/{study}/{study}.{i}",
                       role=SequenceRole.parse(role), confidence=0.9, reasons=(f"rule {role}",),
                       modality="MR", series_description=role, series_number=i, instance_count=count)
        for i, (role, count) in enumerate(zip(roles, counts), start=1)
    )
    return StudyManifest(study_instance_uid=study, series=series, patient_id="P1", patient_name="Doe^Jane")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def store(request, make_settings) -> JobStore:
    """The job store on SQLite (the embedded default) and on a real PostgreSQL."""
    url = request.getfixturevalue("postgres").shared_database() if request.param == "postgresql" else None
    store = JobStore.from_settings(make_settings(job_stale_seconds=60, database_url=url))
    if url is not None:
        from sqlalchemy import text

        from neuroseg.worker.jobstore import Base

        tables = ", ".join(table.name for table in Base.metadata.sorted_tables)
        with store.engine.begin() as connection:
            connection.execute(text(f"TRUNCATE {tables} CASCADE"))
    return store


def test_schema_is_created_at_the_current_version(store):
    assert schema_version(store.engine) == SCHEMA_VERSION
    assert migrate(store.engine) == SCHEMA_VERSION  # a second run changes nothing


def test_same_manifest_returns_the_existing_job(store):
    first, created = store.create_job(make_manifest())
    again, created_again = store.create_job(make_manifest())
    assert created and not created_again and again == first


def test_changed_manifest_creates_a_reprocess_job_replacing_the_old(store):
    first, _ = store.create_job(make_manifest(counts=(20, 20)))
    second, created = store.create_job(make_manifest(counts=(20, 24)))
    assert created and second != first
    assert store.get_job(second).replaces_job_id == first


def test_fingerprint_ignores_reasons_and_confidence():
    a = make_manifest()
    b = StudyManifest.from_dict({**a.to_dict(), "series": [
        {**item, "confidence": 0.1, "reasons": ["other"]} for item in a.to_dict()["series"]]})
    assert manifest_fingerprint(a) == manifest_fingerprint(b)


def test_claim_runs_a_job_once(store):
    job_id, _ = store.create_job(make_manifest())
    first = store.claim(job_id, worker="host-a:1")
    second = store.claim(job_id, worker="host-b:2")
    assert first.outcome is ClaimOutcome.CLAIMED and first.state == "loading" and first.attempt == 1
    assert second.outcome is ClaimOutcome.BUSY


def test_finished_job_is_not_claimed_again(store):
    job_id, _ = store.create_job(make_manifest())
    store.claim(job_id, worker="host-a:1")
    store.finish(job_id, JobState.FAILED, error="no usable sequence")
    assert store.claim(job_id, worker="host-b:2").outcome is ClaimOutcome.FINISHED


def test_abandoned_job_is_claimed_again(store):
    job_id, _ = store.create_job(make_manifest())
    store.claim(job_id, worker="host-a:1")
    store._update(job_id, heartbeat_at=store.get_job(job_id).updated_at - timedelta(seconds=600))
    claim = store.claim(job_id, worker="host-b:2")
    assert claim.outcome is ClaimOutcome.CLAIMED and claim.attempt == 2
    stages = store.get_job(job_id).stages
    assert [(s.name, s.outcome) for s in stages] == [("queued", "ok"), ("loading", "abandoned"), ("loading", "running")]


def test_claim_fails_a_job_that_keeps_killing_workers(store):
    job_id, _ = store.create_job(make_manifest())
    store._update(job_id, attempts=3)
    claim = store.claim(job_id, worker="w:1", max_attempts=3)
    assert claim.outcome is ClaimOutcome.FINISHED
    assert "gave up after 3 attempts" in store.get_job(job_id).error


def test_stages_are_timed_and_the_job_ends_done(store):
    job_id, _ = store.create_job(make_manifest())
    store.claim(job_id, worker="w:1")
    for stage in ("preprocessing", "inference", "explaining", "encoding", "delivering"):
        store.enter_stage(job_id, stage)
        store.report_progress(job_id, 50, f"{stage} half way")
    store.record_outputs(job_id, [OutputRecord("seg", "1.2.9", "1.2.8", "1.2.840.10008.5.1.4.1.1.66.4", "x.dcm")])
    store.record_delivery_attempt(job_id, "PACS@host:104", status="delivered", sent=1)
    store.finish(job_id, JobState.DONE)
    detail = store.get_job(job_id)
    assert detail.state == "done" and detail.percent == 100
    assert [s.name for s in detail.stages] == ["queued", "loading", "preprocessing", "inference", "explaining",
                                               "encoding", "delivering"]
    assert all(s.duration_s is not None and s.outcome == "ok" for s in detail.stages)
    assert detail.deliveries[0].status == "delivered" and detail.outputs[0].kind == "seg"
    assert detail.series[0].role == "FLAIR" and detail.series[0].reasons == ["rule FLAIR"]
    assert store.counts_by_state()["done"] == 1
    histogram = store.stage_duration_histogram([0.0, 3600.0])
    assert set(histogram) >= {"loading", "delivering"}
    assert histogram["loading"][0][1] == histogram["loading"][1] == 1  # one loading run, under an hour


def test_state_machine_refuses_skipping_from_queued_to_done():
    with pytest.raises(TransitionError, match="cannot go from queued to done"):
        check_transition("queued", "done")


def test_cancel_a_waiting_job(store):
    job_id, _ = store.create_job(make_manifest())
    assert store.request_cancel(job_id) == "cancelled"
    assert store.claim(job_id).outcome is ClaimOutcome.FINISHED


def test_cancel_a_running_job_is_requested(store):
    job_id, _ = store.create_job(make_manifest())
    store.claim(job_id, worker="w:1")
    assert store.request_cancel(job_id) == "loading"
    assert store.report_progress(job_id, 10) is True


def test_requeue_a_failed_job_resets_attempts(store):
    job_id, _ = store.create_job(make_manifest())
    store.claim(job_id, worker="w:1")
    store.finish(job_id, JobState.FAILED, error="x")
    assert store.requeue(job_id, resume_stage="delivering")
    claim = store.claim(job_id, worker="w:2")
    assert claim.outcome is ClaimOutcome.CLAIMED and claim.state == "delivering"


def test_role_override_makes_a_new_manifest(store):
    job_id, _ = store.create_job(make_manifest())
    manifest = store.manifest_with_roles(job_id, {"1.2.3.2": "T1"})
    assert manifest.series[1].role is SequenceRole.T1
    assert "set to T1 by an admin" in manifest.series[1].reasons[-1]
    with pytest.raises(ValueError, match="series 9.9 not in job"):
        store.manifest_with_roles(job_id, {"9.9": "T1"})


def test_list_jobs_filters_by_state(store):
    a, _ = store.create_job(make_manifest("1.1"))
    b, _ = store.create_job(make_manifest("1.2"))
    store.request_cancel(a)
    assert [job.id for job in store.list_jobs(state="queued")] == [b]
    assert {job.id for job in store.list_jobs()} == {a, b}
    assert store.list_jobs(state=["cancelled"])[0].patient_name == "Doe^Jane"


def test_unpublished_job_is_found_for_recovery(store):
    job_id, _ = store.create_job(make_manifest())
    assert store.jobs_needing_publish(queued_grace_s=600) == [job_id]
    store.mark_published(job_id)
    assert store.jobs_needing_publish(queued_grace_s=600) == []


def test_one_stage_order_gives_the_pipeline_and_the_dashboard_their_steps():
    from neuroseg.worker import pipeline

    assert [STAGE_RANK[stage.state] for stage in pipeline.STAGES] == sorted(
        STAGE_RANK[stage.state] for stage in pipeline.STAGES)
    assert pipeline.STAGE_RANK is STAGE_RANK
    assert TIMED_STEPS[-len(STAGE_ORDER):] == STAGE_ORDER
    for earlier, later in zip(STAGE_ORDER, STAGE_ORDER[1:]):
        check_transition(earlier, later)
    with pytest.raises(TransitionError, match="cannot go from loading to inference"):
        check_transition(STAGE_ORDER[0], STAGE_ORDER[2])


def test_stage_of_a_finished_job_is_where_it_stopped(store):
    job_id, _ = store.create_job(make_manifest())
    assert store.get_job(job_id).stage == "queued"
    store.claim(job_id, worker="w:1")
    store.enter_stage(job_id, "preprocessing")
    assert store.list_jobs()[0].stage == "preprocessing"
    store.finish(job_id, JobState.FAILED, error="bad series")
    assert store.get_job(job_id).stage == "preprocessing" and store.list_jobs()[0].stage == "preprocessing"


def test_delivery_failures_are_counted_per_attempt_from_the_status(store):
    job_id, _ = store.create_job(make_manifest())
    store.claim(job_id, worker="w:1")
    store.record_delivery_attempt(job_id, "PACS@h:104", status="retrying", failed=1, error="refused")
    store.record_delivery_attempt(job_id, "PACS@h:104", status="partial", sent=1, failed=1)
    store.record_delivery_attempt(job_id, "PACS@h:104", status="delivered", sent=2)
    store.record_delivery_attempt(job_id, "outbox:/out", status="delivered", sent=2)
    assert store.delivery_failure_count() == 2
    with pytest.raises(ValueError, match="unknown delivery status 'sent'"):
        store.record_delivery_attempt(job_id, "outbox:/out", status="sent")


def test_retention_candidates_are_studies_whose_newest_job_ended(store):
    from neuroseg.worker.jobstore import utcnow

    delivered, _ = store.create_job(make_manifest("2.1"))
    store.claim(delivered, worker="w:1")
    store.record_delivery_attempt(delivered, "PACS@h:104", status="delivered", sent=1)
    store.finish(delivered, JobState.DONE)
    failed, _ = store.create_job(make_manifest("2.2"))
    store.claim(failed, worker="w:1")
    store.finish(failed, JobState.FAILED, error="x")
    store.create_job(make_manifest("2.3"))  # still queued: not a candidate
    candidates = {item.study_instance_uid: item for item in store.retention_candidates(utcnow())}
    assert set(candidates) == {"2.1", "2.2"}
    assert candidates["2.1"].delivered and candidates["2.1"].job_id == delivered
    assert not candidates["2.2"].delivered and candidates["2.2"].state == "failed"
    assert store.jobs_of_studies(["2.1", "2.2"], ended_before=utcnow()) == [delivered, failed]
    assert store.retention_candidates(utcnow() - timedelta(days=1)) == []
