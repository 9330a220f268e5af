"""Write a volume as a single-frame MR Image Storage series.

This turns a phantom or a NIfTI file into what a PACS would send: one
classic MR Image Storage instance per slice (SOP Class
1.2.840.10008.5.1.4.1.1.4), with patient/study identity, geometry taken from
the affine, and acquisition headers (TR, TE, TI, scanning sequence, contrast
agent, ...) plausible for the sequence role. The demo, the worker's end-to-end
tests and the dicom_out tests use it to build source studies.

Axis convention
---------------
``write_mr_series`` takes an array in **(slices, rows, columns)** order and a
4x4 affine for *that* order that maps ``(k, r, c, 1)`` to patient coordinates
in LPS millimetres:

- ``affine[:3, 2]`` is the step from one column to the next (DICOM's row
  direction cosine times the column spacing);
- ``affine[:3, 1]`` is the step from one row to the next (column direction
  cosine times the row spacing);
- ``affine[:3, 0]`` is the step from one slice to the next;
- ``affine[:3, 3]`` is the centre of the first voxel of slice 0, row 0,
  column 0 (ImagePositionPatient of slice 0).

Slice ``k`` is written as InstanceNumber ``k + 1``. The slice axis should
point along the normal ``row_cosine x column_cosine`` so that a reader that
sorts by position along the normal gets the array back unchanged;
:func:`write_study_from_nifti` makes sure of that.

Intensities: integer data that fit int16/uint16 are stored as they are; other
data are scaled linearly into uint16/int16 and RescaleSlope/RescaleIntercept
(with RescaleType ``US``) record the mapping back to the original values.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

from neuroseg.common.files import atomic_write
from neuroseg.dicom_out.uids import derive_uid

log = logging.getLogger(__name__)

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"

#: Roles this writer knows, as the worker's ``SequenceRole`` values.
ROLES = ("T1", "T1ce", "T2", "FLAIR")


def _software_version() -> str:
    try:
        return version("neuroseg")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class StudyIdentity:
    """Patient and study identity shared by every series of a written study.

    Parameters
    ----------
    patient_name: str
        DICOM person name, ``Family^Given``.
    patient_id: str
        PatientID.
    uid_seed: str
        Seed of every derived UID; the same seed gives the same StudyInstanceUID,
        FrameOfReferenceUID, SeriesInstanceUIDs and SOPInstanceUIDs.
    study_instance_uid: str or None
        Use this StudyInstanceUID instead of deriving it from ``uid_seed``.
    frame_of_reference_uid: str or None
        FrameOfReferenceUID shared by the series (one scanner session); derived
        from ``uid_seed`` when None.
    """

    patient_name: str = "Phantom^Glioma"
    patient_id: str = "NEUROSEG-PHANTOM"
    uid_seed: str = "neuroseg-phantom"
    patient_birth_date: str = ""
    patient_sex: str = "O"
    patient_age: str = ""
    study_instance_uid: str | None = None
    frame_of_reference_uid: str | None = None
    study_id: str = "1"
    accession_number: str = ""
    study_date: str = "20260101"
    study_time: str = "120000"
    study_description: str = "MR BRAIN WITH AND WITHOUT CONTRAST"
    referring_physician_name: str = ""
    institution_name: str = "neuroseg synthetic site"
    manufacturer: str = "neuroseg"
    manufacturer_model_name: str = "synthetic MR series writer"
    magnetic_field_strength: float = 3.0

    def __post_init__(self) -> None:
        if not self.uid_seed:
            raise ValueError("StudyIdentity.uid_seed must not be empty; it seeds every UID of the study")
        if self.patient_sex not in ("M", "F", "O", ""):
            raise ValueError(f"StudyIdentity.patient_sex={self.patient_sex!r}; use 'M', 'F', 'O' or ''")
        for name in ("study_date", "patient_birth_date"):
            value = getattr(self, name)
            if value and (len(value) != 8 or not value.isdigit()):
                raise ValueError(f"StudyIdentity.{name}={value!r} is not a DICOM date YYYYMMDD")

    @property
    def resolved_study_instance_uid(self) -> str:
        """The StudyInstanceUID (given or derived from the seed)."""
        return self.study_instance_uid or str(derive_uid("mr-study", self.uid_seed))

    @property
    def resolved_frame_of_reference_uid(self) -> str:
        """The FrameOfReferenceUID (given or derived from the seed)."""
        return self.frame_of_reference_uid or str(derive_uid("mr-frame-of-reference", self.uid_seed))


@dataclass(frozen=True)
class MrProtocol:
    """Acquisition headers of one series (PS3.3 C.8.3.1 MR Image Module).

    Times are in milliseconds; ``inversion_time`` only for inversion-recovery
    sequences (``"IR"`` in ``scanning_sequence``).
    """

    series_description: str
    protocol_name: str
    scanning_sequence: tuple[str, ...]
    sequence_variant: tuple[str, ...]
    mr_acquisition_type: str
    repetition_time: float
    echo_time: float
    flip_angle: float
    inversion_time: float | None = None
    echo_train_length: int = 1
    scan_options: tuple[str, ...] = ()
    sequence_name: str = ""
    contrast_bolus_agent: str | None = None
    contrast_bolus_route: str = "IV"
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "OTHER")

    def __post_init__(self) -> None:
        if self.mr_acquisition_type not in ("2D", "3D"):
            raise ValueError(f"MrProtocol.mr_acquisition_type={self.mr_acquisition_type!r}; use '2D' or '3D'")
        if ("IR" in self.scanning_sequence) != (self.inversion_time is not None):
            raise ValueError(
                "MrProtocol: inversion_time must be given exactly when scanning_sequence contains 'IR' "
                f"(scanning_sequence={self.scanning_sequence!r}, inversion_time={self.inversion_time!r})"
            )


_PROTOCOLS_2D: dict[str, MrProtocol] = {
    "T1": MrProtocol("AX T1 SE", "AX T1 SE", ("SE",), ("SP",), "2D", 500.0, 12.0, 90.0,
                     sequence_name="*se2d1"),
    "T1ce": MrProtocol("AX T1 POST GD", "AX T1 SE POST", ("SE",), ("SP",), "2D", 500.0, 17.0, 90.0,
                       sequence_name="*se2d1", contrast_bolus_agent="GADOLINIUM"),
    "T2": MrProtocol("AX T2 TSE", "AX T2 TSE", ("SE",), ("SK", "SP"), "2D", 4000.0, 91.0, 150.0,
                     echo_train_length=15, scan_options=("FS",), sequence_name="*tse2d1_15"),
    "FLAIR": MrProtocol("AX T2 FLAIR", "AX T2 FLAIR", ("SE", "IR"), ("SK", "SP", "MP"), "2D",
                        9000.0, 110.0, 150.0, inversion_time=2500.0, echo_train_length=16,
                        sequence_name="*tir2d1_16"),
}

_PROTOCOLS_3D: dict[str, MrProtocol] = {
    "T1": MrProtocol("AX T1 MPRAGE", "T1 MPRAGE 3D", ("GR", "IR"), ("SP", "MP"), "3D", 2300.0, 2.98, 9.0,
                     inversion_time=900.0, sequence_name="*tfl3d1"),
    "T1ce": MrProtocol("AX T1 MPRAGE POST GD", "T1 MPRAGE 3D POST", ("GR", "IR"), ("SP", "MP"), "3D",
                       2300.0, 2.98, 9.0, inversion_time=900.0,
                       sequence_name="*tfl3d1", contrast_bolus_agent="GADOLINIUM"),
    "T2": MrProtocol("AX T2 SPACE", "T2 SPACE 3D", ("SE",), ("SK", "SP"), "3D", 3200.0, 409.0, 120.0,
                     echo_train_length=200, sequence_name="*spc3d1"),
    "FLAIR": MrProtocol("AX T2 FLAIR 3D", "T2 FLAIR SPACE 3D", ("SE", "IR"), ("SK", "SP", "MP"), "3D",
                        5000.0, 387.0, 120.0, inversion_time=1800.0, echo_train_length=250,
                        sequence_name="*spcir3d1"),
}


def canonical_role(role: str) -> str:
    """Return ``role`` spelled as in :data:`ROLES` (case-insensitive).

    Raises
    ------
    ValueError
        If ``role`` is not one of T1, T1ce, T2, FLAIR.
    """
    text = str(getattr(role, "value", role)).strip().lower()
    for known in ROLES:
        if known.lower() == text:
            return known
    raise ValueError(f"role {role!r} is not one of {', '.join(ROLES)}")


def default_protocol(role: str, mr_acquisition_type: str = "2D") -> MrProtocol:
    """Plausible acquisition headers for a sequence role.

    Parameters
    ----------
    role: str
        ``"T1"``, ``"T1ce"``, ``"T2"`` or ``"FLAIR"`` (case-insensitive).
    mr_acquisition_type: str, optional
        ``"2D"`` (thick slices: spin echo, TSE, 2D FLAIR) or ``"3D"``
        (isotropic: MPRAGE, SPACE).

    Returns
    -------
    MrProtocol
        The protocol; change fields with :func:`dataclasses.replace`.
    """
    table = {"2D": _PROTOCOLS_2D, "3D": _PROTOCOLS_3D}.get(mr_acquisition_type)
    if table is None:
        raise ValueError(f"mr_acquisition_type={mr_acquisition_type!r}; use '2D' or '3D'")
    return table[canonical_role(role)]


@dataclass(frozen=True)
class _Geometry:
    row_cosine: np.ndarray       # direction in which the column index increases
    column_cosine: np.ndarray    # direction in which the row index increases
    normal: np.ndarray
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    slice_spacing: float
    positions: np.ndarray        # (slices, 3)


def _geometry(affine: np.ndarray, n_slices: int) -> _Geometry:
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"affine must be a finite 4x4 matrix; got shape {affine.shape}")
    if not np.allclose(affine[3], [0, 0, 0, 1]):
        raise ValueError(f"affine's last row must be [0, 0, 0, 1]; got {affine[3].tolist()}")
    steps = affine[:3, :3]
    spacing = np.linalg.norm(steps, axis=0)
    if np.any(spacing < 1e-6):
        raise ValueError(f"affine has a zero-length axis (spacings {spacing.tolist()} mm)")
    row_cosine = steps[:, 2] / spacing[2]
    column_cosine = steps[:, 1] / spacing[1]
    if abs(float(row_cosine @ column_cosine)) > 1e-3:
        raise ValueError(
            "affine's row and column axes are not perpendicular "
            f"(cosine {float(row_cosine @ column_cosine):.4f}); DICOM images need a rectangular pixel grid"
        )
    column_cosine = column_cosine - (column_cosine @ row_cosine) * row_cosine
    column_cosine /= np.linalg.norm(column_cosine)
    normal = np.cross(row_cosine, column_cosine)
    along = float(steps[:, 0] @ normal)
    if abs(along) < 1e-6:
        raise ValueError("affine's slice axis lies in the image plane; cannot write slices")
    if abs(along) < 0.999 * spacing[0]:
        log.warning("slice axis is %.1f degrees off the image normal (gantry tilt or shear); "
                    "positions are written as given", np.degrees(np.arccos(min(1.0, abs(along) / spacing[0]))))
    positions = affine[:3, 3][None, :] + np.arange(n_slices)[:, None] * steps[:, 0][None, :]
    return _Geometry(row_cosine, column_cosine, normal, (float(spacing[1]), float(spacing[2])),
                     abs(along), positions)


def _to_stored(volume: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Stored pixel values plus (slope, intercept) such that value = stored*slope + intercept."""
    if not np.all(np.isfinite(volume)):
        raise ValueError("volume contains NaN or infinite values; replace them before writing DICOM")
    lo, hi = (float(volume.min()), float(volume.max())) if volume.size else (0.0, 0.0)
    integral = np.issubdtype(volume.dtype, np.integer) or np.array_equal(volume, np.round(volume))
    if integral and lo >= 0 and hi <= 65535:
        return volume.astype(np.uint16), 1.0, 0.0
    if integral and lo >= -32768 and hi <= 32767:
        return volume.astype(np.int16), 1.0, 0.0
    # scale into 0..4095 (12 significant bits, like most scanners), offset by the minimum
    slope = (hi - lo) / 4095.0 if hi > lo else 1.0
    stored = np.round((volume.astype(np.float64) - lo) / slope)
    return np.clip(stored, 0, 4095).astype(np.uint16), slope, lo


