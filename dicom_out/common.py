"""What every encoder shares: the request, the options, checks and identity.

The caller (the worker) guarantees that every array is already on the grid of
the reference series: shape ``(slices, rows, columns)`` with ``array[k]``
belonging to ``reference_series[k]``, and the series sorted along its normal.
:class:`EncodeRequest` checks what it can (shapes, values, series
consistency) and raises a :class:`DicomOutError` naming the problem.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset

from neuroseg.common.errors import InputError
from neuroseg.dicom_out.enum import (
    MapCompression,
    MapKind,
    MeshFormat,
    ReportKind,
    SegmentationTypeValues,
    TumorClass,
)

log = logging.getLogger(__name__)

#: Shown wherever the IOD has free text for it: ContentDescription (SEG, PM, Surface SEG,
#: shortened to "Not for diagnostic use"), DocumentTitle and the STL file header (STL),
#: an Algorithm Parameters TEXT item in the SR, and "research use" in every
#: SeriesDescription. Parametric Maps also carry ContentQualification RESEARCH.
NOT_FOR_DIAGNOSTIC_USE = "Research use only - not for diagnostic use"

#: Private coding scheme for concepts that DICOM/SNOMED do not define (predictive entropy).
LOCAL_SCHEME = "99NEUROSEG"
PREDICTIVE_ENTROPY = CodedConcept("PRED-ENTROPY", LOCAL_SCHEME, "Predictive entropy")
MC_DROPOUT = CodedConcept("MC-DROPOUT", LOCAL_SCHEME, "Monte Carlo dropout")
#: model_card["uncertainty"]["method"] (the model adapter's one statement of it) -> the method's code and the
#: short words the map explanations use; a model card without it is our own network's MC dropout.
UNCERTAINTY_METHODS: dict[str, tuple[CodedConcept, str]] = {
    "mc-dropout": (MC_DROPOUT, "MC dropout"),
    "test-time-flips": (CodedConcept("TTA-FLIPS", LOCAL_SCHEME, "Test-time flips"), "flip TTA"),
    "test-time-flips-and-fold-ensemble": (
        CodedConcept("TTA-FLIPS-FOLDS", LOCAL_SCHEME, "Test-time flips and fold ensemble"), "flip+fold"),
}
# standard codes used by more than one object
NO_UNITS = CodedConcept("1", "UCUM", "no units")
STANDARD_DEVIATION = CodedConcept("113061", "DCM", "Standard Deviation")

MANUFACTURER = "neuroseg"

#: SeriesNumber of each result series (fixed, so a reprocess keeps them).
SERIES_NUMBERS = {
    "seg": 9001,
    "pmap-probability": 9010,
    "pmap-uncertainty": 9020,
    "pmap-gradcam": 9030,
    "mesh-stl": 9040,
    "mesh-surface": 9041,
    "sr": 9050,
    "keyimages": 9060,
    "report-pdf": 9070,
}

_CLASS_CODES: dict[TumorClass, CodedConcept] = {
    # CID 7168 "Brain Lesion Segmentation Type With Necrosis"; DICOM uses Necrosis for
    # necrotic / non-enhancing core as well, which is what BraTS label 1 means.
    TumorClass.NCR: CodedConcept("6574001", "SCT", "Necrosis"),
    TumorClass.ED: CodedConcept("79654002", "SCT", "Edema"),
    TumorClass.ET: CodedConcept("C113842", "NCIt", "Enhancing Lesion"),
}
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = CodedConcept("49755003", "SCT", "Morphologically Abnormal Structure")
#: Recommended display colours (BraTS convention: NCR red, ED green, ET yellow), sRGB.
CLASS_COLOURS: dict[TumorClass, tuple[int, int, int]] = {
    TumorClass.NCR: (230, 40, 40),
    TumorClass.ED: (40, 200, 60),
    TumorClass.ET: (250, 215, 30),
}
#: Segment numbers in the SEG (and Surface SEG).
SEGMENT_NUMBERS: dict[TumorClass, int] = {TumorClass.NCR: 1, TumorClass.ED: 2, TumorClass.ET: 3}


def class_code(tumor_class: TumorClass) -> CodedConcept:
    """Segmented Property Type code of a tumour class."""
    return _CLASS_CODES[TumorClass(tumor_class)]


class DicomOutError(InputError):
    """The inputs cannot be encoded; the message names the offending item.

    Bad input (a source series, an array on the wrong grid, an encoding setting
    out of range), so retrying will not help. Still a ``ValueError`` for callers
    outside the service.
    """


class SourceSeriesError(DicomOutError):
    """The source series lacks something the output objects must reference."""


class GridMismatchError(DicomOutError):
    """An array is not on the reference series' grid."""


