"""Delivery: every attempt recorded; PACS down is transient; no destination means the outbox."""

from __future__ import annotations

import copy

import pytest

from neuroseg.dicom_out.common import EncodedObject
from neuroseg.dicom_out.mr_series import StudyIdentity, build_mr_series
from neuroseg.worker.delivery import deliver_job_outputs
from neuroseg.worker.errors import TransientError
from neuroseg.worker.jobstore import JobStore
from tests.services import free_port
from tests.worker.helpers import axial_affine, blob_volume, build_study


def some_objects(seed="delivery") -> list[EncodedObject]:
    datasets = build_mr_series(blob_volume((4, 16, 16)), axial_affine(), study=StudyIdentity(uid_seed=seed),
                               series_number=5, role="FLAIR")
    return [EncodedObject(f"slice-{i}", str(ds.SOPClassUID), str(ds.SOPInstanceUID), copy.deepcopy(ds))
            for i, ds in enumerate(datasets)]


@pytest.fixture
def job(make_settings, tmp_path):
    def factory(**overrides):
        settings = make_settings(**overrides)
        store = JobStore.from_settings(settings)
        study = build_study(tmp_path / "spool", "delivery-study", roles=("FLAIR",))
        job_id, _ = store.create_job(study.manifest())
        store.claim(job_id, worker="test:1")
        return settings, store, job_id, study.study_instance_uid
    return factory


def test_without_destination_objects_go_to_the_outbox(job):
    settings, store, job_id, study_uid = job()
    problems = deliver_job_outputs(store, job_id, settings, some_objects(), study_instance_uid=study_uid)
    assert problems == []
    assert sorted(p.name for p in (settings.outbox_dir / study_uid).iterdir()) == [f"slice-{i}.dcm" for i in range(4)]
    delivery = store.get_job(job_id).deliveries[0]
    assert delivery.destination == f"outbox:{settings.outbox_dir / study_uid}" and delivery.status == "delivered"


def test_pacs_down_is_transient_and_recorded(job, monkeypatch):
    settings, store, job_id, study_uid = job(destinations=f"PACS@127.0.0.1:{free_port()}")
    with pytest.raises(TransientError, match="delivery not finished: PACS@127.0.0.1"):
        deliver_job_outputs(store, job_id, settings, some_objects(), study_instance_uid=study_uid)
    delivery = store.get_job(job_id).deliveries[0]
    assert delivery.status == "retrying" and delivery.attempts == 1 and delivery.failed == 4
    assert "cannot" in delivery.last_error


@pytest.mark.integration
def test_delivery_to_a_real_pacs_and_a_second_attempt_skips_it(job, orthanc, monkeypatch):
    down = f"DOWN@127.0.0.1:{free_port()}"
    settings, store, job_id, study_uid = job(destinations=f"{orthanc.destination},{down}")
    objects = some_objects()
    with pytest.raises(TransientError, match="DOWN@"):
        deliver_job_outputs(store, job_id, settings, objects, study_instance_uid=study_uid)
    assert len(orthanc.get("/instances")) == 4
    with pytest.raises(TransientError):
        deliver_job_outputs(store, job_id, settings, objects, study_instance_uid=study_uid)
    by_destination = {item.destination: item for item in store.get_job(job_id).deliveries}
    assert by_destination[orthanc.destination].status == "delivered"
    assert by_destination[orthanc.destination].attempts == 1  # not sent again
    assert by_destination[down].attempts == 2 and by_destination[down].status == "retrying"


@pytest.mark.integration
def test_send_command_stores_a_folder_in_a_real_pacs(orthanc, tmp_path):
    from neuroseg.worker.cli import main

    build_study(tmp_path / "send", "send-command", roles=("FLAIR",))
    assert main(["send", str(tmp_path / "send"), "--to", orthanc.destination]) == 0
    assert len(orthanc.get("/instances")) == 12
