"""NEUROSEG_PRIOR_QUERY: a prior that only the PACS holds is found by C-FIND, fetched by C-GET, processed first.

A real Orthanc holds the patient's earlier study; our real listener (spool,
assembly, classification, the embedded queue) takes the retrieved instances;
the current job runs in-process and claims the prior's job to process it first.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from neuroseg.dicom_out.send import Peer, deliver, load_objects
from neuroseg.listener.service import ListenerService
from neuroseg.worker import pipeline
from neuroseg.worker.errors import TransientError
from neuroseg.worker.jobstore import JobStore
from tests.dicom_out.dciodvfy import assert_dciodvfy_clean
from tests.services import OrthancServer, free_port
from tests.worker.test_followup import _study
from tests.worker.test_followup_orthanc import retrieve

pytestmark = pytest.mark.integration


def _pacs_with_prior(tmp_path: Path, known_ae: bool = True) -> tuple[OrthancServer, str]:
    """An Orthanc that holds only the patient's study of 2026-01-01 (it knows our AE unless ``known_ae`` is off)."""
    modalities = {"neuroseg": ("NEUROSEG", "127.0.0.1", free_port())} if known_ae else {}
    orthanc = OrthancServer(tmp_path / "orthanc", modalities=modalities).start()
    prior = _study(tmp_path / "pacs-source", "fu-query-prior", "20260101", 0.0)
    files = sorted((tmp_path / "pacs-source").rglob("*.dcm"))
    results = deliver(load_objects(files), Peer(orthanc.ae_title, "127.0.0.1", orthanc.dicom_port, timeout=30))
    assert all(result.ok for result in results)
    return orthanc, prior.study_instance_uid


def _events(store: JobStore, job_id: str) -> list[str]:
    return [event.message for event in store.get_job(job_id).events if event.kind == "followup"]


def _settings(make_settings, tiny_checkpoint, destinations: str, port: int):
    return make_settings(model_path=tiny_checkpoint, mc_samples=1, send_maps="", send_reports="",
                         destinations=destinations, prior_query=True, port=port, bind_address="127.0.0.1",
                         stable_seconds=1.0, max_wait_seconds=5.0)


def test_a_prior_only_the_pacs_holds_is_retrieved_processed_first_and_compared(
        tmp_path, make_settings, tiny_checkpoint):
    orthanc, prior_uid = _pacs_with_prior(tmp_path)
    settings = _settings(make_settings, tiny_checkpoint, orthanc.destination, free_port())
    listener = ListenerService(settings).start()
    try:
        store = JobStore.from_settings(settings)
        current = _study(tmp_path / "spool", "fu-query-current", "20260402", 6.0)
        job_id, _ = store.create_job(current)
        store.claim(job_id, worker="test:1")
        assert pipeline.run_job(store, job_id, settings) == "done"
    finally:
        listener.stop()
        orthanc_instances = orthanc.instances()
        orthanc.stop()
    point = store.get_time_point(job_id)
    events = _events(store, job_id)
    assert point.status == "compared", events
    (prior_job,) = store.list_jobs(study_instance_uid=prior_uid)
    assert point.prior_job_id == prior_job.id and prior_job.state == "done"
    assert any("retrieved prior study" in message and "C-GET" in message for message in events), events
    assert any(f"prior of job {job_id}" in message for message in _events(store, prior_job.id))
    assert store.get_time_point(prior_job.id).status == "no_prior"  # it did not query the PACS in turn
    # the prior's series came through our intake: classified by the listener, not copied from this job
    prior_series = store.get_job(prior_job.id).series
    assert {item.classified_role for item in prior_series} == {"T1ce", "FLAIR"}
    assert all(item.reasons != ["test"] for item in prior_series)
    assert point.summary["prior"]["study_date"] == "20260101"
    # both jobs' results went to the PACS, the current one with its change SEG and the two-time-point SR
    stored = {item["MainDicomTags"]["SOPInstanceUID"] for item in orthanc_instances}
    outputs = {item.kind: item for item in store.get_job(job_id).outputs}
    assert {outputs["change-seg"].sop_instance_uid, outputs["sr"].sop_instance_uid} <= stored
    prior_seg = next(item for item in store.get_job(prior_job.id).outputs if item.kind == "seg")
    assert prior_seg.sop_instance_uid in stored
    assert not (settings.data_dir / "prior-retrieve" / prior_uid).exists()  # the spool keeps the copy