def package_version() -> str:
    try:
        return version("neuroseg")
    except PackageNotFoundError:
        return "0+unknown"


def _enum_set(values: Any, enum: type, name: str) -> frozenset:
    if isinstance(values, (str, bytes)):
        values = [values]
    result = set()
    for value in values:
        try:
            result.add(enum(getattr(value, "value", value)))
        except ValueError:
            allowed = ", ".join(item.value for item in enum)
            raise DicomOutError(f"EncodeOptions.{name} has {value!r}; allowed: {allowed}") from None
    return frozenset(result)


#: Parametric Maps sent unless asked otherwise: 3 probabilities and 1 entropy map.
DEFAULT_MAPS = frozenset({"probability", "entropy"})


@dataclass(frozen=True)
class EncodeOptions:
    """Which objects to write and how.

    Parameters
    ----------
    segmentation_type: str
        ``"BINARY"`` (default: one frame per slice and segment, empty frames
        kept) or ``"LABELMAP"`` (Label Map Segmentation Storage).
    maps: collection of str
        Subset of ``{"probability", "entropy", "uncertainty", "gradcam"}``
        (``uncertainty`` is the entropy plus the SD of each class); default
        :data:`DEFAULT_MAPS`, the probability of each class and the entropy.
    mesh_formats: collection of str
        Subset of ``{"stl", "surface"}``.
    include_brain_surface: bool
        Add a brain surface mesh (needs ``brain_mask``).
    brain_mask: numpy.ndarray or None
        Boolean brain mask on the reference grid.
    mesh_smoothing: float
        Gaussian smoothing (mm) of the masks before marching cubes.
    mesh_target_faces: int
        Upper bound on the faces of each mesh.
    map_compression: str
        ``"deflate"`` (default: float32, deflated), ``"jpegls"``, ``"rle"`` or
        ``"none"`` (uint16): the lossless encoding of the Parametric Maps.
    reports: collection of str
        Subset of ``{"keyimages", "pdf"}`` (default both): Secondary Capture
        key images and the Encapsulated PDF report.
    series_tag: str
        Appended to each SeriesDescription after " - " (e.g. ``"research use"``
        or ``"DEMO WEIGHTS research use"``).
    """

    segmentation_type: str = "BINARY"
    maps: frozenset[str] = DEFAULT_MAPS
    mesh_formats: frozenset[str] = frozenset({"stl"})
    include_brain_surface: bool = False
    brain_mask: np.ndarray | None = field(default=None, compare=False, repr=False)
    mesh_smoothing: float = 1.0
    mesh_target_faces: int = 20000
    series_tag: str = "research use"
    reports: frozenset[str] = frozenset({"keyimages", "pdf"})
    map_compression: str = "deflate"

    def __post_init__(self) -> None:
        value = getattr(self.segmentation_type, "value", self.segmentation_type)
        try:
            object.__setattr__(self, "segmentation_type", SegmentationTypeValues(str(value).upper()).value)
        except ValueError:
            raise DicomOutError(
                f"EncodeOptions.segmentation_type={self.segmentation_type!r}; use 'BINARY' or 'LABELMAP'"
            ) from None
        object.__setattr__(self, "maps", frozenset(m.value for m in _enum_set(self.maps, MapKind, "maps")))
        object.__setattr__(self, "mesh_formats", frozenset(
            m.value for m in _enum_set(self.mesh_formats, MeshFormat, "mesh_formats")))
        object.__setattr__(self, "reports", frozenset(r.value for r in _enum_set(self.reports, ReportKind, "reports")))
        (compression,) = _enum_set(self.map_compression, MapCompression, "map_compression")
        object.__setattr__(self, "map_compression", compression.value)
        if self.include_brain_surface and self.brain_mask is None:
            raise DicomOutError("EncodeOptions.include_brain_surface=True needs brain_mask")
        if self.mesh_target_faces < 100:
            raise DicomOutError(f"EncodeOptions.mesh_target_faces={self.mesh_target_faces}; use at least 100")
        if self.mesh_smoothing < 0:
            raise DicomOutError(f"EncodeOptions.mesh_smoothing={self.mesh_smoothing}; must be >= 0 mm")
        if len(self.series_tag) > 30:
            raise DicomOutError(f"EncodeOptions.series_tag={self.series_tag!r} is longer than 30 characters")


