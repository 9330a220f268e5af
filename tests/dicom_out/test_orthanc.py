"""A real PACS (Orthanc on loopback) accepts every object, filed in the source study."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from scipy import ndimage

from neuroseg.dicom_out import EncodedObject, EncodeOptions, EncodeRequest, Peer, deliver, encode_study
from neuroseg.dicom_out.mr_series import StudyIdentity, write_study_from_nifti
from tests.dicom_out.dciodvfy import assert_dciodvfy_clean
from tests.dicom_out.synthetic import synthetic_study

pytestmark = pytest.mark.integration

SOP_CLASS_NAMES = {
    "1.2.840.10008.5.1.4.1.1.4": "MR",
    "1.2.840.10008.5.1.4.1.1.66.4": "SEG",
    "1.2.840.10008.5.1.4.1.1.30": "PM",
    "1.2.840.10008.5.1.4.1.1.104.3": "STL",
    "1.2.840.10008.5.1.4.1.1.66.5": "SURFACE",
    "1.2.840.10008.5.1.4.1.1.88.34": "SR",
    "1.2.840.10008.5.1.4.1.1.7": "SC",
    "1.2.840.10008.5.1.4.1.1.104.1": "PDF",
}


def as_objects(datasets) -> list[EncodedObject]:
    return [EncodedObject("source", str(ds.SOPClassUID), str(ds.SOPInstanceUID), ds) for ds in datasets]


def send_all(orthanc, objects: list[EncodedObject]) -> None:
    results = deliver(objects, Peer(orthanc.ae_title, "127.0.0.1", orthanc.dicom_port, timeout=60))
    failed = [result.to_dict() for result in results if not result.ok]
    assert not failed, failed


def stored_instances(orthanc) -> dict[str, dict]:
    """SOPInstanceUID -> simplified tags of every instance Orthanc holds."""
    stored = {}
    for instance_id in orthanc.get("/instances"):
        tags = httpx.get(f"{orthanc.url}/instances/{instance_id}/simplified-tags", timeout=30).json()
        stored[tags["SOPInstanceUID"]] = tags
    return stored


def check_study_in_orthanc(orthanc, request: EncodeRequest, objects: list[EncodedObject]) -> None:
    stored = stored_instances(orthanc)
    sources = request.source_datasets()
    assert len(stored) == len(sources) + len(objects)
    for obj in objects:
        tags = stored[obj.sop_instance_uid]
        assert tags["SOPClassUID"] == obj.sop_class_uid
        assert tags["StudyInstanceUID"] == request.study_instance_uid
        assert tags["PatientID"] == str(request.reference_series[0].PatientID)
    studies = orthanc.get("/studies")
    assert len(studies) == 1, "results must be filed in the source study, not a new one"
    series = orthanc.get(f"/studies/{studies[0]}/series")
    source_series = {str(ds.SeriesInstanceUID) for ds in sources}
    result_series = {str(obj.dataset.SeriesInstanceUID) for obj in objects}
    assert len(series) == len(source_series | result_series)
    counts: dict[str, int] = {}
    for tags in stored.values():
        name = SOP_CLASS_NAMES[tags["SOPClassUID"]]
        counts[name] = counts.get(name, 0) + 1
    return counts


def test_orthanc_accepts_every_object_of_a_phantom_study(orthanc) -> None:
    study = synthetic_study((24, 64, 64), seed="orthanc-phantom")
    request = study.request(EncodeOptions(mesh_formats={"stl", "surface"}))
    objects = encode_study(request)
    send_all(orthanc, as_objects(request.source_datasets()))
    send_all(orthanc, objects)
    counts = check_study_in_orthanc(orthanc, request, objects)
    assert counts == {"MR": 24 + 12, "SEG": 1, "SURFACE": 1, "PM": 4, "STL": 5, "SR": 1, "SC": 3,
                      "PDF": 1}
    # the deflated float maps arrive as they are and come back with the same values
    pmap = next(obj for obj in objects if obj.kind == "pmap-probability-et")
    (instance,) = orthanc.post("/tools/lookup", pmap.sop_instance_uid)
    syntax = httpx.get(f"{orthanc.url}/instances/{instance['ID']}/metadata/TransferSyntax", timeout=30).text
    assert syntax == pydicom.uid.DeflatedExplicitVRLittleEndian
    stored = pydicom.dcmread(io.BytesIO(httpx.get(f"{orthanc.url}/instances/{instance['ID']}/file", timeout=30).content))
    np.testing.assert_array_equal(stored.pixel_array, pmap.dataset.pixel_array)
    # reprocessing the study with the same model version replaces the results instead of adding more
    send_all(orthanc, encode_study(study.request(EncodeOptions(mesh_formats={"stl", "surface"}))))
    assert check_study_in_orthanc(orthanc, request, objects) == counts


def test_orthanc_accepts_a_label_map_seg(orthanc) -> None:
    study = synthetic_study((8, 32, 32), seed="orthanc-labelmap")
    request = study.request(EncodeOptions(segmentation_type="LABELMAP", maps=(), mesh_formats=()))
    objects = encode_study(request)
    send_all(orthanc, as_objects(request.source_datasets()))
    send_all(orthanc, objects)
    stored = stored_instances(orthanc)
    assert stored[objects[0].sop_instance_uid]["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.66.7"


def load_series(files: list[Path]) -> list[pydicom.Dataset]:
    datasets = [pydicom.dcmread(path) for path in files]
    iop = np.asarray(datasets[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    return sorted(datasets, key=lambda ds: float(np.asarray(ds.ImagePositionPatient, float) @ normal))


def plausible_results(t1ce: np.ndarray) -> dict:
    """A fake tumour inside the brain of the real T1ce: ED shell, ET rim, NCR core, smooth maps."""
    brain = ndimage.binary_fill_holes(ndimage.binary_opening(t1ce > np.percentile(t1ce, 60), iterations=2))
    k, r, c = np.indices(t1ce.shape, dtype=np.float32)
    centre = np.array(ndimage.center_of_mass(brain)) + np.array([0.0, -20.0, 25.0])
    distance = np.sqrt(((k - centre[0]) * 5.5 / 30) ** 2 + ((r - centre[1]) * 0.9 / 30) ** 2
                       + ((c - centre[2]) * 0.9 / 30) ** 2)
    labels = np.zeros(t1ce.shape, np.uint8)
    labels[(distance < 1.0) & brain] = 2
    labels[(distance < 0.55) & brain] = 4
    labels[(distance < 0.3) & brain] = 1
    probabilities = {key: ndimage.gaussian_filter((labels == value).astype(np.float32), 1.5)
                     for key, value in (("ncr", 1), ("ed", 2), ("et", 4))}
    stacked = np.stack([1 - sum(probabilities.values()).clip(0, 1), *probabilities.values()])
    entropy = -(stacked * np.log(np.clip(stacked, 1e-6, 1))).sum(axis=0).astype(np.float32)
    variance = {key: (p * (1 - p) * 0.05).astype(np.float32) for key, p in probabilities.items()}
    gradcam = {key: ndimage.gaussian_filter(p, 4.0) / max(float(ndimage.gaussian_filter(p, 4.0).max()), 1e-6)
               for key, p in probabilities.items()}
    return dict(labels=labels, probabilities=probabilities, entropy=entropy, variance=variance, gradcam=gradcam,
                brain=brain)


@pytest.mark.slow
def test_orthanc_accepts_every_object_of_the_real_tcga_study(orthanc, shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "real-mri" / "tcga-fg-6692-native"
    identity = StudyIdentity(patient_name="TCGA^FG-6692", patient_id="TCGA-FG-6692", uid_seed="tcga-fg-6692",
                             study_description="MR BRAIN W/WO CONTRAST (TCGA-FG-6692)")
    written = write_study_from_nifti({role: folder / f"{role.lower()}.nii.gz" for role in ("T1", "T1ce", "T2", "FLAIR")},
                                     tmp_path / "dicom", identity)
    series = {role: load_series(files) for role, files in written.items()}
    reference = series.pop("T1ce")
    t1ce = np.stack([ds.pixel_array for ds in reference]).astype(np.float32)
    fake = plausible_results(t1ce)
    request = EncodeRequest(
        reference_series=reference, other_series=series, labels=fake["labels"],
        probabilities=fake["probabilities"], variance=fake["variance"], gradcam=fake["gradcam"],
        entropy=fake["entropy"], sequences_used=("t1", "t1ce", "t2", "flair"),
        model_name="neuroseg-unet3d", model_version="0.1.0-test",
        options=EncodeOptions(mesh_formats={"stl", "surface"}, include_brain_surface=True, brain_mask=fake["brain"]),
    )
    assert request.region_volumes_ml()["wt"] > 5.0
    objects = encode_study(request)
    assert "mesh-stl-brain" in [obj.kind for obj in objects]
    for obj in objects:
        if obj.kind in ("seg", "pmap-probability-et", "pmap-uncertainty-entropy", "pmap-gradcam-ncr",
                        "mesh-stl-brain", "mesh-surface", "sr"):
            assert_dciodvfy_clean(obj.dataset)
    send_all(orthanc, as_objects(request.source_datasets()))
    send_all(orthanc, objects)
    counts = check_study_in_orthanc(orthanc, request, objects)
    assert counts == {"MR": 4 * 26, "SEG": 1, "SURFACE": 1, "PM": 4, "STL": 6, "SR": 1, "SC": 3,
                      "PDF": 1}
