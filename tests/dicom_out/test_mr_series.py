"""The synthetic MR series writer: headers, geometry, determinism, validity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from neuroseg.dicom_out.mr_series import (
    MR_IMAGE_STORAGE,
    StudyIdentity,
    default_protocol,
    nifti_to_slices,
    write_mr_series,
    write_study_from_nifti,
)
from tests.dicom_out.dciodvfy import assert_dciodvfy_clean

ROLES = ("T1", "T1ce", "T2", "FLAIR")


def oblique_affine() -> np.ndarray:
    """(slices, rows, columns) affine: 3 mm slices, 0.9 x 0.8 mm pixels, 10 degrees about L."""
    angle = np.radians(10)
    row_cosine = np.array([1.0, 0.0, 0.0])
    column_cosine = np.array([0.0, np.cos(angle), -np.sin(angle)])
    normal = np.cross(row_cosine, column_cosine)
    affine = np.eye(4)
    affine[:3, 0] = normal * 3.0
    affine[:3, 1] = column_cosine * 0.9
    affine[:3, 2] = row_cosine * 0.8
    affine[:3, 3] = [-30.0, -40.0, 10.0]
    return affine


def read_series(paths: list[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(path) for path in paths]


@pytest.mark.parametrize("role", ROLES)
def test_series_passes_dciodvfy_with_role_headers(tmp_path: Path, role: str) -> None:
    volume = np.arange(6 * 20 * 24, dtype=np.int16).reshape(6, 20, 24) % 900
    paths = write_mr_series(volume, oblique_affine(), tmp_path, study=StudyIdentity(), series_number=3, role=role)
    assert [path.name for path in paths] == [f"IM{k:04d}.dcm" for k in range(1, 7)]
    ds = pydicom.dcmread(paths[0])
    protocol = default_protocol(role, "2D")
    assert ds.SOPClassUID == MR_IMAGE_STORAGE
    assert ds.SeriesDescription == protocol.series_description
    assert float(ds.EchoTime) == protocol.echo_time
    assert ("ContrastBolusAgent" in ds) == (role == "T1ce")
    assert ("InversionTime" in ds) == (role == "FLAIR")
    assert ds.BodyPartExamined == "BRAIN"
    assert_dciodvfy_clean(paths[0])
    assert_dciodvfy_clean(paths[-1])


def test_geometry_follows_affine(tmp_path: Path) -> None:
    affine = oblique_affine()
    volume = np.zeros((5, 10, 12), dtype=np.uint16)
    datasets = read_series(write_mr_series(volume, affine, tmp_path, study=StudyIdentity(),
                                           series_number=4, role="T2"))
    first = datasets[0]
    assert (first.Rows, first.Columns) == (10, 12)
    np.testing.assert_allclose([float(v) for v in first.PixelSpacing], [0.9, 0.8], atol=1e-6)
    np.testing.assert_allclose([float(v) for v in first.ImageOrientationPatient],
                               [*affine[:3, 2] / 0.8, *affine[:3, 1] / 0.9], atol=1e-6)
    assert float(first.SliceThickness) == pytest.approx(3.0)
    for k, ds in enumerate(datasets):
        assert ds.InstanceNumber == k + 1
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient],
                                   affine[:3, 3] + k * affine[:3, 0], atol=1e-5)
    assert len({ds.FrameOfReferenceUID for ds in datasets}) == 1


def test_integer_pixels_are_stored_unchanged_and_floats_rescaled(tmp_path: Path) -> None:
    signed = np.linspace(-500, 800, 4 * 8 * 8).reshape(4, 8, 8).round().astype(np.int32)
    datasets = read_series(write_mr_series(signed, np.eye(4), tmp_path / "int", study=StudyIdentity(),
                                           series_number=1, role="T1"))
    assert datasets[0].PixelRepresentation == 1 and "RescaleSlope" not in datasets[0]
    np.testing.assert_array_equal(np.stack([ds.pixel_array for ds in datasets]), signed)

    floats = np.random.default_rng(1).normal(50.0, 20.0, (4, 8, 8)).astype(np.float32)
    datasets = read_series(write_mr_series(floats, np.eye(4), tmp_path / "float", study=StudyIdentity(),
                                           series_number=2, role="T1"))
    restored = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in datasets])
    np.testing.assert_allclose(restored, floats, atol=float(datasets[0].RescaleSlope))
    assert_dciodvfy_clean(tmp_path / "float" / "IM0001.dcm")


def test_uids_are_deterministic_per_seed(tmp_path: Path) -> None:
    volume = np.ones((2, 4, 4), dtype=np.uint16)

    def uids(folder: str, seed: str) -> list[tuple[str, str, str]]:
        paths = write_mr_series(volume, np.eye(4), tmp_path / folder, study=StudyIdentity(uid_seed=seed),
                                series_number=7, role="FLAIR")
        return [(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) for ds in read_series(paths)]

    assert uids("a", "one") == uids("b", "one")
    assert uids("a", "one") != uids("c", "two")
    assert len({uid for row in uids("a", "one") for uid in row}) == 4


@pytest.mark.parametrize(
    ("volume", "affine", "error", "match"),
    [
        (np.zeros((4, 4)), np.eye(4), ValueError, "3D"),
        (np.full((2, 3, 3), np.nan), np.eye(4), ValueError, "NaN"),
        (np.zeros((2, 3, 3)), np.diag([1.0, 1.0, 0.0, 1.0]), ValueError, "zero-length"),
        (np.zeros((2, 3, 3), dtype=object), np.eye(4), TypeError, "numeric"),
    ],
)
def test_bad_input_names_the_problem(tmp_path: Path, volume, affine, error, match) -> None:
    with pytest.raises(error, match=match):
        write_mr_series(volume, affine, tmp_path, study=StudyIdentity(), series_number=1, role="T1")


def test_unknown_role_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="role 'DWI' is not one of T1, T1ce, T2, FLAIR"):
        write_mr_series(np.zeros((1, 2, 2)), np.eye(4), tmp_path, study=StudyIdentity(), series_number=1,
                        role="DWI")


def test_real_tcga_study_round_trips_through_dicom(tmp_path: Path, shared_data: Path) -> None:
    folder = shared_data / "real-mri" / "tcga-fg-6692-native"
    paths = {role: folder / f"{role.lower()}.nii.gz" for role in ROLES}
    identity = StudyIdentity(patient_name="TCGA^FG-6692", patient_id="TCGA-FG-6692", uid_seed="tcga-fg-6692")
    written = write_study_from_nifti(paths, tmp_path, identity)
    assert sorted(written) == sorted(ROLES)
    study_uids = set()
    for role, files in written.items():
        array, affine = nifti_to_slices(paths[role])
        datasets = read_series(files)
        np.testing.assert_array_equal(np.stack([ds.pixel_array for ds in datasets]), array)
        normal = np.cross(affine[:3, 2], affine[:3, 1])
        locations = [float(np.asarray(ds.ImagePositionPatient, float) @ normal) for ds in datasets]
        assert np.all(np.diff(locations) > 0), "slices must run along the normal"
        study_uids.add(datasets[0].StudyInstanceUID)
        assert_dciodvfy_clean(files[len(files) // 2])
    assert len(study_uids) == 1
    assert pydicom.dcmread(written["T1ce"][0]).SeriesDescription == "AX T1 POST GD"
    assert pydicom.dcmread(written["FLAIR"][0]).SeriesDescription == "AX T2 FLAIR"


@pytest.mark.integration
def test_dcm2niix_reads_back_the_nifti_geometry(tmp_path: Path, shared_data: Path) -> None:
    """dcm2niix, the reference converter, turns our series back into the same affine and voxels."""
    import shutil
    import subprocess

    import nibabel as nib

    source = shared_data / "real-mri" / "tcga-fg-6692-native" / "flair.nii.gz"
    files = write_study_from_nifti({"FLAIR": source}, tmp_path / "dicom", StudyIdentity(uid_seed="dcm2niix"))["FLAIR"]
    binary = shutil.which("dcm2niix")
    assert binary, "dcm2niix is not installed (Debian package dcm2niix)"
    subprocess.run([binary, "-o", str(tmp_path), "-f", "back", "-z", "n", str(files[0].parent)],
                   check=True, capture_output=True, timeout=120)
    original, back = nib.load(source), nib.load(tmp_path / "back.nii")
    np.testing.assert_allclose(back.affine, original.affine, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(back.dataobj), np.asarray(original.dataobj))
