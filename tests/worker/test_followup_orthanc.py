"""A follow-up pair through a real Orthanc: the change SEG and the follow-up SR come back valid and true to the store."""

from __future__ import annotations

import io
from pathlib import Path

import highdicom as hd
import httpx
import numpy as np
import pydicom
import pytest

from neuroseg.worker.jobstore import JobStore
from tests.dicom_out.dciodvfy import assert_dciodvfy_clean
from tests.worker.test_followup import _run, _study

pytestmark = pytest.mark.integration

VOLUME = hd.sr.CodedConcept("118565006", "SCT", "Volume")
TIME_POINT = "C2348792"  # Time Point (NCI), TID 1502


def retrieve(orthanc, sop_instance_uid: str, folder: Path) -> Path:
    """The instance as Orthanc stores it, written to ``folder`` (what a viewer would fetch)."""
    (found,) = orthanc.post("/tools/lookup", sop_instance_uid)
    response = httpx.get(f"{orthanc.url}/instances/{found['ID']}/file", timeout=30)
    response.raise_for_status()
    path = folder / f"{sop_instance_uid}.dcm"
    path.write_bytes(response.content)
    return path


def retrieve_change_objects(orthanc, outputs: dict, folder: Path) -> tuple[Path, Path]:
    """The change SEG and the SR as Orthanc holds them, each checked with dciodvfy."""
    folder.mkdir()
    paths = tuple(retrieve(orthanc, outputs[kind].sop_instance_uid, folder) for kind in ("change-seg", "sr"))
    for path in paths:
        assert_dciodvfy_clean(path)
    return paths  # type: ignore[return-value]


def sr_time_points(path: Path) -> dict[str, dict[str, tuple[float, str]]]:
    """time point text -> {tracking UID: (volume ml, source SEG SOP instance)} read with highdicom."""
    report = hd.sr.srread(path)
    out: dict[str, dict[str, tuple[float, str]]] = {}
    for group in report.content.get_image_measurement_groups():
        time_point = next(item for item in group[0].ContentSequence
                          if item.ConceptNameCodeSequence[0].CodeValue == TIME_POINT)
        volume = group.get_measurements(name=VOLUME)[0]
        out.setdefault(time_point.TextValue, {})[group.tracking_uid] = (
            float(volume.value), group.source_images[0].referenced_sop_instance_uid)
    return out


def test_follow_up_pair_round_trips_through_orthanc(tmp_path, make_settings, tiny_checkpoint, orthanc):
    settings = make_settings(model_path=tiny_checkpoint, mc_samples=1, send_maps="", send_reports="",
                             destinations=orthanc.destination)
    store = JobStore.from_settings(settings)
    first = _run(store, settings, _study(tmp_path / "spool", "fu-pacs-first", "20260105", 0.0))
    second = _run(store, settings, _study(tmp_path / "spool", "fu-pacs-second", "20260407", 6.0))
    point = store.get_time_point(second)
    assert point.status == "compared", point.note
    current, prior = store.get_job(second), store.get_job(first)
    assert all(item.status == "delivered" for item in current.deliveries), current.deliveries
    outputs = {item.kind: item for item in current.outputs}
    prior_seg = next(item for item in prior.outputs if item.kind == "seg")

    change_path, sr_path = retrieve_change_objects(orthanc, outputs, tmp_path / "retrieved")

    change = pydicom.dcmread(change_path)
    assert change.StudyInstanceUID == current.study_instance_uid
    assert change.PatientID == "FU-1" and change.IssuerOfPatientID == "HOSP-A"
    assert [item.SegmentLabel.lower() for item in change.SegmentSequence] == [
        "new", "grown", "stable", "shrunk", "vanished"]

    by_time = sr_time_points(sr_path)
    prior_label = f"prior {point.summary['prior']['study_date']}"
    assert set(by_time) == {"current", prior_label}
    assert set(by_time["current"]) == set(by_time[prior_label])  # one tracked finding per region, both times
    # each time point's measurements reference their own study's SEG, as the job store lists them
    assert {uid for _, uid in by_time["current"].values()} == {outputs["seg"].sop_instance_uid}
    assert {uid for _, uid in by_time[prior_label].values()} == {prior_seg.sop_instance_uid}
    assert point.summary["prior"]["seg_sop_instance_uid"] == prior_seg.sop_instance_uid
    # the volumes read back are the store's: the current job's own and the comparison's prior figures
    regions = point.summary["regions"]
    assert sorted(round(value, 2) for value, _ in by_time["current"].values()) == sorted(
        round(current.volumes_ml[key], 2) for key in regions)
    assert sorted(round(value, 2) for value, _ in by_time[prior_label].values()) == sorted(
        round(regions[key]["prior_ml"], 2) for key in regions)
    np.testing.assert_allclose([regions[key]["prior_ml"] for key in regions],
                               [prior.volumes_ml[key] for key in regions], atol=1e-2)
    report = pydicom.dcmread(io.BytesIO(sr_path.read_bytes()))
    other = {item.StudyInstanceUID for item in report.get("PertinentOtherEvidenceSequence", [])}
    assert prior.study_instance_uid in other

    # the 3D viewer's prior surface: the follow-up step left the prior's labels on the current job's grid
    import nibabel as nib

    from neuroseg.worker.followup import PRIOR_LABELS_FILE
    from neuroseg.worker.web.viewer_data import ResultFolder

    kept = nib.load(str(settings.results_dir / second / PRIOR_LABELS_FILE))
    own = nib.load(str(settings.results_dir / second / "viewer" / "seg.nii.gz"))
    assert kept.shape == own.shape and np.allclose(kept.affine, own.affine, atol=1e-4)
    header, arrays = ResultFolder(settings.results_dir / second / "viewer").prior_mesh_arrays()
    assert header["volume_ml"] > 0 and len(arrays["faces"]) > 0


