"""The pipeline in-process (no Celery): stages, outputs on disk, resume at delivery without new inference."""

from __future__ import annotations

import json

import pytest

from neuroseg.worker import pipeline, queue
from neuroseg.worker.errors import TransientError
from neuroseg.worker.jobstore import ClaimOutcome, JobStore
from tests.services import free_port
from tests.worker.helpers import build_study


def test_pipeline_runs_all_stages_and_a_delivery_failure_resumes_at_delivery(tmp_path, make_settings,
                                                                             tiny_checkpoint, monkeypatch):
    down = f"PACS@127.0.0.1:{free_port()}"
    settings = make_settings(model_path=tiny_checkpoint, mc_samples=2, destinations=down)
    store = JobStore.from_settings(settings)
    study = build_study(tmp_path / "spool", "pipeline", roles=("T1", "T1ce", "T2", "FLAIR"))
    job_id, _ = store.create_job(study.manifest())
    assert store.claim(job_id, worker="test:1").outcome is ClaimOutcome.CLAIMED

    with pytest.raises(TransientError, match="delivery not finished: PACS@127.0.0.1"):
        pipeline.run_job(store, job_id, settings)
    detail = store.get_job(job_id)
    assert detail.resume_stage == "delivering"
    assert [s.name for s in detail.stages] == ["queued", "loading", "preprocessing", "inference", "explaining",
                                               "encoding", "delivering"]
    assert detail.model_name == "tiny-random-test-network" and sorted(detail.sequences_used) == \
        ["flair", "t1", "t1ce", "t2"]
    encoded = pipeline.job_folder(settings, job_id) / "dicom"
    assert {o.kind for o in detail.outputs} >= {"seg", "sr", "pmap-probability-et", "pmap-uncertainty-entropy"}
    assert all((encoded / f"{o.kind}.dcm").is_file() for o in detail.outputs)
    report = json.loads((pipeline.job_folder(settings, job_id) / "viewer" / "report.json").read_text())
    # the quality estimate rides along (flagged or not, the job goes on to deliver: it informs, never blocks)
    assert set(report["quality"]["expected_dice"]) == {"WT", "TC", "ET"}
    assert detail.review_recommended is report["quality"]["review_recommended"]
    assert detail.quality["reasons"] == report["quality"]["reasons"]
    store.mark_retrying(job_id, "PACS down", 0)

    # the PACS is still down, but now no destination is configured: the outbox takes the stored objects
    later = make_settings(model_path=tiny_checkpoint, mc_samples=2)
    claim = store.claim(job_id, worker="test:2")
    assert claim.state == "delivering"
    monkeypatch.setattr(pipeline, "run_model", lambda ctx: pytest.fail("inference ran again"))
    assert pipeline.run_job(store, job_id, later) == "done"
    detail = store.get_job(job_id)
    assert [s.name for s in detail.stages if s.attempt == 2] == ["retrying", "delivering"]
    outbox = later.outbox_dir / study.study_instance_uid
    assert sorted(p.stem for p in outbox.glob("*.dcm")) == sorted(o.kind for o in detail.outputs)

    # an admin re-delivery sends the same objects again, without inference
    assert queue.retry_job(later, job_id, redeliver_only=True)
    assert store.claim(job_id, worker="test:3").state == "delivering"
    assert pipeline.run_job(store, job_id, later) == "done"
    outbox_delivery = [d for d in store.get_job(job_id).deliveries if d.destination.startswith("outbox:")][0]
    assert outbox_delivery.attempts == 2 and outbox_delivery.status == "delivered"


def test_viewer_data_written_beside_encoding_and_a_failure_there_makes_the_job_partial(
        tmp_path, make_settings, tiny_checkpoint, monkeypatch):
    from neuroseg.model import io

    settings = make_settings(model_path=tiny_checkpoint, mc_samples=2)
    store = JobStore.from_settings(settings)
    study = build_study(tmp_path / "spool", "viewer-data", roles=("T1ce", "FLAIR"))

    job_id, _ = store.create_job(study.manifest())
    assert store.claim(job_id, worker="test:1").outcome is ClaimOutcome.CLAIMED
    assert pipeline.run_job(store, job_id, settings) == "done"
    viewer = pipeline.job_folder(settings, job_id) / "viewer"
    assert (viewer / "seg.nii.gz").is_file() and (viewer / "gradcam_et.nii.gz").is_file()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io, "write_result_folder", full_disk)
    other = build_study(tmp_path / "spool2", "viewer-data-2", roles=("T1ce", "FLAIR"))
    job_id, _ = store.create_job(other.manifest())
    assert store.claim(job_id, worker="test:1").outcome is ClaimOutcome.CLAIMED
    # the results are delivered all the same; the job says what the viewer lacks
    assert pipeline.run_job(store, job_id, settings) == "partial"
    detail = store.get_job(job_id)
    assert "3D viewer's data could not be written (OSError" in detail.error
    outbox = settings.outbox_dir / other.study_instance_uid
    assert sorted(p.stem for p in outbox.glob("*.dcm")) == sorted(o.kind for o in detail.outputs)
