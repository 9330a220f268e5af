"""The fast CPU path (bf16 autocast of the trunk and Grad-CAM passes) against the fp32 reference path.

Both paths run the shipped weights with the same seed (so the same dropout
masks) on one case; the fast path may differ from the reference only by
bf16 rounding. Tolerances, each on the caller's grid:

- labels: equal on >= 99.9 % of the head voxels (``BF16_MIN_AGREEMENT``,
  the bar ``cpu_backend="auto"`` also holds a check window to);
- tumour probabilities: mean absolute difference <= 0.005, the 99.9th
  percentile <= 0.1;
- entropy (nats): mean absolute difference <= 0.01;
- Grad-CAM of each class present in both: Pearson correlation >= 0.95.

On the phantom, and on the real BraTS 2023 case ``brats-gli-00001-000``
(slow: four 240x240x155 volumes).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest
import torch

from neuroseg.model import runtime
from neuroseg.model.inference import mc_head, segment
from neuroseg.model.runtime import BF16_MIN_AGREEMENT, choose_cpu_backend, load_model
from neuroseg.model.io import read_nifti
from neuroseg.model.phantom import make_phantom
from neuroseg.model.preprocess import preprocess
from tests.model.model_helpers import head_volume, lps_affine, tiny_model
from tests.services import SHARED_DATA

REAL_CASE = SHARED_DATA / "real-mri" / "brats-gli-00001-000"
REAL_FILES = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
PROBABILITY_MEAN_TOLERANCE = 0.005
PROBABILITY_P999_TOLERANCE = 0.1
ENTROPY_MEAN_TOLERANCE = 0.01
GRADCAM_MIN_CORRELATION = 0.95


def compare_paths(images: Mapping[str, np.ndarray], affine: np.ndarray, mc_samples: int = 4) -> dict:
    """Run both paths; return the figures the tolerances are stated on."""
    model = load_model(None, "cpu")
    reference = segment(images, affine, model, mc_samples=mc_samples, seed=0, cpu_backend="fp32")
    fast = segment(images, affine, model, mc_samples=mc_samples, seed=0, cpu_backend="bf16")
    assert reference.cpu_backend["name"] == "fp32" and fast.cpu_backend["name"] == "bf16"
    head = np.zeros(reference.labels.shape, dtype=bool)
    for volume in images.values():
        head |= volume > 0
    figures = {"label_agreement": float((reference.labels == fast.labels)[head].mean()), "classes": {}}
    for name in ("ncr", "ed", "et"):
        difference = np.abs(reference.probabilities[name] - fast.probabilities[name])
        row = {"p_mean": float(difference.mean()), "p_999": float(np.quantile(difference, 0.999))}
        a, b = reference.gradcam[name].ravel(), fast.gradcam[name].ravel()
        if a.std() > 0 and b.std() > 0:
            row["gradcam_correlation"] = float(np.corrcoef(a, b)[0, 1])
        figures["classes"][name] = row
    figures["entropy_mean"] = float(np.abs(reference.entropy - fast.entropy).mean())
    return figures


def assert_within_tolerance(figures: dict) -> None:
    assert figures["label_agreement"] >= BF16_MIN_AGREEMENT, figures
    assert figures["entropy_mean"] <= ENTROPY_MEAN_TOLERANCE, figures
    for row in figures["classes"].values():
        assert row["p_mean"] <= PROBABILITY_MEAN_TOLERANCE, figures
        assert row["p_999"] <= PROBABILITY_P999_TOLERANCE, figures
        assert row.get("gradcam_correlation", 1.0) >= GRADCAM_MIN_CORRELATION, figures
    assert any("gradcam_correlation" in row for row in figures["classes"].values()), "no class was explained"


@pytest.mark.slow  # about a minute of CPU: two whole runs of the shipped weights
def test_fast_path_matches_the_reference_on_a_phantom():
    torch.set_num_threads(1)
    phantom = make_phantom(3)
    assert_within_tolerance(compare_paths(phantom.images, phantom.affine))


@pytest.mark.slow
def test_fast_path_matches_the_reference_on_a_real_case():
    torch.set_num_threads(1)
    images, affine = {}, None
    for key, suffix in REAL_FILES.items():
        images[key], affine = read_nifti(next(REAL_CASE.glob(f"*-{suffix}.nii.gz")), key)
    assert_within_tolerance(compare_paths(images, affine))


def _case_and_model():
    model = tiny_model()
    shape = (28, 26, 24)
    case = preprocess({"flair": head_volume(shape), "t1ce": head_volume(shape, seed=1)}, lps_affine(),
                      spacing=model.config.spacing_mm, sequences=model.config.in_sequences)
    return model, torch.from_numpy(case.network_input()[None]), case.mask


def test_auto_keeps_fp32_on_a_cpu_without_native_bf16(monkeypatch):
    model, inputs, mask = _case_and_model()
    monkeypatch.setattr(runtime, "native_bf16_flags", lambda: [])
    chosen = choose_cpu_backend(model, inputs, mask, "auto")
    assert chosen["name"] == "fp32" and "avx512_bf16" in chosen["reason"] and "label_agreement" not in chosen
    assert choose_cpu_backend(model, inputs, mask, "fp32")["name"] == "fp32"


@pytest.mark.parametrize("agreement_bar, expected", [(0.0, "bf16"), (1.01, "fp32")])
def test_auto_takes_bf16_only_when_the_check_window_agrees(monkeypatch, agreement_bar, expected):
    model, inputs, mask = _case_and_model()
    monkeypatch.setattr(runtime, "native_bf16_flags", lambda: ["avx512_bf16"])
    monkeypatch.setattr(runtime, "BF16_MIN_AGREEMENT", agreement_bar)
    chosen = choose_cpu_backend(model, inputs, mask, "auto")
    assert chosen["name"] == expected, chosen
    assert 0.0 <= chosen["label_agreement"] <= 1.0 and chosen["checked_voxels"] > 0
    # an explicit bf16 is the admin's choice: kept, with its agreement recorded
    forced = choose_cpu_backend(model, inputs, mask, "bf16")
    assert forced["name"] == "bf16" and forced["label_agreement"] == chosen["label_agreement"]


def test_per_sample_counts_equal_the_argmax_of_each_sample():
    model = tiny_model()
    features = torch.randn(model.config.channels[0], 5000, generator=torch.Generator().manual_seed(1))
    counts = torch.zeros(7, model.config.n_classes, dtype=torch.int64)
    mc_head(model, features, 7, seed=2, sample_counts=counts)
    head = model.network.head
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        masks = head.sample_masks(7)
    with torch.inference_mode():
        winners = head.mc_logits(head.hidden_units(features), masks).argmax(dim=1)
    expected = torch.stack([(winners == k).sum(dim=1) for k in range(model.config.n_classes)], dim=1)
    assert torch.equal(counts, expected)
