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
from typing import Any

import numpy as np
from scipy import ndimage

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
    expected_dice: dict[str, float | None] = field(default_factory=dict)
    """The per-study quality estimate (:mod:`neuroseg.model.quality`), regions ``wt``/``tc``/``et``."""
    review_recommended: bool | None = None
    reasons: list[str] = field(default_factory=list)


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
        data = {"source": self.source, "hd95_max_mm": HD95_MAX_MM, "mean": self.mean,
                "cases": [asdict(c) for c in self.cases]}
        if any(c.review_recommended is not None for c in self.cases):
            data["quality"] = quality_summary(self)
        return data


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
    if any(case.review_recommended is not None for case in result.cases):
        lines += ["", format_quality_table(result)]
    return "\n".join(lines)


def _quality_cases(result: EvaluationResult) -> list[dict]:
    return [{"case": c.case_id, "true_dice": {r.upper(): v for r, v in c.dice.items()},
             "expected_dice": {r.upper(): v for r, v in c.expected_dice.items()},
             "review_recommended": c.review_recommended, "reasons": c.reasons}
            for c in result.cases if c.review_recommended is not None]


def quality_summary(result: EvaluationResult, bad_dice: float = 0.7) -> dict:
    """Rank correlation of expected and true Dice per region; bad (WT < ``bad_dice``) and good cases flagged."""
    from neuroseg.model.quality import calibration_summary

    return calibration_summary(_quality_cases(result), bad_dice=bad_dice)


def format_quality_table(result: EvaluationResult, bad_dice: float = 0.7) -> str:
    """Expected next to true Dice per case, the flag, the rank correlations and the flag counts."""
    def fmt(value: float | None) -> str:
        return f"{'-':>8}" if value is None else f"{value:>8.3f}"

    lines = [f"{'case':<24}" + "".join(f"{f'{k} {r}':>8}" for r in ("WT", "TC", "ET") for k in ("true", "exp"))
             + "  review"]
    for c in result.cases:
        if c.review_recommended is None:
            continue
        cells = "".join(fmt(c.dice.get(r)) + fmt(c.expected_dice.get(r)) for r in ("wt", "tc", "et"))
        lines.append(f"{c.case_id[:22]:<24}{cells}  {'yes' if c.review_recommended else 'no'}")
    summary = quality_summary(result, bad_dice)
    lines.append(f"rank correlation (Spearman) of expected and true Dice: " + ", ".join(
        f"{r} {v:.3f} (n={summary['n'][r]})" if v is not None else f"{r} - (n={summary['n'][r]})"
        for r, v in summary["spearman"].items()))
    lines.append(f"flagged for review: {summary['bad_flagged']} of {summary['bad_cases']} cases with WT Dice < "
                 f"{bad_dice}, {summary['good_flagged']} of {summary['good_cases']} others")
    return "\n".join(lines)


def reliability_png(result: EvaluationResult, path: Path) -> Path:
    """The reliability plot (expected vs true Dice per region) of an evaluation with quality estimates."""
    from neuroseg.model.quality import reliability_plot

    return reliability_plot(_quality_cases(result), path, title=f"expected vs true Dice ({Path(result.source).name})")


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
        Checkpoint, MONAI bundle or nnU-Net v2 trained-model folder; default the shipped demo weights.
    device: str
        ``cpu`` or ``cuda``.
    mc_samples: int
        Passes of the model's uncertainty method (MC dropout; flips for bundles and nnU-Net) for the AUROCs.
    sequences: tuple of str, optional
        Use only these sequences of each case (e.g. ``("t1", "flair")``).
    tta: bool
        Test-time augmentation by flips.
    postprocess: PostprocessConfig, optional
        Post-process the labels before scoring (:mod:`neuroseg.model.postprocess`).
    """
    from tqdm import tqdm

    from neuroseg.model.adapters import load_adapter

    cases = [c for c in find_cases(data_dir) if c.label is not None]
    if not cases:
        raise ValueError(f"{data_dir} holds no case with a ground-truth label")
    model = load_adapter(model_path, device=device)  # our checkpoint, a MONAI bundle or an nnU-Net folder

    def segment(images, affine, adapter, **options):  # noqa: ANN001, ANN202 - the adapter's own segment
        return adapter.segment(images, affine, **options)

    from neuroseg.model.quality import load_quality_model

    quality = load_quality_model(model_path)
    results = []
    for files in tqdm(cases, desc="evaluate", unit="case", disable=not progress):
        results.append(_evaluate_one(model, segment, files, mc_samples, sequences, tta=tta, postprocess=postprocess,
                                     quality=quality))
    source = str(model_path) if model_path is not None else "shipped demo weights"
    return EvaluationResult(cases=results, source=source, mean=summarise(results))


def _evaluate_one(model, segment, files: CaseFiles, mc_samples: int,  # noqa: ANN001
                  sequences: tuple[str, ...] | None, *, tta: bool = False, postprocess=None,  # noqa: ANN001
                  quality=None) -> CaseMetrics:  # noqa: ANN001
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
    if quality is not None:
        from neuroseg.model.quality import assess_result

        verdict = assess_result(output, images, case.affine, model=quality)
        metrics.expected_dice = {r.lower(): v for r, v in verdict.expected_dice.items()}
        metrics.review_recommended = verdict.review_recommended
        metrics.reasons = verdict.reasons
    return metrics


def write_json(result: EvaluationResult, path: Path) -> None:
    """Write the result as JSON (atomic: temp file then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result.to_dict(), indent=1))
    tmp.replace(path)


