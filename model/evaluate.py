"""Evaluation with BraTS conventions: Dice and HD95 per region, calibration, uncertainty.

Regions (BraTS): WT = labels 1+2+4, TC = 1+4, ET = 4. A case whose ground truth
holds only a whole-tumour mask (like ``real-gt/brats2018-wt``) is scored on WT
alone; TC and ET are reported as missing (``None``), never as zero.

Empty regions follow the BraTS challenge convention:

* ground truth and prediction both empty: Dice 1, HD95 0;
* exactly one of them empty: Dice 0, HD95 :data:`HD95_MAX_MM` (373.13 mm, the
  diagonal of the 240 x 240 x 155 BraTS volume at 1 mm).

Dice and HD95 otherwise come from MONAI (``compute_dice``,
``compute_hausdorff_distance`` with ``percentile=95`` and the voxel spacing, so
HD95 is in millimetres).

Calibration and uncertainty are measured on the voxels where at least one input
image is non-zero (the imaged head or brain):

* ECE: 15 equal-width bins of the top-class confidence; for a BraTS label the
  classes are background/NCR/ED/ET, for a WT-only label the binary WT problem
  (p(WT) = 1 - p(background));
* AUROC of voxel-wise error (predicted class differs from the truth) against the
  predictive entropy and against the summed MC-dropout variance: 0.5 means the
  uncertainty carries no information about where the errors are, 1 means
  every error is more uncertain than every correct voxel.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from neuroseg.model.data import CaseFiles, LabelKind, find_cases, read_case

log = logging.getLogger(__name__)

HD95_MAX_MM = 373.13
"""HD95 when exactly one of prediction and truth is empty (BraTS convention)."""

REGIONS: dict[str, tuple[int, ...]] = {"et": (4,), "tc": (1, 4), "wt": (1, 2, 4)}
CLASS_LABELS = (0, 1, 2, 4)
ECE_BINS = 15
MAX_AUROC_VOXELS = 2_000_000


def region_mask(label: np.ndarray, region: str) -> np.ndarray:
    """Boolean mask of a BraTS region (``"wt"``, ``"tc"``, ``"et"``) of a 0/1/2/4 label map."""
    if region not in REGIONS:
        raise ValueError(f"region {region!r} is not one of {', '.join(REGIONS)}")
    return np.isin(label, REGIONS[region])


def dice_hd95(prediction: np.ndarray, truth: np.ndarray,
              spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> tuple[float, float]:
    """Dice and HD95 (mm) of two boolean masks with the BraTS empty-region conventions.

    Parameters
    ----------
    prediction, truth: numpy.ndarray
        Boolean masks of the same 3D shape.
    spacing_mm: tuple of float
        Voxel size along each array axis, so HD95 is in millimetres.
    """
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance

    prediction = np.asarray(prediction, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from truth shape {truth.shape}")
    has_pred, has_truth = bool(prediction.any()), bool(truth.any())
    if not has_pred and not has_truth:
        return 1.0, 0.0
    if has_pred != has_truth:
        return 0.0, HD95_MAX_MM
    y_pred = torch.from_numpy(prediction[None, None].astype(np.float32))
    y = torch.from_numpy(truth[None, None].astype(np.float32))
    dice = float(compute_dice(y_pred, y, include_background=True).item())
    with warnings.catch_warnings():  # MONAI 1.5+ warns about its own internal argument
        warnings.simplefilter("ignore", FutureWarning)
        hd95 = float(compute_hausdorff_distance(
            y_pred, y, include_background=True, percentile=95,
            spacing=[float(s) for s in spacing_mm]).item())
    return dice, hd95


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the bin-weighted mean |accuracy - confidence| over equal-width confidence bins."""
    confidence = np.asarray(confidence, dtype=np.float64).ravel()
    correct = np.asarray(correct, dtype=bool).ravel()
    if confidence.size == 0:
        raise ValueError("expected_calibration_error needs at least one voxel")
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=bins)
    acc_sum = np.bincount(index, weights=correct.astype(np.float64), minlength=bins)
    used = count > 0
    gap = np.abs(acc_sum[used] - conf_sum[used]) / count[used]
    return float(np.sum(gap * count[used]) / confidence.size)