@dataclass(frozen=True)
class EncodedObject:
    """One DICOM object ready to send.

    ``kind`` names it within the study: ``"seg"``, ``"pmap-probability-ncr"``,
    ``"pmap-uncertainty-entropy"``, ``"pmap-uncertainty-sd-et"``,
    ``"pmap-gradcam-ed"``, ``"mesh-stl-wt"``, ``"mesh-surface"``, ``"sr"``.
    """

    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    dataset: Dataset = field(repr=False, compare=False)
    #: The file holding this data set as written (:func:`~neuroseg.dicom_out.send.write_outbox`), or None:
    #: C-STORE then sends its bytes instead of encoding (and deflating) the data set once more.
    path: Path | None = field(default=None, compare=False)


@dataclass(frozen=True)
class EncodeRequest:
    """Everything needed to encode the results of one study.

    Parameters
    ----------
    reference_series: Sequence[pydicom.dataset.Dataset]
        Single-frame images of the series the results are on, sorted along
        the slice normal; axis 0 of every array follows this order.
    labels: numpy.ndarray
        BraTS label map (0, 1, 2, 4), shape (slices, rows, columns).
    model_name, model_version: str
        Identify the model; the version is part of every UID key.
    other_series: Mapping[str, Sequence[pydicom.dataset.Dataset]]
        Role -> datasets of the other sequences used (further sources).
    probabilities, variance, gradcam: Mapping[str, numpy.ndarray]
        Per class (``"ncr"``, ``"ed"``, ``"et"``) float arrays on the grid:
        mean softmax, MC dropout variance of the softmax, Grad-CAM (>= 0).
    entropy: numpy.ndarray or None
        Predictive entropy (nats) on the grid.
    volumes_ml: Mapping[str, float] or None
        Region volumes in millilitres (``"ncr"``, ``"ed"``, ``"et"``,
        ``"wt"``, ``"tc"``); computed from ``labels`` when None.
    sequences_used: Sequence[str]
        The sequences the model actually read (e.g. ``("t1ce", "flair")``).
    options: EncodeOptions
        Which objects to write.
    model_card: Mapping or None
        The model card (``name``, ``intended_use``, ``architecture``,
        ``limitations``, ...), summarised in the PDF report.
    reference_role: str
        The sequence the reference series is (e.g. ``"T1ce"``); named in the
        derivation description of every object.
    reference_frames: Sequence[int] or None
        For an Enhanced (multi-frame) reference: ``reference_series`` is its
        one dataset and ``reference_frames[k]`` (1-based) the frame of slice
        ``k``; the objects then reference those frames (ReferencedFrameNumber).
    quality: Mapping or None
        The per-study quality estimate: ``expected_dice`` (``"WT"``, ``"TC"``, ``"ET"`` -> float
        or None), ``review_recommended`` (bool) and ``reasons`` (plain words); stated in the SR,
        on the first key image and on the first page of the PDF. It informs; it never blocks.
    """

    reference_series: Sequence[Dataset]
    labels: np.ndarray
    model_name: str
    model_version: str
    other_series: Mapping[str, Sequence[Dataset]] = field(default_factory=dict)
    probabilities: Mapping[str, np.ndarray] = field(default_factory=dict)
    variance: Mapping[str, np.ndarray] = field(default_factory=dict)
    gradcam: Mapping[str, np.ndarray] = field(default_factory=dict)
    entropy: np.ndarray | None = None
    volumes_ml: Mapping[str, float] | None = None
    sequences_used: Sequence[str] = ()
    options: EncodeOptions = field(default_factory=EncodeOptions)
    reference_role: str = "reference"
    model_card: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    reference_frames: Sequence[int] | None = None
    quality: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.options, EncodeOptions):
            raise TypeError(f"EncodeRequest.options must be EncodeOptions; got {type(self.options).__name__}")
        if not self.model_name or not self.model_version:
            raise DicomOutError("EncodeRequest needs model_name and model_version (they name the outputs)")
        if self.reference_frames is not None:
            check_multiframe_reference(self.reference_series, self.reference_frames)
        else:
            check_reference_series(self.reference_series)
        for role, series in self.other_series.items():
            check_other_series(role, series, self.reference_series[0])
        shape = self.grid_shape
        labels = np.asarray(self.labels)
        _check_grid("labels", labels, shape)
        if labels.dtype.kind not in "iub":
            raise DicomOutError(f"labels must be an integer array (BraTS 0/1/2/4); got dtype {labels.dtype}")
        unexpected = sorted(set(np.unique(labels).tolist()) - {0, 1, 2, 4})
        if unexpected:
            raise DicomOutError(f"labels contain values {unexpected}; BraTS labels are 0, 1, 2 and 4")
        object.__setattr__(self, "labels", labels.astype(np.uint8, copy=False))
        for name in ("probabilities", "variance", "gradcam"):
            arrays = {}
            for key, array in getattr(self, name).items():
                arrays[_class_key(name, key).value] = _float_grid(f"{name}[{key!r}]", array, shape)
            object.__setattr__(self, name, arrays)
        if self.entropy is not None:
            object.__setattr__(self, "entropy", _float_grid("entropy", self.entropy, shape))
        for name, key in (("probability", "probabilities"), ("gradcam", "gradcam")):
            if name in self.options.maps and not getattr(self, key):
                raise DicomOutError(f"options.maps asks for {name} maps but EncodeRequest.{key} is empty")
        if "uncertainty" in self.options.maps and self.entropy is None and not self.variance:
            raise DicomOutError("options.maps asks for uncertainty maps but neither entropy nor variance is given")
        if "entropy" in self.options.maps and self.entropy is None:
            raise DicomOutError("options.maps asks for the entropy map but EncodeRequest.entropy is None")
        if self.options.brain_mask is not None:
            _check_grid("options.brain_mask", np.asarray(self.options.brain_mask), shape)
        if self.volumes_ml is not None:
            missing = {"ncr", "ed", "et", "wt", "tc"} - set(self.volumes_ml)
            if missing:
                raise DicomOutError(f"volumes_ml lacks {sorted(missing)}; give all of ncr, ed, et, wt, tc or None")

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        """(slices, rows, columns) of the reference series."""
        first = self.reference_series[0]
        slices = len(self.reference_frames) if self.reference_frames is not None else len(self.reference_series)
        return (slices, int(first.Rows), int(first.Columns))

    @property
    def study_instance_uid(self) -> str:
        return str(self.reference_series[0].StudyInstanceUID)

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel of the reference grid in millilitres."""
        if self.reference_frames is not None:
            return abs(float(np.linalg.det(self.reference_affine()[:3, :3]))) / 1000.0
        first = self.reference_series[0]
        row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
        return row_spacing * column_spacing * slice_spacing(self.reference_series) / 1000.0

    def region_volumes_ml(self) -> dict[str, float]:
        """Volumes per region: the given ``volumes_ml`` or counted from the labels."""
        if self.volumes_ml is not None:
            return {key: float(self.volumes_ml[key]) for key in ("ncr", "ed", "et", "wt", "tc")}
        counts = {value: int(np.count_nonzero(self.labels == value)) for value in (1, 2, 4)}
        voxel = self.voxel_volume_ml
        return {
            "ncr": counts[1] * voxel, "ed": counts[2] * voxel, "et": counts[4] * voxel,
            "wt": (counts[1] + counts[2] + counts[4]) * voxel, "tc": (counts[1] + counts[4]) * voxel,
        }

    def derivation_description(self) -> str:
        """Derivation Description (ST): the grid the object is on and the other sequences read.

        Only the reference series is referenced frame by frame (viewers such as
        OHIF match a SEG to exactly one series); the other sequences are named here.
        """
        reference_uid = self.reference_series[0].SeriesInstanceUID
        text = f"AI result on the grid of the {self.reference_role} series {reference_uid}"
        if self.sequences_used:
            text += f"; sequences the model read: {', '.join(self.sequences_used)}"
        others = [f"{role} {series[0].SeriesInstanceUID}" for role, series in self.other_series.items()]
        if others:
            text += f"; other source series: {'; '.join(others)}"
        text += f"; uncertainty: {self.uncertainty_method()[0].meaning}"
        if self.gradcam_layer():
            text += f"; Grad-CAM layer: {self.gradcam_layer()}"
        return text[:1024]

    def uncertainty_method(self) -> tuple[CodedConcept, str]:
        """The code and short words of the model card's uncertainty method (:data:`UNCERTAINTY_METHODS`)."""
        method = ((self.model_card or {}).get("uncertainty") or {}).get("method") or "mc-dropout"
        if method not in UNCERTAINTY_METHODS:
            raise DicomOutError(f"model card: unknown uncertainty method {method!r}; one of "
                                f"{', '.join(UNCERTAINTY_METHODS)}")
        return UNCERTAINTY_METHODS[method]

    def provenance(self) -> dict[str, str]:
        """Who made the model and under which terms (model card ``provenance``: ``authors``, ``license``),
        each at most 200 characters; empty where the card does not say."""
        found = (self.model_card or {}).get("provenance") or {}
        return {key: str(found[key])[:200] for key in ("authors", "license") if found.get(key)}

    def gradcam_layer(self) -> str:
        """The layer the Grad-CAM maps were taken at (model card ``gradcam.layer``); "" when not known."""
        return str(((self.model_card or {}).get("gradcam") or {}).get("layer") or "")

    def reference_slices(self) -> list[tuple[Dataset, int | None]]:
        """``(dataset, frame number)`` of each slice ``k`` of the grid; the frame is None for single-frame images."""
        if self.reference_frames is None:
            return [(ds, None) for ds in self.reference_series]
        return [(self.reference_series[0], int(number)) for number in self.reference_frames]

    def reference_affine(self) -> np.ndarray:
        """4x4 from ``(k, r, c, 1)`` to LPS millimetres, from the slices' positions, orientation and spacing."""
        geometry = [_slice_geometry(ds, frame) for ds, frame in self.reference_slices()]
        (first, orientation, spacing), last = geometry[0], geometry[-1][0]
        affine = np.eye(4)
        affine[:3, 2] = orientation[:3] * spacing[1]
        affine[:3, 1] = orientation[3:] * spacing[0]
        affine[:3, 0] = ((last - first) / (len(geometry) - 1) if len(geometry) > 1
                         else np.cross(orientation[:3], orientation[3:]))
        affine[:3, 3] = first
        return affine

    def highdicom_source(self) -> tuple[list[Dataset], list[Any] | None]:
        """``(source_images, plane_positions)`` for highdicom's SEG and Parametric Map.

        Single-frame: the series and None (highdicom takes the positions from
        the images). Multi-frame: the dataset, with its pixel measures and
        orientation in the shared functional groups where the scanner wrote
        them per frame (highdicom reads them only there; Siemens XA writes them
        per frame), and the plane position of each slice, which highdicom
        matches to the source frames to write ReferencedFrameNumber.
        """
        if self.reference_frames is None:
            return list(self.reference_series), None
        import highdicom as hd

        ds = self.reference_series[0]
        shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else Dataset()
        first_frame = ds.PerFrameFunctionalGroupsSequence[int(self.reference_frames[0]) - 1]
        missing = [keyword for keyword in ("PixelMeasuresSequence", "PlaneOrientationSequence")
                   if keyword not in shared and keyword in first_frame]
        if missing:
            # the same instance (UIDs, frames, pixels shared, not copied); only the shared group differs
            view, shared_view = _element_copy(ds), _element_copy(shared)
            for keyword in missing:
                setattr(shared_view, keyword, first_frame[keyword].value)
            view.SharedFunctionalGroupsSequence = [shared_view]
            ds = view
        positions = [hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT,
                                              _slice_geometry(self.reference_series[0], frame)[0].tolist())
                     for _, frame in self.reference_slices()]
        return [ds], positions

    def source_datasets(self) -> list[Dataset]:
        """Every source dataset: the reference series, then the other series."""
        items = list(self.reference_series)
        for series in self.other_series.values():
            items.extend(series)
        return items


