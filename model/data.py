"""Reading training and evaluation cases: BraTS 2021, BraTS 2023 and WT-only layouts.

Recognised layouts of one case folder ``<case>/``:

* BraTS 2021: ``<case>_t1.nii.gz``, ``_t1ce``, ``_t2``, ``_flair``, ``_seg`` (labels 0/1/2/4);
* BraTS 2023: ``<case>-t1n.nii.gz``, ``-t1c``, ``-t2w``, ``-t2f``, ``-seg`` (labels 0/1/2/3;
  3 is the enhancing tumour and becomes 4 here);
* whole-tumour only: ``T1.nii.gz``, ``FLAIR.nii.gz`` (any subset of ``T1``, ``T1CE``,
  ``T2``, ``FLAIR``), ``GT_W.nii.gz`` (binary whole tumour);
* plain: ``t1.nii.gz``, ``t1ce.nii.gz``, ``t2.nii.gz``, ``flair.nii.gz`` (no label).

Any sequence may be missing (at least one must be there). Images are read with
nibabel; the returned affine maps array indices to LPS millimetres (the project
convention; NIfTI stores RAS).

The training dataset (:class:`PatchDataset`) works on cases already
preprocessed with :func:`neuroseg.model.preprocess.preprocess` (the same code
inference uses) and cached as ``.npz`` files by :func:`cache_cases`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SEQUENCES = ("t1", "t1ce", "t2", "flair")

# file names per sequence (lower case, without .nii[.gz]): the whole stem, or its end after "_" or "-"
_NAMES: dict[str, tuple[str, ...]] = {
    "t1": ("t1", "t1n"),
    "t1ce": ("t1ce", "t1c"),
    "t2": ("t2", "t2w"),
    "flair": ("flair", "t2f"),
}
_WT_LABEL_NAMES = ("gt_w",)


class LabelKind(str, Enum):
    """What a case's ground truth holds."""

    BRATS = "brats"  # 0/1/2/4 (NCR, ED, ET)
    WHOLE_TUMOUR = "wt"  # binary whole tumour only
    NONE = "none"


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case.

    Attributes
    ----------
    case_id: str
        Folder name.
    sequences: dict[str, Path]
        Sequence key (``t1``, ``t1ce``, ``t2``, ``flair``) to NIfTI path; missing keys are absent.
    label: Path | None
        Ground-truth label file, if any.
    label_kind: LabelKind
        What the label holds.
    label_2023: bool
        True when the label uses the BraTS 2023 value 3 for enhancing tumour.
    """

    case_id: str
    sequences: dict[str, Path]
    label: Path | None = None
    label_kind: LabelKind = LabelKind.NONE
    label_2023: bool = False


@dataclass
class Case:
    """One case read into memory: images on one grid, optional label."""

    case_id: str
    images: dict[str, np.ndarray]
    affine: np.ndarray
    label: np.ndarray | None = None
    label_kind: LabelKind = LabelKind.NONE
    info: dict = field(default_factory=dict)


def _stem(path: Path) -> str:
    name = path.name.lower()
    return re.sub(r"\.nii(\.gz)?$", "", name)


def _matches(stem: str, name: str) -> bool:
    return stem == name or stem.endswith("_" + name) or stem.endswith("-" + name)


def find_case_files(case_dir: Path) -> CaseFiles:
    """Identify the sequences and label of one case folder.

    Raises
    ------
    ValueError
        If the folder holds no recognisable sequence, or two files claim the same sequence.
    """
    case_dir = Path(case_dir)
    if not case_dir.is_dir():
        raise ValueError(f"case folder {case_dir} does not exist")
    files = sorted(p for p in case_dir.iterdir() if re.search(r"\.nii(\.gz)?$", p.name.lower()))
    sequences: dict[str, Path] = {}
    label: Path | None = None
    kind = LabelKind.NONE
    label_2023 = False
    for path in files:
        stem = _stem(path)
        if stem in _WT_LABEL_NAMES:
            label, kind = path, LabelKind.WHOLE_TUMOUR
            continue
        if _matches(stem, "seg"):
            label, kind = path, LabelKind.BRATS
            label_2023 = stem.endswith("-seg")
            continue
        key = next((k for k, names in _NAMES.items() if any(_matches(stem, n) for n in names)), None)
        if key is None:
            continue
        if key in sequences:
            raise ValueError(
                f"case {case_dir}: both {sequences[key].name} and {path.name} look like the "
                f"{key} sequence; keep one"
            )
        sequences[key] = path
    if not sequences:
        raise ValueError(
            f"case folder {case_dir} holds no recognisable sequence; expected BraTS 2021 "
            "(<case>_t1/_t1ce/_t2/_flair.nii.gz), BraTS 2023 (-t1n/-t1c/-t2w/-t2f) or T1/FLAIR names"
        )
    return CaseFiles(case_id=case_dir.name, sequences=sequences, label=label,
                     label_kind=kind, label_2023=label_2023)


def find_cases(data_dir: Path) -> list[CaseFiles]:
    """All case folders directly under ``data_dir`` (or ``data_dir`` itself if it is one case).

    Raises
    ------
    ValueError
        If ``data_dir`` does not exist or holds no case.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"data folder {data_dir} does not exist")
    subdirs = sorted(p for p in data_dir.iterdir() if p.is_dir())
    cases = []
    for sub in subdirs:
        try:
            cases.append(find_case_files(sub))
        except ValueError:
            log.debug("skipping %s: not a case folder", sub)
    if not cases:
        try:
            cases = [find_case_files(data_dir)]
        except ValueError:
            raise ValueError(
                f"{data_dir} holds no case folders (BraTS 2021/2023 layout or T1/FLAIR/GT_W names)"
            ) from None
    return cases


