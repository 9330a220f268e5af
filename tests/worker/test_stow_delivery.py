"""DICOMweb destinations: STOW-RS to a real Orthanc with its DICOMweb plugin, next to C-STORE."""

from __future__ import annotations

import json
from io import BytesIO

import httpx
import pydicom
import pytest
from pydantic import SecretStr

from neuroseg.worker.delivery import deliver_job_outputs
from neuroseg.worker.errors import TransientError
from tests.services import OrthancServer, free_port
from tests.worker.test_delivery import job, some_objects  # noqa: F401 - the job fixture

pytestmark = pytest.mark.integration


@pytest.fixture
def dicomweb_orthanc(tmp_path):
    server = OrthancServer(tmp_path / "dicomweb-orthanc", ae_title="DWORTHANC", dicomweb=True).start()
    yield server
    server.stop()


def stored_datasets(orthanc: OrthancServer) -> dict[str, pydicom.Dataset]:
    """SOPInstanceUID -> the data set Orthanc keeps (read back from its file)."""
    datasets = {}
    for instance in orthanc.get("/instances"):
        content = httpx.get(f"{orthanc.url}/instances/{instance}/file", timeout=30).content
        dataset = pydicom.dcmread(BytesIO(content))
        datasets[str(dataset.SOPInstanceUID)] = dataset
    return datasets


def test_a_stow_destination_receives_the_same_objects_as_a_c_store_one(job, orthanc, dicomweb_orthanc):  # noqa: F811
    settings, store, job_id, study_uid = job(destinations=f"{orthanc.destination},{dicomweb_orthanc.dicomweb_url}")
    objects = some_objects("stow")
    assert deliver_job_outputs(store, job_id, settings, objects, study_instance_uid=study_uid) == []
    by_c_store, by_stow = stored_datasets(orthanc), stored_datasets(dicomweb_orthanc)
    assert sorted(by_stow) == sorted(by_c_store) == sorted(obj.sop_instance_uid for obj in objects)
    for uid, dataset in by_c_store.items():
        assert by_stow[uid] == dataset, f"{uid} differs between C-STORE and STOW-RS"
    deliveries = {item.destination: item for item in store.get_job(job_id).deliveries}
    stow = deliveries[dicomweb_orthanc.dicomweb_url]
    assert (stow.status, stow.sent, stow.failed) == ("delivered", len(objects), 0)

    # idempotent like C-STORE: sending the same objects again replaces, never duplicates
    store.record_delivery_attempt(job_id, dicomweb_orthanc.dicomweb_url, status="retrying", failed=len(objects))
    deliver_job_outputs(store, job_id, settings, objects, study_instance_uid=study_uid)
    assert len(dicomweb_orthanc.get("/instances")) == len(objects)


def test_a_refused_object_is_recorded_per_object_and_the_others_are_stored(job, dicomweb_orthanc):  # noqa: F811
    settings, store, job_id, study_uid = job(destinations=dicomweb_orthanc.dicomweb_url)
    objects = some_objects("stow-refused")
    del objects[1].dataset.SOPClassUID  # Orthanc cannot store an instance without its SOP class
    problems = deliver_job_outputs(store, job_id, settings, objects, study_instance_uid=study_uid)
    assert len(problems) == 1 and f"refused 1 of {len(objects)} objects" in problems[0]
    assert "slice-1: refused" in problems[0] and "HTTP 400" in problems[0]
    (delivery,) = store.get_job(job_id).deliveries
    assert (delivery.status, delivery.sent, delivery.failed) == ("partial", len(objects) - 1, 1)
    assert len(dicomweb_orthanc.get("/instances")) == len(objects) - 1


def test_a_dicomweb_outage_is_retried_like_a_pacs_outage(job, dicomweb_orthanc):  # noqa: F811
    down_pacs = f"PACS@127.0.0.1:{free_port()}"
    settings, store, job_id, study_uid = job(destinations=f"{dicomweb_orthanc.dicomweb_url},{down_pacs}")
    objects = some_objects("stow-outage")
    dicomweb_orthanc.stop()
    with pytest.raises(TransientError) as raised:
        deliver_job_outputs(store, job_id, settings, objects, study_instance_uid=study_uid)
    assert dicomweb_orthanc.dicomweb_url in str(raised.value) and down_pacs in str(raised.value)
    deliveries = {item.destination: item for item in store.get_job(job_id).deliveries}
    for name in (dicomweb_orthanc.dicomweb_url, down_pacs):  # the same record for both kinds of outage
        assert (deliveries[name].status, deliveries[name].failed) == ("retrying", len(objects))
    assert "cannot reach" in deliveries[dicomweb_orthanc.dicomweb_url].last_error

    dicomweb_orthanc.start()  # same ports, same storage: the next attempt delivers
    with pytest.raises(TransientError, match="PACS@"):
        deliver_job_outputs(store, job_id, settings, objects, study_instance_uid=study_uid)
    stow = {item.destination: item for item in store.get_job(job_id).deliveries}[dicomweb_orthanc.dicomweb_url]
    assert (stow.status, stow.attempts, stow.sent) == ("delivered", 2, len(objects))
    assert len(dicomweb_orthanc.get("/instances")) == len(objects)


class PasswordOrthanc(OrthancServer):
    """Orthanc that wants HTTP basic auth from one user."""

    user = ("neuroseg", "s3cret-pass")

    def write_config(self):
        path = super().write_config()
        config = json.loads(path.read_text())
        config.update(AuthenticationEnabled=True, RegisteredUsers=dict([self.user]))
        path.write_text(json.dumps(config))
        return path

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/system", auth=self.user, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False


def test_basic_auth_credentials_come_from_the_settings(job, tmp_path):  # noqa: F811
    server = PasswordOrthanc(tmp_path / "auth-orthanc", dicomweb=True).start()
    try:
        objects = some_objects("stow-auth")
        settings, store, job_id, study_uid = job(destinations=server.dicomweb_url)
        problems = deliver_job_outputs(store, job_id, settings, objects, study_instance_uid=study_uid)
        assert len(problems) == 1 and "HTTP 401" in problems[0], "without credentials every object is refused"
        with_password = settings.model_copy(update={"dicomweb_username": server.user[0],
                                                    "dicomweb_password": SecretStr(server.user[1])})
        assert deliver_job_outputs(store, job_id, with_password, objects, study_instance_uid=study_uid) == []
        stored = httpx.get(f"{server.url}/instances", auth=server.user, timeout=10).json()
        assert len(stored) == len(objects)
    finally:
        server.stop()


def test_send_command_stores_a_folder_by_stow_rs(dicomweb_orthanc, tmp_path):
    from neuroseg.worker.cli import main
    from tests.worker.helpers import build_study

    build_study(tmp_path / "send", "send-stow", roles=("FLAIR",))
    assert main(["send", str(tmp_path / "send"), "--to", dicomweb_orthanc.dicomweb_url]) == 0
    assert len(dicomweb_orthanc.get("/instances")) == 12