# --- quality: expected vs true Dice (neuroseg.model.quality) --------------------------------------

QUALITY_VARIANTS: tuple[str, ...] = ("easy", "noise", "thick8", "bias", "thick8-bias", "flair-noise",
                                     "drop-flair", "drop-t1ce", "misaligned")
"""The phantoms of a quality fit: one easy, the others made hard on purpose (see :func:`hard_phantom`)."""


def hard_phantom(seed: int, variant: str, anatomy_spacing_mm: float = 2.0):  # noqa: ANN201 - a Case
    """A phantom case made hard in one way.

    ``easy``: BraTS-like 1 mm axial grid, no skull; ``noise``: Rician noise at 35 % of white
    matter; ``thick8``: a clinical grid with 8 mm slices; ``bias``: a strong bias field
    (peak-to-peak log amplitude 1.6); ``thick8-bias``: both; ``flair-noise``: FLAIR replaced
    by noise of its own mean and sd inside the head; ``drop-flair``/``drop-t1ce``: that
    sequence missing; ``misaligned``: FLAIR and T2 moved by 8 degrees and 6 mm (uncorrected motion).
    """
    from neuroseg.model.data import Case
    from neuroseg.model.phantom import PhantomConfig, make_phantom

    if variant not in QUALITY_VARIANTS:
        raise ValueError(f"phantom variant {variant!r} is not one of {', '.join(QUALITY_VARIANTS)}")
    base = dict(anatomy_spacing_mm=anatomy_spacing_mm, skull_probability=0.0, clinical_grid_probability=0.0,
                multifocal_probability=0.0)
    knobs = {"noise": dict(noise_fraction=(0.35, 0.35)),
             "thick8": dict(clinical_grid_probability=1.0, slice_thickness_mm=(8.0, 8.0)),
             "bias": dict(bias_amplitude=(1.6, 1.6)),
             "thick8-bias": dict(clinical_grid_probability=1.0, slice_thickness_mm=(8.0, 8.0),
                                 bias_amplitude=(1.6, 1.6))}.get(variant, {})
    phantom = make_phantom(seed, PhantomConfig(**{**base, **knobs}))
    images = dict(phantom.images)
    rng = np.random.default_rng(seed)
    if variant == "flair-noise":
        flair = images["flair"]
        head = flair > 0
        noise = rng.normal(flair[head].mean(), flair[head].std(), flair.shape).astype(np.float32)
        images["flair"] = np.where(head, np.abs(noise), 0.0).astype(np.float32)
    elif variant == "drop-flair":
        images.pop("flair")
    elif variant == "drop-t1ce":
        images.pop("t1ce")
    elif variant == "misaligned":
        for key in ("flair", "t2"):
            moved = ndimage.rotate(images[key], 8.0, axes=(0, 1), reshape=False, order=1)
            images[key] = ndimage.shift(moved, (0.0, 6.0 / float(_spacing(phantom.affine)[1]), 0.0), order=1)
    return Case(case_id=f"Phantom_{seed:05d}_{variant}", images=images, affine=phantom.affine,
                label=phantom.label, label_kind=LabelKind.BRATS, info=dict(phantom.info, variant=variant))


def quality_sample(model, case, mc_samples: int = 5, sequences: tuple[str, ...] | None = None,  # noqa: ANN001
                   kind: str = "") -> dict:
    """Segment one labelled case and pair its quality measurements with its true Dice."""
    from neuroseg.model.inference import segment
    from neuroseg.model.quality import measure

    images = {k: v for k, v in case.images.items() if sequences is None or k in sequences}
    output = segment(images, case.affine, model, mc_samples=mc_samples, gradcam=False, seed=0)
    metrics = score_case(case.case_id, np.asarray(output.labels), case.label, case.label_kind,
                         _spacing(case.affine), sequences=sorted(images))
    dice = {region.upper(): value for region, value in metrics.dice.items()}
    return {"case": case.case_id, "kind": kind, "dice": dice,
            "measurements": measure(output, images, case.affine)}


def collect_quality_samples(model, case_dirs: list[Path], *, phantom_seeds: list[int],  # noqa: ANN001
                            variants: tuple[str, ...] = QUALITY_VARIANTS, mc_samples: int = 5,
                            progress: bool = True) -> list[dict]:
    """Quality samples of real labelled cases (each folder one case or a folder of cases) and hard phantoms.

    Phantom seed ``i`` of ``phantom_seeds`` gets variant ``variants[i % len(variants)]``.
    """
    from tqdm import tqdm

    from neuroseg.model.data import find_case_files

    jobs: list[tuple[str, Any]] = []
    for folder in case_dirs:
        folder = Path(folder)
        files = [find_case_files(folder)] if any(p.is_file() for p in folder.iterdir()) else find_cases(folder)
        jobs += [("real", f) for f in files if f.label is not None]
    jobs += [("phantom", (seed, variants[i % len(variants)])) for i, seed in enumerate(phantom_seeds)]
    samples = []
    for kind, job in tqdm(jobs, desc="quality", unit="case", disable=not progress):
        case = read_case(job) if kind == "real" else hard_phantom(*job)
        samples.append(quality_sample(model, case, mc_samples, kind=kind if kind == "real" else job[1]))
        log.info("%s: true WT %.3f soft WT %s", samples[-1]["case"], samples[-1]["dice"]["WT"] or float("nan"),
                 samples[-1]["measurements"].soft_dice.get("WT"))
    return samples
