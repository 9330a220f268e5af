"""Per-study quality: expected Dice per region and a "review recommended" flag with reasons.

Voxel uncertainty maps say *where* a result may be wrong; a reader with forty
studies needs to know *which study* to check. This module turns what the model
already produces into that answer.

Measurements (:func:`measure`), all from one :class:`SegmentationResult` and the inputs:

* **soft Dice** per region (WT, TC, ET): ``2 sum(p_r * M_r) / (sum p_r + sum M_r)``
  between the mean probability of the region ``p_r`` and the predicted (argmax)
  mask ``M_r``: the Dice the result would have if the probabilities were
  calibrated;
* **uncertain fraction**: the share of the predicted whole tumour whose
  predictive entropy exceeds :data:`UNCERTAIN_ENTROPY_NATS`;
* **agreement between MC samples** on each region's volume (the argmax volume
  of every dropout sample, ``SegmentationResult.sample_volumes_ml``): mean, sd
  and their ratio;
* **inputs**: missing sequences, the largest voxel size of each series (thick
  slices), a noise indicator (correlation of in-plane neighbouring voxels inside
  the head: about 0.9 on clean MR, near 0 on noise), an intensity-nonuniformity
  indicator (sd of the heavily smoothed log intensity inside the head of T1 and
  T1ce: a bias field), and the alignment of each sequence with the reference after
  co-registration (normalised mutual information, 1 = independent, 2 =
  identical) plus the registration outcomes where the caller has them.

Combination (:class:`QualityModel`): the expected Dice of each region is a
ridge regression of the true Dice on these measurements, fitted by
``neuroseg quality fit`` on real validation cases and phantoms made hard on
purpose, and stored beside the weights (``<weights>.quality.json``, see
:func:`quality_model_path`). A study is flagged for review when the expected
whole-tumour Dice is below the fitted threshold (the bad-case limit, 0.7,
raised until every bad fit case is flagged) or any fixed check triggers
(noise-like sequence, thick slices, bias field, unstable region volume,
mostly uncertain tumour, failed co-registration, no tumour found). Missing
sequences and plain noise enter the expected Dice only: on the fit cases the
model segmented phantoms without FLAIR at WT Dice 0.87. Each
triggered check gives one plain-words reason. The flag informs; it never
blocks delivery.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)

REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
REGION_WORDS = {"WT": "whole tumour", "TC": "tumour core", "ET": "enhancing region"}
CLASS_OF_LABEL = {1: "ncr", 2: "ed", 4: "et"}
SEQUENCES = ("t1", "t1ce", "t2", "flair")
SEQUENCE_WORDS = {"t1": "T1", "t1ce": "T1ce", "t2": "T2", "flair": "FLAIR"}

UNCERTAIN_ENTROPY_NATS = 0.5
"""A voxel is uncertain above this predictive entropy (ln 4 = 1.39 is the maximum for 4 classes)."""
NOISE_CORRELATION = 0.25
"""A sequence whose in-plane neighbours correlate less than this looks like noise (clean MR: 0.88-0.99 on the
real and phantom fit cases; phantoms with Rician noise at 35 % of white matter 0.31-0.48, still segmented
at WT Dice 0.83-0.85, so plain noise only lowers the expected Dice; a sequence replaced by noise: 0.00)."""
THICK_SLICE_MM = 6.0
"""A FLAIR or T1ce series with a voxel this long or longer has thick slices."""
BIAS_LOG_SD = 0.08
"""Sd of the smoothed log intensity inside the head of T1 or T1ce above which a bias field is reported.
On the fit cases: clean real and phantom T1/T1ce 0.016-0.053, phantoms with a strong bias field
(peak-to-peak log amplitude 1.6) 0.10-0.18."""
BIAS_SEQUENCES = ("t1", "t1ce")
"""Brain tissue is nearly uniform on these, so a smooth trend is the field; on T2 and FLAIR the CSF and
the edema alone reach 0.14-0.15 on clean real cases."""
BIAS_SMOOTHING_MM = 20.0
UNSTABLE_RATIO = 0.3
UNSTABLE_MIN_SD_ML = 1.0
"""A region is unstable across MC samples when its volume sd exceeds both this share of its mean and this many mL."""
UNCERTAIN_MAX_FRACTION = 0.5
MIN_TUMOUR_ML = 0.5
"""Below this predicted whole-tumour volume the study counts as "no tumour found"."""
DEFAULT_WT_THRESHOLD = 0.7
"""Review threshold of the expected WT Dice when no fit is stored (the issue's bad-case limit)."""
WORKING_SPACING_MM = 3.0
"""Grid the alignment and bias indicators are computed on (the network's working resolution)."""

FEATURES = ("soft_dice", "uncertain_fraction", "volume_ratio", "noise_deficit", "thick_excess",
            "bias", "flair_missing", "t1ce_missing", "alignment_deficit")
"""The measurements a fitted :class:`QualityModel` combines, in order (see :func:`feature_vector`)."""


# --- measurements --------------------------------------------------------------------------------


@dataclass
class SequenceCheck:
    """Input checks of one sequence (on its own native grid)."""

    voxel_mm: float
    neighbour_correlation: float
    bias_log_sd: float
    alignment_nmi: float | None = None
    """Normalised mutual information with the reference on the common grid (None for the reference)."""
    registration: str = ""
    """The co-registration outcome in words, when the caller registered the sequence."""
    registration_failed: bool = False


@dataclass
class Measurements:
    """What :func:`measure` finds in one study; everything a :class:`QualityModel` needs."""

    soft_dice: dict[str, float | None]
    volume_ml: dict[str, float]
    sample_volume_ml: dict[str, tuple[float, float]]
    """Region -> (mean, sd) of the per-sample volumes; empty without MC samples."""
    uncertain_fraction: float
    sequences_used: list[str]
    sequences_missing: list[str]
    checks: dict[str, SequenceCheck] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["sample_volume_ml"] = {k: [round(v[0], 3), round(v[1], 3)] for k, v in self.sample_volume_ml.items()}
        return data


def region_mask(labels: np.ndarray, region: str) -> np.ndarray:
    return np.isin(labels, REGIONS[region])


def region_probability(probabilities: Mapping[str, np.ndarray], region: str) -> np.ndarray:
    """p(region) per voxel: the sum of the mean probabilities of its classes."""
    return sum(np.asarray(probabilities[CLASS_OF_LABEL[label]], dtype=np.float32) for label in REGIONS[region])


def soft_dice(probability: np.ndarray, mask: np.ndarray) -> float | None:
    """Soft Dice of a probability map against a mask; None when both are (nearly) empty."""
    p_sum = float(probability.sum(dtype=np.float64))
    m_sum = float(mask.sum())
    if m_sum == 0 and p_sum < 1.0:
        return None
    return 2.0 * float(probability[mask].sum(dtype=np.float64)) / max(p_sum + m_sum, 1e-9)


def _spacing(affine: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def _stride(affine: np.ndarray) -> tuple[int, ...]:
    return tuple(max(1, int(round(WORKING_SPACING_MM / s))) for s in _spacing(affine))


def neighbour_correlation(image: np.ndarray, affine: np.ndarray) -> float:
    """Mean correlation of neighbouring voxels along the two finest axes, inside the imaged head.

    Anatomy makes neighbours alike (about 0.9 on clean MR); noise does not (near 0).
    """
    image = np.asarray(image, dtype=np.float32)
    mask = image > 0
    if mask.sum() < 100:
        return 0.0
    axes = np.argsort(_spacing(affine))[:2]
    values = []
    for axis in axes:
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        a, b = image[tuple(lo)], image[tuple(hi)]
        both = mask[tuple(lo)] & mask[tuple(hi)]
        if both.sum() < 100:
            continue
        x, y = a[both].astype(np.float64), b[both].astype(np.float64)
        if x.std() == 0 or y.std() == 0:
            continue
        values.append(float(np.corrcoef(x, y)[0, 1]))
    return float(np.mean(values)) if values else 0.0


def bias_log_sd(image: np.ndarray, affine: np.ndarray) -> float:
    """Sd of the smoothed log intensity inside the head (a smooth multiplicative field raises it)."""
    stride = _stride(affine)
    small = np.asarray(image, dtype=np.float32)[::stride[0], ::stride[1], ::stride[2]]
    mask = small > np.percentile(small[small > 0], 10) if np.any(small > 0) else small > 0
    mask = ndimage.binary_erosion(mask, iterations=1)
    if mask.sum() < 50:
        return 0.0
    log_image = np.where(mask, np.log(np.maximum(small, 1e-6)), 0.0)
    sigma = [BIAS_SMOOTHING_MM / (s * k) for s, k in zip(_spacing(affine), stride)]
    weight = ndimage.gaussian_filter(mask.astype(np.float32), sigma)
    smooth = ndimage.gaussian_filter(log_image.astype(np.float32), sigma) / np.maximum(weight, 1e-3)
    inner = mask & (weight > 0.5)
    return float(smooth[inner].std()) if inner.any() else 0.0


def normalised_mutual_information(a: np.ndarray, b: np.ndarray, mask: np.ndarray, bins: int = 32) -> float:
    """(H(A) + H(B)) / H(A, B) inside ``mask``: 1 for independent images, 2 for identical ones."""
    x, y = a[mask].astype(np.float64), b[mask].astype(np.float64)
    if x.size < 100:
        return 1.0
    x = np.clip(x, *np.percentile(x, [1, 99]))
    y = np.clip(y, *np.percentile(y, [1, 99]))
    joint, _, _ = np.histogram2d(x, y, bins=bins)
    joint /= joint.sum()

    def entropy(p: np.ndarray) -> float:
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    h_joint = entropy(joint.ravel())
    return (entropy(joint.sum(1)) + entropy(joint.sum(0))) / h_joint if h_joint > 0 else 1.0


def measure(result: Any, images: Mapping[str, np.ndarray], affine: np.ndarray, *,
            native: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
            registrations: Mapping[str, Any] | None = None,
            expected_sequences: Sequence[str] = SEQUENCES) -> Measurements:
    """Measure one study.

    Parameters
    ----------
    result: SegmentationResult
        What the model returned (labels, mean probabilities, entropy, per-sample volumes).
    images: Mapping[str, np.ndarray]
        The sequences the model read, on the result's grid (``affine``).
    native: Mapping[str, (array, affine)], optional
        Each sequence on its own acquisition grid, for the slice-thickness, noise and bias checks
        (a sequence resampled onto a finer grid hides its slices); default ``images``.
    registrations: Mapping[str, Registration], optional
        Outcome of co-registering each sequence (:func:`neuroseg.model.registration.register_rigid`).
    """
    labels = np.asarray(result.labels)
    probabilities = result.probabilities
    voxel_ml = float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0
    dice: dict[str, float | None] = {}
    volume: dict[str, float] = {}
    for region in REGIONS:
        mask = region_mask(labels, region)
        volume[region] = round(float(mask.sum()) * voxel_ml, 3)
        dice[region] = soft_dice(region_probability(probabilities, region), mask)
    wt = region_mask(labels, "WT")
    entropy = np.asarray(result.entropy)
    uncertain = float((entropy[wt] > UNCERTAIN_ENTROPY_NATS).mean()) if wt.any() else 0.0
    samples = {}
    for region in REGIONS:
        values = (result.sample_volumes_ml or {}).get(region.lower()) if hasattr(result, "sample_volumes_ml") \
            else None
        if values:
            samples[region] = (float(np.mean(values)), float(np.std(values)))
    used = [s for s in SEQUENCES if s in images]
    native = native or {key: (array, affine) for key, array in images.items()}
    reference = next((s for s in ("flair", "t1ce", "t2", "t1") if s in images), None)
    stride = _stride(affine)
    head = np.any([np.asarray(images[s]) > 0 for s in used], axis=0)[::stride[0], ::stride[1], ::stride[2]]
    checks: dict[str, SequenceCheck] = {}
    for key in used:
        array, own_affine = native.get(key, (images[key], affine))
        check = SequenceCheck(voxel_mm=round(float(_spacing(own_affine).max()), 2),
                              neighbour_correlation=round(neighbour_correlation(array, own_affine), 3),
                              bias_log_sd=round(bias_log_sd(array, own_affine), 3))
        if key != reference:
            a = np.asarray(images[reference])[::stride[0], ::stride[1], ::stride[2]]
            b = np.asarray(images[key])[::stride[0], ::stride[1], ::stride[2]]
            check.alignment_nmi = round(normalised_mutual_information(a, b, head & (a > 0) & (b > 0)), 4)
        outcome = (registrations or {}).get(key)
        if outcome is not None:
            check.registration = str(outcome.reason)
            reason = str(outcome.reason)
            check.registration_failed = "failed" in reason or "implausible" in reason
        checks[key] = check
    return Measurements(soft_dice=dice, volume_ml=volume, sample_volume_ml=samples, uncertain_fraction=uncertain,
                        sequences_used=used, sequences_missing=[s for s in expected_sequences if s not in used],
                        checks=checks)


# --- combination -----------------------------------------------------------------------------------


def feature_vector(m: Measurements, region: str) -> np.ndarray:
    """The :data:`FEATURES` of one region, as floats (a region the model did not find has soft Dice 1)."""
    sd = m.soft_dice.get(region)
    mean_sd = m.sample_volume_ml.get(region)
    ratio = min(2.0, mean_sd[1] / max(mean_sd[0], 1.0)) if mean_sd else 0.0
    correlations = [c.neighbour_correlation for c in m.checks.values()]
    noise_deficit = max(0.0, 0.8 - min(correlations)) if correlations else 0.0
    core = [c.voxel_mm for key, c in m.checks.items() if key in ("flair", "t1ce")] or \
        [c.voxel_mm for c in m.checks.values()] or [1.0]
    thick = max(0.0, max(core) - 3.0) / 5.0
    bias = max([c.bias_log_sd for key, c in m.checks.items() if key in BIAS_SEQUENCES] or [0.0])
    nmi = [c.alignment_nmi for c in m.checks.values() if c.alignment_nmi is not None]
    alignment = max(0.0, 1.2 - min(nmi)) if nmi else 0.0
    return np.array([1.0 if sd is None else sd, m.uncertain_fraction, ratio, noise_deficit, thick, bias,
                     float("flair" in m.sequences_missing), float("t1ce" in m.sequences_missing), alignment])


@dataclass
class QualityModel:
    """How the measurements combine into expected Dice, and the review threshold.

    ``coefficients[region]`` holds ``intercept`` and one weight per :data:`FEATURES`
    entry (on the raw feature scale); without a fitted region the expected Dice is
    the soft Dice itself.
    """

    coefficients: dict[str, dict[str, float]] = field(default_factory=dict)
    wt_threshold: float = DEFAULT_WT_THRESHOLD
    fitted: bool = False
    weights_sha256: str = ""
    model_version: str = ""
    fit: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def expected_dice(self, m: Measurements) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for region in REGIONS:
            sd = m.soft_dice.get(region)
            if sd is None:  # nothing predicted and nothing probable: BraTS scores an empty pair 1
                out[region] = None
                continue
            coef = self.coefficients.get(region)
            if coef is None:
                value = sd
            else:
                x = feature_vector(m, region)
                value = coef["intercept"] + sum(coef[name] * x[i] for i, name in enumerate(FEATURES))
            out[region] = round(float(np.clip(value, 0.0, 1.0)), 3)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"coefficients": self.coefficients, "wt_threshold": self.wt_threshold, "fitted": self.fitted,
                "weights_sha256": self.weights_sha256, "model_version": self.model_version,
                "features": list(FEATURES), "fit": self.fit}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "") -> QualityModel:
        if list(data.get("features", FEATURES)) != list(FEATURES):
            raise ValueError(f"{source or 'quality fit'}: features {data.get('features')} are not this version's "
                             f"{list(FEATURES)}; refit with neuroseg quality fit")
        return cls(coefficients={k: {n: float(v) for n, v in c.items()} for k, c in data["coefficients"].items()},
                   wt_threshold=float(data["wt_threshold"]), fitted=bool(data.get("fitted", True)),
                   weights_sha256=str(data.get("weights_sha256", "")), model_version=str(data.get("model_version", "")),
                   fit=dict(data.get("fit", {})), source=source)


