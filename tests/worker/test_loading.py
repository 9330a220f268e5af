"""Loading DICOM series into volumes: geometry against dcm2niix, validation, resampling."""

from __future__ import annotations

import copy
import random
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.uid import JPEGLSLossless, RLELossless

from neuroseg.dicom_out.mr_series import StudyIdentity, build_mr_series
from neuroseg.worker.contracts import SequenceRole, SeriesManifest, StudyManifest
from neuroseg.worker.errors import InputError
from neuroseg.worker.loading import load_study, read_series_datasets, series_to_volume

#: the last is one Enhanced MR Image Storage file (96 frames, per-frame functional groups)
REAL_SERIES = ("ge-mr750-t1-mprage-axial", "ge-signa-pd-axial-20", "siemens-prisma-t1-sagittal-prone",
               "siemens-xa30-enhanced-t1w")


def oblique_affine(spacing=(3.0, 1.2, 1.1), degrees=(12.0, -7.0, 20.0), origin=(-40.0, -35.0, 20.0)) -> np.ndarray:
    ax, ay, az = np.radians(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    rotation = rz @ ry @ rx
    affine = np.eye(4)
    # columns: slice step (normal), row step (column cosine), column step (row cosine)
    affine[:3, 0] = rotation[:, 2] * spacing[0]
    affine[:3, 1] = rotation[:, 1] * spacing[1]
    affine[:3, 2] = rotation[:, 0] * spacing[2]
    affine[:3, 3] = origin
    return affine


def make_series(shape=(6, 16, 20), affine=None, role="FLAIR", seed=0, number=3, identity=None):
    rng = np.random.default_rng(seed)
    volume = rng.integers(0, 1000, size=shape).astype(np.int16)
    affine = oblique_affine() if affine is None else affine
    identity = identity or StudyIdentity(uid_seed="loading-test")
    datasets = build_mr_series(volume, affine, study=identity, series_number=number, role=role)
    # the writer's datasets share element objects; copy so a test can damage one slice
    return volume, affine, [copy.deepcopy(ds) for ds in datasets]


def ours_as_nifti(array: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """Our (k, r, c) LPS volume as a RAS NIfTI with axes (c, r, k), the way dcm2niix stores it."""
    ras = affine[:, [2, 1, 0, 3]].copy()
    ras[:2] *= -1
    return nib.Nifti1Image(np.transpose(array, (2, 1, 0)), ras)


@pytest.mark.parametrize("name", REAL_SERIES)
def test_real_series_match_dcm2niix(name, shared_data, tmp_path):
    folder = shared_data / "real-dicom" / name
    volume = series_to_volume(read_series_datasets(folder))
    subprocess.run(["dcm2niix", "-z", "n", "-f", "ref", "-o", str(tmp_path), str(folder)],
                   check=True, capture_output=True)
    reference = nib.as_closest_canonical(nib.load(tmp_path / "ref.nii"))
    ours = nib.as_closest_canonical(ours_as_nifti(volume.array, volume.affine))
    assert ours.shape == reference.shape
    # origin and every voxel step within 0.1 mm (dcm2niix takes the slice step from the first gap,
    # we from first to last slice; the GE PD series rounds positions to 0.1 mm)
    np.testing.assert_allclose(ours.affine, reference.affine, atol=0.1)
    for axis in range(3):
        a, b = ours.affine[:3, axis], reference.affine[:3, axis]
        angle = np.degrees(np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1)))
        assert angle < 0.1, f"axis {axis} is {angle:.3f} degrees off dcm2niix"
    np.testing.assert_array_equal(ours.get_fdata(), reference.get_fdata())


def test_slices_out_of_order_give_the_written_volume():
    volume, affine, datasets = make_series()
    shuffled = list(datasets)
    random.Random(4).shuffle(shuffled)
    loaded = series_to_volume(shuffled)
    np.testing.assert_array_equal(loaded.array, volume)
    np.testing.assert_allclose(loaded.affine, affine, atol=1e-4)
    assert [int(ds.InstanceNumber) for ds in loaded.datasets] == list(range(1, 7))