def lps_affine(nifti_affine: np.ndarray) -> np.ndarray:
    """NIfTI (RAS) affine to the project's LPS affine."""
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(nifti_affine, dtype=float)


def read_label(files: CaseFiles, shape: tuple[int, ...] | None = None) -> np.ndarray | None:
    """Read a case's label as uint8 BraTS values (WT-only labels become 0/2... see below).

    A whole-tumour-only label is returned as 0/1 (1 = tumour); the caller
    decides how to use it (``files.label_kind`` says which it is).
    """
    import nibabel as nib

    if files.label is None:
        return None
    data = np.asarray(nib.load(str(files.label)).dataobj)
    label = np.rint(data).astype(np.int16)
    if files.label_kind is LabelKind.WHOLE_TUMOUR:
        label = (label > 0).astype(np.uint8)
    else:
        if files.label_2023:
            label[label == 3] = 4
        bad = sorted(set(np.unique(label).tolist()) - {0, 1, 2, 4})
        if bad:
            raise ValueError(f"label {files.label}: values {bad} are not BraTS labels 0/1/2/4")
        label = label.astype(np.uint8)
    if shape is not None and label.shape != tuple(shape):
        raise ValueError(f"label {files.label} has shape {label.shape}, the images {tuple(shape)}")
    return label


def read_case(files: CaseFiles) -> Case:
    """Read images (float32) and label of a case; all sequences must share one grid.

    Raises
    ------
    ValueError
        If the sequences have different shapes or affines (resample them first).
    """
    import nibabel as nib

    images: dict[str, np.ndarray] = {}
    affine = None
    reference = None
    for key, path in files.sequences.items():
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
        if data.ndim != 3:
            raise ValueError(f"{path}: expected a 3D volume, got shape {data.shape}")
        this_affine = lps_affine(img.affine)
        if affine is None:
            affine, reference = this_affine, path
        elif data.shape != next(iter(images.values())).shape or not np.allclose(this_affine, affine, atol=1e-3):
            raise ValueError(
                f"case {files.case_id}: {path.name} is not on the grid of {reference.name}; "
                "resample the sequences onto one grid first (neuroseg predict does this for you)"
            )
        images[key] = data
    shape = next(iter(images.values())).shape
    label = read_label(files, shape)
    return Case(case_id=files.case_id, images=images, affine=affine, label=label,
                label_kind=files.label_kind)