def error_auroc(score: np.ndarray, error: np.ndarray, seed: int = 0) -> float | None:
    """AUROC of ``score`` for predicting ``error``; ``None`` when there are no errors or no correct voxels."""
    from sklearn.metrics import roc_auc_score

    score = np.asarray(score, dtype=np.float64).ravel()
    error = np.asarray(error, dtype=bool).ravel()
    if error.all() or not error.any():
        return None
    if score.size > MAX_AUROC_VOXELS:
        pick = np.random.default_rng(seed).choice(score.size, MAX_AUROC_VOXELS, replace=False)
        score, error = score[pick], error[pick]
        if error.all() or not error.any():
            return None
    return float(roc_auc_score(error, score))


@dataclass
class CaseMetrics:
    """Metrics of one case (``None`` where a metric does not apply)."""

    case_id: str
    label_kind: str
    sequences: list[str]
    dice: dict[str, float | None] = field(default_factory=dict)
    hd95: dict[str, float | None] = field(default_factory=dict)
    ece: float | None = None
    auroc_entropy: float | None = None
    auroc_variance: float | None = None
    label_source: str = "expert"
    """``"algorithm"`` when the truth is a machine label (not an expert one)."""


def _class_index(label: np.ndarray) -> np.ndarray:
    index = np.zeros(label.shape, dtype=np.int64)
    for i, value in enumerate(CLASS_LABELS):
        index[label == value] = i
    return index


def score_case(case_id: str, prediction: np.ndarray, truth: np.ndarray, label_kind: LabelKind,
               spacing_mm: tuple[float, float, float], *, sequences: list[str] | None = None,
               probabilities: np.ndarray | None = None, entropy: np.ndarray | None = None,
               variance: np.ndarray | None = None, mask: np.ndarray | None = None) -> CaseMetrics:
    """Score one predicted label map against the truth.

    Parameters
    ----------
    prediction: numpy.ndarray
        Predicted BraTS labels 0/1/2/4.
    truth: numpy.ndarray
        BraTS labels (``label_kind`` BRATS) or a 0/1 whole-tumour mask (WHOLE_TUMOUR).
    label_kind: LabelKind
        What ``truth`` holds.
    spacing_mm: tuple of float
        Voxel size along each array axis.
    probabilities: numpy.ndarray, optional
        (4, X, Y, Z) class probabilities (background, NCR, ED, ET) for ECE.
    entropy, variance: numpy.ndarray, optional
        Voxel-wise predictive entropy and summed MC variance for the error AUROCs.
    mask: numpy.ndarray, optional
        Voxels used for ECE and AUROC; default all.
    """
    label_kind = LabelKind(label_kind)
    if label_kind is LabelKind.NONE:
        raise ValueError(f"case {case_id} has no ground truth to score against")
    prediction = np.asarray(prediction)
    truth = np.asarray(truth)
    if prediction.shape != truth.shape:
        raise ValueError(
            f"case {case_id}: prediction shape {prediction.shape} differs from truth shape {truth.shape}"
        )
    metrics = CaseMetrics(case_id=case_id, label_kind=label_kind.value, sequences=list(sequences or []))
    for region in REGIONS:
        if label_kind is LabelKind.WHOLE_TUMOUR and region != "wt":
            metrics.dice[region] = metrics.hd95[region] = None
            continue
        truth_mask = truth > 0 if label_kind is LabelKind.WHOLE_TUMOUR else region_mask(truth, region)
        dice, hd95 = dice_hd95(region_mask(prediction, region), truth_mask, spacing_mm)
        metrics.dice[region], metrics.hd95[region] = dice, hd95
    if mask is None:
        mask = np.ones(truth.shape, dtype=bool)
    if probabilities is not None:
        probs = np.asarray(probabilities, dtype=np.float32)[:, mask]
        if label_kind is LabelKind.WHOLE_TUMOUR:
            p_wt = 1.0 - probs[0]
            confidence = np.maximum(p_wt, 1.0 - p_wt)
            correct = (p_wt >= 0.5) == (truth[mask] > 0)
        else:
            confidence = probs.max(axis=0)
            correct = probs.argmax(axis=0) == _class_index(truth[mask])
        metrics.ece = expected_calibration_error(confidence, correct)
    if label_kind is LabelKind.WHOLE_TUMOUR:
        error = (prediction[mask] > 0) != (truth[mask] > 0)
    else:
        error = prediction[mask] != truth[mask]
    if entropy is not None:
        metrics.auroc_entropy = error_auroc(np.asarray(entropy)[mask], error)
    if variance is not None:
        metrics.auroc_variance = error_auroc(np.asarray(variance)[mask], error)
    return metrics


