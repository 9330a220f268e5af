"""Small synthetic studies for the dicom_out tests (importable by other test folders)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from neuroseg.dicom_out.common import EncodeOptions, EncodeRequest
from neuroseg.dicom_out.mr_series import StudyIdentity, build_mr_series


def grid_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float] = (2.0, 1.0, 1.0),
                tilt_degrees: float = 0.0) -> np.ndarray:
    """(slices, rows, columns) affine centred on the origin, optionally tilted about L."""
    angle = np.radians(tilt_degrees)
    row_cosine = np.array([1.0, 0.0, 0.0])
    column_cosine = np.array([0.0, np.cos(angle), -np.sin(angle)])
    normal = np.cross(row_cosine, column_cosine)
    affine = np.eye(4)
    affine[:3, 0] = normal * spacing[0]
    affine[:3, 1] = column_cosine * spacing[1]
    affine[:3, 2] = row_cosine * spacing[2]
    centre = (np.asarray(shape) - 1) / 2.0
    affine[:3, 3] = -(affine[:3, :3] @ centre)
    return affine


def phantom_labels(shape: tuple[int, int, int], *, empty: bool = False) -> np.ndarray:
    """Nested ellipsoids: ED shell, ET rim, NCR core (BraTS 2, 4, 1)."""
    labels = np.zeros(shape, dtype=np.uint8)
    if empty:
        return labels
    k, r, c = np.indices(shape, dtype=np.float32)
    centre = (np.asarray(shape) - 1) / 2.0 + np.array([0, 3, -4])
    radius = np.sqrt(((k - centre[0]) / (shape[0] * 0.3)) ** 2 + ((r - centre[1]) / (shape[1] * 0.25)) ** 2
                     + ((c - centre[2]) / (shape[2] * 0.22)) ** 2)
    labels[radius < 1.0] = 2
    labels[radius < 0.6] = 4
    labels[radius < 0.35] = 1
    return labels


@dataclass
class SyntheticStudy:
    reference: list[Dataset]
    others: dict[str, list[Dataset]]
    affine: np.ndarray
    labels: np.ndarray

    def request(self, options: EncodeOptions | None = None, **overrides) -> EncodeRequest:
        labels = overrides.pop("labels", self.labels)
        shape = labels.shape
        rng = np.random.default_rng(7)
        probabilities = {}
        for key, value in (("ncr", 1), ("ed", 2), ("et", 4)):
            p = np.clip((labels == value) * 0.8 + rng.random(shape, dtype=np.float32) * 0.15, 0, 1)
            probabilities[key] = p.astype(np.float32)
        variance = {key: (p * (1 - p) * 0.1).astype(np.float32) for key, p in probabilities.items()}
        gradcam = {key: np.clip(p * 1.2, 0, 1).astype(np.float32) for key, p in probabilities.items()}
        entropy = (rng.random(shape, dtype=np.float32) * 0.2 + (labels > 0) * 0.5).astype(np.float32)
        values = dict(
            reference_series=self.reference, other_series=self.others, labels=labels,
            probabilities=probabilities, variance=variance, gradcam=gradcam, entropy=entropy,
            sequences_used=("t1", "t1ce", "t2", "flair"), model_name="neuroseg-unet3d",
            model_version="0.1.0-test", options=options or EncodeOptions(),
        )
        values.update(overrides)
        return EncodeRequest(**values)


def synthetic_study(shape: tuple[int, int, int] = (24, 64, 64), *, seed: str = "dicom-out-test",
                    empty: bool = False, tilt_degrees: float = 0.0) -> SyntheticStudy:
    """A T1ce reference series on ``shape`` plus FLAIR on a coarser, different grid."""
    identity = StudyIdentity(uid_seed=seed, patient_name="Test^Glioma", patient_id="DO-TEST")
    labels = phantom_labels(shape, empty=empty)
    affine = grid_affine(shape, tilt_degrees=tilt_degrees)
    image = (labels.astype(np.int16) * 150 + 300)
    reference = build_mr_series(image, affine, study=identity, series_number=5, role="T1ce")
    flair_shape = (shape[0] // 2, shape[1] // 2, shape[2] // 2)
    flair = build_mr_series(np.full(flair_shape, 200, np.int16), grid_affine(flair_shape, (4.0, 2.0, 2.0)),
                            study=identity, series_number=3, role="FLAIR")
    return SyntheticStudy(reference, {"FLAIR": flair}, affine, labels)