def _phantom_study(root: Path, seed: str, date: str, phantom, affine: np.ndarray) -> "StudyManifest":
    """The phantom's four sequences as one patient's study on ``date``, placed in the scanner by ``affine``."""
    import copy

    from neuroseg.dicom_out.mr_series import StudyIdentity, build_mr_series
    from neuroseg.worker.contracts import SequenceRole, SeriesManifest, StudyManifest

    identity = StudyIdentity(uid_seed=seed, patient_id="FU-PH", patient_name="Phantom^Pair", patient_sex="M",
                             patient_birth_date="19650303", study_date=date)
    series = []
    for number, role in enumerate(("T1", "T1ce", "T2", "FLAIR"), start=2):
        datasets = [copy.deepcopy(ds) for ds in build_mr_series(phantom.images[role.lower()], affine,
                                                                study=identity, series_number=number, role=role)]
        folder = root / identity.resolved_study_instance_uid / str(datasets[0].SeriesInstanceUID)
        folder.mkdir(parents=True)
        for ds in datasets:
            ds.IssuerOfPatientID = "HOSP-B"
            ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        series.append(SeriesManifest(series_instance_uid=str(datasets[0].SeriesInstanceUID), folder=str(folder),
                                     role=SequenceRole.parse(role), confidence=0.9, reasons=("test",),
                                     modality="MR", instance_count=len(datasets)))
    return StudyManifest(study_instance_uid=identity.resolved_study_instance_uid, series=tuple(series),
                         patient_id="FU-PH", patient_name="Phantom^Pair")


@pytest.mark.slow
def test_a_phantom_pair_moved_between_studies_comes_back_unchanged_through_orthanc(
        tmp_path, make_settings, orthanc):
    """The same phantom scanned twice, the second time turned 6 degrees and moved 7 mm: the known change is none.

    With the shipped weights (WT Dice about 0.9 on phantoms) the follow-up must
    register the head back, call the enhancing tumour stable, and put most of
    the tumour in the "stable" segment of the change SEG that Orthanc returns.
    """
    from neuroseg.model.phantom import PhantomConfig, make_phantom
    from tests.model.test_longitudinal import _moved_affine

    config = PhantomConfig(anatomy_spacing_mm=2.0, output_spacing_mm=2.0, skull_probability=1.0,
                           clinical_grid_probability=0.0, multifocal_probability=0.0,
                           no_enhancement_probability=0.0)
    phantom = make_phantom(11, config)
    moved = _moved_affine(phantom.affine, phantom.label.shape, 6.0, (7.0, -4.0, 3.0))
    settings = make_settings(mc_samples=1, send_maps="", send_reports="", destinations=orthanc.destination)
    store = JobStore.from_settings(settings)
    first = _run(store, settings, _phantom_study(tmp_path / "spool", "fu-ph-1", "20260110", phantom,
                                                 phantom.affine))
    second = _run(store, settings, _phantom_study(tmp_path / "spool", "fu-ph-2", "20260410", phantom, moved))
    point = store.get_time_point(second)
    assert point.status == "compared" and point.prior_job_id == first, point.note
    regions = point.summary["regions"]
    truth_wt_ml = float((phantom.label > 0).sum()) * 8.0 / 1000.0  # 2 mm voxels
    assert abs(regions["wt"]["prior_ml"] - truth_wt_ml) < 0.25 * truth_wt_ml
    assert abs(regions["wt"]["current_ml"] - regions["wt"]["prior_ml"]) < 0.15 * regions["wt"]["prior_ml"], regions
    assert point.summary["et_class"]["category"] == "stable", point.summary["et_class"]

    outputs = {item.kind: item for item in store.get_job(second).outputs}
    change_path, sr_path = retrieve_change_objects(orthanc, outputs, tmp_path / "retrieved")
    change = pydicom.dcmread(change_path)
    voxels = {item.SegmentLabel.lower(): 0 for item in change.SegmentSequence}
    labels = {item.SegmentNumber: item.SegmentLabel.lower() for item in change.SegmentSequence}
    frames = change.pixel_array.reshape(-1, *change.pixel_array.shape[-2:])
    for item, frame in zip(change.PerFrameFunctionalGroupsSequence, frames):
        voxels[labels[item.SegmentIdentificationSequence[0].ReferencedSegmentNumber]] += int(frame.sum())
    print(f"WT truth {truth_wt_ml:.1f} ml, prior {regions['wt']['prior_ml']:.1f} ml, current "
          f"{regions['wt']['current_ml']:.1f} ml; change SEG voxels {voxels}")  # figures for the record
    assert voxels["stable"] > 3 * (voxels["new"] + voxels["vanished"]), voxels
    by_time = sr_time_points(sr_path)
    assert sorted(round(value, 2) for value, _ in by_time["prior 20260110"].values()) == sorted(
        round(regions[key]["prior_ml"], 2) for key in regions)
