"""Reading training and evaluation cases: BraTS 2015, 2021, 2023 and WT-only layouts.

Recognised layouts of one case folder ``<case>/``:

* BraTS 2021: ``<case>_t1.nii.gz``, ``_t1ce``, ``_t2``, ``_flair``, ``_seg`` (labels 0/1/2/4);
* BraTS 2023: ``<case>-t1n.nii.gz``, ``-t1c``, ``-t2w``, ``-t2f``, ``-seg`` (labels 0/1/2/3;
  3 is the enhancing tumour and becomes 4 here);
* BraTS 2023+ with a label of another name: ``t1n``, ``t1c``, ``t2w``, ``t2f`` and
  ``label*.nii.gz`` (labels 0/1/2/3 as above). A ``label-*algorithm*`` file is a
  machine label (made by a segmentation algorithm, not by an expert):
  :attr:`CaseFiles.label_source` says so and evaluation reports carry it;
* BraTS 2015: ``Flair_subtrMeanDivStd``, ``T1c_subtrMeanDivStd`` (``T1``, ``T2`` too),
  already z-scored inside the brain, ``brainmask`` and ``OTMultiClass`` (1 necrosis,
  2 edema, 3 non-enhancing tumour, 4 enhancing tumour). Label 3 becomes NCR (1),
  as BraTS 2017 and later merged it, so TC = 1+3+4; voxels outside ``brainmask``
  are set to zero (the z-scored background is not) so the head mask is the brain;
* whole-tumour only: ``T1.nii.gz``, ``FLAIR.nii.gz`` (any subset of ``T1``, ``T1CE``,
  ``T2``, ``FLAIR``), ``GT_W.nii.gz`` (binary whole tumour);
* plain: ``t1.nii.gz``, ``t1ce.nii.gz``, ``t2.nii.gz``, ``flair.nii.gz`` (no label).

Any sequence may be missing (at least one must be there). Images are read with
nibabel; the returned affine maps array indices to LPS millimetres (the project
convention; NIfTI stores RAS).

Training data: :func:`cache_cases` preprocesses each labelled case once with
:func:`neuroseg.model.preprocess.preprocess` (the same code inference uses) and
caches it as ``.npz``; :func:`sample_patch` draws tumour-biased patches,
:func:`drop_sequences` simulates missing sequences and :func:`augment_batch`
applies the spatial and intensity augmentation (MONAI dictionary transforms).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SEQUENCES = ("t1", "t1ce", "t2", "flair")
CLASS_VALUES = (0, 1, 2, 4)
"""BraTS label value of each class index (background, NCR, ED, ET)."""
CORE_SEQUENCES = ("t1ce", "flair")
"""Sequence dropout always keeps at least one of these (the model needs one)."""
CACHE_VERSION = 2

# file names per sequence (lower case, without .nii[.gz]): the whole stem, or its end after "_" or "-"
_NAMES: dict[str, tuple[str, ...]] = {
    "t1": ("t1", "t1n"),
    "t1ce": ("t1ce", "t1c"),
    "t2": ("t2", "t2w"),
    "flair": ("flair", "t2f"),
}
_WT_LABEL_NAMES = ("gt_w",)
_BRATS2015_LABEL_NAMES = ("otmulticlass",)
_BRAIN_MASK_NAMES = ("brainmask",)
_ZSCORED_SUFFIX = "_subtrmeandivstd"  # BraTS 2015 sequences already z-scored inside the brain


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
    label_2015: bool
        True when the label uses the BraTS 2015 value 3 for non-enhancing tumour (becomes NCR).
    label_source: str
        ``"expert"``, or ``"algorithm"`` for a machine label (reports must say so).
    brain_mask: Path | None
        Brain mask of images whose background is not zero (BraTS 2015).
    """

    case_id: str
    sequences: dict[str, Path]
    label: Path | None = None
    label_kind: LabelKind = LabelKind.NONE
    label_2023: bool = False
    label_2015: bool = False
    label_source: str = "expert"
    brain_mask: Path | None = None


@dataclass
class Case:
    """One case read into memory: images on one grid, optional label."""

    case_id: str
    images: dict[str, np.ndarray]
    affine: np.ndarray
    label: np.ndarray | None = None
    label_kind: LabelKind = LabelKind.NONE
    info: dict = field(default_factory=dict)
    label_source: str = "expert"


