"""Files in and out of the model: NIfTI or DICOM-folder inputs for ``neuroseg predict``, and the result folder.

Geometry convention: in memory a volume is an array plus a 4x4 affine from
array indices to **LPS** millimetres. NIfTI stores RAS, so reading and writing
negate the first two rows of the affine; the array axis order stays as stored.

A DICOM folder (one series) is read with SimpleITK's ``ImageSeriesReader``, or,
when it holds one Enhanced (multi-frame) MR file, from the frames' functional
groups (:mod:`neuroseg.model.enhanced`: the largest stack of the file);
its array has shape (slices, rows, columns), ``array[k]`` being the k-th slice
along the slice normal, and the affine's columns are the slice, row and column
steps in LPS (SimpleITK's physical space is LPS already).

Result folder (:func:`write_result_folder`), all on the reference grid, RAS
affines in the files::

    seg.nii.gz                      uint8 BraTS labels 0/1/2/4
    prob_{ncr,ed,et}.nii.gz         mean softmax
    variance_{ncr,ed,et}.nii.gz     MC dropout variance
    entropy.nii.gz                  predictive entropy (nats)
    mutual_information.nii.gz       (nats)
    gradcam_{ncr,ed,et}.nii.gz      in [0, 1]
    image_{t1,t1ce,t2,flair}.nii.gz the inputs that were used
    report.json                     volumes, sequences, model, timings

Every volume but ``seg`` is stored as 16-bit integers with the header's
scale slope and intercept (a step of 1/65535 of its range); readers get
the values back as floats.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neuroseg.common.files import atomic_target, atomic_write
from neuroseg.common.parallel import map_in_threads
from neuroseg.model.registration import register_rigid, resample_onto

log = logging.getLogger(__name__)

SEQUENCE_KEYS = ("t1", "t1ce", "t2", "flair")
TUMOUR_CLASSES = ("ncr", "ed", "et")
REFERENCE_ORDER = ("t1ce", "flair", "t2", "t1")
REPORT_VERSION = 1
NOT_FOR_DIAGNOSIS = ("Research use only: not for diagnostic use. The demo weights were trained on synthetic "
                     "phantoms and are not a clinical model.")
_GRID_TOLERANCE_MM = 1e-3


def ras_to_lps(affine: np.ndarray) -> np.ndarray:
    """Negate the first two rows (RAS <-> LPS; the same operation both ways)."""
    out = np.array(affine, dtype=np.float64, copy=True)
    out[:2] *= -1
    return out


lps_to_ras = ras_to_lps


def read_nifti(path: str | os.PathLike[str], name: str = "volume") -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI file as (float32 array, LPS affine); a trailing singleton 4th axis is dropped.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not readable NIfTI or not a single 3D volume.
    """
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{name}: {path} does not exist")
    try:
        image = nib.load(str(path))
        data = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises several kinds for a damaged file
        raise ValueError(f"{name}: {path} is not a readable NIfTI file ({exc})") from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{name}: {path} has shape {data.shape}; expected one 3D volume")
    return data, ras_to_lps(image.affine)