def _class_key(name: str, key: str) -> TumorClass:
    try:
        return TumorClass(str(key).lower())
    except ValueError:
        raise DicomOutError(f"EncodeRequest.{name} has key {key!r}; use 'ncr', 'ed' or 'et'") from None


def _check_grid(name: str, array: np.ndarray, shape: tuple[int, int, int]) -> None:
    if array.shape != shape:
        raise GridMismatchError(
            f"{name} has shape {array.shape} but the reference series grid is {shape} "
            "(slices, rows, columns); resample it onto the reference series first"
        )


def _float_grid(name: str, array: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    array = np.asarray(array)
    _check_grid(name, array, shape)
    if array.dtype.kind not in "fiub":
        raise DicomOutError(f"{name} must be numeric; got dtype {array.dtype}")
    array = array.astype(np.float32, copy=False)
    if not np.all(np.isfinite(array)):
        raise DicomOutError(f"{name} contains NaN or infinite values")
    return array


def _position(ds: Dataset) -> np.ndarray:
    return np.asarray([float(v) for v in ds.ImagePositionPatient])


def _normal(ds: Dataset) -> np.ndarray:
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
    return np.cross(iop[:3], iop[3:])


def slice_spacing(series: Sequence[Dataset]) -> float:
    """Distance between slice centres along the normal (SliceThickness for one slice)."""
    if len(series) < 2:
        return float(getattr(series[0], "SliceThickness", 1.0) or 1.0)
    normal = _normal(series[0])
    return abs(float((_position(series[1]) - _position(series[0])) @ normal))


def _element_copy(ds: Dataset) -> Dataset:
    """A new dataset holding the same elements (``copy.copy`` of a pydicom Dataset shares its element dict)."""
    view = Dataset()
    for element in ds:
        view.add(element)
    if hasattr(ds, "file_meta"):
        view.file_meta = ds.file_meta
    return view


def _functional_item(ds: Dataset, frame: int, group: str) -> Dataset | None:
    """The item of a functional group for one frame: per-frame, else shared."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    for owner in ((per_frame[frame - 1] if frame <= len(per_frame) else None), shared[0] if shared else None):
        if owner is not None and owner.get(group):
            return owner.get(group)[0]
    return None


def _slice_geometry(ds: Dataset, frame: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(position, orientation, pixel spacing) of a single-frame image or of one frame of a multi-frame one."""
    if frame is None:
        return (_position(ds), np.asarray([float(v) for v in ds.ImageOrientationPatient]),
                np.asarray([float(v) for v in ds.PixelSpacing]))
    where = f"frame {frame} of {ds.get('SOPInstanceUID', '?')}"
    values = []
    for group, keyword in (("PlanePositionSequence", "ImagePositionPatient"),
                           ("PlaneOrientationSequence", "ImageOrientationPatient"),
                           ("PixelMeasuresSequence", "PixelSpacing")):
        item = _functional_item(ds, frame, group)
        if item is None or keyword not in item:
            raise SourceSeriesError(f"reference {where} lacks {group} > {keyword}")
        values.append(np.asarray([float(v) for v in item[keyword].value]))
    return values[0], values[1], values[2]


def check_multiframe_reference(series: Sequence[Dataset], frames: Sequence[int]) -> None:
    """Check one multi-frame image and the frames of the grid's slices can be the source of the objects.

    Raises
    ------
    SourceSeriesError
        Naming the instance and what is wrong.
    """
    if len(series) != 1:
        raise SourceSeriesError(f"a multi-frame reference is one dataset; got {len(series)}")
    ds = series[0]
    where = f"reference instance {ds.get('SOPInstanceUID', '?')}"
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                    "FrameOfReferenceUID", "Rows", "Columns", "NumberOfFrames"):
        if keyword not in ds or ds[keyword].value in (None, ""):
            raise SourceSeriesError(f"{where} lacks {keyword}")
    count = int(ds.NumberOfFrames)
    if not frames or any(not 1 <= int(number) <= count for number in frames):
        raise SourceSeriesError(f"{where}: reference_frames must be frame numbers 1 to {count}")
    if len(set(int(number) for number in frames)) != len(frames):
        raise SourceSeriesError(f"{where}: a frame appears twice in reference_frames")
    geometry = [_slice_geometry(ds, int(number)) for number in frames]
    orientation = geometry[0][1]
    if any(not np.allclose(item[1], orientation, atol=1e-4) for item in geometry):
        raise SourceSeriesError(f"{where}: the frames have different orientations; they cannot share one grid")
    if len(geometry) > 1:
        distances = np.asarray([item[0] @ np.cross(orientation[:3], orientation[3:]) for item in geometry])
        steps = np.diff(distances)
        if not (np.all(steps > 1e-4) or np.all(steps < -1e-4)):
            raise SourceSeriesError(f"{where}: reference_frames are not sorted along the slice normal")


