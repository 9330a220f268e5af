"""How the tumour changed between two studies of one patient: registration, volumes, change map, ET class.

Pure computation on arrays plus LPS affines (the project convention); the
worker finds the prior and :mod:`neuroseg.dicom_out` writes the results.

1. **Align.** The prior's reference image is rigidly registered onto the
   current one (:func:`neuroseg.model.registration.register_rigid`). Two
   studies are two sessions, so their scanner geometries share nothing: the
   registration starts from aligned image centres (``same_frame=False``).
   It is refused when the images do not overlap enough afterwards
   (``min_overlap``): a wrong alignment must give no change, not a wrong one.
2. **Bring the prior's labels over.** Each class's mask is resampled
   (linear) onto the current grid and every voxel takes the class with the
   largest share, background included; voxels outside the prior's field of
   view count as background and are reported (``outside_prior_fraction``).
3. **Volumes** of NCR, ED, ET, TC (NCR + ET) and WT (all three) at both time
   points, absolute and relative change.
4. **Change map** on the current grid, on the whole tumour (WT):

   - ``stable``: tumour at both time points;
   - ``grown``: tumour now, not before, in a lesion that touches a prior one;
   - ``new``: tumour now, in a lesion (26-connected component) that touches no prior lesion;
   - ``shrunk``: tumour before, not now, in a prior lesion that still has tumour;
   - ``vanished``: tumour before, in a prior lesion that has no tumour now.

5. **ET class** from RANO 2.0's volumetric thresholds on the enhancing
   tumour: progression at a change of at least +40 %, partial response at a
   change of -65 % or less, otherwise stable. Below ``min_measurable_ml`` of
   prior ET the relative change is not classified (our choice, so that a
   few voxels do not decide). Research use, not a response assessment: a
   response needs the clinical context, steroids, the non-enhancing tumour
   and a confirmation scan, none of which this computes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from neuroseg.model.registration import Registration, register_rigid, resample_onto

RESEARCH_USE = "research use, not a response assessment"
#: BraTS label values of each region
REGION_LABELS: dict[str, tuple[int, ...]] = {"ncr": (1,), "ed": (2,), "et": (4,), "tc": (1, 4), "wt": (1, 2, 4)}
CLASS_LABELS = (1, 2, 4)
#: RANO 2.0 volumetric thresholds on the enhancing tumour (relative change)
PROGRESSION_MIN_CHANGE = 0.40
PARTIAL_RESPONSE_MAX_CHANGE = -0.65
MIN_MEASURABLE_ML = 1.0
MIN_OVERLAP = 0.7
"""Share of the current head (image above its own 10th percentile of non-zero voxels) that the
registered prior must cover; a registration that leaves less is taken as failed."""
#: change map values, in the order of the change SEG's segments
CHANGE_VALUES = {"new": 1, "grown": 2, "stable": 3, "shrunk": 4, "vanished": 5}


class NotComparable(ValueError):
    """The two studies cannot be compared (no overlap, registration failed, empty grid)."""


@dataclass(frozen=True)
class RegionChange:
    """One region's volumes at both time points (ml) and the change."""

    region: str
    prior_ml: float
    current_ml: float

    @property
    def change_ml(self) -> float:
        return self.current_ml - self.prior_ml

    @property
    def change_fraction(self) -> float | None:
        """Relative change (0.4 = +40 %); None when there was nothing before."""
        return None if self.prior_ml <= 0.0 else self.change_ml / self.prior_ml

    def to_dict(self) -> dict[str, Any]:
        fraction = self.change_fraction
        return {"region": self.region, "prior_ml": round(self.prior_ml, 3), "current_ml": round(self.current_ml, 3),
                "change_ml": round(self.change_ml, 3),
                "change_percent": None if fraction is None else round(100.0 * fraction, 1)}


@dataclass(frozen=True)
class EtClass:
    """The enhancing-tumour change against the RANO 2.0 volumetric thresholds (research use)."""

    category: str  # progression, partial_response, stable, new, absent, not_measurable
    text: str

    def to_dict(self) -> dict[str, str]:
        return {"category": self.category, "text": self.text, "note": RESEARCH_USE}


