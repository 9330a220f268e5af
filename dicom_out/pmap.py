"""Parametric Maps of probability, uncertainty and Grad-CAM (highdicom).

One Parametric Map per quantity, each in its own series, so that a viewer
lists and windows them separately. Every map is on the reference series
(``source_images``, one source image per frame; the other sequences are named
in the Derivation Description), has a Real World Value Mapping with a
quantity code, unit and range, a window, BodyPartExamined BRAIN, and
ContentQualification RESEARCH.

Storage, by ``EncodeOptions.map_compression`` (``NEUROSEG_MAP_COMPRESSION``):

- ``deflate`` (default): 32-bit float values rounded to 1/1024 (so the mostly
  constant field repeats exact bit patterns) in Deflated Explicit VR Little
  Endian. OHIF's map loader ignores the Real World Value Mapping and shows the
  stored values times 100 on a 0..100 window, so only 0..1 floats display
  graded there; integer maps saturate to one colour. The deflated file is about
  a hundredth of the raw float bytes on 240x240x155 probability maps; archives
  that do not take deflate get the same data set uncompressed (the sender
  falls back), and Orthanc's DICOMweb hands viewers Explicit VR Little Endian.
- ``jpegls``, ``rle``, ``none``: 16-bit unsigned integers with a Real World
  Value Mapping (slope and intercept, PS3.3 C.7.6.16.2.11): ``value = low + v
  * (high - low) / 65535``, a probability kept to 1/65535, losslessly
  compressed (JPEG-LS beat RLE by 2.5x and matched JPEG 2000 at half its
  time). For viewers that apply the mapping (3D Slicer, highdicom readers).

Quantities and their codes
--------------------------
==========================  ======================================  ==============  ============
kind                        quantity definition                     unit (UCUM)     range
==========================  ======================================  ==============  ============
pmap-probability-<class>    (110854, DCM, "Fractional Probabilistic "1"             [0, 1]
                            Segmentation")
pmap-uncertainty-entropy    (PRED-ENTROPY, 99NEUROSEG, "Predictive  "1" (nats)      [0, ln 4]
                            entropy")
pmap-uncertainty-sd-<class> (113061, DCM, "Standard Deviation")     "1"             [0, 0.5]
                            of the class probability over MC
                            dropout samples (square root of the
                            variance the model gives)
pmap-gradcam-<class>        (130403, DCM, "Gradient-weighted class  "1"             [0, 1]
                            activation")
==========================  ======================================  ==============  ============

Ranges widen to the data when it goes past them (entropy above ln 4, SD above
0.5, Grad-CAM above 1 or below 0), so the mapping always covers every value;
the window spans the stored range with VOI LUT function LINEAR_EXACT.

Which maps are sent: ``EncodeOptions.maps`` (``NEUROSEG_SEND_MAPS``); the
default is the probability of each class and the entropy map, the SD and
Grad-CAM maps on request.

``99NEUROSEG`` is a private coding scheme (PS3.16 8.2 "99" prefix), declared
in each object's Coding Scheme Identification Sequence. The LUT explanation
of each mapping says in words what the value is and by which uncertainty
method of the model card (e.g. "MC dropout standard deviation of P(ET)",
"flip+fold standard deviation of P(ET)" for an nnU-Net model), and at which
layer Grad-CAM ran; the Derivation Description names both in full. The
not-for-diagnostic statement is in ContentDescription.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, JPEGLSLossless, RLELossless

from neuroseg.dicom_out.common import (
    LOCAL_SCHEME,
    MANUFACTURER,
    PREDICTIVE_ENTROPY,
    SERIES_NUMBERS,
    NO_UNITS,
    STANDARD_DEVIATION,
    EncodedObject,
    EncodeRequest,
    content_description,
    describe_derivation,
    mark_encapsulated,
    series_description,
    software_versions,
)
from neuroseg.dicom_out.enum import MapCompression, MapKind, TumorClass
from neuroseg.dicom_out.uids import output_uid

log = logging.getLogger(__name__)

FRACTIONAL_PROBABILISTIC_SEGMENTATION = CodedConcept("110854", "DCM", "Fractional Probabilistic Segmentation")
GRADIENT_WEIGHTED_CLASS_ACTIVATION = CodedConcept("130403", "DCM", "Gradient-weighted class activation")
#: Stored values run 0..STORED_MAX (unsigned 16 bit).
STORED_MAX = 65535
#: Transfer syntax of each ``EncodeOptions.map_compression`` (see the module docstring for the choice).
MAP_TRANSFER_SYNTAX = {
    MapCompression.DEFLATE.value: DeflatedExplicitVRLittleEndian,
    MapCompression.JPEG_LS.value: JPEGLSLossless,
    MapCompression.RLE.value: RLELossless,
    MapCompression.NONE.value: ExplicitVRLittleEndian,
}
_SHORT = {TumorClass.NCR: "NCR", TumorClass.ED: "ED", TumorClass.ET: "ET"}


@dataclass(frozen=True)
class MapSpec:
    """One Parametric Map to write."""

    kind: str
    group: str  # SERIES_NUMBERS key
    label: str  # LUT label (SH, 16 chars)
    explanation: str  # LUT explanation (LO, 64 chars)
    quantity: CodedConcept
    value_range: tuple[float, float]
    array: np.ndarray
    description: str  # SeriesDescription stem


def map_specs(request: EncodeRequest) -> list[MapSpec]:
    """The maps ``request.options.maps`` asks for, in a fixed order."""
    specs: list[MapSpec] = []
    wanted = request.options.maps
    method, layer = request.uncertainty_method()[1], request.gradcam_layer()
    if MapKind.PROBABILITY.value in wanted:
        for tumor_class in TumorClass:
            array = request.probabilities.get(tumor_class.value)
            if array is None:
                continue
            short = _SHORT[tumor_class]
            specs.append(MapSpec(
                f"pmap-probability-{tumor_class.value}", "pmap-probability", f"P_{short}",
                f"Mean softmax probability of {tumor_class.display_name} ({short})",
                FRACTIONAL_PROBABILISTIC_SEGMENTATION, (0.0, 1.0), array, f"AI probability {short}",
            ))
    if wanted & {MapKind.UNCERTAINTY.value, MapKind.ENTROPY.value} and request.entropy is not None:
        top = max(math.log(4.0), float(request.entropy.max()))
        specs.append(MapSpec(
            "pmap-uncertainty-entropy", "pmap-uncertainty", "ENTROPY",
            f"Predictive entropy of the {method} mean softmax (nats)",
            PREDICTIVE_ENTROPY, (0.0, top), request.entropy, "AI uncertainty entropy",
        ))
    if MapKind.UNCERTAINTY.value in wanted:
        for tumor_class in TumorClass:
            variance = request.variance.get(tumor_class.value)
            if variance is None:
                continue
            short = _SHORT[tumor_class]
            sd = np.sqrt(np.clip(variance, 0.0, None)).astype(np.float32)
            specs.append(MapSpec(
                f"pmap-uncertainty-sd-{tumor_class.value}", "pmap-uncertainty", f"SD_P_{short}",
                f"{method} standard deviation of P({short})",
                STANDARD_DEVIATION, (0.0, max(0.5, float(sd.max()))), sd, f"AI uncertainty SD {short}",
            ))
    if MapKind.GRADCAM.value in wanted:
        for tumor_class in TumorClass:
            array = request.gradcam.get(tumor_class.value)
            if array is None:
                continue
            short = _SHORT[tumor_class]
            low = min(0.0, float(array.min()))
            specs.append(MapSpec(
                f"pmap-gradcam-{tumor_class.value}", "pmap-gradcam", f"GRADCAM_{short}",
                f"3D Grad-CAM of class {short} at {layer}" if layer else
                f"3D Grad-CAM of class {short} (gradient-weighted class activation)",
                GRADIENT_WEIGHTED_CLASS_ACTIVATION, (low, max(low + 1e-6, float(array.max()), 1.0)), array,
                f"AI Grad-CAM {short}",
            ))
    return specs


def quantise(array: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """Stored values (uint16) of ``array`` for the linear mapping over ``value_range``."""
    low, high = value_range
    scaled = (np.clip(array, low, high) - low) * (STORED_MAX / (high - low))
    return np.rint(scaled).astype(np.uint16)


#: Float maps are rounded to this step: far below what a reader or a threshold tells apart, and it lets deflate work.
FLOAT_STEP = 1.0 / 1024


def float_values(array: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """Stored values (float32) of ``array`` for a float map: clipped to ``value_range``, rounded to FLOAT_STEP."""
    low, high = value_range
    return (np.rint(np.clip(array, low, high) / FLOAT_STEP) * FLOAT_STEP).astype(np.float32)


def quantisation_step(value_range: tuple[float, float]) -> float:
    """The Real World Value Slope: the quantity per stored unit."""
    low, high = value_range
    return (high - low) / STORED_MAX


def build_parametric_map(request: EncodeRequest, spec: MapSpec, instance_number: int = 1) -> EncodedObject:
    """Build one Parametric Map from ``spec`` on the reference series."""
    study_uid = request.study_instance_uid
    low, high = spec.value_range
    as_float = request.options.map_compression == MapCompression.DEFLATE.value
    if as_float:
        pixel_array = float_values(spec.array, spec.value_range)
        mapping = hd.pm.RealWorldValueMapping(
            lut_label=spec.label[:16], lut_explanation=spec.explanation[:64], unit=NO_UNITS,
            value_range=(float(low), float(high)), slope=1.0, intercept=0.0, quantity_definition=spec.quantity,
        )
        window_center, window_width = (low + high) / 2.0, high - low
    else:
        pixel_array = quantise(spec.array, spec.value_range)
        mapping = hd.pm.RealWorldValueMapping(
            lut_label=spec.label[:16],
            lut_explanation=spec.explanation[:64],
            unit=NO_UNITS,
            value_range=(0, STORED_MAX),  # ints: the stored values this mapping covers
            slope=quantisation_step(spec.value_range),
            intercept=float(low),
            quantity_definition=spec.quantity,
        )
        window_center, window_width = STORED_MAX / 2.0, float(STORED_MAX)
    window = hd.VOILUTTransformation(
        window_center=window_center,
        window_width=window_width,
        window_explanation=spec.label[:64],
        voi_lut_function=hd.VOILUTFunctionValues.LINEAR_EXACT,
    )
    # highdicom stores a str explanation as list(str), one value per character (P\\_\\N...)
    window.WindowCenterWidthExplanation = spec.label[:64]
    sources, plane_positions = request.highdicom_source()  # frames of a multi-frame reference
    pmap = hd.pm.ParametricMap(
        source_images=sources,
        plane_positions=plane_positions,
        pixel_array=pixel_array,
        series_instance_uid=output_uid(study_uid, request.model_version, spec.kind, "series"),
        series_number=SERIES_NUMBERS[spec.group] + _offset(spec.kind),
        sop_instance_uid=output_uid(study_uid, request.model_version, spec.kind),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=request.model_name[:64],
        software_versions=software_versions(request.model_name, request.model_version),
        device_serial_number=request.model_version[:64],
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[window],
        content_label=spec.label.replace("_", "")[:16].upper(),
        content_description=content_description(spec.description),
        content_creator_name="neuroseg^AI",
        content_qualification=hd.ContentQualificationValues.RESEARCH,
        series_description=series_description(spec.description, request.options),
        # highdicom builds float maps only uncompressed; deflate is applied when the data set is written or sent
        transfer_syntax_uid=ExplicitVRLittleEndian if as_float else MAP_TRANSFER_SYNTAX[request.options.map_compression],
        coding_schemes=[hd.coding_schemes.CodingSchemeIdentificationItem(
            designator=LOCAL_SCHEME,
            name="neuroseg local codes",
            responsible_organization="neuroseg project",
        )] if spec.quantity.scheme_designator == LOCAL_SCHEME else None,
    )
    pmap.BodyPartExamined = "BRAIN"
    if as_float:
        pmap.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    describe_derivation(pmap, request)
    mark_encapsulated(pmap)
    return EncodedObject(spec.kind, str(pmap.SOPClassUID), str(pmap.SOPInstanceUID), pmap)


def _offset(kind: str) -> int:
    """Each map its own series number inside its group: 9010 + 1 for NCR, ..."""
    order = ["entropy", "ncr", "ed", "et"]
    return order.index(kind.rsplit("-", 1)[-1])


def build_parametric_maps(request: EncodeRequest) -> list[EncodedObject]:
    """Build every Parametric Map that ``request.options.maps`` asks for."""
    objects = [build_parametric_map(request, spec) for spec in map_specs(request)]
    log.info("built %d parametric maps for study %s", len(objects), request.study_instance_uid)
    return objects


__all__ = ["MAP_TRANSFER_SYNTAX", "MapSpec", "build_parametric_map", "build_parametric_maps", "map_specs",
           "quantisation_step", "quantise"]
