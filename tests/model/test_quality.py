"""The per-study quality estimate: measurements, checks and reasons, the fit, and hard phantoms end to end."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from neuroseg.model import quality as q

AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])


def _smooth_head(seed: int = 0, shape=(40, 48, 48)) -> np.ndarray:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(rng.random(shape), 3) * 4000 + 500
    grid = np.indices(shape) - np.array(shape)[:, None, None, None] / 2
    return np.where((grid ** 2).sum(0) < 18 ** 2, image, 0).astype(np.float32)


def _result(labels: np.ndarray, p_tumour: float = 0.95, sample_volumes: dict | None = None):
    probs = {name: np.zeros(labels.shape, np.float32) for name in ("background", "ncr", "ed", "et")}
    for value, name in ((1, "ncr"), (2, "ed"), (4, "et")):
        probs[name][labels == value] = p_tumour
    probs["background"] = 1 - probs["ncr"] - probs["ed"] - probs["et"]
    entropy = np.where(labels > 0, 0.2, 0.0).astype(np.float32)
    return SimpleNamespace(labels=labels, probabilities=probs, entropy=entropy,
                           sample_volumes_ml=sample_volumes or {})


def _labels(shape=(40, 48, 48)) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    labels[14:26, 16:32, 16:32] = 2
    labels[17:23, 20:28, 20:28] = 4
    labels[19:21, 22:26, 22:26] = 1
    return labels


def test_soft_dice_is_one_for_certain_masks_and_lower_for_hesitant_ones() -> None:
    mask = np.zeros((10, 10, 10), bool)
    mask[2:6, 2:6, 2:6] = True
    assert q.soft_dice(mask.astype(np.float32), mask) == pytest.approx(1.0)
    assert q.soft_dice(mask * 0.6, mask) == pytest.approx(2 * 0.6 / 1.6)
    assert q.soft_dice(np.zeros((10, 10, 10), np.float32), np.zeros((10, 10, 10), bool)) is None


def test_noise_indicator_separates_anatomy_from_noise() -> None:
    image = _smooth_head()
    noise = np.where(image > 0, np.random.default_rng(1).normal(2000, 500, image.shape), 0).astype(np.float32)
    assert q.neighbour_correlation(image, AFFINE) > 0.9
    assert abs(q.neighbour_correlation(noise, AFFINE)) < 0.1


def test_checks_name_the_problem_in_plain_words() -> None:
    image = _smooth_head()
    labels = _labels()
    images = {"t1": image, "t1ce": image, "t2": image,
              "flair": np.where(image > 0, np.random.default_rng(2).normal(2000, 400, image.shape), 0)
              .astype(np.float32)}
    thick = np.diag([1.0, 1.0, 8.0, 1.0])
    result = _result(labels, sample_volumes={"et": [2.0, 4.0, 6.5, 1.6, 6.4], "wt": [30.0] * 5})
    m = q.measure(result, images, AFFINE, native={"t1ce": (image[:, :, ::8], thick)})
    reasons = q.assess(m).reasons
    assert any(r.startswith("FLAIR looks like noise") for r in reasons), reasons
    assert any(r.startswith("thick slices: T1ce voxels are 8.0 mm") for r in reasons), reasons
    assert "enhancing region unstable across samples: volume 4.1 +- 2.1 mL" in reasons
    assert not any("T1 looks like noise" in r for r in reasons)


def test_a_clean_confident_study_is_not_flagged_and_an_empty_one_is() -> None:
    image = _smooth_head()
    images = dict.fromkeys(("t1", "t1ce", "t2", "flair"), image)
    clean = q.assess(q.measure(_result(_labels()), images, AFFINE))
    assert not clean.review_recommended, clean.reasons
    assert clean.expected_dice["WT"] > 0.9
    empty = q.assess(q.measure(_result(np.zeros_like(_labels())), images, AFFINE))
    assert empty.review_recommended and empty.reasons[0].startswith("no tumour found")


def test_registration_failure_is_a_reason() -> None:
    image = _smooth_head()
    images = dict.fromkeys(("t1", "t1ce", "t2", "flair"), image)
    outcome = SimpleNamespace(reason="implausible movement (25.0 deg, 4.0 mm, mutual information -0.4 -> -0.5); "
                                     "scanner geometry kept")
    verdict = q.assess(q.measure(_result(_labels()), images, AFFINE, registrations={"t2": outcome}))
    assert verdict.review_recommended
    assert verdict.reasons == ["T2 could not be co-registered: " + outcome.reason]


def _sample(case: str, soft: float, true: float) -> dict:
    m = q.Measurements(soft_dice={"WT": soft, "TC": None, "ET": None}, volume_ml={"WT": 30.0, "TC": 0, "ET": 0},
                       sample_volume_ml={}, uncertain_fraction=1 - soft, sequences_used=["flair"],
                       sequences_missing=[], checks={})
    return {"case": case, "dice": {"WT": true, "TC": None, "ET": None}, "measurements": m}


def test_fit_ranks_cases_flags_every_bad_one_and_round_trips(tmp_path) -> None:
    rng = np.random.default_rng(3)
    samples = [_sample(f"c{i}", s, float(np.clip(1.4 * s - 0.45 + rng.normal(0, 0.02), 0, 1)))
               for i, s in enumerate(np.linspace(0.55, 0.95, 12))]
    model = q.fit_quality_model(samples)
    assert model.fit["spearman"]["WT"] > 0.9
    assert model.fit["bad_flagged"] == model.fit["bad_cases"] > 0
    assert model.wt_threshold >= 0.7
    path = tmp_path / "weights.quality.json"
    q.write_json(model.to_dict(), path)
    again = q.QualityModel.from_dict(json.loads(path.read_text()))
    assert again.expected_dice(samples[0]["measurements"]) == model.expected_dice(samples[0]["measurements"])
    picture = q.reliability_plot(model.fit["cases"], tmp_path / "reliability.png", threshold=model.wt_threshold)
    assert picture.read_bytes().startswith(b"\x89PNG")


def test_the_shipped_weights_have_a_fit_made_on_them() -> None:
    from neuroseg.model.checkpoint import SHIPPED_WEIGHTS

    model = q.load_quality_model(None)
    assert model.fitted, "no quality fit beside the shipped weights: run neuroseg quality fit"
    assert model.weights_sha256 == q.file_sha256(SHIPPED_WEIGHTS), \
        "the quality fit was made on other weights: refit with neuroseg quality fit"


@pytest.fixture(scope="module")
def shipped():
    from neuroseg.model.runtime import load_model

    return load_model(None, device="cpu"), q.load_quality_model(None)


def _assess_phantom(shipped, seed: int, variant: str):
    from neuroseg.model.evaluate import hard_phantom, quality_sample

    model, fit = shipped
    sample = quality_sample(model, hard_phantom(seed, variant), mc_samples=5)
    return sample, q.assess(sample["measurements"], fit)


@pytest.mark.slow
def test_an_easy_phantom_is_not_flagged(shipped) -> None:
    sample, verdict = _assess_phantom(shipped, 990001, "easy")
    assert sample["dice"]["WT"] > 0.8
    assert not verdict.review_recommended, verdict.reasons
    assert verdict.expected_dice["WT"] == pytest.approx(sample["dice"]["WT"], abs=0.15)


@pytest.mark.slow
def test_flair_replaced_by_noise_is_flagged_with_that_reason(shipped) -> None:
    _, verdict = _assess_phantom(shipped, 990002, "flair-noise")
    assert verdict.review_recommended
    assert any(r.startswith("FLAIR looks like noise") for r in verdict.reasons), verdict.reasons


@pytest.mark.slow
def test_thick_slices_with_strong_bias_are_flagged_with_those_reasons(shipped) -> None:
    _, verdict = _assess_phantom(shipped, 990003, "thick8-bias")
    assert verdict.review_recommended
    assert any(r.startswith("thick slices:") and "8.0 mm" in r for r in verdict.reasons), verdict.reasons
    assert any(r.startswith("strong intensity nonuniformity (bias field)") for r in verdict.reasons), verdict.reasons
