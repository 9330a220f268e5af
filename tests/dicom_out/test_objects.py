"""Round trip of every object: write to bytes, read back, check attributes, validate."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest

from neuroseg.dicom_out import EncodeOptions
from neuroseg.dicom_out.common import NOT_FOR_DIAGNOSTIC_USE
from neuroseg.dicom_out.pmap import quantise
from tests.dicom_out.dciodvfy import assert_dciodvfy_clean

EXPECTED_KINDS = (
    ["seg"]
    + [f"pmap-probability-{c}" for c in ("ncr", "ed", "et")]
    + ["pmap-uncertainty-entropy"] + [f"pmap-uncertainty-sd-{c}" for c in ("ncr", "ed", "et")]
    + [f"pmap-gradcam-{c}" for c in ("ncr", "ed", "et")]
    + [f"mesh-stl-{r}" for r in ("wt", "tc", "et", "ncr", "ed")] + ["mesh-surface", "sr"]
    + [f"keyimage-{plane}" for plane in ("axial", "coronal", "sagittal")] + ["report-pdf"]
)
SOP_CLASSES = {
    "seg": "1.2.840.10008.5.1.4.1.1.66.4",
    "pmap": "1.2.840.10008.5.1.4.1.1.30",
    "mesh-stl": "1.2.840.10008.5.1.4.1.1.104.3",
    "mesh-surface": "1.2.840.10008.5.1.4.1.1.66.5",
    "sr": "1.2.840.10008.5.1.4.1.1.88.34",
    "keyimage": "1.2.840.10008.5.1.4.1.1.7",
    "report-pdf": "1.2.840.10008.5.1.4.1.1.104.1",
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
    if not kind.startswith(("sr", "keyimage", "report")):  # no Frame of Reference module in these IODs
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


def test_seg_frames_reference_only_the_reference_series(all_objects) -> None:
    """OHIF attaches a SEG to one series: every frame points at exactly one reference image."""
    request, objects = all_objects
    seg = round_trip(objects[0].dataset)
    reference_series = str(request.reference_series[0].SeriesInstanceUID)
    assert [str(item.SeriesInstanceUID) for item in seg.ReferencedSeriesSequence] == [reference_series]
    reference_images = {str(ds.SOPInstanceUID) for ds in request.reference_series}
    flair = request.other_series["FLAIR"]
    for frame in seg.PerFrameFunctionalGroupsSequence:
        (derivation,) = frame.DerivationImageSequence
        (source,) = derivation.SourceImageSequence
        assert str(source.ReferencedSOPInstanceUID) in reference_images
        # the other sequences are named, not referenced
        assert str(flair[0].SeriesInstanceUID) in derivation.DerivationDescription
        assert "t1, t1ce, t2, flair" in derivation.DerivationDescription
    referenced = {str(item.ReferencedSOPInstanceUID)
                  for frame in seg.PerFrameFunctionalGroupsSequence
                  for item in frame.DerivationImageSequence[0].SourceImageSequence}
    assert referenced == reference_images
    assert not {str(ds.SOPInstanceUID) for ds in flair} & {str(item.ReferencedSOPInstanceUID)
                                                          for item in seg.get("SourceImageSequence", [])}


@pytest.fixture(scope="module")
def integer_maps(study):
    """Every map kind as uint16 JPEG-LS with a Real World Value Mapping (``map_compression="jpegls"``)."""
    from neuroseg.dicom_out import encode_study

    request = study.request(EncodeOptions(maps={"probability", "uncertainty", "gradcam"}, map_compression="jpegls",
                                          mesh_formats=(), reports=()))
    return request, encode_study(request)


def test_probability_map_has_quantity_unit_range_and_values(integer_maps) -> None:
    request, objects = integer_maps
    obj = next(item for item in objects if item.kind == "pmap-probability-et")
    ds = round_trip(obj.dataset)
    mapping = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeValue == "110854"
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "1"
    assert (mapping.RealWorldValueFirstValueMapped, mapping.RealWorldValueLastValueMapped) == (0, 65535)
    assert float(mapping.RealWorldValueIntercept) == 0.0
    assert float(mapping.RealWorldValueSlope) == pytest.approx(1.0 / 65535)
    assert ds.BodyPartExamined == "BRAIN" and ds.ContentQualification == "RESEARCH"
    window = ds.SharedFunctionalGroupsSequence[0].FrameVOILUTSequence[0]
    assert float(window.WindowCenter) == pytest.approx(65535 / 2)
    assert window.WindowCenterWidthExplanation == "P_ET"  # one value, not one per character
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == request.reference_series[0].SeriesInstanceUID
    assert len(ds.ReferencedSeriesSequence) == 1


@pytest.mark.parametrize("kind", ["pmap-probability-ncr", "pmap-uncertainty-entropy", "pmap-uncertainty-sd-ed",
                                  "pmap-gradcam-et"])
def test_maps_are_compressed_integers_that_decode_to_the_values(integer_maps, kind: str) -> None:
    """uint16 + JPEG-LS lossless + RWVM: stored * slope + intercept is the float within one step."""
    request, objects = integer_maps
    ds = round_trip(next(item for item in objects if item.kind == kind).dataset)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"  # JPEG-LS lossless
    assert ds.file_meta.TransferSyntaxUID.is_compressed
    assert (ds.BitsAllocated, ds.PixelRepresentation) == (16, 0) and "FloatPixelData" not in ds
    stored = frames_in_source_order(ds, request.reference_series)
    assert stored.dtype == np.uint16
    mapping = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    slope, intercept = float(mapping.RealWorldValueSlope), float(mapping.RealWorldValueIntercept)
    decoded = stored * slope + intercept
    name, _, key = kind.removeprefix("pmap-").partition("-")
    expected = {
        "probability": lambda: request.probabilities[key],
        "gradcam": lambda: request.gradcam[key],
        "uncertainty": lambda: request.entropy if key == "entropy" else np.sqrt(request.variance[key[3:]]),
    }[name]()
    np.testing.assert_allclose(decoded, expected, atol=slope / 2 + 1e-7)
    assert decoded.max() > decoded.min()  # a real map, not a constant


@pytest.mark.parametrize("kind", ["pmap-probability-ncr", "pmap-uncertainty-entropy", "pmap-gradcam-et"])
def test_default_maps_are_deflated_floats_that_ohif_shows_graded(all_objects, tmp_path, kind: str) -> None:
    """float32 rounded to 1/1024 in Deflated Explicit VR LE: OHIF shows stored values on a 0..1 scale."""
    from neuroseg.dicom_out.pmap import FLOAT_STEP

    request, objects = all_objects
    obj = next(item for item in objects if item.kind == kind)
    path = tmp_path / "map.dcm"
    obj.dataset.save_as(path, enforce_file_format=True)
    ds = pydicom.dcmread(path)
    plain = tmp_path / "plain.dcm"
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.save_as(plain, enforce_file_format=True)
    assert path.stat().st_size < plain.stat().st_size / 2  # deflate does its work on the mostly constant field
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.DeflatedExplicitVRLittleEndian
    assert "FloatPixelData" in ds and ds.BitsAllocated == 32
    decoded = frames_in_source_order(ds, request.reference_series)
    name, _, key = kind.removeprefix("pmap-").partition("-")
    expected = {
        "probability": lambda: request.probabilities[key],
        "gradcam": lambda: request.gradcam[key],
        "uncertainty": lambda: request.entropy,
    }[name]()
    np.testing.assert_allclose(decoded, expected, atol=FLOAT_STEP / 2 + 1e-6)
    assert decoded.max() > decoded.min()
    mapping = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert (float(mapping.RealWorldValueSlope), float(mapping.RealWorldValueIntercept)) == (1.0, 0.0)
    assert_dciodvfy_clean(path)


@pytest.mark.parametrize(("compression", "syntax"), [("rle", "1.2.840.10008.1.2.5"), ("none", "1.2.840.10008.1.2.1")])
def test_map_compression_option_picks_the_transfer_syntax(study, compression: str, syntax: str) -> None:
    from neuroseg.dicom_out.pmap import build_parametric_map, map_specs

    request = study.request(EncodeOptions(maps={"probability"}, map_compression=compression))
    spec = map_specs(request)[0]
    ds = round_trip(build_parametric_map(request, spec).dataset)
    assert ds.file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(frames_in_source_order(ds, request.reference_series), quantise(spec.array,
                                                                                                 spec.value_range))
    assert_dciodvfy_clean(ds)


def test_default_maps_are_the_probabilities_and_the_entropy(study) -> None:
    from neuroseg.dicom_out import EncodeOptions, encode_study

    request = study.request(EncodeOptions(mesh_formats=(), reports=()))
    kinds = [obj.kind for obj in encode_study(request)]
    assert kinds == ["seg", "pmap-probability-ncr", "pmap-probability-ed", "pmap-probability-et",
                     "pmap-uncertainty-entropy", "sr"]


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
    seg, sr = objects[0], next(obj for obj in objects if obj.kind == "sr")
    ds = round_trip(sr.dataset)
    items = content_items(ds)
    volumes = request.region_volumes_ml()
    reported = [value for name, value in items if name == "Volume"]
    assert reported == pytest.approx([volumes[key] for key in ("ncr", "ed", "et", "wt", "tc")], abs=1e-3)
    trackers = [value for name, value in items if name == "Tracking Identifier"]
    assert trackers == ["NCR (necrotic core)", "ED (edema)", "ET (enhancing tumour)", "WT (whole tumour)",
                        "TC (tumour core)"]
    texts = {value for name, value in items if name == "Algorithm Parameters"}
    assert texts == {"sequences used: t1, t1ce, t2, flair", "uncertainty: Monte Carlo dropout",
                     NOT_FOR_DIAGNOSTIC_USE}
    assert {value for name, value in items if name == "Algorithm Version"} == {"0.1.0-test"}
    assert [value for _, value in items].count(seg.sop_instance_uid) == 5  # the SEG is every group's source
    entropy = [value for name, value in items if name == "Predictive entropy"]
    assert len(entropy) == 5 and all(0.0 <= value <= 2.0 for value in entropy)
    assert len([value for name, value in items if name == "Standard Deviation"]) == 3
    assert volumes["wt"] == pytest.approx(volumes["ncr"] + volumes["ed"] + volumes["et"])
    evidence = {str(ref.ReferencedSOPInstanceUID)
                for study in ds.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
    assert seg.sop_instance_uid in evidence


def test_sr_read_back_with_highdicom_gives_volumes_and_points_inside_each_region(all_objects) -> None:
    """Every group's Volume is inferred from a POINT on a reference image (what OHIF needs to open it)."""
    import highdicom as hd

    from neuroseg.dicom_out.enum import TumorRegion
    from neuroseg.dicom_out.sr import VOLUME, region_point

    request, objects = all_objects
    sr = next(obj for obj in objects if obj.kind == "sr")
    report = hd.sr.MeasurementReport.from_sequence([round_trip(sr.dataset)])
    groups = report.get_image_measurement_groups()
    assert len(groups) == 5
    volumes = request.region_volumes_ml()
    reference = {str(ds.SOPInstanceUID): index for index, ds in enumerate(request.reference_series)}
    for region, group in zip(TumorRegion, groups, strict=True):
        (volume,) = group.get_measurements(name=VOLUME)
        assert volume.value == pytest.approx(volumes[region.value], abs=1e-3)
        (point,) = volume.referenced_coordinates
        assert point.GraphicType == "POINT"
        column, row = np.asarray(point.value, dtype=float).reshape(2)
        image = point.ContentSequence[0].ReferencedSOPSequence[0]
        index = reference[str(image.ReferencedSOPInstanceUID)]  # an image of the reference series
        assert image.ReferencedSOPClassUID == request.reference_series[index].SOPClassUID
        voxel = (index, int(row - 0.5), int(column - 0.5))
        assert voxel == region_point(request, region)
        assert request.labels[voxel] in region.label_values, f"{region.value} point is outside the region"
        # OHIF reads ContentSequence.ReferencedSOPSequence of the Volume's only child
        assert len(volume[0].ContentSequence) == 1


