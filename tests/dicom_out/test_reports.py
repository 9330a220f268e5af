"""Key images and the PDF report: what a viewer without SEG support shows."""

from __future__ import annotations

import re

import numpy as np
import pytest

from neuroseg.dicom_out import EncodeOptions
from neuroseg.dicom_out.common import CLASS_COLOURS
from neuroseg.dicom_out.enum import TumorClass
from neuroseg.dicom_out.reports import build_reports, orientation_letters
from tests.dicom_out.dciodvfy import assert_dciodvfy_clean
from tests.dicom_out.test_objects import round_trip


@pytest.fixture(scope="module")
def reports(study):
    request = study.request(EncodeOptions(maps=(), mesh_formats=()),
                            model_card={"intended_use": "testing", "limitations": ["phantoms only"]})
    return request, {obj.kind: obj for obj in build_reports(request)}


def test_key_images_show_the_outlines_in_the_seg_colours_on_the_largest_slices(reports) -> None:
    request, objects = reports
    assert [kind for kind in objects if kind.startswith("keyimage")] == \
        ["keyimage-axial", "keyimage-coronal", "keyimage-sagittal"]
    wt = request.labels > 0
    largest_axial = int(np.argmax(wt.sum(axis=(1, 2))))
    series = {str(obj.dataset.SeriesInstanceUID) for kind, obj in objects.items() if kind.startswith("keyimage")}
    assert len(series) == 1, "the key images form one series"
    for kind in ("keyimage-axial", "keyimage-coronal", "keyimage-sagittal"):
        ds = round_trip(objects[kind].dataset)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
        assert ds.PhotometricInterpretation == "RGB" and ds.BurnedInAnnotation == "YES"
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"  # RLE lossless
        assert ds.PatientID == request.reference_series[0].PatientID
        pixels = ds.pixel_array.reshape(-1, 3).astype(int)
        for tumor_class in TumorClass:
            distance = np.abs(pixels - np.asarray(CLASS_COLOURS[tumor_class])).sum(axis=1)
            assert (distance < 40).sum() > 20, f"{kind}: no {tumor_class.value} outline"
        assert "not for diagnostic use" in ds.ImageComments
    axial = round_trip(objects["keyimage-axial"].dataset)
    (shown,) = axial.SourceImageSequence
    assert shown.ReferencedSOPInstanceUID == request.reference_series[largest_axial].SOPInstanceUID
    assert axial.PatientOrientation == ["L", "P"]
    coronal = round_trip(objects["keyimage-coronal"].dataset)
    assert len(coronal.SourceImageSequence) == len(request.reference_series)


def test_pdf_report_has_three_pages_and_passes_dciodvfy(reports) -> None:
    request, objects = reports
    ds = round_trip(objects["report-pdf"].dataset)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.104.1" and ds.Modality == "DOC"
    assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    document = bytes(ds.EncapsulatedDocument)[: int(ds.EncapsulatedDocumentLength)]
    assert document.startswith(b"%PDF") and document.rstrip().endswith(b"%%EOF")
    assert len(re.findall(rb"/Type /Page\b", document)) == 3
    assert "not for diagnostic use" in ds.DocumentTitle
    assert ds.StudyInstanceUID == request.study_instance_uid
    assert_dciodvfy_clean(objects["report-pdf"].dataset)


def test_reports_are_optional_and_keep_their_uids(study) -> None:
    assert build_reports(study.request(EncodeOptions(maps=(), mesh_formats=(), reports=()))) == []
    first = build_reports(study.request(EncodeOptions(maps=(), mesh_formats=(), reports={"pdf"})))
    again = build_reports(study.request(EncodeOptions(maps=(), mesh_formats=(), reports={"pdf"})))
    assert [obj.kind for obj in first] == ["report-pdf"]
    assert first[0].sop_instance_uid == again[0].sop_instance_uid


@pytest.mark.parametrize(("direction", "letters"), [
    ((1.0, 0.0, 0.0), "L"), ((-1.0, 0.0, 0.0), "R"), ((0.0, 1.0, 0.0), "P"), ((0.0, 0.0, -1.0), "F"),
    ((0.0, 0.8, -0.6), "P"), ((0.1, -0.3, 0.95), "H"),
])
def test_orientation_letters(direction, letters) -> None:
    assert orientation_letters(np.asarray(direction)) == letters