def test_rescale_slope_and_intercept_are_applied():
    volume = np.linspace(-3.5, 10.25, 6 * 16 * 20).reshape(6, 16, 20)
    datasets = build_mr_series(volume, oblique_affine(), study=StudyIdentity(uid_seed="r"), series_number=1,
                               role="T1")
    assert "RescaleSlope" in datasets[0]
    np.testing.assert_allclose(series_to_volume(datasets).array, volume, atol=0.01)


@pytest.mark.parametrize("position", ["HFS", "HFP", "FFS", "FFP"])
def test_patient_position_does_not_change_geometry(position):
    volume, affine, datasets = make_series()
    for ds in datasets:
        ds.PatientPosition = position
    np.testing.assert_allclose(series_to_volume(datasets).affine, affine, atol=1e-4)


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless], ids=["rle", "jpeg-ls"])
def test_compressed_transfer_syntax_is_decoded(syntax):
    volume, affine, datasets = make_series()
    for ds in datasets:
        ds.compress(syntax)
    np.testing.assert_array_equal(series_to_volume(datasets).array, volume)


def test_enhanced_multiframe_series_matches_single_frame():
    import highdicom as hd

    volume, affine, datasets = make_series()
    for ds in datasets:
        # highdicom's converter wants the single-frame instances in their file form
        ds.ensure_file_meta() if hasattr(ds, "ensure_file_meta") else None
    enhanced = hd.legacy.LegacyConvertedEnhancedMRImage(
        legacy_datasets=datasets[::-1], series_instance_uid=hd.UID(), series_number=90,
        sop_instance_uid=hd.UID(), instance_number=1)
    loaded = series_to_volume([enhanced])
    assert loaded.is_multiframe and len(loaded.frame_numbers) == 6
    np.testing.assert_array_equal(loaded.array, volume)
    np.testing.assert_allclose(loaded.affine, affine, atol=1e-3)


def test_missing_slice_is_refused_naming_the_gap():
    _, _, datasets = make_series(shape=(8, 16, 20))
    del datasets[4]
    with pytest.raises(InputError, match=r"missing slice\(s\): a gap of 6.00 mm .* slices are 3.00 mm apart"):
        series_to_volume(datasets)


def test_mixed_orientations_are_refused():
    _, _, datasets = make_series()
    datasets[2].ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    with pytest.raises(InputError, match="mixed orientations"):
        series_to_volume(datasets)


def test_two_slices_are_refused():
    _, _, datasets = make_series(shape=(2, 16, 20))
    with pytest.raises(InputError, match=r"2 slice\(s\); a volume needs at least 3"):
        series_to_volume(datasets)


def test_uneven_spacing_is_refused():
    _, affine, datasets = make_series(shape=(6, 16, 20))
    normal = affine[:3, 0] / 3.0
    position = np.array([float(v) for v in datasets[3].ImagePositionPatient]) + normal * 1.2
    datasets[3].ImagePositionPatient = [f"{v:.4f}" for v in position]
    with pytest.raises(InputError, match="uneven slice spacing"):
        series_to_volume(datasets)


def test_two_images_at_one_position_are_refused():
    _, _, datasets = make_series()
    datasets.append(copy.deepcopy(datasets[2]))
    with pytest.raises(InputError, match="two images at the same position"):
        series_to_volume(datasets)