def check_reference_series(series: Sequence[Dataset]) -> None:
    """Check the reference series can be the source of SEG and Parametric Maps.

    Raises
    ------
    SourceSeriesError
        Naming the series and the attribute at fault.
    """
    if not series:
        raise SourceSeriesError("reference_series is empty")
    first = series[0]
    series_uid = str(getattr(first, "SeriesInstanceUID", "<no SeriesInstanceUID>"))
    where = f"reference series {series_uid}"
    for ds in series:
        if not isinstance(ds, Dataset):
            raise TypeError(f"{where}: items must be pydicom Datasets; got {type(ds).__name__}")
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                        "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"):
            if keyword not in ds or ds[keyword].value in (None, ""):
                raise SourceSeriesError(f"{where}: instance {ds.get('SOPInstanceUID', '?')} lacks {keyword}")
        if "FrameOfReferenceUID" not in ds or not ds.FrameOfReferenceUID:
            raise SourceSeriesError(
                f"{where}: instance {ds.SOPInstanceUID} has no FrameOfReferenceUID (0020,0052); "
                "results cannot be placed in patient space without it"
            )
        if int(getattr(ds, "NumberOfFrames", 1) or 1) != 1:
            raise SourceSeriesError(f"{where}: instance {ds.SOPInstanceUID} is multi-frame; "
                                    "give a single-frame series, or its frames as reference_frames")
    for keyword in ("SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID", "Rows", "Columns"):
        values = {str(ds[keyword].value) for ds in series}
        if len(values) > 1:
            raise SourceSeriesError(f"{where}: {keyword} differs between instances ({sorted(values)[:3]})")
    iop = np.asarray([float(v) for v in first.ImageOrientationPatient])
    for ds in series[1:]:
        if not np.allclose([float(v) for v in ds.ImageOrientationPatient], iop, atol=1e-4):
            raise SourceSeriesError(f"{where}: instance {ds.SOPInstanceUID} has a different "
                                    "ImageOrientationPatient; mixed orientations cannot share one grid")
    if len({str(ds.SOPInstanceUID) for ds in series}) != len(series):
        raise SourceSeriesError(f"{where}: an instance appears twice")
    if len(series) > 1:
        normal = _normal(first)
        distances = np.asarray([_position(ds) @ normal for ds in series])
        steps = np.diff(distances)
        if not (np.all(steps > 1e-4) or np.all(steps < -1e-4)):
            raise SourceSeriesError(f"{where}: instances are not sorted along the slice normal "
                                    "(sort them by ImagePositionPatient before encoding)")


