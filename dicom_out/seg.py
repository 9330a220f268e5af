"""The DICOM Segmentation of the tumour classes (highdicom).

Segments 1 NCR, 2 ED, 3 ET, coded from CID 7168 "Brain Lesion Segmentation
Type With Necrosis" under the category "Morphologically Abnormal Structure"
(SNOMED CT 49755003), with recommended display colours (NCR red, ED green, ET
yellow). BINARY by default, with one frame per source slice and segment,
empty frames kept (``omit_empty_frames=False``) so viewers that match frames
to slices by index place every segment correctly. LABELMAP writes a Label Map
Segmentation (one frame per slice, pixel value = segment number).

Only the reference series is referenced (``source_images``: one source image
per frame, one series in ReferencedSeriesSequence): OHIF and other viewers
attach a SEG to exactly one series and skip frames pointing elsewhere. The
other sequences the model read are named in each frame's Derivation
Description and in the segments' Algorithm Parameters, not as frame
references. The not-for-diagnostic statement goes in ContentDescription; the
model goes in the segment's Algorithm Identification.
"""

from __future__ import annotations

import logging

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes

from neuroseg.dicom_out.common import (
    CLASS_COLOURS,
    MANUFACTURER,
    MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
    SEGMENT_NUMBERS,
    SERIES_NUMBERS,
    EncodedObject,
    EncodeRequest,
    class_code,
    content_description,
    describe_derivation,
    series_description,
    software_versions,
)
from neuroseg.dicom_out.enum import SegmentationTypeValues, TumorClass
from neuroseg.dicom_out.uids import output_uid

log = logging.getLogger(__name__)

SEGMENT_LABELS = {TumorClass.NCR: "NCR", TumorClass.ED: "ED", TumorClass.ET: "ET"}


def algorithm_identification(request: EncodeRequest) -> hd.AlgorithmIdentificationSequence:
    """The model as an Algorithm Identification Sequence (family: Artificial Intelligence)."""
    return hd.AlgorithmIdentificationSequence(
        name=request.model_name[:64],
        family=codes.DCM.ArtificialIntelligence,
        version=request.model_version[:64],
        source=MANUFACTURER,
        # highdicom joins the parameters with commas: keep them out of the values
        parameters={"sequences_used": ";".join(request.sequences_used) or "unknown",
                    **{key: value.replace(",", ";") for key, value in request.provenance().items()}},
    )


def segment_descriptions(request: EncodeRequest) -> list[hd.seg.SegmentDescription]:
    """Segment descriptions of NCR, ED and ET in segment-number order."""
    algorithm = algorithm_identification(request)
    items = []
    for tumor_class in TumorClass:
        items.append(hd.seg.SegmentDescription(
            segment_number=SEGMENT_NUMBERS[tumor_class],
            segment_label=SEGMENT_LABELS[tumor_class],
            segmented_property_category=MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
            segmented_property_type=class_code(tumor_class),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=output_uid(request.study_instance_uid, request.model_version,
                                    f"segment-{tumor_class.value}", "tracking"),
            tracking_id=f"{SEGMENT_LABELS[tumor_class]} ({tumor_class.display_name})",
            display_color=hd.color.CIELabColor.from_rgb(*CLASS_COLOURS[tumor_class]),
        ))
    return items


def build_segmentation(request: EncodeRequest) -> EncodedObject:
    """Build the SEG of ``request.labels`` on the reference series.

    Parameters
    ----------
    request: EncodeRequest
        Checked inputs; ``request.options.segmentation_type`` picks BINARY or
        LABELMAP.

    Returns
    -------
    EncodedObject
        Kind ``"seg"``.
    """
    segmentation_type = SegmentationTypeValues(request.options.segmentation_type)
    labels = request.labels
    if segmentation_type is SegmentationTypeValues.BINARY:
        pixel_array = np.stack([labels == tumor_class.label_value for tumor_class in TumorClass], axis=-1)
        pixel_array = pixel_array.astype(np.uint8)
    else:
        pixel_array = np.zeros(labels.shape, dtype=np.uint8)
        for tumor_class in TumorClass:
            pixel_array[labels == tumor_class.label_value] = SEGMENT_NUMBERS[tumor_class]
    study_uid = request.study_instance_uid
    sources, plane_positions = request.highdicom_source()  # frames of a multi-frame reference
    seg = hd.seg.Segmentation(
        source_images=sources,
        plane_positions=plane_positions,
        pixel_array=pixel_array,
        segmentation_type=segmentation_type.value,
        segment_descriptions=segment_descriptions(request),
        series_instance_uid=output_uid(study_uid, request.model_version, "seg", "series"),
        series_number=SERIES_NUMBERS["seg"],
        sop_instance_uid=output_uid(study_uid, request.model_version, "seg"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=request.model_name[:64],
        software_versions=software_versions(request.model_name, request.model_version),
        device_serial_number=request.model_version[:64],
        omit_empty_frames=False,
        content_label="TUMOUR",
        content_description=content_description("AI glioma segmentation NCR/ED/ET"),
        content_creator_name="neuroseg^AI",
        series_description=series_description("AI glioma segmentation", request.options),
    )
    seg.BodyPartExamined = "BRAIN"
    describe_derivation(seg, request)
    log.info("built %s SEG with %d frames for study %s", segmentation_type.value, int(seg.NumberOfFrames), study_uid)
    return EncodedObject("seg", str(seg.SOPClassUID), str(seg.SOPInstanceUID), seg)