def test_a_pacs_that_refuses_the_query_leaves_a_note_and_the_results_go_out(
        tmp_path, make_settings, tiny_checkpoint):
    orthanc, prior_uid = _pacs_with_prior(tmp_path, known_ae=False)  # Orthanc answers no C-FIND from strangers
    settings = _settings(make_settings, tiny_checkpoint, orthanc.destination, free_port())
    try:
        store = JobStore.from_settings(settings)
        job_id, _ = store.create_job(_study(tmp_path / "spool", "fu-refused-current", "20260402", 6.0))
        store.claim(job_id, worker="test:1")
        assert pipeline.run_job(store, job_id, settings) == "done"
        back = tmp_path / "back"
        back.mkdir()
        outputs = {item.kind: item for item in store.get_job(job_id).outputs}
        assert_dciodvfy_clean(retrieve(orthanc, outputs["seg"].sop_instance_uid, back))
        report = pydicom.dcmread(retrieve(orthanc, outputs["sr"].sop_instance_uid, back))
        assert "PertinentOtherEvidenceSequence" not in report  # no prior study named in the SR
    finally:
        orthanc.stop()
    events = _events(store, job_id)
    assert any("PACS query for an earlier study failed" in message and "our AE title NEUROSEG" in message
               for message in events), events
    point = store.get_time_point(job_id)
    assert point.status == "no_prior" and "PACS query" in point.note
    assert "change-seg" not in outputs
    assert store.list_jobs(study_instance_uid=prior_uid) == []


def test_a_pacs_that_is_down_leaves_a_note_and_the_results_reach_the_other_destination(
        tmp_path, make_settings, tiny_checkpoint, orthanc):
    down = f"DOWN@127.0.0.1:{free_port()}"
    settings = _settings(make_settings, tiny_checkpoint, f"{down},{orthanc.destination}", free_port())
    store = JobStore.from_settings(settings)
    job_id, _ = store.create_job(_study(tmp_path / "spool", "fu-down-current", "20260402", 6.0))
    store.claim(job_id, worker="test:1")
    with pytest.raises(TransientError, match="DOWN@"):  # its delivery retries later, as for any job
        pipeline.run_job(store, job_id, settings)
    events = _events(store, job_id)
    assert any("PACS query for an earlier study failed" in message and "DOWN@" in message
               for message in events), events
    by_destination = {item.destination: item.status for item in store.get_job(job_id).deliveries}
    assert by_destination[orthanc.destination] == "delivered"
    seg = next(item for item in store.get_job(job_id).outputs if item.kind == "seg")
    assert orthanc.post("/tools/lookup", seg.sop_instance_uid)


def test_a_pacs_study_of_another_birth_date_is_never_retrieved(tmp_path, make_settings, tiny_checkpoint):
    modalities = {"neuroseg": ("NEUROSEG", "127.0.0.1", free_port())}
    orthanc = OrthancServer(tmp_path / "orthanc", modalities=modalities).start()
    try:
        other = _study(tmp_path / "pacs-source", "fu-query-other", "20260101", 0.0, birth_date="19811111")
        files = sorted((tmp_path / "pacs-source").rglob("*.dcm"))
        assert all(result.ok for result in deliver(load_objects(files), Peer(
            orthanc.ae_title, "127.0.0.1", orthanc.dicom_port, timeout=30)))
        settings = _settings(make_settings, tiny_checkpoint, orthanc.destination, free_port())
        store = JobStore.from_settings(settings)
        job_id, _ = store.create_job(_study(tmp_path / "spool", "fu-query-same-id", "20260402", 0.0))
        store.claim(job_id, worker="test:1")
        assert pipeline.run_job(store, job_id, settings) == "done"
    finally:
        orthanc.stop()
    events = _events(store, job_id)
    assert any(other.study_instance_uid in message and "different patient" in message for message in events), events
    assert store.get_time_point(job_id).status == "no_prior"
    assert store.list_jobs(study_instance_uid=other.study_instance_uid) == []
    assert not (settings.data_dir / "prior-retrieve").exists()
