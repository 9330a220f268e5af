"""Grad-CAM that explains (not a copy of the mask, never empty for a predicted class), TTA and post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuroseg.model.data import find_case_files, read_case
from neuroseg.model.inference import segment
from neuroseg.model.runtime import load_model
from neuroseg.model.gradcam import GRADCAM_MIN_VOXELS, grad_cam, grad_cam_layer, gradcam_score_masks
from neuroseg.model.io import build_report
from neuroseg.model.network import GRADCAM_TARGET_LAYER, default_gradcam_layer
from neuroseg.model.postprocess import PostprocessConfig, postprocess_labels
from tests.model.model_helpers import TINY, head_volume, lps_affine, tiny_model
from tests.services import SHARED_DATA

REAL_CASE = SHARED_DATA / "real-gt" / "brats2015-multiclass" / "brats_2013_pat0006_1"


@pytest.fixture(scope="module")
def real_result():
    """The shipped weights on a real multi-class case, cropped around the tumour so it runs in seconds."""
    case = read_case(find_case_files(REAL_CASE))
    tumour = np.argwhere(case.label > 0)
    lo = np.maximum(tumour.min(axis=0) - 20, 0)
    hi = np.minimum(tumour.max(axis=0) + 20, case.label.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    images = {k: v[box] for k, v in case.images.items()}
    torch.set_num_threads(1)
    model = load_model(None, "cpu")
    return segment(images, case.affine, model, mc_samples=1, seed=0), images


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


@pytest.mark.slow
def test_gradcam_of_a_real_case_is_not_the_predicted_mask(real_result):
    result, images = real_result
    assert result.gradcam_layer == GRADCAM_TARGET_LAYER
    inside = np.any([image != 0 for image in images.values()], axis=0)
    explained = 0
    for name, value in (("ncr", 1), ("ed", 2), ("et", 4)):
        mask = result.labels == value
        cam = result.gradcam[name]
        if not mask.any():
            assert not cam.any()
            continue
        explained += 1
        assert cam.max() == pytest.approx(1.0, abs=1e-3), name
        assert _dice(cam > 0.5, mask) < 0.95, name
        correlation = np.corrcoef(cam[inside], mask[inside].astype(float))[0, 1]
        assert correlation < 0.95, (name, correlation)
    assert explained >= 2


@pytest.mark.slow
def test_report_records_the_gradcam_layer(real_result):
    result, images = real_result
    report = build_report(result, result.labels.shape, lps_affine())
    assert report["model"]["gradcam_layer"] == report["gradcam_target_layer"] == GRADCAM_TARGET_LAYER


def test_a_class_with_few_voxels_gets_a_non_empty_map():
    model = tiny_model()
    images = {"flair": head_volume((24, 24, 24)), "t1ce": head_volume((24, 24, 24), seed=1)}
    from neuroseg.model.preprocess import preprocess

    case = preprocess(images, lps_affine(), spacing=1.0)
    inputs = torch.from_numpy(case.network_input()[None])
    voxels = int(np.prod(case.shape))
    predicted = torch.zeros(voxels, dtype=torch.long)
    predicted[voxels // 2: voxels // 2 + 2] = 1  # two NCR voxels: fewer than the score needs
    probabilities = torch.softmax(torch.randn(4, voxels, generator=torch.Generator().manual_seed(0)), dim=0)
    masks = gradcam_score_masks(probabilities, predicted, 4)
    assert int(masks[0].sum()) == GRADCAM_MIN_VOXELS
    deep = grad_cam_layer(model, inputs, masks.reshape(3, *case.shape), default_gradcam_layer(TINY))
    assert deep.shape == (3, *case.shape) and deep[0].max() == pytest.approx(1.0)
    head = grad_cam(model, torch.randn(TINY.channels[0], voxels), predicted, score_masks=masks)
    assert head[0].max() == pytest.approx(1.0)


def test_an_unknown_gradcam_layer_is_refused_naming_the_valid_ones():
    images = {"flair": head_volume((20, 20, 20))}
    with pytest.raises(ValueError, match="trunk.decoders.0"):
        segment(images, lps_affine(), tiny_model(), mc_samples=1, gradcam_layer="trunk.nowhere")


def test_tta_variance_is_reported_beside_the_mc_variance():
    model = tiny_model()
    images = {"flair": head_volume((20, 22, 18)), "t1ce": head_volume((20, 22, 18), seed=2)}
    plain = segment(images, lps_affine(), model, mc_samples=3, gradcam=False, seed=1)
    assert plain.tta_variance == {}
    flipped = segment(images, lps_affine(), model, mc_samples=3, gradcam=False, seed=1, tta=True)
    assert set(flipped.tta_variance) == {"ncr", "ed", "et"}
    for name, variance in flipped.tta_variance.items():
        assert variance.shape == flipped.labels.shape and variance.min() >= 0
        assert not np.array_equal(variance, flipped.variance[name])
    assert sum(float(v.max()) for v in flipped.tta_variance.values()) > 0
    stacked = np.stack([flipped.probabilities[k] for k in ("background", "ncr", "ed", "et")])
    assert np.allclose(stacked.sum(axis=0), 1.0, atol=1e-5)
    assert "tta" in flipped.timings


def test_postprocessing_relabels_a_small_et_and_removes_small_components():
    affine = np.eye(4)  # 1 mm voxels: 1000 voxels = 1 mL
    labels = np.zeros((40, 40, 40), np.uint8)
    labels[5:20, 5:20, 5:20] = 2  # 3.4 mL of edema, the main lesion
    labels[10:13, 10:13, 10:13] = 4  # 0.027 mL of ET
    labels[30:33, 30:33, 30:33] = 2  # 0.027 mL stray component
    out, changes = postprocess_labels(labels, affine, PostprocessConfig(min_et_ml=0.5, min_component_ml=0.1))
    assert not np.any(out == 4) and np.count_nonzero(out == 1) == 27
    assert not out[30:33, 30:33, 30:33].any() and changes["removed_components"] == 1
    assert changes["et_to_ncr_ml"] == pytest.approx(0.027)
    kept, _ = postprocess_labels(labels, affine, PostprocessConfig(min_et_ml=0.01, min_component_ml=0.0))
    assert np.array_equal(kept, labels)
    off, _ = postprocess_labels(labels, affine, PostprocessConfig(enabled=False))
    assert off is labels
    with pytest.raises(ValueError, match="min_et_ml"):
        PostprocessConfig(min_et_ml=-1)


def test_segment_applies_postprocessing_and_says_so():
    model = tiny_model()
    images = {"flair": head_volume((20, 20, 20))}
    result = segment(images, lps_affine(), model, mc_samples=1, gradcam=False,
                     postprocess=PostprocessConfig(min_et_ml=1e6, min_component_ml=0.0))
    assert not np.any(result.labels == 4)
    assert result.postprocessing["min_et_ml"] == 1e6