def _ds_decimal(value: float) -> str:
    """A DS string (at most 16 characters)."""
    text = f"{value:.10g}"
    if len(text) > 16:
        text = f"{value:.6g}"
    return text


def build_mr_series(
    volume: np.ndarray,
    affine: np.ndarray,
    *,
    study: StudyIdentity,
    series_number: int,
    role: str,
    series_description: str | None = None,
    protocol: MrProtocol | None = None,
    series_instance_uid: str | None = None,
    series_datetime: dt.datetime | None = None,
) -> list[Dataset]:
    """Build ``volume`` as a single-frame MR Image Storage series in memory.

    Parameters
    ----------
    volume: numpy.ndarray
        3D array in (slices, rows, columns) order; integers or floats, finite.
    affine: numpy.ndarray
        4x4 matrix mapping ``(slice, row, column, 1)`` to LPS millimetres
        (see the module docstring for how each column becomes a DICOM
        attribute).
    study: StudyIdentity
        Patient and study identity, and the seed of every UID.
    series_number: int
        SeriesNumber (also part of the UID key, so keep it unique in a study).
    role: str
        ``"T1"``, ``"T1ce"``, ``"T2"`` or ``"FLAIR"``: picks the default
        acquisition headers (see :func:`default_protocol`).
    series_description: str or None, optional
        Overrides the protocol's SeriesDescription (e.g. ``"AX T1 POST GD"``).
    protocol: MrProtocol or None, optional
        Acquisition headers; default ``default_protocol(role, "3D")`` for
        slices of 1.5 mm or thinner, else ``default_protocol(role, "2D")``.
    series_instance_uid: str or None, optional
        Use this SeriesInstanceUID instead of deriving it from the seed.
    series_datetime: datetime.datetime or None, optional
        SeriesDate/SeriesTime, AcquisitionDate/Time and ContentDate/Time;
        defaults to the study date and time plus ``series_number`` minutes.

    Returns
    -------
    list of pydicom.dataset.Dataset
        One dataset per slice (with file meta), in slice order.

    Raises
    ------
    ValueError
        If the volume is not 3D, has NaNs, or the affine is degenerate.
    """
    volume = np.asarray(volume)
    if volume.dtype.kind == "b":
        volume = volume.astype(np.uint8)
    if volume.ndim != 3 or min(volume.shape) < 1:
        raise ValueError(f"volume must be a 3D (slices, rows, columns) array; got shape {volume.shape}")
    if volume.dtype.kind not in "iufb":
        raise TypeError(f"volume must be numeric; got dtype {volume.dtype}")
    if not 0 <= int(series_number) <= 2147483647:
        raise ValueError(f"series_number={series_number!r} must be a non-negative integer")
    role = canonical_role(role)
    geometry = _geometry(affine, volume.shape[0])
    if protocol is None:
        protocol = default_protocol(role, "3D" if geometry.slice_spacing <= 1.5 else "2D")
    if series_description:
        protocol = replace(protocol, series_description=series_description)
    stored, slope, intercept = _to_stored(volume)
    signed = stored.dtype == np.int16
    study_uid = study.resolved_study_instance_uid
    series_uid = series_instance_uid or str(derive_uid("mr-series", study.uid_seed, series_number, role))
    when = series_datetime or (
        dt.datetime.strptime(study.study_date + study.study_time[:6].ljust(6, "0"), "%Y%m%d%H%M%S")
        + dt.timedelta(minutes=int(series_number))
    )
    real = volume.astype(np.float64) if volume.dtype.kind == "f" else volume
    lo, hi = np.percentile(real, [1.0, 99.5]) if volume.size > 1 else (0.0, 1.0)
    window_width = max(float(hi - lo), 1.0)
    window_center = float(lo) + window_width / 2

    base = _series_dataset(study, protocol, series_uid, study_uid, series_number, when, geometry)
    datasets: list[Dataset] = []
    for k in range(volume.shape[0]):
        ds = Dataset()
        ds.update(base)
        sop_uid = str(derive_uid("mr-instance", series_uid, k))
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds_decimal(v) for v in geometry.positions[k]]
        ds.SliceLocation = _ds_decimal(float(geometry.positions[k] @ geometry.normal))
        ds.Rows, ds.Columns = int(volume.shape[1]), int(volume.shape[2])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if signed else 0
        pixels = stored[k]
        ds.SmallestImagePixelValue = int(pixels.min())
        ds.LargestImagePixelValue = int(pixels.max())
        if slope != 1.0 or intercept != 0.0:
            ds.RescaleIntercept = _ds_decimal(intercept)
            ds.RescaleSlope = _ds_decimal(slope)
            ds.RescaleType = "US"
        ds.WindowCenter = _ds_decimal(window_center)
        ds.WindowWidth = _ds_decimal(window_width)
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = "NEUROSEG"
        ds.file_meta = meta
        ds["SmallestImagePixelValue"].VR = "SS" if signed else "US"
        ds["LargestImagePixelValue"].VR = "SS" if signed else "US"
        datasets.append(ds)
    return datasets