def _stem(path: Path) -> str:
    name = path.name.lower()
    stem = re.sub(r"\.nii(\.gz)?$", "", name)
    return stem.removesuffix(_ZSCORED_SUFFIX)


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
    label_2023 = label_2015 = False
    source = "expert"
    brain_mask: Path | None = None
    for path in files:
        stem = _stem(path)
        if stem in _WT_LABEL_NAMES:
            label, kind = path, LabelKind.WHOLE_TUMOUR
            continue
        if stem in _BRAIN_MASK_NAMES:
            brain_mask = path
            continue
        if stem in _BRATS2015_LABEL_NAMES:
            label, kind, label_2015 = path, LabelKind.BRATS, True
            continue
        if stem.startswith("label"):
            label, kind, label_2023 = path, LabelKind.BRATS, True
            source = "algorithm" if "algorithm" in stem else "expert"
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
            "(<case>_t1/_t1ce/_t2/_flair.nii.gz), BraTS 2023 (-t1n/-t1c/-t2w/-t2f), BraTS 2015 "
            "(Flair/T1c_subtrMeanDivStd) or T1/FLAIR names"
        )
    return CaseFiles(case_id=case_dir.name, sequences=sequences, label=label,
                     label_kind=kind, label_2023=label_2023, label_2015=label_2015,
                     label_source=source, brain_mask=brain_mask)


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
    """Read a case's label as uint8 BraTS values 0/1/2/4.

    BraTS 2023 labels (3 = ET) become 4; BraTS 2015 labels (3 = non-enhancing
    tumour) become 1 (NCR), as BraTS 2017 and later merged them. A
    whole-tumour-only label is returned as 0/1 (1 = tumour); the caller
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
        elif files.label_2015:
            label[label == 3] = 1
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
    if files.brain_mask is not None:
        images = _mask_background(images, files.brain_mask, shape)
    label = read_label(files, shape)
    return Case(case_id=files.case_id, images=images, affine=affine, label=label,
                label_kind=files.label_kind, label_source=files.label_source)


def _mask_background(images: dict[str, np.ndarray], mask_path: Path, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Zero the voxels outside a brain mask, shifting each image to be positive inside it.

    Pre-normalised images (BraTS 2015: z-scored inside the brain) have a
    non-zero background and negative brain values; preprocessing then could
    not tell the brain from the background. The shift is undone by the
    z-score that preprocessing applies anyway.
    """
    import nibabel as nib

    mask = np.asarray(nib.load(str(mask_path)).dataobj) > 0.5
    if mask.shape != tuple(shape):
        raise ValueError(f"brain mask {mask_path} has shape {mask.shape}, the images {tuple(shape)}")
    if not mask.any():
        raise ValueError(f"brain mask {mask_path} is empty")
    out = {}
    for key, data in images.items():
        inside = data[mask]
        out[key] = np.where(mask, data - inside.min() + 1.0, 0.0).astype(np.float32)
    return out


# --- training dataset: cache, patches, augmentation -------------------------------------------


@dataclass
class CachedCase:
    """A preprocessed case at the training spacing."""

    case_id: str
    image: np.ndarray  # (S, X, Y, Z) float16 (memory-mapped from the cache), z-scored, zeros where missing
    presence: np.ndarray  # (S,) float32
    label: np.ndarray  # (X, Y, Z) uint8 class index 0..3 (BraTS) or 0/1 (WT only)
    label_kind: LabelKind
    tumour_voxels: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.int32))
    head_voxels: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.int32))


def preprocess_case(files: CaseFiles, spacing_mm: float) -> CachedCase:
    """Preprocess one labelled case exactly as inference does, plus its label on the same grid.

    The label is brought onto the model grid by interpolating each class's mask
    linearly (:func:`neuroseg.model.preprocess.to_model_grid`, ``order=1``) and
    taking the most likely class, which keeps thin structures (the enhancing
    rim) better than nearest-neighbour sampling at coarse spacings.
    """
    from neuroseg.model.preprocess import preprocess, to_model_grid

    case = read_case(files)
    if case.label is None:
        raise ValueError(f"case {files.case_id} has no label to train on")
    pre = preprocess(case.images, case.affine, spacing=spacing_mm)
    values = CLASS_VALUES if case.label_kind is LabelKind.BRATS else (0, 1)
    scores = np.stack([to_model_grid((case.label == value).astype(np.float32), pre, order=1,
                                     cval=1.0 if value == 0 else 0.0) for value in values])
    label = np.argmax(scores, axis=0).astype(np.uint8)
    image = np.asarray(pre.image, dtype=np.float32)
    presence = np.asarray(pre.presence, dtype=np.float32)
    return _finish_cached(files.case_id, image, presence, label, case.label_kind)


