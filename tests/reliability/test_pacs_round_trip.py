"""Round trips through a real PACS (Orthanc) and a PACS outage during delivery, by C-STORE and by STOW-RS.

Orthanc holds a study uploaded through its REST API and sends it to our
listener itself (``POST /modalities/neuroseg/store``, or the auto-routing Lua
script that deploy/compose ships); ``neuroseg serve`` processes it with the tiny
test network and delivers the results back to Orthanc, where they must sit in
the same study, once each, and pass dciodvfy.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from neuroseg.worker.jobstore import JobStore
from tests.dicom_out.dciodvfy import assert_dciodvfy_clean
from tests.services import OrthancServer, REPO_ROOT, wait_for
from tests.worker.helpers import build_study, wait_for_state
from tests.worker.serve_helpers import ServeProcess

pytestmark = pytest.mark.integration

ROUTING_SCRIPT = REPO_ROOT / "deploy" / "compose" / "orthanc" / "route-to-neuroseg.lua"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
RESULT_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "SEG",
    "1.2.840.10008.5.1.4.1.1.30": "Parametric Map",
    "1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR",
    "1.2.840.10008.5.1.4.1.1.104.3": "Encapsulated STL",
    "1.2.840.10008.5.1.4.1.1.66.5": "Surface Segmentation",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF",
}


class RoutingOrthanc(OrthancServer):
    """Orthanc with extra configuration (the deploy Lua routing script, a short StableAge)."""

    extra: dict

    def __init__(self, *args, extra: dict | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.extra = extra or {}

    def write_config(self) -> Path:
        path = super().write_config()
        config = json.loads(path.read_text())
        config.update(self.extra)
        path.write_text(json.dumps(config, indent=2))
        return path


def upload(orthanc: OrthancServer, files: list[Path]) -> str:
    """Upload files through the REST API; returns Orthanc's id of their study."""
    studies = {orthanc.post("/instances", path.read_bytes())["ParentStudy"] for path in files}
    assert len(studies) == 1
    return studies.pop()


def study_instances(orthanc: OrthancServer, orthanc_study: str) -> list[dict]:
    return orthanc.get(f"/studies/{orthanc_study}/instances")


def sop_class(orthanc: OrthancServer, instance_id: str) -> str:
    response = httpx.get(f"{orthanc.url}/instances/{instance_id}/metadata/SopClassUid", timeout=30)
    response.raise_for_status()
    return response.text


def start_pair(tmp_path: Path, tiny_checkpoint: Path, broker_url: str, orthanc_extra: dict | None = None,
               dicomweb: bool = False, **serve_env: str) -> tuple[ServeProcess, RoutingOrthanc]:
    """``neuroseg serve`` on Redis (as deployed) and an Orthanc that know each other
    (Orthanc starts first: it needs our port). With ``dicomweb`` the results go back by STOW-RS."""
    serve = ServeProcess(tmp_path / "data", tmp_path / "serve.log", broker_url=broker_url,
                         NEUROSEG_MODEL_PATH=str(tiny_checkpoint), NEUROSEG_ALLOWED_CALLING_AES="ORTHANC",
                         **serve_env)
    orthanc = RoutingOrthanc(tmp_path / "orthanc", modalities={"neuroseg": ("NEUROSEG", "127.0.0.1", serve.port)},
                             extra=orthanc_extra, dicomweb=dicomweb)
    orthanc.start()
    serve.env["NEUROSEG_DESTINATIONS"] = orthanc.dicomweb_url if dicomweb else orthanc.destination
    serve.start()
    return serve, orthanc


def job_for(store: JobStore, study_uid: str, timeout: float = 120) -> str:
    wait_for(lambda: bool(store.list_jobs(study_instance_uid=study_uid)), timeout, f"a job for {study_uid}",
             interval=0.2)
    jobs = store.list_jobs(study_instance_uid=study_uid)
    assert len(jobs) == 1, f"{len(jobs)} jobs for one study"
    return jobs[0].id


