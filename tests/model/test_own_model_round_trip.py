"""A hospital's own model (a MONAI bundle, an nnU-Net v2 folder) through the worker to a real PACS and back.

One set-up for both kinds: the service is pointed at the model by ``NEUROSEG_MODEL_PATH``, a study is
spooled, and the registered Celery task (run in this process by ``apply``) claims the job, runs the
pipeline and delivers to a real Orthanc. Both test models are made here with the libraries' own tools
(tests/model/conftest.py); the nnU-Net one takes about 3 minutes to train.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest

from neuroseg.model.adapters import FLIPS_AND_FOLDS, TEST_TIME_FLIPS
from neuroseg.worker import pipeline, queue
from neuroseg.worker.jobstore import JobStore
from neuroseg.worker.settings import Settings, get_settings
from tests.dicom_out.dciodvfy import assert_dciodvfy_clean
from tests.worker.helpers import build_study

ALL_ROLES = ("T1", "T1ce", "T2", "FLAIR")


@dataclass(frozen=True)
class OwnModel:
    """A test model and what its outputs must say about it."""

    path: Path
    name: str
    version: str
    authors: str
    method: str  # model_card["uncertainty"]["method"]
    method_code: str  # its code in the SR
    method_words: str  # its code meaning, in the SR text and the maps' derivation
    explanation: str  # how the uncertainty maps' value mapping names it
    gradcam_layer: str
    sequences: str  # the order the model names its inputs in


def bundle_model(path: Path) -> OwnModel:
    return OwnModel(path, "tiny-brats-segresnet", "0.3.1", "neuroseg test suite", TEST_TIME_FLIPS, "TTA-FLIPS",
                    "Test-time flips", "flip TTA", "up_layers.1", "t1ce, t1, t2, flair")


def nnunet_model_spec(path: Path) -> OwnModel:
    return OwnModel(path, "TinyGlioma", "0.1", "neuroseg tests", FLIPS_AND_FOLDS, "TTA-FLIPS-FOLDS",
                    "Test-time flips and fold ensemble", "flip+fold", "decoder.stages.1", "t1, t1ce, t2, flair")


@pytest.fixture(params=["bundle", "nnunet"])
def own_model(request: pytest.FixtureRequest) -> OwnModel:
    """Each kind in turn; the nnU-Net model is only trained when its case runs."""
    if request.param == "bundle":
        return bundle_model(request.getfixturevalue("bundle"))
    return nnunet_model_spec(request.getfixturevalue("nnunet_model"))


@pytest.fixture
def service(own_model: OwnModel, orthanc, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The service's settings as an operator would give them: the model and the PACS by environment."""
    monkeypatch.setenv("NEUROSEG_MODEL_PATH", str(own_model.path))
    monkeypatch.setenv("NEUROSEG_DEVICE", "cpu")
    monkeypatch.setenv("NEUROSEG_MC_SAMPLES", "2")
    monkeypatch.setenv("NEUROSEG_DESTINATIONS", orthanc.destination)
    monkeypatch.setenv("NEUROSEG_SEND_MAPS", "probability,uncertainty,gradcam")
    get_settings.cache_clear()
    return get_settings()


def run_worker(settings: Settings, spool: Path, roles: tuple[str, ...]) -> tuple[JobStore, str]:
    """Spool a study with ``roles``, queue its job and let the registered task claim and run it."""
    store = JobStore.from_settings(settings)
    study = build_study(spool, f"own-model-{'-'.join(roles)}", roles=roles)
    job_id, _ = store.create_job(study.manifest())
    queue.create_celery_app(settings).tasks[queue.TASK_NAME].apply(args=[job_id])
    return store, job_id


@pytest.mark.slow
@pytest.mark.integration
def test_an_own_model_through_the_worker_to_a_real_pacs(own_model: OwnModel, service: Settings, orthanc,
                                                        tmp_path: Path) -> None:
    store, job_id = run_worker(service, tmp_path / "spool", ALL_ROLES)
    detail = store.get_job(job_id)
    assert detail.state == "done", detail.error
    assert detail.model_name == own_model.name and detail.model_version == own_model.version
    folder = pipeline.job_folder(service, job_id)
    card = json.loads((folder / "viewer" / "report.json").read_text())["model"]["model_card"]
    assert card["uncertainty"]["method"] == own_model.method
    assert card["provenance"]["authors"] == own_model.authors and card["provenance"]["name"] == own_model.name
    files = sorted((folder / "dicom").glob("*.dcm"))
    assert {path.stem for path in files} >= {"seg", "sr", "pmap-uncertainty-entropy", "pmap-uncertainty-sd-et",
                                             "pmap-gradcam-et"}
    for path in files:
        assert_dciodvfy_clean(path)
    # what the PACS holds: every object, readable, saying which model made it, by which method, where Grad-CAM looked
    held = {item["MainDicomTags"]["SOPInstanceUID"]: item["ID"] for item in orthanc.instances()}
    written = {pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID: path.stem for path in files}
    assert set(written) <= set(held)
    by_kind = {written[uid]: pydicom.dcmread(io.BytesIO(httpx.get(f"{orthanc.url}/instances/{held[uid]}/file",
                                                                   timeout=30).content)) for uid in written}
    sd = by_kind["pmap-uncertainty-sd-et"]
    explanation = sd.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0].LUTExplanation
    assert explanation == f"{own_model.explanation} standard deviation of P(ET)"
    derivation = sd.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].DerivationDescription
    assert f"uncertainty: {own_model.method_words}; Grad-CAM layer: {own_model.gradcam_layer}" in derivation
    cam = by_kind["pmap-gradcam-et"].SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert cam.LUTExplanation == f"3D Grad-CAM of class ET at {own_model.gradcam_layer}"
    texts, codes = _sr_values(by_kind["sr"])
    assert own_model.method_code in codes and not codes & ({"MC-DROPOUT", "TTA-FLIPS", "TTA-FLIPS-FOLDS"}
                                                            - {own_model.method_code})
    assert f"Grad-CAM layer: {own_model.gradcam_layer}" in texts
    assert f"uncertainty: {own_model.method_words}" in texts
    seg = by_kind["seg"].SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert seg.AlgorithmName == own_model.name and seg.AlgorithmVersion == own_model.version
    # the authors travel with the objects, not only in the job folder
    assert f"authors={own_model.authors.replace(',', ';')}" in seg.AlgorithmParameters
    assert f"model authors: {own_model.authors}" in texts


@pytest.mark.slow
@pytest.mark.integration
def test_a_study_without_a_sequence_the_model_needs_fails_and_delivers_nothing(own_model: OwnModel,
                                                                               service: Settings, orthanc,
                                                                               tmp_path: Path) -> None:
    store, job_id = run_worker(service, tmp_path / "spool", ("T1ce", "FLAIR"))
    detail = store.get_job(job_id)
    assert detail.state == "failed"
    assert f"model {own_model.path} needs the sequences {own_model.sequences}" in detail.error
    assert detail.error.endswith("the study lacks t1, t2"), detail.error
    assert not detail.outputs
    assert not list(pipeline.job_folder(service, job_id).glob("dicom/*"))
    assert not list(service.outbox_dir.glob("**/*.dcm"))
    assert orthanc.instances() == []


def _sr_values(dataset: pydicom.Dataset) -> tuple[set[str], set[str]]:
    """Every TEXT value and every code value anywhere in an SR's content tree."""
    texts, codes = set(), set()
    for element in dataset.iterall():
        if element.keyword == "TextValue":
            texts.add(str(element.value))
        elif element.keyword == "CodeValue":
            codes.add(str(element.value))
    return texts, codes