def check_other_series(role: str, series: Sequence[Dataset], reference: Dataset) -> None:
    """Other series are further sources: same study, real images."""
    if not series:
        raise SourceSeriesError(f"other_series[{role!r}] is empty")
    for ds in series:
        if str(getattr(ds, "StudyInstanceUID", "")) != str(reference.StudyInstanceUID):
            raise SourceSeriesError(
                f"other_series[{role!r}]: instance {ds.get('SOPInstanceUID', '?')} belongs to study "
                f"{ds.get('StudyInstanceUID', '?')}, not {reference.StudyInstanceUID}"
            )
        for keyword in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID"):
            if keyword not in ds:
                raise SourceSeriesError(f"other_series[{role!r}]: an instance lacks {keyword}")


def describe_derivation(dataset: Dataset, request: EncodeRequest) -> None:
    """Put :meth:`EncodeRequest.derivation_description` in every frame's Derivation Image item."""
    text = request.derivation_description()
    for frame in dataset.get("PerFrameFunctionalGroupsSequence", []):
        for item in frame.get("DerivationImageSequence", []):
            item.DerivationDescription = text


def mark_encapsulated(dataset: Dataset) -> None:
    """Give compressed Pixel Data VR OB and undefined length, as the transfer syntax requires.

    ``pydicom.dcmwrite`` fixes this on the way to a file, but pynetdicom encodes
    the dataset as it is: a defined-length element makes the PACS wait for
    bytes that never come (no C-STORE response).
    """
    if "PixelData" in dataset and dataset.file_meta.TransferSyntaxUID.is_compressed:
        element = dataset["PixelData"]
        element.VR = "OB"
        element.is_undefined_length = True


