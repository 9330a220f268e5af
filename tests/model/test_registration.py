"""Rigid co-registration: a known head movement is undone, implausible ones are refused, real motion is found."""

from __future__ import annotations

import numpy as np
import pytest

from neuroseg.model.io import read_nifti
from neuroseg.model.phantom import PhantomConfig, make_phantom
from neuroseg.model.registration import WORKING_SPACING_MM, register_rigid, resample_onto, to_sitk


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


# --- the fast path (registration at the network's working resolution) against the reference path -------


def _labels_of_both_paths(images: dict[str, tuple[np.ndarray, np.ndarray]], reference_key: str):
    """Labels after co-registering every (array, affine) to ``reference_key`` at working resolution and at full."""
    from neuroseg.model.inference import segment
    from neuroseg.model.runtime import load_model

    model = load_model(None, "cpu")
    fixed, fixed_affine = images[reference_key]
    labels = []
    for spacing in (WORKING_SPACING_MM, None):
        aligned = {}
        for key, (array, affine) in images.items():
            outcome = None if key == reference_key else register_rigid(array, affine, fixed, fixed_affine,
                                                                         working_spacing_mm=spacing)
            aligned[key] = resample_onto(array, affine, fixed.shape, fixed_affine, outcome and outcome.transform)
        labels.append(segment(aligned, fixed_affine, model, mc_samples=1, gradcam=False).labels)
    return labels


def _assert_same_labels(fast: np.ndarray, reference: np.ndarray) -> None:
    agreement = float(np.mean(fast == reference))
    dice = _whole_tumour_dice(fast, reference)
    assert agreement >= 0.995, agreement
    assert dice >= 0.99, dice


def test_working_resolution_registration_finds_the_same_movement(head):
    t1, flair, affine = head
    moved_flair = _moved(flair, affine, (6.0, -4.0, 5.0), (4.0, -6.0, 3.0))
    fast = register_rigid(moved_flair, affine, t1, affine)
    reference = register_rigid(moved_flair, affine, t1, affine, working_spacing_mm=None)
    assert fast.accepted and reference.accepted, (fast.reason, reference.reason)
    assert abs(fast.rotation_deg - reference.rotation_deg) < 1.0, (fast.reason, reference.reason)
    assert abs(fast.translation_mm - reference.translation_mm) < 1.0, (fast.reason, reference.reason)


@pytest.mark.slow
def test_fast_path_labels_match_the_reference_path_on_a_phantom():
    config = PhantomConfig(anatomy_spacing_mm=1.5, output_spacing_mm=1.5, skull_probability=1.0,
                           multifocal_probability=0.0, no_enhancement_probability=0.0)
    phantom = make_phantom(5, config)
    images = {key: (array, phantom.affine) for key, array in phantom.images.items()}
    images["flair"] = (_moved(phantom.images["flair"], phantom.affine, (5.0, -3.0, 4.0), (3.0, -4.0, 2.0)),
                       phantom.affine)
    images["t2"] = (_moved(phantom.images["t2"], phantom.affine, (-4.0, 2.0, 0.0), (-2.0, 3.0, 1.0)), phantom.affine)
    fast, reference = _labels_of_both_paths(images, "t1ce")
    _assert_same_labels(fast, reference)


@pytest.mark.slow
def test_fast_path_labels_match_the_reference_path_on_the_real_tcga_study(shared_data):
    # 5 mm slices and 8-13 deg of motion: the labels move with the registration's own noise; the
    # reference path against itself with another sampling seed gave WT Dice 0.948 (99.88 % of voxels
    # equal), the fast path against the reference 0.928 (99.85 %). So the Dice tolerance here is the
    # reference path's own seed-to-seed spread plus 0.05, not the phantom's 0.99: ITK's threaded metric
    # sums make both paths vary from run to run, and 0.03 failed once on a loaded machine.
    from neuroseg.model.inference import segment
    from neuroseg.model.runtime import load_model

    folder = shared_data / "real-mri" / "tcga-fg-6692-native"
    images = {key: read_nifti(folder / f"{key}.nii.gz") for key in ("t1", "t1ce", "t2", "flair")}
    fast, reference = _labels_of_both_paths(images, "t1ce")
    fixed, fixed_affine = images["t1ce"]
    other_seed = {}
    for key, (array, affine) in images.items():
        outcome = None if key == "t1ce" else register_rigid(array, affine, fixed, fixed_affine,
                                                            working_spacing_mm=None, seed=8)
        other_seed[key] = resample_onto(array, affine, fixed.shape, fixed_affine, outcome and outcome.transform)
    reseeded = segment(other_seed, fixed_affine, load_model(None, "cpu"), mc_samples=1, gradcam=False).labels
    own_spread = _whole_tumour_dice(reseeded, reference)
    assert float(np.mean(fast == reference)) >= 0.995
    assert _whole_tumour_dice(fast, reference) >= own_spread - 0.05, own_spread


def _whole_tumour_dice(labels: np.ndarray, reference: np.ndarray) -> float:
    whole, whole_reference = labels > 0, reference > 0
    assert whole_reference.sum() > 0, "the reference path found no tumour: the comparison would prove nothing"
    return float(2 * np.sum(whole & whole_reference) / (whole.sum() + whole_reference.sum()))
