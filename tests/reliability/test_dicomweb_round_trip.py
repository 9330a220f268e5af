"""A DICOMweb (STOW-RS) destination through ``neuroseg serve``: an outage is retried like a PACS outage."""

from __future__ import annotations

import pytest

from neuroseg.worker.jobstore import JobStore
from tests.reliability.test_pacs_round_trip import RoutingOrthanc, job_for, source_files, study_instances, upload
from tests.worker.helpers import build_study, wait_for_state
from tests.worker.serve_helpers import ServeProcess

pytestmark = pytest.mark.integration


def source_uids(files) -> set[str]:
    import pydicom

    return {str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in files}


@pytest.mark.slow
def test_results_arrive_once_by_stow_rs_after_the_dicomweb_server_comes_back(tmp_path, tiny_checkpoint, make_settings,
                                                                            ledger, redis_server):
    """Orthanc (C-STORE in, DICOMweb out) is down when the worker delivers: Celery retries the job with
    backoff and, once Orthanc is back, every output arrives by STOW-RS exactly once."""
    study = build_study(tmp_path / "source", "dicomweb-down", roles=("T1ce", "FLAIR"))
    files = source_files(study)
    serve = ServeProcess(tmp_path / "data", tmp_path / "serve.log", broker_url=redis_server.url,
                         NEUROSEG_MODEL_PATH=str(tiny_checkpoint), NEUROSEG_ALLOWED_CALLING_AES="ORTHANC",
                         NEUROSEG_MC_SAMPLES="30")
    orthanc = RoutingOrthanc(tmp_path / "orthanc", modalities={"neuroseg": ("NEUROSEG", "127.0.0.1", serve.port)},
                             dicomweb=True)
    orthanc.start()
    serve.env["NEUROSEG_DESTINATIONS"] = orthanc.dicomweb_url
    serve.start()
    try:
        orthanc_study = upload(orthanc, files)
        orthanc.post("/modalities/neuroseg/store", {"Resources": [orthanc_study], "Synchronous": True})
        store = JobStore.from_settings(make_settings(data_dir=tmp_path / "data"))
        job_id = job_for(store, study.study_instance_uid)
        wait_for_state(store, job_id, 300, states=("inference", "explaining", "encoding"))
        orthanc.stop()
        ledger.fault("the DICOMweb server stopped while the job was computing its results")
        assert wait_for_state(store, job_id, 300, states=("retrying",)) == "retrying", serve.log()[-3000:]
        (attempt,) = store.get_job(job_id).deliveries
        assert attempt.destination == orthanc.dicomweb_url and attempt.status == "retrying" and attempt.last_error
        orthanc.start()
        assert wait_for_state(store, job_id, 400) == "done", serve.log()[-4000:]
        detail = store.get_job(job_id)
        uids = [item["MainDicomTags"]["SOPInstanceUID"] for item in study_instances(orthanc, orthanc_study)]
        assert len(uids) == len(set(uids)), "every object once"
        assert set(uids) == {output.sop_instance_uid for output in detail.outputs} | source_uids(files)
        (delivery,) = detail.deliveries
        assert delivery.status == "delivered" and delivery.attempts >= 2, delivery
        assert delivery.sent == len(detail.outputs) and delivery.failed == 0, delivery
    finally:
        assert serve.stop() == 0, serve.log()[-3000:]
        orthanc.stop()
    ledger.add(studies=1, instances=len(files))