def check_results_in_orthanc(orthanc: OrthancServer, orthanc_study: str, detail, sources: int,
                             tmp_path: Path) -> dict[str, int]:
    """The outputs sit in the source study, once each, with result SOP classes, and pass dciodvfy."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    instances = study_instances(orthanc, orthanc_study)
    by_uid: dict[str, list[dict]] = {}
    for item in instances:
        by_uid.setdefault(item["MainDicomTags"]["SOPInstanceUID"], []).append(item)
    assert all(len(items) == 1 for items in by_uid.values())
    outputs = {output.sop_instance_uid for output in detail.outputs}
    results = [item for item in instances if item["MainDicomTags"]["SOPInstanceUID"] in outputs]
    assert len(results) == len(outputs), "every output arrived in the source study"
    assert len(instances) == sources + len(outputs), "nothing else arrived (no duplicates under new UIDs)"
    kinds: dict[str, int] = {}
    for item in results:
        name = RESULT_SOP_CLASSES[sop_class(orthanc, item["ID"])]
        kinds[name] = kinds.get(name, 0) + 1
        path = tmp_path / f"{item['ID']}.dcm"
        path.write_bytes(httpx.get(f"{orthanc.url}/instances/{item['ID']}/file", timeout=60).content)
        assert_dciodvfy_clean(path)
    assert {"SEG", "Parametric Map"} <= set(kinds) and any("SR" in name for name in kinds), kinds
    return kinds


def source_files(study) -> list[Path]:
    return sorted(path for folder in study.folders.values() for path in folder.glob("*.dcm"))


def test_study_sent_by_orthanc_comes_back_into_the_same_study(tmp_path, tiny_checkpoint, make_settings, ledger,
                                                             redis_server):
    study = build_study(tmp_path / "source", "round-trip", roles=("T1ce", "FLAIR"))
    files = source_files(study)
    serve, orthanc = start_pair(tmp_path, tiny_checkpoint, redis_server.url)
    try:
        orthanc_study = upload(orthanc, files)
        answer = orthanc.post("/modalities/neuroseg/store", {"Resources": [orthanc_study], "Synchronous": True})
        assert answer.get("FailedInstancesCount", 0) == 0, answer
        store = JobStore.from_settings(make_settings(data_dir=tmp_path / "data"))
        job_id = job_for(store, study.study_instance_uid)
        assert wait_for_state(store, job_id, 300) == "done", serve.log()[-4000:]
        detail = store.get_job(job_id)
        kinds = check_results_in_orthanc(orthanc, orthanc_study, detail, len(files), tmp_path / "check")
    finally:
        assert serve.stop() == 0, serve.log()[-3000:]
        orthanc.stop()
    ledger.add(studies=1, instances=len(files))
    assert sum(kinds.values()) == len(detail.outputs)


@pytest.mark.slow
def test_orthanc_auto_routing_script_sends_mr_series_and_never_our_results(tmp_path, tiny_checkpoint, make_settings,
                                                                           ledger, redis_server):
    """deploy/compose's Lua script: MR series go to neuroseg once stable; results stay in Orthanc."""
    study = build_study(tmp_path / "source", "auto-route", roles=("T1ce", "FLAIR"))
    files = source_files(study)
    serve, orthanc = start_pair(tmp_path, tiny_checkpoint, redis_server.url,
                                orthanc_extra={"StableAge": 2, "LuaScripts": [str(ROUTING_SCRIPT)]})
    try:
        orthanc_study = upload(orthanc, files)
        store = JobStore.from_settings(make_settings(data_dir=tmp_path / "data"))
        job_id = job_for(store, study.study_instance_uid)
        assert wait_for_state(store, job_id, 300) == "done", serve.log()[-4000:]
        detail = store.get_job(job_id)
        check_results_in_orthanc(orthanc, orthanc_study, detail, len(files), tmp_path / "check")
        # the results became stable in Orthanc too: give the script the chance to (wrongly) route them
        wait_for(lambda: all(job["State"] in ("Success", "Failure") for job in orthanc.get("/jobs?expand")), 60,
                 "Orthanc's routing jobs")
        with pytest.raises(TimeoutError):
            wait_for(lambda: len(store.list_jobs(study_instance_uid=study.study_instance_uid)) > 1, 8,
                     "a second job (a routing loop)")
        spooled = sorted(path.name for path in (tmp_path / "data" / "spool").rglob("*.dcm"))
        assert spooled == sorted(path.name for path in files), "only the MR source series reached the listener"
    finally:
        assert serve.stop() == 0, serve.log()[-3000:]
        orthanc.stop()
    ledger.add(studies=1, instances=len(files))


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["c-store", "stow-rs"])
def test_results_arrive_once_after_the_destination_comes_back(protocol, tmp_path, tiny_checkpoint, make_settings,
                                                              ledger, redis_server):
    """Orthanc is down when the worker delivers (C-STORE to its DICOM port, or STOW-RS to its DICOMweb
    plugin): Celery retries the job with backoff and, once Orthanc is back (same ports, same storage),
    every output arrives exactly once."""
    study = build_study(tmp_path / "source", f"{protocol}-down", roles=("T1ce", "FLAIR"))
    files = source_files(study)
    serve, orthanc = start_pair(tmp_path, tiny_checkpoint, redis_server.url, dicomweb=protocol == "stow-rs",
                                NEUROSEG_MC_SAMPLES="30")
    try:
        orthanc_study = upload(orthanc, files)
        orthanc.post("/modalities/neuroseg/store", {"Resources": [orthanc_study], "Synchronous": True})
        # down as soon as the study is sent, so it is down when the job delivers: stopping it once the job
        # was seen computing raced a job that finished first (two delivery associations, bf16 inference)
        orthanc.stop()
        ledger.fault("Orthanc stopped before the job delivered its results")
        store = JobStore.from_settings(make_settings(data_dir=tmp_path / "data"))
        job_id = job_for(store, study.study_instance_uid)
        assert wait_for_state(store, job_id, 300, states=("retrying",)) == "retrying", serve.log()[-3000:]
        (attempt,) = store.get_job(job_id).deliveries
        assert attempt.destination == serve.env["NEUROSEG_DESTINATIONS"], attempt
        assert attempt.status in ("retrying", "failed") and attempt.last_error, "the failed delivery is recorded"
        orthanc.start()
        assert wait_for_state(store, job_id, 400) == "done", serve.log()[-4000:]
        detail = store.get_job(job_id)
        check_results_in_orthanc(orthanc, orthanc_study, detail, len(files), tmp_path / "check")
        (delivery,) = detail.deliveries
        assert delivery.status == "delivered" and delivery.attempts >= 2, delivery
        assert delivery.sent == len(detail.outputs) and delivery.failed == 0, delivery
    finally:
        assert serve.stop() == 0, serve.log()[-3000:]
        orthanc.stop()
    ledger.add(studies=1, instances=len(files))
