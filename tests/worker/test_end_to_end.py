"""End to end with real parts: storescu -> neuroseg serve (listener, broker, worker) -> results.

The model is a tiny random network (fixture ``tiny_checkpoint``): these tests
check the plumbing, not the segmentation. Faults: a worker killed mid-inference,
a listener killed between receive and enqueue, the same study sent twice, Redis
restarted mid-run.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from neuroseg.dicom_out.mr_series import StudyIdentity, write_study_from_nifti
from neuroseg.worker import queue
from neuroseg.worker.jobstore import JobStore
from tests.services import wait_for
from tests.worker.helpers import WorkerProcess, build_study, wait_for_state, worker_env
from tests.worker.serve_helpers import ServeProcess, storescu

pytestmark = pytest.mark.integration

TCGA_ROLES = {"T1": "t1", "T1ce": "t1ce", "T2": "t2", "FLAIR": "flair"}


@pytest.fixture(scope="module")
def tcga_study(tmp_path_factory, shared_data) -> tuple[Path, str]:
    """The real TCGA-FG-6692 glioma study (four sequences, four grids) as DICOM MR series."""
    source = shared_data / "real-mri" / "tcga-fg-6692-native"
    out = tmp_path_factory.mktemp("tcga-dicom")
    identity = StudyIdentity(patient_name="TCGA^FG^6692", patient_id="TCGA-FG-6692", uid_seed="tcga-fg-6692-e2e")
    write_study_from_nifti({role: source / f"{key}.nii.gz" for role, key in TCGA_ROLES.items()}, out, identity)
    return out, identity.resolved_study_instance_uid


def job_of(store: JobStore, study_uid: str, timeout: float = 90) -> str:
    wait_for(lambda: bool(store.list_jobs(study_instance_uid=study_uid)), timeout,
             f"a job for study {study_uid}", interval=0.2)
    return store.list_jobs(study_instance_uid=study_uid)[0].id


def check_results(settings, store: JobStore, job_id: str, study_uid: str) -> None:
    detail = store.get_job(job_id)
    assert detail.state == "done", (detail.state, detail.error)
    kinds = {output.kind for output in detail.outputs}
    assert "seg" in kinds and "sr" in kinds and any(kind.startswith("pmap") for kind in kinds)
    outbox = settings.outbox_dir / study_uid
    files = sorted(outbox.glob("*.dcm"))
    assert len(files) == len(detail.outputs)
    seg = pydicom.dcmread(outbox / "seg.dcm", stop_before_pixels=True)
    assert seg.StudyInstanceUID == study_uid
    assert (settings.results_dir / job_id / "viewer").is_dir()
    assert {stage.name for stage in detail.stages} >= {"loading", "preprocessing", "inference", "explaining",
                                                      "encoding", "delivering"}


@pytest.mark.slow
@pytest.mark.parametrize("broker", ["redis", "embedded"])
def test_real_tcga_study_through_serve(broker, request, tcga_study, tiny_checkpoint, tmp_path, make_settings):
    folder, study_uid = tcga_study
    broker_url = request.getfixturevalue("redis_server").url if broker == "redis" else None
    data_dir = tmp_path / "data"
    serve = ServeProcess(data_dir, tmp_path / "serve.log", broker_url=broker_url,
                         NEUROSEG_MODEL_PATH=str(tiny_checkpoint)).start()
    try:
        storescu(folder, serve.port)
        settings = make_settings(data_dir=data_dir)
        store = JobStore.from_settings(settings)
        job_id = job_of(store, study_uid)
        assert wait_for_state(store, job_id, 400) == "done", serve.log()[-4000:]
        check_results(settings, store, job_id, study_uid)
        assert set(store.get_job(job_id).sequences_used) == {"t1", "t1ce", "t2", "flair"}
    finally:
        assert serve.stop() == 0, serve.log()[-3000:]


def test_small_study_through_serve_on_the_embedded_broker(tiny_checkpoint, tmp_path, make_settings, database_url):
    """On both job stores: the SQLite default and PostgreSQL (``database_url``)."""
    study = build_study(tmp_path / "send", "e2e-small", roles=("T1", "T1ce", "T2", "FLAIR"))
    data_dir = tmp_path / "data"
    database = {"NEUROSEG_DATABASE_URL": database_url} if database_url else {}
    serve = ServeProcess(data_dir, tmp_path / "serve.log", NEUROSEG_MODEL_PATH=str(tiny_checkpoint),
                         **database).start()
    try:
        storescu(tmp_path / "send", serve.port)
        settings = make_settings(data_dir=data_dir, database_url=database_url)
        store = JobStore.from_settings(settings)
        job_id = job_of(store, study.study_instance_uid)
        assert wait_for_state(store, job_id, 300) == "done", serve.log()[-4000:]
        check_results(settings, store, job_id, study.study_instance_uid)
    finally:
        assert serve.stop() == 0, serve.log()[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("broker,victim", [("redis", "child"), ("embedded", "whole worker")])
def test_worker_killed_mid_inference_completes_once(broker, victim, request, tiny_checkpoint, tmp_path,
                                                    make_settings, orthanc):
    broker_url = request.getfixturevalue("redis_server").url if broker == "redis" else None
    data_dir = tmp_path / "data"
    settings = make_settings(data_dir=data_dir, broker_url=broker_url, destinations=orthanc.destination)
    # fp32: under bf16 the 60 MC samples can finish between two polls, and there is nothing left to kill
    env = worker_env(data_dir, broker_url, NEUROSEG_MODEL_PATH=str(tiny_checkpoint), NEUROSEG_MC_SAMPLES="60",
                     NEUROSEG_DESTINATIONS=orthanc.destination, NEUROSEG_CPU_BACKEND="fp32")
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        study = build_study(tmp_path / "spool", "e2e-kill", roles=("T1ce", "FLAIR"), shape=(16, 48, 48))
        job_id = queue.enqueue_study(settings, study.manifest())
        store = JobStore.from_settings(settings)
        wait_for_state(store, job_id, 240, states=("inference", "explaining"), worker=worker)
        holder = store.get_job(job_id).worker
        if victim == "child":
            import os
            import signal

            os.kill(int(holder.rpartition(":")[2]), signal.SIGKILL)
        else:
            worker.kill()
            worker = WorkerProcess(env, tmp_path / "worker2.log").start()
        assert wait_for_state(store, job_id, 400, worker=worker) == "done", worker.log()[-4000:]
        detail = store.get_job(job_id)
        assert detail.attempts == 2
        assert [stage.outcome for stage in detail.stages if stage.name in ("inference", "explaining")][:1] == \
            ["abandoned"]
        # outputs delivered once: Orthanc holds exactly one instance per output (deterministic UIDs)
        held = {item["MainDicomTags"]["SOPInstanceUID"] for item in orthanc.instances()}
        assert held == {output.sop_instance_uid for output in detail.outputs}
    finally:
        worker.stop()


@pytest.mark.slow
def test_listener_killed_between_receive_and_enqueue_gives_one_job(tiny_checkpoint, tmp_path, make_settings):
    study = build_study(tmp_path / "send", "e2e-listener-restart", roles=("T1ce", "FLAIR"))
    data_dir = tmp_path / "data"
    options = {"NEUROSEG_MODEL_PATH": str(tiny_checkpoint), "NEUROSEG_STABLE_SECONDS": "6"}
    serve = ServeProcess(data_dir, tmp_path / "serve.log", **options).start()
    storescu(tmp_path / "send", serve.port)
    serve.kill()  # stored and acknowledged, but the study was not yet complete: no job
    settings = make_settings(data_dir=data_dir)
    store = JobStore.from_settings(settings)
    assert store.list_jobs(study_instance_uid=study.study_instance_uid) == []
    serve = ServeProcess(data_dir, tmp_path / "serve2.log", **options)
    serve.start()
    try:
        job_id = job_of(store, study.study_instance_uid, timeout=120)
        assert wait_for_state(store, job_id, 300) == "done", serve.log()[-4000:]
        assert len(store.list_jobs(study_instance_uid=study.study_instance_uid)) == 1
    finally:
        assert serve.stop() == 0


@pytest.mark.slow
def test_same_study_twice_then_with_a_new_series(tiny_checkpoint, tmp_path, make_settings):
    """The rule: an identical manifest keeps the existing job; a changed one makes a job that replaces it."""
    first = build_study(tmp_path / "first", "e2e-twice", roles=("T1ce", "FLAIR"))
    data_dir = tmp_path / "data"
    # post-processing off: with the T2 added, the tiny random network's small ET would otherwise be
    # relabelled NCR in one run and not the other, and the rule compares the same object kinds
    serve = ServeProcess(data_dir, tmp_path / "serve.log", NEUROSEG_MODEL_PATH=str(tiny_checkpoint),
                         NEUROSEG_POSTPROCESS="false").start()
    try:
        settings = make_settings(data_dir=data_dir)
        store = JobStore.from_settings(settings)
        storescu(tmp_path / "first", serve.port)
        job_id = job_of(store, first.study_instance_uid)
        assert wait_for_state(store, job_id, 300) == "done"
        first_outputs = {o.kind: o.sop_instance_uid for o in store.get_job(job_id).outputs}

        storescu(tmp_path / "first", serve.port)  # the same study again
        with pytest.raises(TimeoutError):
            wait_for(lambda: len(store.list_jobs(study_instance_uid=first.study_instance_uid)) > 1, 15, "a 2nd job")

        build_study(tmp_path / "more", "e2e-twice", roles=("T1ce", "FLAIR", "T2"))  # same UIDs + a T2
        storescu(tmp_path / "more", serve.port)
        wait_for(lambda: len(store.list_jobs(study_instance_uid=first.study_instance_uid)) == 2, 90, "a 2nd job")
        second = store.list_jobs(study_instance_uid=first.study_instance_uid)[0]
        assert second.replaces_job_id == job_id
        assert wait_for_state(store, second.id, 300) == "done"
        second_outputs = {o.kind: o.sop_instance_uid for o in store.get_job(second.id).outputs}
        assert second_outputs == first_outputs  # same UIDs: the PACS replaces, never duplicates
    finally:
        assert serve.stop() == 0


@pytest.mark.slow
def test_redis_restarted_mid_run_loses_no_job(redis_server, tiny_checkpoint, tmp_path, make_settings):
    data_dir = tmp_path / "data"
    settings = make_settings(data_dir=data_dir, broker_url=redis_server.url)
    env = worker_env(data_dir, redis_server.url, NEUROSEG_MODEL_PATH=str(tiny_checkpoint), NEUROSEG_MC_SAMPLES="20")
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        store = JobStore.from_settings(settings)
        jobs = [queue.enqueue_study(settings, build_study(tmp_path / "spool", f"e2e-redis-{n}",
                                                          roles=("T1ce", "FLAIR")).manifest()) for n in range(3)]
        wait_for_state(store, jobs[0], 240, states=("loading", "preprocessing", "inference", "explaining"),
                       worker=worker)
        redis_server.restart()
        for job_id in jobs:
            assert wait_for_state(store, job_id, 400, worker=worker) == "done", worker.log()[-4000:]
    finally:
        worker.stop()