@dataclass
class EvaluationResult:
    """Per-case metrics and their means (``None`` cases left out of a mean)."""

    cases: list[CaseMetrics]
    source: str
    mean: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"source": self.source, "hd95_max_mm": HD95_MAX_MM, "mean": self.mean,
                "cases": [asdict(c) for c in self.cases]}


def summarise(cases: list[CaseMetrics]) -> dict[str, float | None]:
    """Mean of each metric over the cases where it applies."""
    keys: dict[str, list[float]] = {}
    for case in cases:
        values = {f"dice_{r}": v for r, v in case.dice.items()}
        values.update({f"hd95_{r}": v for r, v in case.hd95.items()})
        values.update(ece=case.ece, auroc_entropy=case.auroc_entropy, auroc_variance=case.auroc_variance)
        for key, value in values.items():
            keys.setdefault(key, [])
            if value is not None and not math.isnan(value):
                keys[key].append(float(value))
    return {key: (float(np.mean(v)) if v else None) for key, v in keys.items()}


def format_table(result: EvaluationResult) -> str:
    """A plain-text table: one row per case and a mean row."""
    columns = ["dice_wt", "dice_tc", "dice_et", "hd95_wt", "hd95_tc", "hd95_et",
               "ece", "auroc_entropy", "auroc_variance"]
    header = f"{'case':<24}" + "".join(f"{c:>15}" for c in columns)
    lines = [header, "-" * len(header)]

    def fmt(value: float | None) -> str:
        return f"{'-':>15}" if value is None else f"{value:>15.3f}"

    for case in result.cases:
        row = {f"dice_{r}": v for r, v in case.dice.items()}
        row.update({f"hd95_{r}": v for r, v in case.hd95.items()})
        row.update(ece=case.ece, auroc_entropy=case.auroc_entropy, auroc_variance=case.auroc_variance)
        name = case.case_id[:22] + ("*" if case.label_source == "algorithm" else "")
        lines.append(f"{name:<24}" + "".join(fmt(row.get(c)) for c in columns))
    lines.append("-" * len(header))
    lines.append(f"{'mean':<24}" + "".join(fmt(result.mean.get(c)) for c in columns))
    if any(case.label_source == "algorithm" for case in result.cases):
        lines.append("* scored against a machine label (made by a segmentation algorithm), not an expert one")
    return "\n".join(lines)


def _spacing(affine: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))


