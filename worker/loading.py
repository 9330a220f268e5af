"""DICOM series -> volumes with correct patient geometry, on one grid.

Geometry conventions (the project's): a volume is an array in
``(slices, rows, columns)`` order plus a 4x4 affine mapping ``(k, r, c, 1)``
to patient coordinates in LPS millimetres. Column ``2`` of the affine is
the step to the next column (ImageOrientationPatient's row cosine times the
column spacing, PixelSpacing[1]), column ``1`` the step to the next row
(column cosine times PixelSpacing[0]), column ``0`` the step between slices
and column ``3`` the ImagePositionPatient of the first slice. Slices are
sorted by their position along the normal ``row_cosine x column_cosine``,
whatever order they arrived in; ``datasets[k]`` belongs to ``array[k]``.
The result matches what ``dcm2niix`` writes, after converting RAS to LPS and
the axis order (a test checks the real series in the shared data).

Handled: single-frame images (MR, and any image with the Image Plane
module), Enhanced/Legacy Converted Enhanced MR multi-frame images (per-frame
or shared functional groups; a file of several stacks, told apart by StackID,
orientation, time point and echo, gives its largest stack and a note naming the
others, :mod:`neuroseg.model.enhanced`), oblique planes, gantry tilt (a sheared affine),
every patient position (the geometry comes from the patient-based
ImagePositionPatient/ImageOrientationPatient, so HFS, HFP, FFS... need no
special case), rescale slope/intercept, and compressed transfer syntaxes
(through pydicom's pixel data handlers and the pylibjpeg plugins).

Refused, with an :class:`~neuroseg.worker.errors.InputError` naming the series
and what is wrong: unreadable files or pixel data, mixed orientations, mixed
image sizes or pixel spacings, slices at the same position, uneven slice
spacing, missing slices (gaps), several frames of reference in one series,
fewer than :data:`MIN_SLICES` slices or tiny images.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from neuroseg.common.parallel import map_in_threads
from neuroseg.model.enhanced import frame_attribute, is_multiframe, largest_stack
from neuroseg.model.registration import WORKING_SPACING_MM, register_rigid, resample_onto, working_image
from neuroseg.worker.contracts import SequenceRole, SeriesManifest, StudyManifest
from neuroseg.worker.errors import InputError, JobInterrupted
from neuroseg.worker.settings import FrameOfReferencePolicy, Settings

log = logging.getLogger(__name__)

MIN_SLICES = 3
MIN_MATRIX = 8
#: Largest cosine difference between two slices' orientations that counts as the same (about 0.6 degrees).
ORIENTATION_TOLERANCE = 0.01
#: Largest deviation of one slice gap from the median gap, as a fraction of it.
SPACING_TOLERANCE = 0.1
#: Model input keys for each role.
MODEL_KEYS = {SequenceRole.T1: "t1", SequenceRole.T1CE: "t1ce", SequenceRole.T2: "t2", SequenceRole.FLAIR: "flair"}


@dataclass
class SeriesVolume:
    """One series as a volume.

    Attributes
    ----------
    array: numpy.ndarray
        float32, ``(slices, rows, columns)``, rescaled to real-world values.
    affine: numpy.ndarray
        4x4, maps ``(k, r, c, 1)`` to LPS millimetres.
    datasets: list of pydicom.dataset.Dataset
        Single-frame: one dataset per slice, ``datasets[k]`` is ``array[k]``.
        Multi-frame: the one dataset, and ``frame_numbers[k]`` (1-based) is
        the frame of ``array[k]``; a file of several stacks gives the frames
        of its largest (:func:`neuroseg.model.enhanced.largest_stack`).
    notes: list of str
        What was left out (the other stacks of a multi-frame file).
    """

    series_instance_uid: str
    role: SequenceRole
    array: np.ndarray
    affine: np.ndarray
    datasets: list[Dataset]
    frame_of_reference_uid: str
    series_description: str = ""
    frame_numbers: list[int] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along (slices, rows, columns)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def is_multiframe(self) -> bool:
        return self.frame_numbers is not None


@dataclass
class LoadedStudy:
    """The study ready for the model: every usable sequence on the reference grid.

    ``images`` maps the model's keys (``t1``, ``t1ce``, ``t2``, ``flair``) to
    float32 arrays with the shape of ``reference.array``; ``affine`` is the
    reference affine. ``notes`` lists what was skipped or changed and why
    (a skipped sequence makes the job ``partial``).
    """

    reference: SeriesVolume
    volumes: dict[SequenceRole, SeriesVolume]
    images: dict[str, np.ndarray]
    affine: np.ndarray
    notes: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    #: seconds spent reading and decoding, co-registering and resampling (for ``bench study``)
    timings: dict[str, float] = field(default_factory=dict)


# --- one series -------------------------------------------------------------------------------


def _name(series_uid: str, description: str = "") -> str:
    return f"series {series_uid}" + (f" ({description!r})" if description else "")


def read_series_datasets(folder: Path, series_uid: str = "") -> list[Dataset]:
    """Read every DICOM file in ``folder`` (pixel data included); raise InputError if one cannot be read."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{_name(series_uid)}: folder {folder} does not exist (spool pruned or moved?)")
    files = sorted(path for path in folder.iterdir() if path.is_file() and not path.name.startswith("."))
    datasets = []
    for path in files:
        try:
            ds = pydicom.dcmread(path)
        except JobInterrupted:
            raise
        except Exception as exc:  # noqa: BLE001 - any parse failure is bad input
            raise InputError(f"{_name(series_uid)}: file {path.name} is not readable DICOM: {exc}") from exc
        if "PixelData" not in ds and "FloatPixelData" not in ds:
            log.info("%s: %s has no pixel data; ignored", _name(series_uid), path.name)
            continue
        datasets.append(ds)
    if not datasets:
        raise InputError(f"{_name(series_uid)}: no image files in {folder}")
    return datasets