def test_corrupt_pixel_data_is_refused(tmp_path):
    _, _, datasets = make_series()
    for ds in datasets:
        ds.save_as(tmp_path / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    victim = tmp_path / f"{datasets[2].SOPInstanceUID}.dcm"
    victim.write_bytes(victim.read_bytes()[:-300])
    with pytest.raises(InputError, match=r"(pixel data|not readable DICOM)"):
        series_to_volume(read_series_datasets(tmp_path, "1.2.3"))


def test_running_out_of_job_time_while_reading_is_not_blamed_on_the_file(tmp_path, monkeypatch):
    from neuroseg.worker import loading
    from neuroseg.worker.errors import JobInterrupted

    _, _, datasets = make_series()
    write_series(datasets, tmp_path)

    def interrupted(*args, **kwargs):
        raise JobInterrupted("soft time limit")  # what Celery's signal handler raises mid-read

    monkeypatch.setattr(loading.pydicom, "dcmread", interrupted)
    with pytest.raises(JobInterrupted):
        read_series_datasets(tmp_path, "1.2.3")


def write_series(datasets, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for ds in datasets:
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    return folder


def manifest_for(study_uid, entries) -> StudyManifest:
    return StudyManifest(study_instance_uid=study_uid, series=tuple(
        SeriesManifest(series_instance_uid=str(datasets[0].SeriesInstanceUID), folder=str(folder),
                       role=SequenceRole.parse(role), confidence=1.0, reasons=("test",),
                       series_description=str(datasets[0].SeriesDescription), instance_count=len(datasets))
        for role, datasets, folder in entries))


def test_study_is_resampled_onto_the_t1ce_grid(tmp_path, make_settings):
    identity = StudyIdentity(uid_seed="grid-test")
    reference_affine = oblique_affine(spacing=(3.0, 2.0, 2.0), degrees=(0, 0, 0), origin=(-20, -16, -9))
    other_affine = oblique_affine(spacing=(1.5, 1.0, 1.0), degrees=(0, 0, 0), origin=(-20, -16, -9))
    ref_volume = np.ones((6, 16, 20), np.int16) * 100
    flair_volume = np.ones((12, 32, 40), np.int16) * 300
    t1ce = build_mr_series(ref_volume, reference_affine, study=identity, series_number=2, role="T1ce")
    flair = build_mr_series(flair_volume, other_affine, study=identity, series_number=3, role="FLAIR")
    manifest = manifest_for(identity.resolved_study_instance_uid, [
        ("T1ce", t1ce, write_series(t1ce, tmp_path / "t1ce")),
        ("FLAIR", flair, write_series(flair, tmp_path / "flair")),
    ])
    study = load_study(manifest, make_settings())
    assert study.reference.role is SequenceRole.T1CE
    assert set(study.images) == {"t1ce", "flair"}
    assert study.images["flair"].shape == (6, 16, 20)
    # inside the overlapping field of view the FLAIR value survives resampling
    assert np.allclose(study.images["flair"][1:-1, 1:-1, 1:-1], 300, atol=1e-3)


def test_a_broken_optional_sequence_is_skipped_with_a_note(tmp_path, make_settings):
    identity = StudyIdentity(uid_seed="skip-test")
    _, _, flair = make_series(role="FLAIR", number=3, identity=identity)
    _, _, t2 = make_series(shape=(2, 16, 20), role="T2", number=4, identity=identity)
    manifest = manifest_for(identity.resolved_study_instance_uid, [
        ("FLAIR", flair, write_series(flair, tmp_path / "flair")),
        ("T2", t2, write_series(t2, tmp_path / "t2")),
    ])
    study = load_study(manifest, make_settings())
    assert set(study.images) == {"flair"} and "T2" in study.skipped
    assert "reference grid is FLAIR" in " ".join(study.notes)


def test_only_a_localizer_is_refused(tmp_path, make_settings):
    _, _, localizer = make_series(role="T1")
    manifest = manifest_for("1.2.3", [("other", localizer, write_series(localizer, tmp_path / "loc"))])
    with pytest.raises(InputError, match="no usable sequence: the model needs a FLAIR or a T1ce"):
        load_study(manifest, make_settings())


def test_two_flairs_are_refused_with_what_to_do(tmp_path, make_settings):
    _, _, a = make_series(number=3)
    _, _, b = make_series(number=4)
    manifest = manifest_for("1.2.3", [("FLAIR", a, tmp_path / "a"), ("FLAIR", b, tmp_path / "b")])
    with pytest.raises(InputError, match="two series have the role FLAIR.*set one of them to 'other'"):
        load_study(manifest, make_settings())


def test_other_frame_of_reference_is_refused_when_configured(tmp_path, make_settings):
    _, _, t1ce = make_series(role="T1ce", number=2, identity=StudyIdentity(uid_seed="for-a"))
    _, _, flair = make_series(role="FLAIR", number=3, identity=StudyIdentity(
        uid_seed="for-a", frame_of_reference_uid="1.2.826.0.1.3680043.8.498.1"))
    manifest = manifest_for("1.2.3", [("T1ce", t1ce, write_series(t1ce, tmp_path / "a")),
                                      ("FLAIR", flair, write_series(flair, tmp_path / "b"))])
    with pytest.raises(InputError, match="frame of reference.*POLICY=refuse"):
        load_study(manifest, make_settings(frame_of_reference_policy="refuse"))


def test_other_frame_of_reference_is_registered_rigidly(tmp_path, make_settings):
    from tests.worker.helpers import axial_affine, blob_volume

    volume = blob_volume((24, 48, 48), 1, "FLAIR")
    affine = axial_affine(spacing=(2.0, 2.0, 2.0), origin=(-48, -48, -24))
    moved = affine.copy()
    moved[:3, 3] += [5.0, -3.0, 4.0]  # the same head, 5/-3/4 mm away in another scanner session
    t1ce = [copy.deepcopy(ds) for ds in build_mr_series(volume, affine, study=StudyIdentity(uid_seed="reg"),
                                                         series_number=2, role="T1ce")]
    flair = [copy.deepcopy(ds) for ds in build_mr_series(
        volume, moved, study=StudyIdentity(uid_seed="reg", frame_of_reference_uid="1.2.826.0.1.3680043.8.498.2"),
        series_number=3, role="FLAIR")]
    manifest = manifest_for(t1ce[0].StudyInstanceUID, [("T1ce", t1ce, write_series(t1ce, tmp_path / "a")),
                                                       ("FLAIR", flair, write_series(flair, tmp_path / "b"))])
    study = load_study(manifest, make_settings())
    assert "FLAIR co-registered to T1ce (different frame of reference): moved by" in " ".join(study.notes)
    inner = (slice(4, -4), slice(8, -8), slice(8, -8))
    error = np.abs(study.images["flair"] - study.images["t1ce"])[inner].mean()
    assert error < 0.05 * np.abs(study.images["t1ce"][inner]).mean()


@pytest.mark.parametrize("coregister", [True, False])
def test_patient_motion_within_one_frame_of_reference_is_undone_when_coregistering(tmp_path, make_settings,
                                                                                   coregister):
    from tests.worker.helpers import axial_affine, blob_volume

    volume = blob_volume((24, 48, 48), 1, "FLAIR")
    affine = axial_affine(spacing=(2.0, 2.0, 2.0), origin=(-48, -48, -24))
    moved = affine.copy()
    moved[:3, 3] += [6.0, -4.0, 4.0]  # the head moved between the series; the frame of reference is the same
    identity = StudyIdentity(uid_seed="motion")
    t1ce = [copy.deepcopy(ds) for ds in build_mr_series(volume, affine, study=identity, series_number=2,
                                                         role="T1ce")]
    flair = [copy.deepcopy(ds) for ds in build_mr_series(volume, moved, study=identity, series_number=3,
                                                          role="FLAIR")]
    assert t1ce[0].FrameOfReferenceUID == flair[0].FrameOfReferenceUID
    manifest = manifest_for(t1ce[0].StudyInstanceUID, [("T1ce", t1ce, write_series(t1ce, tmp_path / "a")),
                                                       ("FLAIR", flair, write_series(flair, tmp_path / "b"))])
    study = load_study(manifest, make_settings(coregister=coregister))
    inner = (slice(4, -4), slice(8, -8), slice(8, -8))
    error = np.abs(study.images["flair"] - study.images["t1ce"])[inner].mean()
    scale = np.abs(study.images["t1ce"][inner]).mean()
    if coregister:
        assert "FLAIR co-registered to T1ce: moved by" in " ".join(study.notes)
        assert error < 0.05 * scale
    else:
        assert not any("co-registered" in note for note in study.notes)
        assert error > 0.15 * scale