def quality_model_path(model_path: Path | str | None) -> Path:
    """Where the quality fit of a model lives: ``<weights>.quality.json`` (a folder: ``<folder>/quality.json``)."""
    from neuroseg.model.checkpoint import SHIPPED_WEIGHTS

    path = Path(model_path) if model_path else Path(SHIPPED_WEIGHTS)
    return path / "quality.json" if path.is_dir() else path.with_suffix(".quality.json")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_quality_model(model_path: Path | str | None) -> QualityModel:
    """The stored fit of ``model_path`` (None: the shipped weights); the unfitted default when there is none.

    A fit made on other weights (another SHA-256) is still used, with a warning and
    ``fit["stale"] = True``, so the report can say it.
    """
    path = quality_model_path(model_path)
    if not path.is_file():
        log.warning("no quality fit at %s: expected Dice is the uncalibrated soft Dice (run neuroseg quality fit)",
                    path)
        return QualityModel(source="")
    model = QualityModel.from_dict(json.loads(path.read_text()), source=str(path))
    weights = Path(model_path) if model_path else None
    if weights is None:
        from neuroseg.model.checkpoint import SHIPPED_WEIGHTS

        weights = Path(SHIPPED_WEIGHTS)
    if weights.is_file() and model.weights_sha256 and file_sha256(weights) != model.weights_sha256:
        log.warning("quality fit %s was made on other weights than %s: refit with neuroseg quality fit", path, weights)
        model.fit["stale"] = True
    return model