def _read_volume(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    import nibabel as nib

    data = np.asarray(nib.load(str(path)).dataobj)
    if data.shape != tuple(shape):
        raise ValueError(f"{path} has shape {data.shape}, the case's images {tuple(shape)}; "
                         "predictions must be on the grid of the ground truth")
    return data


def _prediction_files(pred_dir: Path, case_id: str) -> dict[str, Path]:
    """Find a case's prediction: ``<pred>/<case>/seg.nii.gz`` (neuroseg predict) or ``<pred>/<case>.nii.gz``."""
    folder = pred_dir / case_id
    found: dict[str, Path] = {}
    if folder.is_dir():
        for name in ("seg", "entropy", "prob_ncr", "prob_ed", "prob_et",
                     "variance_ncr", "variance_ed", "variance_et"):
            path = folder / f"{name}.nii.gz"
            if path.is_file():
                found[name] = path
    for candidate in (pred_dir / f"{case_id}.nii.gz", pred_dir / f"{case_id}_seg.nii.gz"):
        if "seg" not in found and candidate.is_file():
            found["seg"] = candidate
    if "seg" not in found:
        raise ValueError(f"no prediction for case {case_id} in {pred_dir}: expected "
                         f"{case_id}/seg.nii.gz or {case_id}.nii.gz")
    return found


def evaluate_predictions(data_dir: Path, pred_dir: Path, progress: bool = True) -> EvaluationResult:
    """Score saved predictions (``neuroseg predict`` folders or label files) against a data folder."""
    from tqdm import tqdm

    pred_dir = Path(pred_dir)
    cases = [c for c in find_cases(data_dir) if c.label is not None]
    if not cases:
        raise ValueError(f"{data_dir} holds no case with a ground-truth label")
    results = []
    for files in tqdm(cases, desc="evaluate", unit="case", disable=not progress):
        case = read_case(files)
        shape = case.label.shape
        found = _prediction_files(pred_dir, files.case_id)
        prediction = np.rint(_read_volume(found["seg"], shape)).astype(np.uint8)
        probabilities = entropy = variance = None
        if all(f"prob_{c}" in found for c in ("ncr", "ed", "et")):
            fg = np.stack([_read_volume(found[f"prob_{c}"], shape) for c in ("ncr", "ed", "et")]).astype(np.float32)
            probabilities = np.concatenate([np.clip(1.0 - fg.sum(0), 0, 1)[None], fg])
        if "entropy" in found:
            entropy = _read_volume(found["entropy"], shape)
        if all(f"variance_{c}" in found for c in ("ncr", "ed", "et")):
            variance = sum(_read_volume(found[f"variance_{c}"], shape).astype(np.float32)
                           for c in ("ncr", "ed", "et"))
        mask = np.any([image != 0 for image in case.images.values()], axis=0)
        metrics = score_case(files.case_id, prediction, case.label, case.label_kind,
                             _spacing(case.affine), sequences=sorted(case.images),
                             probabilities=probabilities, entropy=entropy, variance=variance, mask=mask)
        metrics.label_source = files.label_source
        results.append(metrics)
    return EvaluationResult(cases=results, source=str(pred_dir), mean=summarise(results))


def evaluate_model(data_dir: Path, model_path: Path | None = None, *, device: str = "cpu",
                   mc_samples: int = 10, sequences: tuple[str, ...] | None = None,
                   progress: bool = True, tta: bool = False, postprocess=None) -> EvaluationResult:  # noqa: ANN001
    """Run the model on every labelled case of ``data_dir`` and score it.

    Parameters
    ----------
    data_dir: Path
        Case folders (BraTS 2021/2023 or T1/FLAIR/GT_W layout).
    model_path: Path, optional
        Checkpoint; default the shipped demo weights.
    device: str
        ``cpu`` or ``cuda``.
    mc_samples: int
        Monte Carlo dropout passes (uncertainty for the AUROCs).
    sequences: tuple of str, optional
        Use only these sequences of each case (e.g. ``("t1", "flair")``).
    tta: bool
        Test-time augmentation by flips.
    postprocess: PostprocessConfig, optional
        Post-process the labels before scoring (:mod:`neuroseg.model.postprocess`).
    """
    from tqdm import tqdm

    from neuroseg.model.inference import load_model, segment

    cases = [c for c in find_cases(data_dir) if c.label is not None]
    if not cases:
        raise ValueError(f"{data_dir} holds no case with a ground-truth label")
    model = load_model(model_path, device=device)
    results = []
    for files in tqdm(cases, desc="evaluate", unit="case", disable=not progress):
        results.append(_evaluate_one(model, segment, files, mc_samples, sequences, tta=tta, postprocess=postprocess))
    source = str(model_path) if model_path is not None else "shipped demo weights"
    return EvaluationResult(cases=results, source=source, mean=summarise(results))


def _evaluate_one(model, segment, files: CaseFiles, mc_samples: int,
                  sequences: tuple[str, ...] | None, *, tta: bool = False, postprocess=None) -> CaseMetrics:  # noqa: ANN001
    case = read_case(files)
    images = {k: v for k, v in case.images.items() if sequences is None or k in sequences}
    if not images:
        raise ValueError(f"case {files.case_id} has none of the sequences {sequences}")
    output = segment(images, case.affine, model, mc_samples=mc_samples, gradcam=False, seed=0, tta=tta,
                     postprocess=postprocess)
    probabilities = np.stack([output.probabilities[name] for name in ("background", "ncr", "ed", "et")])
    variance = sum(output.variance[name] for name in ("ncr", "ed", "et")) if output.variance else None
    mask = np.any([image != 0 for image in images.values()], axis=0)
    metrics = score_case(files.case_id, np.asarray(output.labels), case.label, case.label_kind,
                         _spacing(case.affine), sequences=sorted(images), probabilities=probabilities,
                         entropy=output.entropy, variance=variance, mask=mask)
    metrics.label_source = files.label_source
    return metrics


def write_json(result: EvaluationResult, path: Path) -> None:
    """Write the result as JSON (atomic: temp file then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result.to_dict(), indent=1))
    tmp.replace(path)