def read_dicom_folder(path: str | os.PathLike[str], name: str = "volume") -> tuple[np.ndarray, np.ndarray]:
    """Read the one DICOM series in a folder as (float32 array (slices, rows, columns), LPS affine).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the folder holds no DICOM series or more than one.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{name}: {path} does not exist")
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(path))
    if not series:
        raise ValueError(f"{name}: {path} holds no DICOM series; give a NIfTI file or a folder with one series")
    if len(series) > 1:
        raise ValueError(f"{name}: {path} holds {len(series)} DICOM series ({', '.join(series)}); "
                         f"put one series per folder")
    files = reader.GetGDCMSeriesFileNames(str(path), series[0])
    enhanced = _read_multiframe(files, path, name)
    if enhanced is not None:
        return enhanced
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise ValueError(f"{name}: the DICOM series in {path} cannot be read ({exc})") from exc
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{name}: the DICOM series in {path} is not a single-channel 3D volume")
    array = sitk.GetArrayFromImage(image).astype(np.float32)  # (slices, rows, columns)
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.array(image.GetSpacing(), dtype=np.float64)
    affine = np.eye(4)
    # SimpleITK index (i, j, k) = (column, row, slice); our array axes are reversed
    affine[:3, :3] = (direction * spacing)[:, ::-1]
    affine[:3, 3] = image.GetOrigin()
    return array, affine


def _read_multiframe(files: Sequence[str], folder: Path, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """An Enhanced (multi-frame) MR series: its largest stack, or None when the files are single-frame.

    SimpleITK reads a multi-frame file as one slice's worth of geometry, so the
    frames' functional groups are read here instead (:mod:`neuroseg.model.enhanced`).
    """
    import pydicom

    from neuroseg.model.enhanced import is_multiframe, largest_stack, stack_volume

    if not files or not is_multiframe(pydicom.dcmread(files[0], stop_before_pixels=True)):
        return None
    if len(files) > 1:
        raise ValueError(f"{name}: the DICOM series in {folder} is {len(files)} files, the first multi-frame; "
                         "give a folder with the one Enhanced MR file of the series")
    ds = pydicom.dcmread(files[0])
    stack, note = largest_stack(ds)
    if note:
        log.info("%s: %s", name, note)
    try:
        array, affine, _ = stack_volume(ds, stack)
    except ValueError as exc:
        raise ValueError(f"{name}: the Enhanced MR file in {folder} cannot be made a volume: {exc}") from exc
    return array, affine


def read_volume(path: str | os.PathLike[str], name: str = "volume") -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI file (``.nii``/``.nii.gz``) or a folder holding one DICOM series."""
    path = Path(path)
    if path.is_dir():
        return read_dicom_folder(path, name)
    if not path.exists():
        raise FileNotFoundError(f"{name}: {path} does not exist")
    if not path.name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"{name}: {path} is neither a NIfTI file (.nii, .nii.gz) nor a DICOM folder")
    return read_nifti(path, name)


def same_grid(shape_a: tuple[int, ...], affine_a: np.ndarray, shape_b: tuple[int, ...], affine_b: np.ndarray) -> bool:
    """Whether two volumes share one voxel grid (same shape, affines equal to 1 micrometre)."""
    return tuple(shape_a) == tuple(shape_b) and np.allclose(affine_a, affine_b, atol=_GRID_TOLERANCE_MM)


def load_inputs(paths: Mapping[str, str | os.PathLike[str]], *, coregister: bool = True,
                notes: list[str] | None = None) -> tuple[dict[str, np.ndarray], np.ndarray, str]:
    """Read the given sequences and bring them onto the reference grid.

    Parameters
    ----------
    paths: Mapping[str, path]
        Sequence key ("t1", "t1ce", "t2", "flair") to a NIfTI file or DICOM folder.
    coregister: bool
        Rigidly register each sequence to the reference first
        (:mod:`neuroseg.model.registration`), undoing patient motion between
        series; off, the scanner geometry alone places them.
    notes: list, optional
        Receives one line per co-registered sequence (what moved, or why the
        scanner geometry was kept).

    Returns
    -------
    tuple
        ``(images, affine, reference)``: arrays on one grid, its LPS affine, and
        the key of the reference sequence (t1ce if given, else flair).

    Raises
    ------
    ValueError
        For unknown keys, no FLAIR/T1ce, or an unreadable input (naming it).
    FileNotFoundError
        If an input does not exist.
    """
    unknown = sorted(set(paths) - set(SEQUENCE_KEYS))
    if unknown:
        raise ValueError(f"unknown sequence(s) {', '.join(unknown)}; use {', '.join(SEQUENCE_KEYS)}")
    if "t1ce" not in paths and "flair" not in paths:
        raise ValueError(f"give at least --t1ce or --flair (given: {', '.join(sorted(paths)) or 'nothing'})")
    volumes = {key: read_volume(path, f"--{key} {path}") for key, path in paths.items()}
    reference = next(key for key in REFERENCE_ORDER if key in volumes)
    ref_array, ref_affine = volumes[reference]
    images: dict[str, np.ndarray] = {}
    for key, (array, affine) in volumes.items():
        transform = None
        if coregister and key != reference:
            outcome = register_rigid(array, affine, ref_array, ref_affine, same_frame=True)
            note = f"{key} co-registered to {reference}: {outcome.reason}"
            log.info("%s", note)
            if notes is not None:
                notes.append(note)
            transform = outcome.transform
        if transform is None and same_grid(array.shape, affine, ref_array.shape, ref_affine):
            images[key] = array
            continue
        log.info("resampling %s %s onto the %s grid %s", key, array.shape, reference, ref_array.shape)
        images[key] = resample_onto(array, affine, ref_array.shape, ref_affine, transform)
    return images, ref_affine, reference