def software_versions(model_name: str, model_version: str) -> list[str]:
    """SoftwareVersions (0018,1020): ours and the model's."""
    return [f"neuroseg {package_version()}"[:64], f"{model_name} {model_version}"[:64]]


def series_description(what: str, options: EncodeOptions) -> str:
    """``"<what> - <series_tag>"``, at most 64 characters (LO)."""
    tail = f" - {options.series_tag}" if options.series_tag else ""
    return what[: 64 - len(tail)] + tail


def content_description(what: str) -> str:
    """ContentDescription (LO, 64): what it is plus the not-for-diagnostic statement."""
    tail = ". Not for diagnostic use"
    return what[: 64 - len(tail)] + tail


#: Patient, study and patient-study attributes copied from the source (PS3.3 C.7.1.1,
#: C.7.2.1, C.7.2.2) into objects built by hand.
IDENTITY_KEYWORDS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "OtherPatientIDsSequence", "PatientAge", "PatientSize", "PatientWeight", "EthnicGroup",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
    "AccessionNumber", "IssuerOfAccessionNumberSequence", "StudyDescription",
)
TYPE2_IDENTITY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                  "ReferringPhysicianName", "StudyID", "AccessionNumber")


def copy_identity(source: Dataset, target: Dataset) -> None:
    """Copy patient and study identity from ``source`` into ``target``."""
    for keyword in IDENTITY_KEYWORDS:
        if keyword in source:
            target[keyword] = source[keyword]
    for keyword in TYPE2_IDENTITY:
        if keyword not in target:
            setattr(target, keyword, "")
    if "SpecificCharacterSet" in source:
        target.SpecificCharacterSet = source.SpecificCharacterSet


def coding_scheme_identification() -> Dataset:
    """An item of CodingSchemeIdentificationSequence describing :data:`LOCAL_SCHEME`."""
    item = Dataset()
    item.CodingSchemeDesignator = LOCAL_SCHEME
    item.CodingSchemeName = "neuroseg local codes"
    item.CodingSchemeResponsibleOrganization = "neuroseg project"
    return item