def _finish_cached(case_id: str, image: np.ndarray, presence: np.ndarray, label: np.ndarray,
                   label_kind: LabelKind) -> CachedCase:
    head = np.argwhere(np.any(image != 0, axis=0)).astype(np.int32)
    tumour = np.argwhere(label > 0).astype(np.int32)
    return CachedCase(case_id=case_id, image=image.astype(np.float16), presence=presence, label=label,
                      label_kind=LabelKind(label_kind), tumour_voxels=tumour, head_voxels=head[::7])


def _cache_key(files: CaseFiles, spacing_mm: float) -> str:
    parts = [str(CACHE_VERSION), f"{spacing_mm:.3f}"]
    for path in sorted([*files.sequences.values(), files.label,
                        *([files.brain_mask] if files.brain_mask is not None else [])]):
        stat = Path(path).stat()
        parts.append(f"{Path(path).resolve()}:{stat.st_size}:{int(stat.st_mtime)}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


_CACHE_ARRAYS = ("image", "presence", "label", "tumour_voxels", "head_voxels")


def _write_cached(case: CachedCase, folder: Path) -> None:
    """Write a cached case as plain ``.npy`` files (memory-mappable), atomically by folder rename."""
    import json
    import shutil

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in _CACHE_ARRAYS:
        np.save(tmp / f"{name}.npy", getattr(case, name))
    (tmp / "case.json").write_text(json.dumps({"case_id": case.case_id, "label_kind": case.label_kind.value}))
    tmp.replace(folder)


def _read_cached(folder: Path) -> CachedCase:
    """Read a cached case; the image is memory-mapped, so a large data set need not fit in RAM."""
    import json

    meta = json.loads((folder / "case.json").read_text())
    arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r" if name == "image" else None)
              for name in _CACHE_ARRAYS}
    return CachedCase(case_id=meta["case_id"], label_kind=LabelKind(meta["label_kind"]), **arrays)