def write_mr_series(
    volume: np.ndarray,
    affine: np.ndarray,
    out_dir: str | os.PathLike[str],
    *,
    study: StudyIdentity,
    series_number: int,
    role: str,
    series_description: str | None = None,
    protocol: MrProtocol | None = None,
    series_instance_uid: str | None = None,
    series_datetime: dt.datetime | None = None,
) -> list[Path]:
    """Write ``volume`` as a single-frame MR Image Storage series.

    Takes the same arguments as :func:`build_mr_series` plus ``out_dir``.

    Parameters
    ----------
    out_dir: str or os.PathLike
        Folder for this series; created if missing. Files are named
        ``IM0001.dcm``, ``IM0002.dcm``, ... after the slice index and written
        atomically (temporary file, then rename).

    Returns
    -------
    list of pathlib.Path
        The written files, in slice order.
    """
    datasets = build_mr_series(volume, affine, study=study, series_number=series_number, role=role,
                               series_description=series_description, protocol=protocol,
                               series_instance_uid=series_instance_uid, series_datetime=series_datetime)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for k, ds in enumerate(datasets):
        path = out_dir / f"IM{k + 1:04d}.dcm"
        _atomic_dcmwrite(ds, path)
        paths.append(path)
    log.info("wrote %d %s slices of %dx%d to %s (series %s)", len(paths), datasets[0].SeriesDescription,
             datasets[0].Rows, datasets[0].Columns, out_dir, datasets[0].SeriesInstanceUID)
    return paths