@dataclass
class Comparison:
    """The outcome of :func:`compare`. ``change_map`` and ``prior_labels`` lie on the current grid."""

    regions: dict[str, RegionChange]
    et_class: EtClass
    change_map: np.ndarray
    prior_labels: np.ndarray
    change_ml: dict[str, float]
    lesions: dict[str, int]
    registration: Registration | None
    outside_prior_fraction: float
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures for the job store, the dashboard and the SR."""
        registration = None
        if self.registration is not None:
            registration = {"rotation_deg": round(self.registration.rotation_deg, 2),
                            "translation_mm": round(self.registration.translation_mm, 2),
                            "reason": self.registration.reason}
        return {"regions": {key: value.to_dict() for key, value in self.regions.items()},
                "et_class": self.et_class.to_dict(),
                "change_ml": {key: round(value, 3) for key, value in self.change_ml.items()},
                "lesions": dict(self.lesions), "registration": registration,
                "outside_prior_fraction": round(self.outside_prior_fraction, 4),
                "notes": list(self.notes), "note": RESEARCH_USE}


def voxel_ml(affine: np.ndarray) -> float:
    """Volume of one voxel of the grid in ml."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0


def region_volumes(labels: np.ndarray, affine: np.ndarray) -> dict[str, float]:
    """Volumes (ml) of NCR, ED, ET, TC and WT."""
    unit = voxel_ml(affine)
    return {region: float(np.isin(labels, values).sum()) * unit for region, values in REGION_LABELS.items()}


def classify_et(prior_ml: float, current_ml: float, *, min_measurable_ml: float = MIN_MEASURABLE_ML) -> EtClass:
    """The ET change against RANO 2.0's volumetric thresholds (+40 % progression, -65 % partial response)."""
    if prior_ml < min_measurable_ml:
        if current_ml >= min_measurable_ml:
            return EtClass("new", f"new measurable enhancing tumour ({current_ml:.1f} ml; "
                                  f"{prior_ml:.1f} ml before) - {RESEARCH_USE}")
        if prior_ml <= 0.0 and current_ml <= 0.0:
            return EtClass("absent", f"no enhancing tumour at either time point - {RESEARCH_USE}")
        return EtClass("not_measurable", f"enhancing tumour below {min_measurable_ml:g} ml at both time points "
                                         f"({prior_ml:.2f} -> {current_ml:.2f} ml) - {RESEARCH_USE}")
    change = (current_ml - prior_ml) / prior_ml
    figures = f"ET {prior_ml:.1f} -> {current_ml:.1f} ml ({100.0 * change:+.0f} %)"
    if change >= PROGRESSION_MIN_CHANGE:
        return EtClass("progression", f"{figures}: at or above the +40 % volumetric progression threshold "
                                      f"- {RESEARCH_USE}")
    if change <= PARTIAL_RESPONSE_MAX_CHANGE:
        return EtClass("partial_response", f"{figures}: at or below the -65 % volumetric partial response "
                                           f"threshold - {RESEARCH_USE}")
    return EtClass("stable", f"{figures}: between the volumetric thresholds (-65 %, +40 %) - {RESEARCH_USE}")


