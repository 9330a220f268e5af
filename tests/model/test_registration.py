"""Rigid co-registration: a known head movement is undone, implausible ones are refused, real motion is found."""

from __future__ import annotations

import numpy as np
import pytest

from neuroseg.model.io import read_nifti
from neuroseg.model.phantom import PhantomConfig, make_phantom
from neuroseg.model.registration import register_rigid, resample_onto, to_sitk


@pytest.fixture(scope="module")
def head():
    config = PhantomConfig(anatomy_spacing_mm=2.0, output_spacing_mm=2.0, skull_probability=1.0,
                           multifocal_probability=0.0, noise_fraction=(0.01, 0.01), bias_amplitude=(0.0, 0.0))
    phantom = make_phantom(11, config)
    return phantom.images["t1"], phantom.images["flair"], phantom.affine


def _moved(array: np.ndarray, affine: np.ndarray, degrees: tuple[float, float, float],
           shift_mm: tuple[float, float, float]) -> np.ndarray:
    """The same head after the patient turned by ``degrees`` and moved by ``shift_mm``, on the same grid."""
    import SimpleITK as sitk

    image = to_sitk(array, affine)
    motion = sitk.Euler3DTransform()
    motion.SetCenter(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))
    motion.SetRotation(*np.radians(degrees))
    motion.SetTranslation(shift_mm)
    return sitk.GetArrayFromImage(sitk.Resample(image, image, motion, sitk.sitkLinear, 0.0, sitk.sitkFloat32))


def test_a_head_movement_between_series_is_undone(head):
    t1, flair, affine = head
    moved_flair = _moved(flair, affine, (6.0, -4.0, 5.0), (4.0, -6.0, 3.0))
    outcome = register_rigid(moved_flair, affine, t1, affine)
    assert outcome.accepted, outcome.reason
    assert outcome.metric_after < outcome.metric_before
    assert 6.0 < outcome.rotation_deg < 12.0
    restored = resample_onto(moved_flair, affine, t1.shape, affine, outcome.transform)
    inner = tuple(slice(n // 5, -(n // 5)) for n in t1.shape)
    error_before = np.abs(moved_flair - flair)[inner].mean()
    error_after = np.abs(restored - flair)[inner].mean()
    assert error_after < 0.35 * error_before, (error_before, error_after)


def test_aligned_series_stay_where_the_scanner_put_them(head):
    t1, flair, affine = head
    outcome = register_rigid(flair, affine, t1, affine)
    assert not outcome.accepted and outcome.transform is None
    assert outcome.reason.startswith("already aligned"), outcome.reason


def test_an_implausible_movement_keeps_the_scanner_geometry(head):
    t1, flair, affine = head
    moved_flair = _moved(flair, affine, (6.0, -4.0, 5.0), (4.0, -6.0, 3.0))
    outcome = register_rigid(moved_flair, affine, t1, affine, max_rotation_deg=2.0)
    assert not outcome.accepted and outcome.transform is None
    assert "implausible movement" in outcome.reason and "scanner geometry kept" in outcome.reason


def test_patient_motion_in_the_real_tcga_study_is_found(shared_data):
    # T1 and T1ce carry the same affine, yet the head turned between them (see the module docstring)
    folder = shared_data / "real-mri" / "tcga-fg-6692-native"
    t1, t1_affine = read_nifti(folder / "t1.nii.gz")
    t1ce, t1ce_affine = read_nifti(folder / "t1ce.nii.gz")
    assert np.allclose(t1_affine, t1ce_affine)
    outcome = register_rigid(t1, t1_affine, t1ce, t1ce_affine)
    assert outcome.accepted, outcome.reason
    assert 5.0 < outcome.rotation_deg < 15.0
    assert outcome.metric_after < outcome.metric_before - 0.1