def _series_dataset(study: StudyIdentity, protocol: MrProtocol, series_uid: str, study_uid: str,
                    series_number: int, when: dt.datetime, geometry: _Geometry) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.ImageType = list(protocol.image_type)
    ds.InstanceCreationDate = when.strftime("%Y%m%d")
    ds.InstanceCreationTime = when.strftime("%H%M%S")
    # patient
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = study.patient_birth_date
    ds.PatientSex = study.patient_sex
    if study.patient_age:
        ds.PatientAge = study.patient_age
    # study
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = study.study_date
    ds.StudyTime = study.study_time
    ds.StudyID = study.study_id
    ds.AccessionNumber = study.accession_number
    ds.ReferringPhysicianName = study.referring_physician_name
    ds.StudyDescription = study.study_description
    # series
    ds.Modality = "MR"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = int(series_number)
    ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.SeriesDescription = protocol.series_description
    ds.ProtocolName = protocol.protocol_name
    ds.BodyPartExamined = "BRAIN"
    ds.PatientPosition = "HFS"
    # equipment
    ds.Manufacturer = study.manufacturer
    ds.ManufacturerModelName = study.manufacturer_model_name
    ds.InstitutionName = study.institution_name
    ds.SoftwareVersions = _software_version()
    ds.ImageComments = "Synthetic DICOM headers written by neuroseg from a volume; not acquired as such"
    # frame of reference
    ds.FrameOfReferenceUID = study.resolved_frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    # image plane
    ds.ImageOrientationPatient = [_ds_decimal(v) for v in (*geometry.row_cosine, *geometry.column_cosine)]
    ds.PixelSpacing = [_ds_decimal(v) for v in geometry.pixel_spacing]
    ds.SliceThickness = _ds_decimal(geometry.slice_spacing)
    ds.SpacingBetweenSlices = _ds_decimal(geometry.slice_spacing)
    # MR image
    ds.ScanningSequence = list(protocol.scanning_sequence)
    ds.SequenceVariant = list(protocol.sequence_variant)
    ds.ScanOptions = list(protocol.scan_options) if protocol.scan_options else ""
    ds.MRAcquisitionType = protocol.mr_acquisition_type
    ds.SequenceName = protocol.sequence_name
    ds.AngioFlag = "N"
    ds.RepetitionTime = _ds_decimal(protocol.repetition_time)
    ds.EchoTime = _ds_decimal(protocol.echo_time)
    if protocol.inversion_time is not None:
        ds.InversionTime = _ds_decimal(protocol.inversion_time)
    ds.EchoTrainLength = int(protocol.echo_train_length)
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = _ds_decimal(42.577478 * study.magnetic_field_strength)
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = "1"
    ds.MagneticFieldStrength = _ds_decimal(study.magnetic_field_strength)
    ds.FlipAngle = _ds_decimal(protocol.flip_angle)
    # contrast / bolus (type C: only when contrast was given)
    if protocol.contrast_bolus_agent:
        ds.ContrastBolusAgent = protocol.contrast_bolus_agent
        ds.ContrastBolusRoute = protocol.contrast_bolus_route
    return ds