def labels_onto(labels: np.ndarray, affine: np.ndarray, shape: tuple[int, ...], target_affine: np.ndarray,
                transform: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """BraTS labels resampled onto ``(shape, target_affine)``; also the mask of voxels the source covers.

    Each class's indicator is resampled linearly and the largest share wins
    (background included), which keeps thin structures better than nearest
    neighbour on a coarser grid.
    """
    shares = [resample_onto((labels == value).astype(np.float32), affine, shape, target_affine, transform)
              for value in CLASS_LABELS]
    covered = resample_onto(np.ones(labels.shape, np.float32), affine, shape, target_affine, transform) > 0.5
    background = np.clip(1.0 - np.sum(shares, axis=0), 0.0, 1.0)
    winner = np.argmax(np.stack([background, *shares]), axis=0)
    out = np.zeros(shape, np.uint8)
    for index, value in enumerate(CLASS_LABELS, start=1):
        out[winner == index] = value
    out[~covered] = 0
    return out, covered


def change_map(prior_wt: np.ndarray, current_wt: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """The new/grown/stable/shrunk/vanished map (values :data:`CHANGE_VALUES`, 0 elsewhere) and lesion counts."""
    from scipy import ndimage

    structure = np.ones((3, 3, 3), bool)
    out = np.zeros(current_wt.shape, np.uint8)
    out[prior_wt & current_wt] = CHANGE_VALUES["stable"]
    current_lesions, n_current = ndimage.label(current_wt, structure)
    prior_lesions, n_prior = ndimage.label(prior_wt, structure)
    touching_prior = set(np.unique(current_lesions[prior_wt & current_wt]).tolist()) - {0}
    still_there = set(np.unique(prior_lesions[prior_wt & current_wt]).tolist()) - {0}
    gained = current_wt & ~prior_wt
    lost = prior_wt & ~current_wt
    is_new = np.isin(current_lesions, sorted(set(range(1, n_current + 1)) - touching_prior))
    out[gained & is_new] = CHANGE_VALUES["new"]
    out[gained & ~is_new] = CHANGE_VALUES["grown"]
    is_vanished = np.isin(prior_lesions, sorted(set(range(1, n_prior + 1)) - still_there))
    out[lost & is_vanished] = CHANGE_VALUES["vanished"]
    out[lost & ~is_vanished] = CHANGE_VALUES["shrunk"]
    counts = {"current": int(n_current), "prior": int(n_prior), "new": int(n_current - len(touching_prior)),
              "vanished": int(n_prior - len(still_there))}
    return out, counts


def _head(image: np.ndarray) -> np.ndarray:
    values = image[image > 0]
    if values.size == 0:
        return np.zeros(image.shape, bool)
    return image > np.percentile(values, 10)


def align(prior_image: np.ndarray, prior_affine: np.ndarray, image: np.ndarray, affine: np.ndarray, *,
          min_overlap: float = MIN_OVERLAP) -> tuple[Registration, float]:
    """Register the prior's reference image onto the current one; return it and the share of the head covered.

    Raises
    ------
    NotComparable
        When SimpleITK cannot register the pair, or the registered prior covers
        less than ``min_overlap`` of the current head.
    """
    try:
        registration = register_rigid(prior_image, prior_affine, image, affine, same_frame=False)
    except RuntimeError as exc:
        raise NotComparable(f"the prior does not register onto the current study "
                            f"({str(exc).strip().splitlines()[-1]})") from exc
    head = _head(image)
    if not head.any():
        raise NotComparable("the current reference image is empty")
    moved = resample_onto(prior_image, prior_affine, image.shape, affine, registration.transform)
    overlap = float((_head(moved) & head).sum() / head.sum())
    if overlap < min_overlap:
        raise NotComparable(f"after registration the prior covers {100 * overlap:.0f} % of the current head "
                            f"(at least {100 * min_overlap:.0f} % needed): the studies do not line up")
    return registration, overlap


def compare(prior_labels: np.ndarray, prior_image: np.ndarray, prior_affine: np.ndarray,
            labels: np.ndarray, image: np.ndarray, affine: np.ndarray, *,
            min_overlap: float = MIN_OVERLAP, min_measurable_ml: float = MIN_MEASURABLE_ML) -> Comparison:
    """Compare the prior study (labels and reference image on its grid) with the current one on its grid.

    Prior volumes are measured on the prior's own grid (what its report
    said); the change map uses the prior labels brought onto the current grid.

    Raises
    ------
    NotComparable
        See :func:`align`; or when the grids and arrays do not match.
    """
    if prior_labels.shape != prior_image.shape or labels.shape != image.shape:
        raise NotComparable(f"labels and image differ in shape (prior {prior_labels.shape} vs "
                            f"{prior_image.shape}, current {labels.shape} vs {image.shape})")
    registration, _ = align(prior_image, prior_affine, image, affine, min_overlap=min_overlap)
    moved, covered = labels_onto(prior_labels, prior_affine, labels.shape, affine, registration.transform)
    prior_ml = region_volumes(prior_labels, prior_affine)
    current_ml = region_volumes(labels, affine)
    regions = {key: RegionChange(key, prior_ml[key], current_ml[key]) for key in REGION_LABELS}
    current_wt = np.isin(labels, REGION_LABELS["wt"])
    prior_wt = np.isin(moved, REGION_LABELS["wt"])
    changes, lesions = change_map(prior_wt, current_wt)
    unit = voxel_ml(affine)
    change_ml = {name: float((changes == value).sum()) * unit for name, value in CHANGE_VALUES.items()}
    outside = float((current_wt & ~covered).sum() / max(int(current_wt.sum()), 1))
    notes = [f"prior registered onto the current study: {registration.reason}"]
    if outside > 0.0:
        notes.append(f"{100 * outside:.1f} % of the current tumour lies outside the prior's field of view "
                     "(counted as new there)")
    return Comparison(regions=regions, et_class=classify_et(prior_ml["et"], current_ml["et"],
                                                            min_measurable_ml=min_measurable_ml),
                      change_map=changes, prior_labels=moved, change_ml=change_ml, lesions=lesions,
                      registration=registration, outside_prior_fraction=outside, notes=notes)


__all__ = ["CHANGE_VALUES", "Comparison", "EtClass", "NotComparable", "RESEARCH_USE", "RegionChange", "align",
           "change_map", "classify_et", "compare", "labels_onto", "region_volumes", "voxel_ml"]