def cache_cases(data_dirs: tuple[Path, ...], cache_dir: Path, spacing_mm: float,
                progress: bool = True) -> list[CachedCase]:
    """Preprocess every labelled case once; later runs memory-map the cached arrays.

    Each case is cached in ``cache_dir/<case>-<key>/`` where the key covers the
    file paths, sizes and modification times, the spacing and the cache format.
    """
    from tqdm import tqdm

    files = [f for d in data_dirs for f in find_cases(d) if f.label is not None]
    if not files:
        raise ValueError(f"no labelled cases in {', '.join(map(str, data_dirs))}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    cases = []
    for item in tqdm(files, desc="preprocess", unit="case", disable=not progress):
        folder = cache_dir / f"{item.case_id}-{_cache_key(item, spacing_mm)}"
        if not (folder / "case.json").is_file():
            _write_cached(preprocess_case(item, spacing_mm), folder)
        cases.append(_read_cached(folder))
    return cases


def split_cases(cases: list[CachedCase], val_fraction: float, seed: int) -> tuple[list[CachedCase], list[CachedCase]]:
    """Deterministic train/validation split by case id (no case in both)."""
    if val_fraction <= 0 or len(cases) < 2:
        return list(cases), []
    order = sorted(cases, key=lambda c: hashlib.sha1(f"{seed}:{c.case_id}".encode()).hexdigest())
    n_val = max(1, int(round(val_fraction * len(cases))))
    return order[n_val:], order[:n_val]


def sample_patch(case: CachedCase, rng: np.random.Generator, patch: int,
                 tumour_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """A (S, P, P, P) image patch and its (P, P, P) label, centred on tumour with ``tumour_fraction``."""
    if len(case.tumour_voxels) and rng.random() < tumour_fraction:
        centre = case.tumour_voxels[rng.integers(len(case.tumour_voxels))]
    elif len(case.head_voxels):
        centre = case.head_voxels[rng.integers(len(case.head_voxels))]
    else:
        centre = np.array(case.label.shape) // 2
    centre = centre + rng.integers(-patch // 4, patch // 4 + 1, size=3)
    start = centre - patch // 2
    shape = np.array(case.label.shape)
    src_lo = np.clip(start, 0, shape)
    src_hi = np.clip(start + patch, 0, shape)
    dst_lo = src_lo - start
    dst_hi = dst_lo + (src_hi - src_lo)
    image = np.zeros((case.image.shape[0], patch, patch, patch), dtype=np.float32)
    label = np.zeros((patch, patch, patch), dtype=np.int64)
    src = tuple(slice(a, b) for a, b in zip(src_lo, src_hi))
    dst = tuple(slice(a, b) for a, b in zip(dst_lo, dst_hi))
    image[(slice(None), *dst)] = case.image[(slice(None), *src)]
    label[dst] = case.label[src]
    return image, label


def drop_sequences(presence: np.ndarray, rng: np.random.Generator, sequences: tuple[str, ...]) -> np.ndarray:
    """Random subset of the present sequences that keeps at least one of FLAIR/T1ce."""
    keep = presence.copy()
    present = [i for i, p in enumerate(presence) if p > 0]
    core = [i for i in present if sequences[i] in CORE_SEQUENCES]
    if len(present) < 2 or not core:
        return keep
    while True:
        trial = np.array([p if rng.random() < 0.5 else 0.0 for p in presence], dtype=np.float32)
        if any(trial[i] > 0 for i in core):
            return trial


INTENSITY_OFFSET = 3.0
"""Intensity augmentation works on z-scored values shifted by this, so the head is mostly positive."""


ROTATION_RADIANS = 0.26
"""Largest rotation about each axis (15 degrees)."""
SCALE_RANGE = (0.85, 1.15)
"""Isotropic scaling: one factor for all three axes, as a head differs in size, not in proportions."""


def _rand_rotate_scale(keys: list[str], modes: list[str]):  # noqa: ANN202 - a MONAI transform
    """Rotation up to :data:`ROTATION_RADIANS` per axis and one isotropic scale, in one resampling.

    MONAI's ``RandAffined`` draws a scale per axis (anisotropic) and chaining
    ``RandRotated`` with ``RandZoomd`` resamples twice; this draws the
    parameters with MONAI's random state and resamples once with ``Affine``.
    """
    from monai.transforms import Affine, MapTransform, RandomizableTransform

    class RandRotateIsoScaled(RandomizableTransform, MapTransform):
        def __init__(self) -> None:
            RandomizableTransform.__init__(self, prob=1.0)
            MapTransform.__init__(self, keys)

        def randomize(self, data: object = None) -> None:
            super().randomize(None)
            self.angles = tuple(self.R.uniform(-ROTATION_RADIANS, ROTATION_RADIANS, 3))
            self.scale = float(self.R.uniform(*SCALE_RANGE))

        def __call__(self, data: dict) -> dict:
            self.randomize()
            affine = Affine(rotate_params=self.angles, scale_params=(self.scale,) * 3, padding_mode="zeros",
                            image_only=True)
            out = dict(data)
            for key, mode in zip(self.keys, modes):
                out[key] = affine(out[key], mode=mode)
            return out

    return RandRotateIsoScaled()


@lru_cache(maxsize=8)
def augmentation(channels: int, patch: int, spatial: bool = True):  # noqa: ANN201 - monai Compose
    """The MONAI dictionary transforms of one training sample.

    On ``{"image": (S, P, P, P), "label": (1, P, P, P)}``: the non-zero
    voxels are kept as ``inside`` (the head, present sequences); rotation up
    to 15 degrees and one isotropic scale 0.85-1.15 move image, label and
    ``inside`` together (:func:`_rand_rotate_scale`), then flips (``RandFlipd``
    per axis); per sequence, each with its own draw: gamma
    (``RandAdjustContrastd``), a smooth bias field (``RandBiasFieldd``),
    intensity scale and shift; Gaussian noise (``RandGaussianNoised``); thick
    slices in a quarter of the samples (``Zoomd`` with area averaging by 2 or 3
    along one axis, then ``Resized`` back: 6-9 mm slices at 3 mm); and
    finally zero outside ``inside`` (``MaskIntensityd``), so missing sequences
    and the outside of the head stay zero. Seed it with ``set_random_state``
    before each sample.
    """
    from monai.transforms import (
        Compose,
        ConcatItemsd,
        CopyItemsd,
        DeleteItemsd,
        Identityd,
        Lambdad,
        MaskIntensityd,
        OneOf,
        RandAdjustContrastd,
        RandBiasFieldd,
        RandFlipd,
        RandGaussianNoised,
        RandScaleIntensityd,
        RandShiftIntensityd,
        Resized,
        ShiftIntensityd,
        SplitDimd,
        Zoomd,
    )

    moved_keys = ["image", "label", "inside"]
    steps = [CopyItemsd(keys="image", names="inside"), Lambdad(keys="inside", func=_non_zero)]
    if spatial:
        steps.append(_rand_rotate_scale(moved_keys, ["bilinear", "nearest", "nearest"]))
        steps += [RandFlipd(keys=moved_keys, prob=0.5, spatial_axis=axis) for axis in range(3)]
    names = [f"image_{i}" for i in range(channels)]
    steps.append(SplitDimd(keys="image", output_postfixes=[str(i) for i in range(channels)], dim=0,
                           keepdim=True))
    for name in names:
        steps += [
            ShiftIntensityd(keys=name, offset=INTENSITY_OFFSET),
            RandAdjustContrastd(keys=name, prob=1.0, gamma=(0.74, 1.35)),
            # MONAI's degree-2 field has 10 terms with the constant: +-0.1 each
            RandBiasFieldd(keys=name, prob=1.0, degree=2, coeff_range=(-0.1, 0.1)),
            RandScaleIntensityd(keys=name, prob=1.0, factors=0.1),
            ShiftIntensityd(keys=name, offset=-INTENSITY_OFFSET),
            RandShiftIntensityd(keys=name, prob=1.0, offsets=0.15),
        ]
    steps += [ConcatItemsd(keys=names, name="image", dim=0), DeleteItemsd(keys=names),
              RandGaussianNoised(keys="image", prob=1.0, std=0.1, sample_std=True)]
    thick = [Compose([Zoomd(keys="image", zoom=tuple(1.0 / factor if a == axis else 1.0 for a in range(3)),
                            mode="area", keep_size=False),
                      Resized(keys="image", spatial_size=(patch,) * 3, mode="trilinear")])
             for axis in range(3) for factor in (2, 3)]
    steps += [OneOf([Identityd(keys="image"), *thick], weights=[0.75] + [0.25 / len(thick)] * len(thick)),
              MaskIntensityd(keys="image", mask_key="inside"), DeleteItemsd(keys="inside")]
    return Compose(steps)


def _non_zero(image):  # noqa: ANN001, ANN202 - tensor in, tensor out
    return (image != 0).float()


def augment_batch(images, labels, seed: int, *, spatial: bool = True):
    """Augment a batch: (B, S, P, P, P) images, (B, P, P, P) labels, with :func:`augmentation`.

    Sample ``b`` is augmented with the transforms seeded by ``seed + b``, so a
    step's batch depends only on its seed (resuming gives the same run).
    """
    import torch

    from monai.data import get_track_meta, set_track_meta

    channels, patch = images.shape[1], images.shape[2]
    transform = augmentation(channels, patch, spatial)
    out_images, out_labels = [], []
    # Plain tensors: MONAI's MetaTensor would halve the transforms' speed and,
    # worse, route every operation of the network's forward and backward pass
    # through its metadata hook (a training step 10x slower).
    tracking = get_track_meta()
    set_track_meta(False)
    try:
        for b in range(images.shape[0]):
            transform.set_random_state(seed=(seed + b) % (2**32))
            sample = transform({"image": images[b].float(), "label": labels[b][None].float()})
            out_images.append(torch.as_tensor(sample["image"]).as_subclass(torch.Tensor).float())
            out_labels.append(torch.as_tensor(sample["label"]).as_subclass(torch.Tensor)[0].round().long())
    finally:
        set_track_meta(tracking)
    return torch.stack(out_images), torch.stack(out_labels)