def test_sr_points_fall_back_to_the_grid_centre_without_tumour() -> None:
    from neuroseg.dicom_out import EncodeOptions, encode_study
    from tests.dicom_out.synthetic import synthetic_study

    study = synthetic_study(empty=True)
    objects = encode_study(study.request(EncodeOptions(maps=(), mesh_formats=(), reports=())))
    sr = objects[-1].dataset
    assert_dciodvfy_clean(sr)
    points = [item for item in _walk(sr) if getattr(item, "ValueType", "") == "SCOORD"]
    assert len(points) == 5
    middle = str(study.reference[len(study.reference) // 2].SOPInstanceUID)
    assert {str(p.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for p in points} == {middle}


def _walk(dataset: pydicom.Dataset):
    for item in dataset.get("ContentSequence", []):
        yield item
        yield from _walk(item)


def _bytes(dataset: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def test_labelmap_option_writes_a_label_map_segmentation(study) -> None:
    from neuroseg.dicom_out import EncodeOptions, encode_study

    request = study.request(EncodeOptions(segmentation_type="LABELMAP", maps=(), mesh_formats=(), reports=()))
    objects = encode_study(request)
    assert [obj.kind for obj in objects] == ["seg", "sr"]
    seg = round_trip(objects[0].dataset)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7"
    assert seg.SegmentationType == "LABELMAP" and int(seg.NumberOfFrames) == 24
    for obj in objects:
        assert_dciodvfy_clean(obj.dataset)


@pytest.mark.parametrize(("method", "words", "code"), [
    ("mc-dropout", "MC dropout", "MC-DROPOUT"),
    ("test-time-flips", "flip TTA", "TTA-FLIPS"),
    ("test-time-flips-and-fold-ensemble", "flip+fold", "TTA-FLIPS-FOLDS"),
])
def test_maps_and_sr_name_the_model_cards_uncertainty_method_and_gradcam_layer(study, method: str, words: str,
                                                                               code: str) -> None:
    from neuroseg.dicom_out import encode_study

    card = {"uncertainty": {"method": method}, "gradcam": {"layer": "decoder.stages.1"}}
    request = study.request(EncodeOptions(maps={"uncertainty", "gradcam"}), model_card=card)
    objects = {obj.kind: obj.dataset for obj in encode_study(request)}
    mapping = objects["pmap-uncertainty-sd-ed"].SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.LUTExplanation == f"{words} standard deviation of P(ED)"
    cam = objects["pmap-gradcam-ed"].SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert cam.LUTExplanation == "3D Grad-CAM of class ED at decoder.stages.1"
    derivation = objects["pmap-uncertainty-entropy"].PerFrameFunctionalGroupsSequence[0] \
        .DerivationImageSequence[0].DerivationDescription
    assert derivation.endswith("; Grad-CAM layer: decoder.stages.1") and "uncertainty: " in derivation
    sr = content_items(round_trip(objects["sr"]))
    assert {value for name, value in sr if name == "Algorithm Parameters"} >= {"Grad-CAM layer: decoder.stages.1"}
    methods = {item.ConceptCodeSequence[0].CodeValue for item in _walk(objects["sr"])
               if item.get("ValueType") == "CODE"
               and item.ConceptNameCodeSequence[0].CodeMeaning == "Measurement Method"}
    assert methods == {code}
    for obj in objects.values():
        assert_dciodvfy_clean(obj)