def _atomic_dcmwrite(ds: Dataset, path: Path) -> None:
    atomic_write(path, lambda stream: pydicom.dcmwrite(stream, ds, enforce_file_format=True))


def _canonical_in_plane(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip rows/columns/slices so images display the usual way round.

    Columns run towards the dominant positive axis (patient left for axial),
    rows run down the image (posterior for axial, feet for sagittal/coronal),
    and slices run along the normal.
    """
    affine = affine.copy()
    for axis in (2, 1):
        step = affine[:3, axis]
        dominant = int(np.argmax(np.abs(step)))
        want_positive = not (axis == 1 and dominant == 2)  # rows that run head-feet go to the feet (-S)
        if (step[dominant] > 0) != want_positive:
            array = np.flip(array, axis=axis)
            affine[:3, 3] += step * (array.shape[axis] - 1)
            affine[:3, axis] = -step
    normal = np.cross(affine[:3, 2], affine[:3, 1])
    if float(affine[:3, 0] @ normal) < 0:
        array = np.flip(array, axis=0)
        affine[:3, 3] += affine[:3, 0] * (array.shape[0] - 1)
        affine[:3, 0] = -affine[:3, 0]
    return np.ascontiguousarray(array), affine


def nifti_to_slices(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI file as a (slices, rows, columns) array and its LPS affine.

    The NIfTI axes (i, j, k) become (columns, rows, slices); then rows,
    columns and slices are flipped where needed so that the images display the
    usual way round (see :func:`write_mr_series` for the affine convention).

    Returns
    -------
    tuple of numpy.ndarray
        The array (original dtype; scaled data as float32) and its 4x4 affine.
    """
    import nibabel as nib

    image = nib.load(str(path))
    if len(image.shape) != 3:
        raise ValueError(f"{path}: expected a 3D NIfTI volume; got shape {image.shape}")
    slope, inter = image.header.get_slope_inter()
    if slope is None or (slope == 1 and not inter):
        data = np.asanyarray(image.dataobj)
    else:
        data = image.get_fdata(dtype=np.float32)
    affine_lps = image.affine.astype(np.float64).copy()
    affine_lps[:2] *= -1  # RAS -> LPS
    array = np.transpose(data, (2, 1, 0))
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = affine_lps[:3, 2], affine_lps[:3, 1], affine_lps[:3, 0]
    affine[:3, 3] = affine_lps[:3, 3]
    return _canonical_in_plane(array, affine)


def write_study_from_nifti(
    paths_by_role: Mapping[str, str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    identity: StudyIdentity,
    *,
    first_series_number: int = 2,
) -> dict[str, list[Path]]:
    """Write one MR series per NIfTI file, all in the same study.

    Parameters
    ----------
    paths_by_role: Mapping[str, path]
        Role (``"T1"``, ``"T1ce"``, ``"T2"``, ``"FLAIR"``, case-insensitive)
        to a NIfTI file. Each file keeps its own grid (as a PACS would send it).
    out_dir: path
        Parent folder; each series goes to ``out_dir/<role>/``.
    identity: StudyIdentity
        Patient/study identity and UID seed shared by all series (they also
        share the FrameOfReferenceUID, as series of one scanner session do).
    first_series_number: int, optional
        SeriesNumber of the first series in T1, T2, FLAIR, T1ce order (the
        order of a usual brain tumour protocol; contrast comes last).

    Returns
    -------
    dict
        Role (as in :data:`ROLES`) to the files of its series in slice order.
    """
    order = {role: index for index, role in enumerate(("T1", "T2", "FLAIR", "T1ce"))}
    items = sorted(((canonical_role(role), Path(path)) for role, path in paths_by_role.items()),
                   key=lambda item: order[item[0]])
    if len({role for role, _ in items}) != len(items):
        raise ValueError(f"paths_by_role names a role twice: {sorted(paths_by_role)}")
    written: dict[str, list[Path]] = {}
    for index, (role, path) in enumerate(items):
        if not path.is_file():
            raise ValueError(f"NIfTI file for {role} not found: {path}")
        array, affine = nifti_to_slices(path)
        written[role] = write_mr_series(array, affine, Path(out_dir) / role, study=identity,
                                        series_number=first_series_number + index, role=role)
    return written


__all__ = [
    "MR_IMAGE_STORAGE",
    "ROLES",
    "MrProtocol",
    "build_mr_series",
    "StudyIdentity",
    "default_protocol",
    "nifti_to_slices",
    "write_mr_series",
    "write_study_from_nifti",
]