def write_nifti(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike[str], *,
                scaled_integers: bool = False) -> None:
    """Write ``array`` with an LPS ``affine`` as NIfTI (RAS in the file; sform and qform code 1), atomically.

    ``scaled_integers`` stores a float array as 16-bit integers with the
    header's scale slope and intercept (nibabel chooses them: a step of the
    array's range / 65535, which readers undo through ``dataobj``). Float32
    noise barely compresses: on a 240x240x155 result this made the viewer's
    volumes 31 MB instead of 169 MB and their gzip 4x faster.
    """
    import nibabel as nib

    path = Path(path)
    ras = lps_to_ras(affine)
    array = np.asarray(array)
    image = nib.Nifti1Image(array, ras)
    if scaled_integers and array.dtype.kind == "f" and array.size:
        image.set_data_dtype(np.uint16 if float(np.nanmin(array)) >= 0.0 else np.int16)
    image.set_sform(ras, code=1)
    image.set_qform(ras, code=1)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    with atomic_target(path, suffix=suffix) as temp:  # nibabel picks the format from the suffix
        nib.save(image, temp)


def _write_json(data: dict[str, Any], path: Path) -> None:
    atomic_write(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def build_report(result: Any, shape: tuple[int, ...], affine: np.ndarray, model_metadata: Mapping[str, Any] | None = None,
                 notes: list[str] | None = None, quality: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``report.json`` content for a :class:`~neuroseg.model.inference.SegmentationResult`.

    ``quality`` is the per-study estimate (:meth:`neuroseg.model.quality.StudyQuality.to_report`).
    """
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "model": {"name": result.model_name, "version": result.model_version,
                  "gradcam_layer": getattr(result, "gradcam_layer", "") or None,
                  "postprocessing": dict(getattr(result, "postprocessing", {}) or {}) or None,
                  "tta": bool(getattr(result, "tta_variance", None)),
                  "cpu_backend": dict(getattr(result, "cpu_backend", {}) or {}) or None},
        "sequences_used": list(result.sequences_used),
        "mc_samples": int(getattr(result, "mc_samples", 0)),
        "volumes_ml": {key: float(value) for key, value in result.volumes_ml.items()},
        "labels": {"0": "background", "1": "NCR (necrotic core)", "2": "ED (edema)", "4": "ET (enhancing tumour)"},
        "regions": {"wt": "whole tumour (1+2+4)", "tc": "tumour core (1+4)", "et": "enhancing tumour (4)"},
        "timings_s": {key: float(value) for key, value in result.timings.items()},
        "grid": {"shape": [int(n) for n in shape], "affine_lps": np.asarray(affine, dtype=float).round(6).tolist()},
        "gradcam_target_layer": getattr(result, "gradcam_layer", "") or None,
        "statement": NOT_FOR_DIAGNOSIS,
    }
    if notes:
        report["notes"] = list(notes)
    if quality:
        report["quality"] = dict(quality)
    if model_metadata:
        card = model_metadata.get("model_card")
        if card is not None:
            report["model"]["model_card"] = card
    return report


def write_result_folder(result: Any, images: Mapping[str, np.ndarray], affine: np.ndarray,
                        out_dir: str | os.PathLike[str], *,
                        model_metadata: Mapping[str, Any] | None = None,
                        notes: list[str] | None = None,
                        quality: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write a segmentation result and its inputs as NIfTI files plus ``report.json``.

    Parameters
    ----------
    result: SegmentationResult
        From :func:`neuroseg.model.inference.segment`, on the grid of ``images``.
    images: Mapping[str, np.ndarray]
        The input arrays (written as ``image_{key}.nii.gz``).
    affine: np.ndarray
        Their shared LPS affine.
    out_dir: path-like
        Created if needed; existing result files are replaced.
    model_metadata: Mapping, optional
        Checkpoint metadata; its ``model_card`` is copied into the report.
    notes: list, optional
        Lines about how the inputs were prepared (co-registration), kept in ``report.json``.
    quality: Mapping, optional
        The per-study quality estimate, kept in ``report.json`` as ``quality``.

    Returns
    -------
    dict
        The report (also written to ``report.json``), with a ``files`` entry.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shape = result.labels.shape
    arrays: dict[str, np.ndarray] = {"seg": result.labels.astype(np.uint8)}
    arrays.update({f"prob_{key}": result.probabilities[key] for key in TUMOUR_CLASSES})
    arrays.update({f"variance_{key}": result.variance[key] for key in TUMOUR_CLASSES})
    arrays.update(entropy=result.entropy, mutual_information=result.mutual_information)
    arrays.update({f"gradcam_{key}": result.gradcam[key] for key in TUMOUR_CLASSES})
    arrays.update({f"tta_variance_{key}": array for key, array in (getattr(result, "tta_variance", None) or {}).items()})
    arrays.update({f"image_{key}": images[key] for key in SEQUENCE_KEYS if key in images})
    for name, array in arrays.items():
        if array.shape != shape:
            raise ValueError(f"{name} has shape {array.shape}, the labels {shape}: the result is inconsistent")

    def save(name: str) -> None:
        array = arrays[name]
        if name == "seg":
            write_nifti(array, affine, out / f"{name}.nii.gz")
        else:
            write_nifti(np.asarray(array, dtype=np.float32), affine, out / f"{name}.nii.gz", scaled_integers=True)

    map_in_threads(save, arrays, name="nifti")  # gzip is most of the time here, and zlib releases the GIL
    files = {name: f"{name}.nii.gz" for name in arrays}
    report = build_report(result, shape, affine, model_metadata, notes, quality)
    report["files"] = files
    _write_json(report, out / "report.json")
    log.info("wrote result folder %s (%d files)", out, len(files) + 1)
    return report


@dataclass
class ResultFolder:
    """A result folder read back; arrays on one grid with an LPS ``affine``."""

    folder: Path
    labels: np.ndarray
    affine: np.ndarray
    probabilities: dict[str, np.ndarray] = field(default_factory=dict)
    variance: dict[str, np.ndarray] = field(default_factory=dict)
    entropy: np.ndarray | None = None
    mutual_information: np.ndarray | None = None
    gradcam: dict[str, np.ndarray] = field(default_factory=dict)
    images: dict[str, np.ndarray] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)


def read_result_folder(folder: str | os.PathLike[str]) -> ResultFolder:
    """Read a folder written by :func:`write_result_folder` (missing optional maps are left out).

    Raises
    ------
    FileNotFoundError
        If the folder or its ``seg.nii.gz`` / ``report.json`` is missing.
    """
    folder = Path(folder)
    for required in ("seg.nii.gz", "report.json"):
        if not (folder / required).is_file():
            raise FileNotFoundError(f"{folder} is not a neuroseg result folder: {required} is missing")
    labels, affine = read_nifti(folder / "seg.nii.gz", "seg")
    result = ResultFolder(folder=folder, labels=labels.astype(np.uint8), affine=affine,
                          report=json.loads((folder / "report.json").read_text()))

    def optional(name: str) -> np.ndarray | None:
        path = folder / f"{name}.nii.gz"
        return read_nifti(path, name)[0] if path.is_file() else None

    for key in TUMOUR_CLASSES:
        for target, prefix in ((result.probabilities, "prob"), (result.variance, "variance"), (result.gradcam, "gradcam")):
            array = optional(f"{prefix}_{key}")
            if array is not None:
                target[key] = array
    result.entropy = optional("entropy")
    result.mutual_information = optional("mutual_information")
    for key in SEQUENCE_KEYS:
        array = optional(f"image_{key}")
        if array is not None:
            result.images[key] = array
    return result
