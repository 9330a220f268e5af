"""segment(): outputs on the input grid, probabilities, MC dropout, determinism, Grad-CAM."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from neuroseg.model.inference import SegmentationResult, segment
from neuroseg.model.runtime import load_model
from neuroseg.model.gradcam import grad_cam
from neuroseg.model.network import build_network
from neuroseg.model.preprocess import preprocess, to_model_grid
from tests.model.model_helpers import TINY, head_volume, lps_affine, rotation, tiny_model

SHAPE = (28, 26, 24)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def result(model) -> SegmentationResult:
    images = {"flair": head_volume(SHAPE), "t1ce": head_volume(SHAPE, seed=1)}
    return segment(images, lps_affine(spacing=(1.0, 1.2, 1.5)), model, mc_samples=6, seed=3)


def test_outputs_are_on_the_input_grid(result: SegmentationResult) -> None:
    arrays = [result.labels, result.entropy, result.mutual_information,
              *result.probabilities.values(), *result.variance.values(), *result.gradcam.values()]
    assert all(a.shape == SHAPE for a in arrays)
    assert set(result.probabilities) == {"background", "ncr", "ed", "et"}
    assert set(result.variance) == set(result.gradcam) == {"ncr", "ed", "et"}
    assert all(a.dtype == np.float32 for a in arrays[1:])


def test_labels_are_brats_values(result: SegmentationResult) -> None:
    assert result.labels.dtype == np.uint8
    assert set(np.unique(result.labels)) <= {0, 1, 2, 4}


def test_probabilities_sum_to_one_and_give_the_labels(result: SegmentationResult) -> None:
    stacked = np.stack([result.probabilities[k] for k in ("background", "ncr", "ed", "et")])
    assert np.allclose(stacked.sum(axis=0), 1.0, atol=1e-5)
    assert np.array_equal(np.array([0, 1, 2, 4])[stacked.argmax(axis=0)], result.labels)


def test_uncertainty_maps_are_in_range(result: SegmentationResult) -> None:
    assert result.entropy.min() >= 0 and result.entropy.max() <= np.log(4) + 1e-5
    assert result.mutual_information.min() >= 0
    assert all(v.min() >= 0 and v.max() <= 0.25 + 1e-6 for v in result.variance.values())


def test_gradcam_is_non_negative_and_at_most_one(result: SegmentationResult) -> None:
    for cam in result.gradcam.values():
        assert cam.min() >= 0 and cam.max() <= 1


def test_volumes_follow_the_labels(result: SegmentationResult) -> None:
    voxel_ml = 1.0 * 1.2 * 1.5 / 1000
    for name, value in (("ncr", 1), ("ed", 2), ("et", 4)):
        assert result.volumes_ml[name] == pytest.approx((result.labels == value).sum() * voxel_ml, abs=1e-3)
    assert result.volumes_ml["wt"] == pytest.approx(result.volumes_ml["ncr"] + result.volumes_ml["ed"]
                                                    + result.volumes_ml["et"], abs=2e-3)
    assert result.volumes_ml["tc"] == pytest.approx(result.volumes_ml["ncr"] + result.volumes_ml["et"], abs=2e-3)


def test_result_records_sequences_model_and_timings(result: SegmentationResult) -> None:
    assert result.sequences_used == ["t1ce", "flair"]
    assert result.model_name == "tiny-test" and result.model_version == "0.test"
    assert {"preprocessing", "inference", "mc_dropout", "gradcam", "postprocessing", "total"} <= set(result.timings)


def test_same_seed_gives_the_same_result(model) -> None:
    images = {"flair": head_volume(SHAPE)}
    first = segment(images, lps_affine(), model, mc_samples=4, seed=7, gradcam=False)
    second = segment(images, lps_affine(), model, mc_samples=4, seed=7, gradcam=False)
    other = segment(images, lps_affine(), model, mc_samples=4, seed=8, gradcam=False)
    assert np.array_equal(first.variance["ed"], second.variance["ed"])
    assert np.array_equal(first.labels, second.labels)
    assert not np.array_equal(first.variance["ed"], other.variance["ed"])


def test_variance_is_zero_with_dropout_off_and_positive_with_it_on(model) -> None:
    images = {"flair": head_volume(SHAPE)}
    one_pass = segment(images, lps_affine(), model, mc_samples=1, gradcam=False)
    assert all(not v.any() for v in one_pass.variance.values()) and not one_pass.mutual_information.any()
    no_dropout = tiny_model(dataclasses.replace(TINY, dropout=0.0))
    off = segment(images, lps_affine(), no_dropout, mc_samples=5, gradcam=False)
    assert max(float(v.max()) for v in off.variance.values()) < 1e-10
    on = segment(images, lps_affine(), model, mc_samples=5, gradcam=False)
    assert max(float(v.max()) for v in on.variance.values()) > 1e-6
    assert on.mutual_information.max() > 0


def test_progress_reports_the_three_stages_in_order(model) -> None:
    calls: list[tuple[str, float]] = []
    segment({"flair": head_volume(SHAPE)}, lps_affine(), model, mc_samples=2,
            progress=lambda stage, fraction: calls.append((stage, fraction)))
    stages = [stage for stage, _ in calls]
    assert [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s] == ["preprocessing", "inference", "explaining"]
    assert all(0.0 <= f <= 1.0 for _, f in calls) and calls[-1] == ("explaining", 1.0)


def test_oblique_input_comes_back_on_its_own_grid(model) -> None:
    affine = np.eye(4)
    affine[:3, :3] = rotation(25, 2) @ np.diag([1.0, 1.0, 2.0])
    result = segment({"t1ce": head_volume(SHAPE)}, affine, model, mc_samples=2)
    assert result.labels.shape == SHAPE
    stacked = np.stack(list(result.probabilities.values()))
    assert np.allclose(stacked.sum(axis=0), 1.0, atol=1e-5)


def test_full_network_scheme_runs_and_gives_uncertainty(model) -> None:
    result = segment({"flair": head_volume(SHAPE)}, lps_affine(), model, mc_samples=3, mc_scheme="full",
                     gradcam=False)
    assert result.labels.shape == SHAPE and result.entropy.max() > 0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"mc_samples": 0}, "mc_samples=0"), ({"mc_scheme": "other"}, "mc_scheme"), ({"overlap": 1.0}, "overlap"),
])
def test_bad_options_are_refused(model, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        segment({"flair": head_volume(SHAPE)}, lps_affine(), model, **kwargs)


def test_missing_checkpoint_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="absent.pt does not exist"):
        load_model(tmp_path / "absent.pt", "cpu")


# --- Grad-CAM on a toy network that learned to find a bright cube ----------------------------------

def _toy_case(seed: int):
    rng = np.random.default_rng(seed)
    corner = rng.integers(4, 16, size=3)
    cube = tuple(slice(int(c), int(c) + 6) for c in corner)
    volume = head_volume((26, 26, 26), seed=seed, cube=cube)
    labels = np.zeros(volume.shape, np.uint8)
    labels[cube] = 3  # class index of ET
    return volume, labels, cube


@pytest.fixture(scope="module")
def toy_model():
    torch.manual_seed(0)
    network = build_network(TINY)
    inputs, targets = [], []
    for seed in range(6):
        volume, labels, _ = _toy_case(seed)
        case = preprocess({"flair": volume}, lps_affine())
        inputs.append(torch.from_numpy(case.network_input()))
        targets.append(torch.from_numpy(to_model_grid(labels, case, order=0).astype(np.int64)))
    optimiser = torch.optim.Adam(network.parameters(), lr=0.02)
    network.train()
    weights = torch.tensor([1.0, 1.0, 1.0, 5.0])
    # enough steps that the cube is learnt whatever the thread count (60 were not with one thread)
    for step in range(150):
        index = step % len(inputs)
        x, y = inputs[index][None], targets[index][None]
        x = x[..., : x.shape[2] // 2 * 2, : x.shape[3] // 2 * 2, : x.shape[4] // 2 * 2]
        y = y[..., : x.shape[2], : x.shape[3], : x.shape[4]]
        loss = torch.nn.functional.cross_entropy(network(x), y, weight=weights)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    from neuroseg.model.runtime import model_from_network

    return model_from_network(network, {"name": "toy", "version": "0"})


def test_gradcam_is_highest_inside_the_planted_cube(toy_model) -> None:
    volume, _, cube = _toy_case(seed=123)
    result = segment({"flair": volume}, lps_affine(), toy_model, mc_samples=2)
    inside = np.zeros(volume.shape, bool)
    inside[cube] = True
    assert (result.labels[inside] == 4).mean() > 0.5, "the toy network should have learned the cube"
    cam = result.gradcam["et"]
    peak = np.unravel_index(np.argmax(cam), cam.shape)
    near = np.zeros(volume.shape, bool)
    near[tuple(slice(s.start - 1, s.stop + 1) for s in cube)] = True
    assert near[peak]
    assert cam[inside].mean() > 3 * cam[~near].mean()
    assert cam.max() == pytest.approx(1.0, abs=1e-3)


def test_gradcam_of_an_absent_class_is_zero(model) -> None:
    features = torch.randn(TINY.channels[0], 100)
    maps = grad_cam(model, features, torch.zeros(100, dtype=torch.long))
    assert maps.shape == (3, 100) and not maps.any()