# --- the verdict --------------------------------------------------------------------------------


@dataclass
class StudyQuality:
    """The per-study answer: expected Dice, the flag, and why."""

    expected_dice: dict[str, float | None]
    review_recommended: bool
    reasons: list[str]
    measurements: Measurements
    calibration: dict[str, Any] = field(default_factory=dict)

    def to_report(self) -> dict[str, Any]:
        """The ``quality`` block of ``report.json``."""
        return {"expected_dice": dict(self.expected_dice), "review_recommended": bool(self.review_recommended),
                "reasons": list(self.reasons), "calibration": dict(self.calibration),
                "measurements": self.measurements.to_dict()}


def _ml(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def checks_triggered(m: Measurements) -> list[str]:
    """The fixed checks that trigger, one plain-words reason each."""
    reasons = []
    if m.volume_ml.get("WT", 0.0) < MIN_TUMOUR_ML:
        reasons.append(f"no tumour found (whole tumour {m.volume_ml.get('WT', 0.0):.1f} mL)")
    def names(keys: list[str]) -> str:
        return " and ".join(SEQUENCE_WORDS[key] for key in keys)

    checks = m.checks
    noisy = [key for key, c in checks.items() if c.neighbour_correlation < NOISE_CORRELATION]
    if noisy:
        values = ", ".join(f"{checks[key].neighbour_correlation:.2f}" for key in noisy)
        reasons.append(f"{names(noisy)} {'looks' if len(noisy) == 1 else 'look'} like noise: neighbouring voxels "
                       f"correlate {values} (clean images about 0.9)")
    thick = [key for key, c in checks.items() if key in ("flair", "t1ce") and c.voxel_mm >= THICK_SLICE_MM]
    if thick:
        reasons.append(f"thick slices: {names(thick)} voxels are {max(checks[k].voxel_mm for k in thick):.1f} mm "
                       "long; edges and small regions are unreliable")
    biased = [key for key, c in checks.items() if key in BIAS_SEQUENCES and c.bias_log_sd > BIAS_LOG_SD]
    if biased:
        values = ", ".join(f"{checks[key].bias_log_sd:.2f}" for key in biased)
        reasons.append(f"strong intensity nonuniformity (bias field) on {names(biased)}: smoothed log-intensity "
                       f"sd {values} (limit {BIAS_LOG_SD:.2f})")
    for key, check in checks.items():
        if check.registration_failed:
            reasons.append(f"{SEQUENCE_WORDS[key]} could not be co-registered: {check.registration}")
    for region, (mean, sd) in m.sample_volume_ml.items():
        if sd > UNSTABLE_MIN_SD_ML and sd > UNSTABLE_RATIO * max(mean, 1e-9):
            reasons.append(f"{REGION_WORDS[region]} unstable across samples: volume {_ml(mean)} +- {_ml(sd)} mL")
    if m.uncertain_fraction > UNCERTAIN_MAX_FRACTION:
        reasons.append(f"{100 * m.uncertain_fraction:.0f} % of the predicted tumour volume is uncertain "
                       f"(entropy > {UNCERTAIN_ENTROPY_NATS} nats)")
    return reasons


def assess(m: Measurements, model: QualityModel | None = None) -> StudyQuality:
    """Expected Dice, flag and reasons for measured study ``m``."""
    model = model or QualityModel()
    expected = model.expected_dice(m)
    reasons = checks_triggered(m)
    wt = expected.get("WT")
    if wt is not None and wt < model.wt_threshold:
        reasons.insert(0, f"expected whole-tumour Dice {wt:.2f} is below the review threshold "
                          f"{model.wt_threshold:.2f}")
    calibration = {"fitted": model.fitted, "wt_threshold": model.wt_threshold,
                   "model_version": model.model_version, "stale": bool(model.fit.get("stale", False))}
    if not model.fitted:
        calibration["note"] = "no quality fit stored for these weights: expected Dice is the uncalibrated soft Dice"
    elif calibration["stale"]:
        calibration["note"] = "quality fit made on other weights; refit with neuroseg quality fit"
    return StudyQuality(expected_dice=expected, review_recommended=bool(reasons), reasons=reasons,
                        measurements=m, calibration=calibration)


def assess_result(result: Any, images: Mapping[str, np.ndarray], affine: np.ndarray, *,
                  model: QualityModel | None = None, **kwargs: Any) -> StudyQuality:
    """:func:`measure` then :func:`assess` (the worker's one call)."""
    return assess(measure(result, images, affine, **kwargs), model)


# --- fitting -------------------------------------------------------------------------------------


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman rank correlation (None for fewer than 3 pairs or a constant side)."""
    from scipy.stats import spearmanr

    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def fit_quality_model(samples: Sequence[Mapping[str, Any]], *, bad_dice: float = 0.7, ridge: float = 0.05,
                      max_threshold: float = 0.9) -> QualityModel:
    """Fit the combination and the WT review threshold.

    Parameters
    ----------
    samples: sequence of mapping
        One per case: ``measurements`` (:class:`Measurements`) and ``dice`` (region -> true Dice or None).
    bad_dice: float
        A case with true WT Dice below this must be flagged.
    ridge: float
        L2 penalty on the standardised weights (few cases: keep the fit smooth).
    max_threshold: float
        The threshold never exceeds this (a threshold that flags every case informs nobody).
    """
    coefficients: dict[str, dict[str, float]] = {}
    for region in REGIONS:
        rows = [(feature_vector(s["measurements"], region), float(s["dice"][region])) for s in samples
                if s["dice"].get(region) is not None and s["measurements"].soft_dice.get(region) is not None]
        if len(rows) < 4:
            continue
        x = np.array([r[0] for r in rows])
        y = np.array([r[1] for r in rows])
        mean, scale = x.mean(0), x.std(0)
        scale[scale == 0] = 1.0
        z = (x - mean) / scale
        a = np.hstack([np.ones((len(z), 1)), z])
        penalty = ridge * len(z) * np.eye(a.shape[1])
        penalty[0, 0] = 0.0
        w = np.linalg.solve(a.T @ a + penalty, a.T @ y)
        weights = w[1:] / scale
        coefficients[region] = {"intercept": float(w[0] - (weights * mean).sum()),
                                **{name: float(weights[i]) for i, name in enumerate(FEATURES)}}
    model = QualityModel(coefficients=coefficients, fitted=True)
    # the threshold: every bad case flagged (by the threshold or a fixed check), as low as that allows
    threshold = 0.0
    for s in samples:
        true_wt = s["dice"].get("WT")
        if true_wt is None or true_wt >= bad_dice or checks_triggered(s["measurements"]):
            continue
        wt = model.expected_dice(s["measurements"]).get("WT")
        threshold = max(threshold, (wt if wt is not None else 1.0) + 0.005)
    # never below the bad-case limit itself: an expected Dice under it predicts a bad case
    model.wt_threshold = round(min(max(threshold, bad_dice), max_threshold), 3)
    model.fit = summarise_fit(samples, model, bad_dice=bad_dice)
    return model


def summarise_fit(samples: Sequence[Mapping[str, Any]], model: QualityModel, *, bad_dice: float = 0.7) -> dict:
    """Per case expected vs true Dice and the flag; rank correlation; bad cases flagged."""
    cases = []
    for s in samples:
        verdict = assess(s["measurements"], model)
        cases.append({"case": s["case"], "kind": s.get("kind", ""),
                      "true_dice": {k: (None if v is None else round(float(v), 3)) for k, v in s["dice"].items()},
                      "expected_dice": verdict.expected_dice, "review_recommended": verdict.review_recommended,
                      "reasons": verdict.reasons})
    return {"cases": cases, "bad_dice": bad_dice, **calibration_summary(cases, bad_dice=bad_dice)}


def calibration_summary(cases: Sequence[Mapping[str, Any]], *, bad_dice: float = 0.7) -> dict[str, Any]:
    """Rank correlation per region, and how many bad (true WT < ``bad_dice``) and good cases are flagged."""
    out: dict[str, Any] = {"spearman": {}}
    for region in REGIONS:
        pairs = [(c["expected_dice"].get(region), c["true_dice"].get(region)) for c in cases]
        pairs = [(e, t) for e, t in pairs if e is not None and t is not None]
        rho = spearman([p[0] for p in pairs], [p[1] for p in pairs])
        out["spearman"][region] = None if rho is None else round(rho, 3)
        out.setdefault("n", {})[region] = len(pairs)
    bad = [c for c in cases if c["true_dice"].get("WT") is not None and c["true_dice"]["WT"] < bad_dice]
    good = [c for c in cases if c["true_dice"].get("WT") is not None and c["true_dice"]["WT"] >= bad_dice]
    out["bad_cases"] = len(bad)
    out["bad_flagged"] = sum(bool(c["review_recommended"]) for c in bad)
    out["good_cases"] = len(good)
    out["good_flagged"] = sum(bool(c["review_recommended"]) for c in good)
    return out


def reliability_plot(cases: Sequence[Mapping[str, Any]], path: Path, *, threshold: float | None = None,
                     title: str = "expected vs true Dice") -> Path:
    """PNG of expected (x) against true (y) Dice per region, with the diagonal and the WT threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(5, 5), dpi=110)
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect calibration")
    for region, colour in (("WT", "tab:green"), ("TC", "tab:orange"), ("ET", "tab:red")):
        pairs = [(c["expected_dice"].get(region), c["true_dice"].get(region)) for c in cases]
        pairs = [(e, t) for e, t in pairs if e is not None and t is not None]
        if pairs:
            rho = spearman([p[0] for p in pairs], [p[1] for p in pairs])
            words = f"{region} (n={len(pairs)}, rho={rho:.2f})" if rho is not None else f"{region} (n={len(pairs)})"
            ax.scatter([p[0] for p in pairs], [p[1] for p in pairs], s=22, color=colour, label=words, alpha=0.8)
    if threshold is not None:
        ax.axvline(threshold, color="tab:purple", lw=1, label=f"WT review threshold {threshold:.2f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("expected Dice (quality estimate)")
    ax.set_ylabel("true Dice")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=7)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def measurements_from_dict(data: Mapping[str, Any]) -> Measurements:
    """Inverse of :meth:`Measurements.to_dict` (fits are refit from stored measurements)."""
    checks = {k: SequenceCheck(**v) for k, v in data.get("checks", {}).items()}
    return Measurements(soft_dice=dict(data["soft_dice"]), volume_ml=dict(data["volume_ml"]),
                        sample_volume_ml={k: (float(v[0]), float(v[1])) for k, v in data["sample_volume_ml"].items()},
                        uncertain_fraction=float(data["uncertain_fraction"]),
                        sequences_used=list(data["sequences_used"]), sequences_missing=list(data["sequences_missing"]),
                        checks=checks)


def write_json(data: Mapping[str, Any], path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=lambda o: None if isinstance(o, float) and math.isnan(o) else o))
    tmp.replace(path)
