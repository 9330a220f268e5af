"""The change SEG of a follow-up: where the tumour is new, grown, stable, shrunk or gone since the prior study.

On the current reference series (like the tumour SEG, so viewers hydrate it
on that series), BINARY, one frame per slice and segment, empty frames kept.
Each segment is a lesion (SNOMED CT 52988006) in the category Morphologically
Abnormal Structure, and says which change with a Segmented Property Type
Modifier (PS3.3 C.8.20.2: the modifier refines the type):

====  =========  ======================  =========================================
 no.  label      modifier (SCT)          what
====  =========  ======================  =========================================
 1    NEW        7147002 New             tumour now, in a lesion apart from any prior one
 2    GROWN      35105006 Increased      tumour now, not before, next to prior tumour
 3    STABLE     58158008 Stable         tumour at both time points
 4    SHRUNK     1250004 Decreased       tumour before, not now, in a lesion still there
 5    VANISHED   723506003 Resolved      tumour before, in a lesion with no tumour now
====  =========  ======================  =========================================

The map itself comes from :mod:`neuroseg.model.longitudinal` (values 1-5 as
above); the prior study is named in every frame's Derivation Description and
its date in the series description. Research use, not a response assessment.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset

from neuroseg.dicom_out.common import (
    MANUFACTURER,
    MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
    EncodedObject,
    EncodeRequest,
    content_description,
    series_description,
    software_versions,
)
from neuroseg.dicom_out.seg import algorithm_identification
from neuroseg.dicom_out.uids import output_uid

LESION = CodedConcept("52988006", "SCT", "Lesion")
#: segment number -> (label, modifier, display colour); numbers are the change map's values
CHANGE_SEGMENTS: dict[int, tuple[str, CodedConcept, tuple[int, int, int]]] = {
    1: ("NEW", CodedConcept("7147002", "SCT", "New"), (255, 0, 255)),
    2: ("GROWN", CodedConcept("35105006", "SCT", "Increased"), (255, 128, 0)),
    3: ("STABLE", CodedConcept("58158008", "SCT", "Stable"), (128, 128, 128)),
    4: ("SHRUNK", CodedConcept("1250004", "SCT", "Decreased"), (0, 160, 255)),
    5: ("VANISHED", CodedConcept("723506003", "SCT", "Resolved"), (0, 255, 128)),
}
CHANGE_SERIES_NUMBER = 9080
RESEARCH_USE = "research use, not a response assessment"


def _code_item(code: CodedConcept) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.value, code.scheme_designator, code.meaning
    return item


def build_change_segmentation(request: EncodeRequest, change_map: np.ndarray, prior_study_uid: str,
                              prior_study_date: str = "") -> EncodedObject:
    """Build the change SEG of ``change_map`` (values 1-5, on the reference grid) against the prior study.

    Returns
    -------
    EncodedObject
        Kind ``"change-seg"``; its UIDs derive from (study, model version, ``change-seg``), so a
        reprocessed follow-up replaces the old one.
    """
    change_map = np.asarray(change_map)
    if change_map.shape != tuple(request.grid_shape):
        raise ValueError(f"change map has shape {change_map.shape}; the reference grid is {request.grid_shape}")
    algorithm = algorithm_identification(request)
    study_uid = request.study_instance_uid
    descriptions = []
    for number, (label, _, colour) in CHANGE_SEGMENTS.items():
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=label,
            segmented_property_category=MORPHOLOGICALLY_ABNORMAL_STRUCTURE, segmented_property_type=LESION,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            tracking_uid=output_uid(study_uid, request.model_version, f"change-{label.lower()}", "tracking"),
            tracking_id=f"tumour change {label.lower()}",
            display_color=hd.color.CIELabColor.from_rgb(*colour)))
    pixel_array = np.stack([change_map == number for number in CHANGE_SEGMENTS], axis=-1).astype(np.uint8)
    sources, plane_positions = request.highdicom_source()
    since = f" since {prior_study_date}" if prior_study_date else " since prior"
    seg = hd.seg.Segmentation(
        source_images=sources, plane_positions=plane_positions, pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=output_uid(study_uid, request.model_version, "change-seg", "series"),
        series_number=CHANGE_SERIES_NUMBER,
        sop_instance_uid=output_uid(study_uid, request.model_version, "change-seg"),
        instance_number=1, manufacturer=MANUFACTURER, manufacturer_model_name=request.model_name[:64],
        software_versions=software_versions(request.model_name, request.model_version),
        device_serial_number=request.model_version[:64], omit_empty_frames=False,
        content_label="CHANGE", content_description=content_description(f"AI tumour change{since}"),
        content_creator_name="neuroseg^AI",
        series_description=series_description(f"AI tumour change{since}", request.options),
    )
    seg.BodyPartExamined = "BRAIN"
    for item, (_, modifier, _) in zip(seg.SegmentSequence, CHANGE_SEGMENTS.values()):
        # a fresh type item per segment: highdicom shares one code data set between the five
        lesion = _code_item(LESION)
        lesion.SegmentedPropertyTypeModifierCodeSequence = [_code_item(modifier)]
        item.SegmentedPropertyTypeCodeSequence = [lesion]
    text = (f"change against prior study {prior_study_uid}"[:900] + f"; {RESEARCH_USE}")[:1024]
    for frame in seg.get("PerFrameFunctionalGroupsSequence", []):
        for derivation in frame.get("DerivationImageSequence", []):
            derivation.DerivationDescription = text
    return EncodedObject("change-seg", str(seg.SOPClassUID), str(seg.SOPInstanceUID), seg)