def _floats(value: object, count: int, what: str, where: str) -> np.ndarray:
    try:
        array = np.array([float(v) for v in value], dtype=np.float64)  # type: ignore[union-attr]
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: {what} is missing or not numeric ({value!r})") from exc
    if array.shape != (count,) or not np.all(np.isfinite(array)):
        raise InputError(f"{where}: {what} must hold {count} numbers; got {value!r}")
    return array


@dataclass
class _Plane:
    position: np.ndarray
    orientation: np.ndarray   # 6 values: row cosine, column cosine
    pixel_spacing: np.ndarray  # (between rows, between columns)
    slope: float
    intercept: float
    dataset_index: int
    frame_number: int | None


def _planes(datasets: Sequence[Dataset], where: str, notes: list[str]) -> list[_Plane]:
    planes = []
    for index, ds in enumerate(datasets):
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if is_multiframe(ds):
            per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
            if len(per_frame) not in (0, frames):
                raise InputError(f"{where}: {frames} frames but {len(per_frame)} per-frame functional groups")
            stack, note = largest_stack(ds)
            if note:
                notes.append(f"{where}: {note}")
            for number in stack.frame_numbers:
                frame = per_frame[number - 1] if per_frame else None
                what = f"frame {number} of {ds.SOPInstanceUID}"
                position = frame_attribute(ds, frame, "PlanePositionSequence", "ImagePositionPatient")
                orientation = frame_attribute(ds, frame, "PlaneOrientationSequence", "ImageOrientationPatient")
                spacing = frame_attribute(ds, frame, "PixelMeasuresSequence", "PixelSpacing")
                slope = frame_attribute(ds, frame, "PixelValueTransformationSequence", "RescaleSlope")
                intercept = frame_attribute(ds, frame, "PixelValueTransformationSequence", "RescaleIntercept")
                planes.append(_Plane(
                    _floats(position, 3, "ImagePositionPatient", f"{where}, {what}"),
                    _floats(orientation, 6, "ImageOrientationPatient", f"{where}, {what}"),
                    _floats(spacing, 2, "PixelSpacing", f"{where}, {what}"),
                    float(slope) if slope is not None else 1.0,
                    float(intercept) if intercept is not None else 0.0,
                    index, number,
                ))
        else:
            what = f"instance {ds.get('SOPInstanceUID', index)}"
            if frames != 1:
                raise InputError(f"{where}, {what}: {frames} frames without functional groups; "
                                 "cannot place them in space")
            planes.append(_Plane(
                _floats(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", f"{where}, {what}"),
                _floats(ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", f"{where}, {what}"),
                _floats(ds.get("PixelSpacing"), 2, "PixelSpacing", f"{where}, {what}"),
                float(ds.get("RescaleSlope", 1.0) or 1.0),
                float(ds.get("RescaleIntercept", 0.0) or 0.0),
                index, None,
            ))
    return planes


def _pixels(ds: Dataset, where: str) -> np.ndarray:
    try:
        array = ds.pixel_array
    except JobInterrupted:
        raise
    except Exception as exc:  # noqa: BLE001 - a decoder failure is bad input
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        syntax_name = getattr(syntax, "name", syntax)
        raise InputError(f"{where}, instance {ds.get('SOPInstanceUID', '?')}: pixel data cannot be decoded "
                         f"({syntax_name}): {exc}") from exc
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise InputError(f"{where}: colour images ({ds.get('PhotometricInterpretation')}) are not MR magnitude data")
    return array


def series_to_volume(datasets: Sequence[Dataset], *, series_instance_uid: str = "",
                     role: SequenceRole = SequenceRole.OTHER) -> SeriesVolume:
    """Turn the datasets of one series into a validated volume.

    Parameters
    ----------
    datasets: sequence of pydicom.dataset.Dataset
        The instances, in any order (single-frame), or one or more
        multi-frame instances.
    series_instance_uid: str
        Used in error messages (defaults to the datasets' SeriesInstanceUID).
    role: SequenceRole
        Carried into the result.

    Raises
    ------
    InputError
        Naming the series and what is wrong (see the module docstring).
    """
    if not datasets:
        raise InputError(f"{_name(series_instance_uid)}: no images")
    first = datasets[0]
    series_instance_uid = series_instance_uid or str(first.get("SeriesInstanceUID", ""))
    description = str(first.get("SeriesDescription", ""))
    where = _name(series_instance_uid, description)
    frames_of_reference = {str(ds.get("FrameOfReferenceUID", "")) for ds in datasets}
    if len(frames_of_reference) > 1:
        raise InputError(f"{where}: its images are in {len(frames_of_reference)} frames of reference "
                         f"({', '.join(sorted(frames_of_reference))}); a series must have one")
    sizes = {(int(ds.Rows), int(ds.Columns)) for ds in datasets}
    if len(sizes) > 1:
        raise InputError(f"{where}: images of different sizes {sorted(sizes)}; cannot stack them")
    rows, columns = sizes.pop()
    if rows < MIN_MATRIX or columns < MIN_MATRIX:
        raise InputError(f"{where}: images of {rows}x{columns} pixels are too small (at least {MIN_MATRIX})")

    notes: list[str] = []
    planes = _planes(datasets, where, notes)
    if len(planes) < MIN_SLICES:
        raise InputError(f"{where}: {len(planes)} slice(s); a volume needs at least {MIN_SLICES}")
    orientation = planes[0].orientation
    for plane in planes[1:]:
        if np.max(np.abs(plane.orientation - orientation)) > ORIENTATION_TOLERANCE:
            raise InputError(
                f"{where}: mixed orientations: ImageOrientationPatient {np.round(orientation, 4).tolist()} and "
                f"{np.round(plane.orientation, 4).tolist()} in one series (a localizer or a multi-plane series?)")
        if np.max(np.abs(plane.pixel_spacing - planes[0].pixel_spacing)) > 1e-3:
            raise InputError(f"{where}: mixed pixel spacings {planes[0].pixel_spacing.tolist()} and "
                             f"{plane.pixel_spacing.tolist()}")
    row_cosine, column_cosine = orientation[:3], orientation[3:]
    if abs(np.linalg.norm(row_cosine) - 1) > 0.01 or abs(np.linalg.norm(column_cosine) - 1) > 0.01 \
            or abs(float(row_cosine @ column_cosine)) > 0.01:
        raise InputError(f"{where}: ImageOrientationPatient {orientation.tolist()} is not two perpendicular "
                         "unit vectors")
    row_cosine = row_cosine / np.linalg.norm(row_cosine)
    column_cosine = column_cosine / np.linalg.norm(column_cosine)
    normal = np.cross(row_cosine, column_cosine)

    distances = np.array([plane.position @ normal for plane in planes])
    order = np.argsort(distances, kind="stable")
    planes = [planes[i] for i in order]
    distances = distances[order]
    gaps = np.diff(distances)
    if np.any(gaps < 1e-3):
        k = int(np.argmin(gaps))
        raise InputError(
            f"{where}: two images at the same position ({distances[k]:.2f} mm along the normal); "
            "several echoes, phases or repeats in one series cannot be made one volume")
    step = float(np.median(gaps))
    worst = int(np.argmax(np.abs(gaps - step)))
    if abs(gaps[worst] - step) > SPACING_TOLERANCE * step:
        missing = gaps[worst] / step - 1
        if abs(missing - round(missing)) < SPACING_TOLERANCE * 2 and round(missing) >= 1:
            raise InputError(
                f"{where}: missing slice(s): a gap of {gaps[worst]:.2f} mm after the slice at "
                f"{distances[worst]:.2f} mm where slices are {step:.2f} mm apart (about {round(missing)} "
                f"slice(s) missing of {len(planes) + round(missing)}); send the complete series again")
        raise InputError(
            f"{where}: uneven slice spacing: gaps from {gaps.min():.2f} to {gaps.max():.2f} mm "
            f"(median {step:.2f} mm, tolerance {SPACING_TOLERANCE:.0%})")

    # slope/intercept per slice; pixels in sorted order
    stacks = {}
    slices = []
    for plane in planes:
        ds = datasets[plane.dataset_index]
        if plane.dataset_index not in stacks:
            stacks[plane.dataset_index] = _pixels(ds, where)
        pixels = stacks[plane.dataset_index]
        frame = pixels[plane.frame_number - 1] if plane.frame_number is not None and pixels.ndim == 3 else pixels
        if frame.shape != (rows, columns):
            raise InputError(f"{where}: pixel data of {ds.get('SOPInstanceUID', '?')} has shape {frame.shape}, "
                             f"not {rows}x{columns}")
        slices.append(frame.astype(np.float32) * np.float32(plane.slope) + np.float32(plane.intercept))
    array = np.stack(slices)
    if not np.all(np.isfinite(array)):
        raise InputError(f"{where}: pixel data holds NaN or infinite values")

    first_position, last_position = planes[0].position, planes[-1].position
    affine = np.eye(4)
    affine[:3, 2] = row_cosine * planes[0].pixel_spacing[1]
    affine[:3, 1] = column_cosine * planes[0].pixel_spacing[0]
    affine[:3, 0] = (last_position - first_position) / (len(planes) - 1)
    affine[:3, 3] = first_position
    multiframe = planes[0].frame_number is not None
    return SeriesVolume(
        series_instance_uid=series_instance_uid, role=role, array=array, affine=affine,
        datasets=list(datasets) if multiframe else [datasets[plane.dataset_index] for plane in planes],
        frame_of_reference_uid=frames_of_reference.pop(), series_description=description,
        frame_numbers=[plane.frame_number for plane in planes] if multiframe else None, notes=notes,
    )


def load_series(series: SeriesManifest) -> SeriesVolume:
    """Read and validate one series of a manifest (see :func:`series_to_volume`)."""
    datasets = read_series_datasets(Path(series.folder), series.series_instance_uid)
    try:
        return series_to_volume(datasets, series_instance_uid=series.series_instance_uid, role=series.role)
    except (InputError, JobInterrupted):
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom decodes lazily: any header access may raise
        # a header the checks above did not foresee (found by tests/reliability fuzzing: a
        # deleted Rows, a non-numeric RescaleIntercept, a flipped bit making an unknown VR
        # 'TI' that pydicom refuses with NotImplementedError...): bad input, not a crash
        raise InputError(f"{_name(series.series_instance_uid, series.series_description)}: a header "
                         f"attribute is missing or malformed ({type(exc).__name__}: {exc})") from exc


# --- co-registration ---------------------------------------------------------------------------


def register_to_reference(volume: SeriesVolume, reference: SeriesVolume, role: SequenceRole,
                          reference_role: SequenceRole, settings: Settings, *,
                          registration_spacing_mm: float | None = WORKING_SPACING_MM,
                          prepared_reference: object = None) -> tuple[object, str | None]:
    """The transform that puts ``volume`` on ``reference`` (``None``: scanner geometry) and a note for the job.

    ``prepared_reference`` is the reference as :func:`neuroseg.model.registration.working_image` made it
    at ``registration_spacing_mm`` (made here when not given).

    Another frame of reference is registered (or refused, per
    ``frame_of_reference_policy``); within one frame the sequence is
    co-registered when ``settings.coregister`` is on, to undo patient motion
    between series.
    """
    same_frame = volume.frame_of_reference_uid == reference.frame_of_reference_uid
    if not same_frame and settings.frame_of_reference_policy is FrameOfReferencePolicy.REFUSE:
        raise InputError(
            f"{_name(volume.series_instance_uid, volume.series_description)} ({role.value}) is in frame of "
            f"reference {volume.frame_of_reference_uid}, the reference {reference_role.value} in "
            f"{reference.frame_of_reference_uid}; NEUROSEG_FRAME_OF_REFERENCE_POLICY=refuse")
    if same_frame and not settings.coregister:
        return None, None
    try:
        outcome = register_rigid(volume.array, volume.affine, reference.array, reference.affine,
                                 same_frame=same_frame, working_spacing_mm=registration_spacing_mm,
                                 prepared_fixed=prepared_reference)
    except RuntimeError as exc:
        raise InputError(f"{_name(volume.series_instance_uid, volume.series_description)}: rigid registration "
                         f"to the reference failed: {exc}") from exc
    why = "" if same_frame else " (different frame of reference)"
    note = f"{role.value} co-registered to {reference_role.value}{why}: {outcome.reason}"
    log.info("%s", note)
    return outcome.transform, note


# --- the study ---------------------------------------------------------------------------------


def choose_series(manifest: StudyManifest) -> dict[SequenceRole, SeriesManifest]:
    """The series for each of T1, T1ce, T2 and FLAIR; refuse two series with the same role."""
    chosen: dict[SequenceRole, SeriesManifest] = {}
    for item in manifest.series:
        if item.role is SequenceRole.OTHER:
            continue
        if item.role in chosen:
            other = chosen[item.role]
            raise InputError(
                f"two series have the role {item.role.value}: {other.series_instance_uid} "
                f"({other.series_description!r}) and {item.series_instance_uid} ({item.series_description!r}); "
                "set one of them to 'other' in the admin app and reprocess")
        chosen[item.role] = item
    if SequenceRole.FLAIR not in chosen and SequenceRole.T1CE not in chosen:
        found = ", ".join(f"{item.series_description or item.series_instance_uid} -> {item.role.value}"
                          for item in manifest.series) or "no series"
        raise InputError(f"no usable sequence: the model needs a FLAIR or a T1ce series; this study has {found}")
    return chosen


def load_study(manifest: StudyManifest, settings: Settings,
               progress: Callable[[float, str], None] | None = None, *,
               registration_spacing_mm: float | None = WORKING_SPACING_MM) -> LoadedStudy:
    """Load the study's sequences and resample them onto the reference grid.

    The reference is ``settings.reference_role`` (T1ce by default), else FLAIR,
    else T1ce; an Enhanced (multi-frame) series serves as well (the results then
    reference its frames). A sequence that cannot be loaded is skipped and named in
    ``skipped`` (the job ends ``partial``), unless nothing usable is left.
    Sequences in another frame of reference are registered rigidly to the
    reference or refused, per ``settings.frame_of_reference_policy``; within
    one frame they are co-registered when ``settings.coregister`` is on, on copies
    at ``registration_spacing_mm`` (``None``: at full resolution, the reference path).
    The series are read in parallel threads (pydicom's decoders and the file reads
    release the GIL).

    Raises
    ------
    InputError
        When no FLAIR or T1ce series can be loaded, two series share a role,
        or a frame of reference is refused; the message names the series.
    """
    chosen = choose_series(manifest)
    started = time.perf_counter()
    timings = {"read": 0.0, "register": 0.0, "resample": 0.0}
    volumes: dict[SequenceRole, SeriesVolume] = {}
    skipped: dict[str, str] = {}
    if progress:
        progress(0.0, f"reading {len(chosen)} series ({sum(item.instance_count for item in chosen.values())} files)")
    ordered = sorted(chosen.items(), key=lambda pair: pair[0].value)
    with ThreadPoolExecutor(max_workers=len(ordered), thread_name_prefix="neuroseg-read") as pool:
        futures = [(role, pool.submit(load_series, item)) for role, item in ordered]
        for n, (role, future) in enumerate(futures):
            try:
                volumes[role] = future.result()
            except InputError as exc:
                log.warning("study %s: %s skipped: %s", manifest.study_instance_uid, role.value, exc)
                skipped[role.value] = str(exc)
            if progress:
                progress(100 * (n + 1) / (len(chosen) + 1), f"read {role.value}")
    timings["read"] = time.perf_counter() - started
    preference = [SequenceRole.parse(settings.reference_role), SequenceRole.FLAIR, SequenceRole.T1CE]
    reference_role = next((role for role in preference if role in volumes), None)
    if reference_role is None:
        raise InputError("no usable sequence: " + "; ".join(f"{role}: {why}" for role, why in skipped.items()))
    reference = volumes[reference_role]
    notes = [f"{role} skipped: {why}" for role, why in skipped.items()]
    notes += [note for volume in volumes.values() for note in volume.notes]
    if reference_role.value != settings.reference_role:
        notes.append(f"reference grid is {reference_role.value} ({settings.reference_role} not available)")
    started = time.perf_counter()
    others = [role for role in volumes if role is not reference_role]
    # the reference is brought to the working spacing once; the registrations run in threads (ITK
    # releases the GIL) and give the same transforms as one after another
    prepared = working_image(reference.array, reference.affine, registration_spacing_mm) \
        if others and settings.coregister else None
    outcomes = dict(zip(others, map_in_threads(
        lambda role: register_to_reference(volumes[role], reference, role, reference_role, settings,
                                           registration_spacing_mm=registration_spacing_mm,
                                           prepared_reference=prepared), others, name="register")))
    notes += [note for _, note in outcomes.values() if note]
    timings["register"] = time.perf_counter() - started
    images: dict[str, np.ndarray] = {}
    for role, volume in volumes.items():
        started = time.perf_counter()
        transform = outcomes[role][0] if role in outcomes else None
        images[MODEL_KEYS[role]] = resample_onto(volume.array, volume.affine, reference.array.shape,
                                                 reference.affine, transform)
        timings["resample"] += time.perf_counter() - started
    if progress:
        progress(100.0, f"{len(images)} sequence(s) on the {reference_role.value} grid "
                 f"{'x'.join(str(n) for n in reference.array.shape)}")
    return LoadedStudy(reference=reference, volumes=volumes, images=images, affine=reference.affine.copy(),
                       notes=notes, skipped=skipped, timings=timings)
