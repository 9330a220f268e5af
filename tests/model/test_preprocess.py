"""Preprocessing: orientation and resampling round trips, head crop, normalisation, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from neuroseg.model.preprocess import preprocess, to_input_grid, to_model_grid
from tests.model.model_helpers import head_volume, lps_affine, rotation

CUBE = (slice(10, 16), slice(8, 13), slice(12, 17))


def _world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    index = np.argwhere(mask).mean(axis=0)
    return (affine @ np.append(index, 1.0))[:3]


def _affines() -> dict[str, np.ndarray]:
    lps = lps_affine()
    ras_stored = lps_affine().copy()
    ras_stored[:2, :2] *= -1  # array axes run R and A: a NIfTI-style RAS+ array in LPS terms
    permuted = np.eye(4)
    permuted[:3, :3] = np.array([[0, 0, 1.0], [1.0, 0, 0], [0, -1.0, 0]]) @ np.diag([1.0, 1.0, 1.0])
    permuted[:3, 3] = [5, -3, 40]
    anisotropic = lps_affine(spacing=(0.8, 0.9, 2.5))
    oblique = np.eye(4)
    oblique[:3, :3] = rotation(20, 2) @ rotation(-12, 0) @ np.diag([1.0, 1.0, 1.5])
    oblique[:3, 3] = [-4, 7, 2]
    return {"lps": lps, "ras": ras_stored, "permuted": permuted, "anisotropic": anisotropic, "oblique": oblique}


@pytest.mark.parametrize("name", list(_affines()))
def test_object_stays_at_its_patient_position(name: str) -> None:
    affine = _affines()[name]
    volume = head_volume(cube=CUBE)
    case = preprocess({"flair": volume}, affine)
    cube_model = case.image[3] > 2.0
    expected = _world_centroid(_cube_mask(volume.shape), affine)
    assert np.allclose(_world_centroid(cube_model, case.affine), expected, atol=1.0)
    spacing = np.linalg.norm(case.affine[:3, :3], axis=0)
    assert np.allclose(spacing, 1.0)


def _cube_mask(shape: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[CUBE] = True
    return mask


@pytest.mark.parametrize("name", ["lps", "ras", "permuted"])
def test_one_mm_axis_aligned_round_trip_is_exact(name: str) -> None:
    affine = _affines()[name]
    volume = head_volume()
    case = preprocess({"t1ce": volume}, affine)
    labels = (volume > 0).astype(np.uint8) * 2
    back = to_input_grid(to_model_grid(labels, case, order=0), case, order=0)
    inside = np.zeros(volume.shape, bool)
    inside[2:-2, 2:-2, 2:-2] = True
    assert back.dtype == np.uint8 and back.shape == volume.shape
    assert np.array_equal(back[inside], labels[inside])


@pytest.mark.parametrize("name", ["anisotropic", "oblique"])
def test_resampled_round_trip_keeps_the_object(name: str) -> None:
    affine = _affines()[name]
    volume = head_volume(cube=CUBE)
    case = preprocess({"flair": volume}, affine)
    back = to_input_grid(to_model_grid(_cube_mask(volume.shape).astype(np.float32), case, order=1), case, order=1)
    assert back.shape == volume.shape
    dice = 2 * ((back > 0.5) & _cube_mask(volume.shape)).sum() / ((back > 0.5).sum() + _cube_mask(volume.shape).sum())
    assert dice > 0.8


def test_crop_keeps_the_head_and_drops_empty_background() -> None:
    volume = np.zeros((60, 60, 40), np.float32)
    volume[20:40, 15:45, 10:30] = head_volume((20, 30, 20))
    case = preprocess({"flair": volume}, lps_affine())
    assert all(n < m for n, m in zip(case.shape, volume.shape))
    assert case.mask.sum() >= (head_volume((20, 30, 20)) > 0).sum() * 0.95


def test_noisy_background_is_not_head() -> None:
    rng = np.random.default_rng(0)
    volume = head_volume((40, 40, 30)) + np.abs(rng.normal(0, 4, (40, 40, 30))).astype(np.float32)
    case = preprocess({"flair": volume}, lps_affine())
    assert case.mask.mean() < 0.8
    assert case.mask.sum() >= (head_volume((40, 40, 30)) > 0).sum() * 0.9


def test_normalisation_is_zero_mean_unit_std_inside_the_mask() -> None:
    case = preprocess({"flair": head_volume() * 7.0 + 3.0}, lps_affine())
    values = case.image[3][case.mask]
    assert abs(values.mean()) < 0.2 and 0.8 < values.std() < 1.2
    assert np.all(case.image[3][~case.mask] == 0)


def test_missing_sequences_are_zero_channels_with_flag_zero() -> None:
    case = preprocess({"flair": head_volume(), "t2": head_volume(seed=2)}, lps_affine())
    assert case.sequences_present == ["t2", "flair"]
    assert case.presence.tolist() == [0.0, 0.0, 1.0, 1.0]
    assert not case.image[0].any() and not case.image[1].any()
    x = case.network_input()
    assert x.shape == (8, *case.shape) and np.all(x[6] == 1) and np.all(x[4] == 0)


@pytest.mark.parametrize(("images", "message"), [
    ({"t1": head_volume()}, "at least one of flair or t1ce; given sequences: t1"),
    ({"flair": head_volume(), "dwi": head_volume()}, "unknown sequence.*'dwi'"),
    ({"flair": head_volume(), "t1": head_volume((20, 20, 20))}, r"different shapes: t1 \(20, 20, 20\), flair"),
    ({"flair": np.zeros((20, 20, 20), np.float32)}, "'flair' is all zero"),
    ({"flair": head_volume()[:, :, 0]}, r"'flair' has shape \(28, 26\) \(2D\)"),
    ({"flair": head_volume()[..., None]}, r"'flair' has shape .* \(4D\)"),
])
def test_bad_input_is_refused_naming_it(images: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        preprocess(images, lps_affine())


def test_nan_voxels_are_refused_naming_the_sequence() -> None:
    volume = head_volume()
    volume[3, 3, 3] = np.nan
    with pytest.raises(ValueError, match="'t1ce' has 1 NaN"):
        preprocess({"t1ce": volume}, lps_affine())


def test_non_array_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="'flair' must be a numpy array"):
        preprocess({"flair": [[1, 2]]}, lps_affine())


def test_singular_affine_is_refused() -> None:
    affine = lps_affine()
    affine[2, 2] = 0
    with pytest.raises(ValueError, match="singular"):
        preprocess({"flair": head_volume()}, affine)


@pytest.mark.parametrize("scales, offsets, cval", [
    ((1 / 3, 1 / 3, 1 / 3), (-3.3, -1.0, 2.0), 1.0),     # the model grid back to 1 mm, partly outside
    ((3.0, 3.0, 2.5), (0.4, 1.0, -2.0), 0.0),            # downsampling onto the model grid
    ((-1 / 3, 1 / 3, 0.5), (79.0, 0.5, 0.0), 0.0),        # a flipped axis
])
def test_trilinear_resampling_equals_scipy(scales, offsets, cval) -> None:
    from scipy import ndimage

    from neuroseg.model.preprocess import resample_grid

    source = np.random.default_rng(3).random((80, 70, 52)).astype(np.float32)
    index_map = np.eye(4)
    index_map[:3, :3] = np.diag(scales)
    index_map[:3, 3] = offsets
    shape = (120, 100, 90)
    expected = ndimage.affine_transform(source, np.diag(scales), offset=offsets, output_shape=shape, order=1,
                                        mode="constant", cval=cval, prefilter=False)
    got = resample_grid(source, index_map, shape, order=1, cval=cval)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_allclose(got, expected, atol=1e-6)
