"""Round trip of every object: write to bytes, read back, check attributes, validate."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest

from neuroseg.dicom_out.common import NOT_FOR_DIAGNOSTIC_USE
from tests.dicom_out.dciodvfy import assert_dciodvfy_clean

EXPECTED_KINDS = (
    ["seg"]
    + [f"pmap-probability-{c}" for c in ("ncr", "ed", "et")]
    + ["pmap-uncertainty-entropy"] + [f"pmap-uncertainty-sd-{c}" for c in ("ncr", "ed", "et")]
    + [f"pmap-gradcam-{c}" for c in ("ncr", "ed", "et")]
    + [f"mesh-stl-{r}" for r in ("wt", "tc", "et", "ncr", "ed")] + ["mesh-surface", "sr"]
)
SOP_CLASSES = {
    "seg": "1.2.840.10008.5.1.4.1.1.66.4",
    "pmap": "1.2.840.10008.5.1.4.1.1.30",
    "mesh-stl": "1.2.840.10008.5.1.4.1.1.104.3",
    "mesh-surface": "1.2.840.10008.5.1.4.1.1.66.5",
    "sr": "1.2.840.10008.5.1.4.1.1.88.34",
}


def round_trip(dataset: pydicom.Dataset) -> pydicom.Dataset:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def frames_in_source_order(ds: pydicom.Dataset, sources) -> np.ndarray:
    """The frames of a multi-frame derived image, reordered to follow ``sources``.

    highdicom stores frames sorted along its own normal, so frame k is matched to its
    source slice through the per-frame Derivation Image Sequence.
    """
    order = {str(source.SOPInstanceUID): index for index, source in enumerate(sources)}
    pixels = ds.pixel_array
    result = np.empty_like(pixels)
    for frame, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        result[order[uid]] = pixels[frame]
    return result


def sop_class_for(kind: str) -> str:
    for prefix, uid in SOP_CLASSES.items():
        if kind == prefix or kind.startswith(prefix + "-"):
            return uid
    raise KeyError(kind)


def test_encode_study_builds_every_kind_in_order(all_objects) -> None:
    _, objects = all_objects
    assert [obj.kind for obj in objects] == EXPECTED_KINDS
    assert len({obj.sop_instance_uid for obj in objects}) == len(objects)


@pytest.mark.parametrize("kind", EXPECTED_KINDS)
def test_object_round_trips_with_identity_and_passes_dciodvfy(all_objects, kind: str) -> None:
    request, objects = all_objects
    obj = next(item for item in objects if item.kind == kind)
    source = request.reference_series[0]
    ds = round_trip(obj.dataset)
    assert ds.SOPClassUID == obj.sop_class_uid == sop_class_for(kind)
    assert ds.SOPInstanceUID == obj.sop_instance_uid
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                    "StudyDate", "AccessionNumber"):
        assert ds[keyword].value == source[keyword].value, keyword
    assert ds.SeriesInstanceUID not in {s.SeriesInstanceUID for s in request.source_datasets()}
    assert ds.SeriesDescription.endswith(" - research use")
    assert ds.Manufacturer == "neuroseg"
    assert "ContentDate" in ds and "ContentTime" in ds
    assert list(ds.SoftwareVersions)[0].startswith("neuroseg ")
    assert list(ds.SoftwareVersions)[1] == "neuroseg-unet3d 0.1.0-test"
    if kind != "sr":
        assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
    if kind.startswith(("seg", "pmap", "mesh-surface")):
        assert ds.ContentDescription.endswith("Not for diagnostic use")
    if kind.startswith("mesh-stl"):
        assert ds.Modality == "M3D" and ds.MIMETypeOfEncapsulatedDocument == "model/stl"
        assert NOT_FOR_DIAGNOSTIC_USE in ds.DocumentTitle
    assert_dciodvfy_clean(obj.dataset)


def test_segments_are_coded_and_coloured(all_objects) -> None:
    request, objects = all_objects
    seg = round_trip(objects[0].dataset)
    assert seg.SegmentationType == "BINARY"
    assert int(seg.NumberOfFrames) == 24 * 3, "empty frames must be kept"
    codes = [(s.SegmentLabel, s.SegmentedPropertyTypeCodeSequence[0].CodeValue,
              s.SegmentedPropertyCategoryCodeSequence[0].CodeValue) for s in seg.SegmentSequence]
    assert codes == [("NCR", "6574001", "49755003"), ("ED", "79654002", "49755003"),
                     ("ET", "C113842", "49755003")]
    assert all(len(s.RecommendedDisplayCIELabValue) == 3 for s in seg.SegmentSequence)
    # the reference series and the other sequences (further sources) are all referenced
    expected = {str(ds.SeriesInstanceUID) for ds in request.source_datasets()}
    assert {str(item.SeriesInstanceUID) for item in seg.ReferencedSeriesSequence} == expected
    sources = {str(item.ReferencedSOPInstanceUID)
               for frame in seg.PerFrameFunctionalGroupsSequence
               for item in frame.DerivationImageSequence[0].SourceImageSequence}
    assert sources == {str(ds.SOPInstanceUID) for ds in request.reference_series}


def test_probability_map_has_quantity_unit_range_and_values(all_objects) -> None:
    request, objects = all_objects
    obj = next(item for item in objects if item.kind == "pmap-probability-et")
    ds = round_trip(obj.dataset)
    mapping = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeValue == "110854"
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "1"
    assert (mapping.DoubleFloatRealWorldValueFirstValueMapped, mapping.DoubleFloatRealWorldValueLastValueMapped) \
        == (0.0, 1.0)
    assert ds.BodyPartExamined == "BRAIN" and ds.ContentQualification == "RESEARCH"
    assert float(ds.SharedFunctionalGroupsSequence[0].FrameVOILUTSequence[0].WindowCenter) == 0.5
    np.testing.assert_array_equal(frames_in_source_order(ds, request.reference_series), request.probabilities["et"])


@pytest.mark.parametrize(("kind", "code"), [
    ("pmap-gradcam-ed", ("130403", "DCM")),
    ("pmap-uncertainty-entropy", ("PRED-ENTROPY", "99NEUROSEG")),
    ("pmap-uncertainty-sd-ncr", ("113061", "DCM")),
])
def test_map_quantities_use_the_documented_codes(all_objects, kind: str, code: tuple[str, str]) -> None:
    _, objects = all_objects
    ds = next(item for item in objects if item.kind == kind).dataset
    concept = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0] \
        .QuantityDefinitionSequence[0].ConceptCodeSequence[0]
    assert (concept.CodeValue, concept.CodingSchemeDesignator) == code


def test_sd_map_is_square_root_of_variance(all_objects) -> None:
    request, objects = all_objects
    ds = next(item for item in objects if item.kind == "pmap-uncertainty-sd-ed").dataset
    np.testing.assert_allclose(frames_in_source_order(ds, request.reference_series), np.sqrt(request.variance["ed"]),
                               rtol=1e-6)


def content_items(dataset: pydicom.Dataset) -> list[tuple[str, object]]:
    """(concept name meaning, value) of every SR content item, depth first."""
    items = []
    for item in dataset.get("ContentSequence", []):
        name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
        if item.ValueType == "NUM":
            value = float(item.MeasuredValueSequence[0].NumericValue)
        elif item.ValueType == "TEXT":
            value = item.TextValue
        elif item.ValueType == "UIDREF":
            value = item.UID
        elif item.ValueType == "CODE":
            value = item.ConceptCodeSequence[0].CodeMeaning
        elif item.ValueType in ("IMAGE", "COMPOSITE"):
            value = item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        else:
            value = None
        items.append((name, value))
        items.extend(content_items(item))
    return items


def test_sr_reports_volumes_model_and_sequences_and_references_the_seg(all_objects) -> None:
    request, objects = all_objects
    seg, sr = objects[0], objects[-1]
    ds = round_trip(sr.dataset)
    items = content_items(ds)
    volumes = request.region_volumes_ml()
    reported = [value for name, value in items if name == "Volume"]
    assert reported == pytest.approx([volumes[key] for key in ("ncr", "ed", "et", "wt", "tc")], abs=1e-3)
    trackers = [value for name, value in items if name == "Tracking Identifier"]
    assert trackers == ["NCR (necrotic core)", "ED (edema)", "ET (enhancing tumour)", "WT (whole tumour)",
                        "TC (tumour core)"]
    texts = {value for name, value in items if name == "Algorithm Parameters"}
    assert texts == {"sequences used: t1, t1ce, t2, flair", NOT_FOR_DIAGNOSTIC_USE}
    assert {value for name, value in items if name == "Algorithm Version"} == {"0.1.0-test"}
    assert [value for _, value in items].count(seg.sop_instance_uid) == 3  # one referenced segment per class
    entropy = [value for name, value in items if name == "Predictive entropy"]
    assert len(entropy) == 5 and all(0.0 <= value <= 2.0 for value in entropy)
    assert len([value for name, value in items if name == "Standard Deviation"]) == 3
    assert volumes["wt"] == pytest.approx(volumes["ncr"] + volumes["ed"] + volumes["et"])
    evidence = {str(ref.ReferencedSOPInstanceUID)
                for study in ds.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
    assert seg.sop_instance_uid in evidence


def _bytes(dataset: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def test_labelmap_option_writes_a_label_map_segmentation(study) -> None:
    from neuroseg.dicom_out import EncodeOptions, encode_study

    request = study.request(EncodeOptions(segmentation_type="LABELMAP", maps=(), mesh_formats=()))
    objects = encode_study(request)
    assert [obj.kind for obj in objects] == ["seg", "sr"]
    seg = round_trip(objects[0].dataset)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7"
    assert seg.SegmentationType == "LABELMAP" and int(seg.NumberOfFrames) == 24
    for obj in objects:
        assert_dciodvfy_clean(obj.dataset)
