"""Key images (Secondary Capture) and the PDF report: results any viewer shows.

A radiologist with an old PACS viewer sees neither a SEG nor a Parametric
Map; every viewer shows a Secondary Capture and most archives open a PDF.

- ``keyimage-axial``, ``keyimage-coronal``, ``keyimage-sagittal``: one
  Secondary Capture Image (highdicom ``SCImage``, RGB, RLE Lossless) per
  plane through the largest extent of the tumour, all in one series, with the
  class outlines in the SEG's colours, the legend with the volumes, the model
  and the not-for-diagnostic statement burned in (BurnedInAnnotation YES).
  Each references the reference images it shows (Source Image Sequence).
  highdicom's SCImage writes the single-frame Secondary Capture Image
  Storage class, which every viewer and archive takes.
- ``report-pdf``: an Encapsulated PDF (modality DOC) with the same figures,
  the volumes, the entropy and Grad-CAM panels and the model card summary.

UIDs are derived like the other objects' (study, model version, kind).
"""

from __future__ import annotations

import logging

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import RLELossless

from neuroseg.dicom_out.common import (
    MANUFACTURER,
    NOT_FOR_DIAGNOSTIC_USE,
    SERIES_NUMBERS,
    EncodedObject,
    EncodeRequest,
    mark_encapsulated,
    series_description,
    software_versions,
)
from neuroseg.dicom_out.enum import ReportKind
from neuroseg.dicom_out.figures import Plane, key_image, pdf_report, planes, reference_volume
from neuroseg.dicom_out.mesh import document_header, with_file_meta
from neuroseg.dicom_out.uids import output_uid

log = logging.getLogger(__name__)

ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"
_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))  # LPS +x, +y, +z and their opposites


def orientation_letters(direction: np.ndarray) -> str:
    """Patient Orientation letter of a direction in LPS: its dominant axis (highdicom takes one letter)."""
    axis = int(np.argmax(np.abs(direction)))
    return _LETTERS[axis][0 if direction[axis] > 0 else 1]


def _shown_images(request: EncodeRequest, plane: Plane) -> DicomSequence:
    """Source Image Sequence: the reference image(s) a key image shows."""
    slices = request.reference_slices()
    shown = [slices[plane.index]] if plane.axis == 0 else slices
    items = []
    for ds, frame in shown:
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        if frame is not None:
            item.ReferencedFrameNumber = frame
        items.append(item)
    return DicomSequence(items)


def build_key_images(request: EncodeRequest, views: list[Plane] | None = None) -> list[EncodedObject]:
    """One Secondary Capture per plane (axial, coronal, sagittal), in one series."""
    views = views or planes(request, reference_volume(request))
    return [build_key_image(request, plane, number) for number, plane in enumerate(views, start=1)]


def build_key_image(request: EncodeRequest, plane: Plane, instance_number: int) -> EncodedObject:
    study_uid = request.study_instance_uid
    kind = f"keyimage-{plane.name}"
    reference, _ = request.reference_slices()[plane.index if plane.axis == 0 else 0]
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=reference,
        pixel_array=key_image(request, plane),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=output_uid(study_uid, request.model_version, "keyimages", "series"),
        series_number=SERIES_NUMBERS["keyimages"],
        sop_instance_uid=output_uid(study_uid, request.model_version, kind),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        patient_orientation=(orientation_letters(plane.row_direction), orientation_letters(plane.column_direction)),
        transfer_syntax_uid=RLELossless,
        series_description=series_description("AI key images", request.options),
        manufacturer_model_name=request.model_name[:64],
        software_versions=software_versions(request.model_name, request.model_version),
        device_serial_number=request.model_version[:64],
    )
    image.BurnedInAnnotation = "YES"
    image.ImageComments = f"{plane.name} key image of the AI segmentation. {NOT_FOR_DIAGNOSTIC_USE}"
    image.ImageType = ["DERIVED", "SECONDARY"]
    image.DerivationDescription = request.derivation_description()
    image.SourceImageSequence = _shown_images(request, plane)
    image.BodyPartExamined = "BRAIN"
    mark_encapsulated(image)
    return EncodedObject(kind, str(image.SOPClassUID), str(image.SOPInstanceUID), image)


def build_pdf_report(request: EncodeRequest, views: list[Plane] | None = None) -> EncodedObject:
    """The Encapsulated PDF report (modality DOC)."""
    views = views or planes(request, reference_volume(request))
    payload = pdf_report(request, views, request.model_card)
    ds = document_header(request, "report-pdf", "report-pdf", "DOC", ENCAPSULATED_PDF_STORAGE,
                        "AI report PDF", 1)
    for keyword in ("FrameOfReferenceUID", "PositionReferenceIndicator"):  # no Frame of Reference module
        delattr(ds, keyword)
    ds.ConversionType = "WSD"
    ds.AcquisitionDateTime = ds.ContentDate + ds.ContentTime
    ds.BurnedInAnnotation = "YES"  # names and IDs are printed on the first page
    ds.RecognizableVisualFeatures = "NO"
    ds.DocumentTitle = f"AI glioma segmentation report - {NOT_FOR_DIAGNOSTIC_USE}"
    ds.ConceptNameCodeSequence = DicomSequence([])
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.SourceInstanceSequence = _shown_images(request, views[1])  # every reference image
    ds.EncapsulatedDocumentLength = len(payload)
    ds.EncapsulatedDocument = payload + (b"\x00" if len(payload) % 2 else b"")
    return EncodedObject("report-pdf", ENCAPSULATED_PDF_STORAGE, str(ds.SOPInstanceUID), with_file_meta(ds))


def build_reports(request: EncodeRequest) -> list[EncodedObject]:
    """The report objects ``request.options.reports`` asks for."""
    wanted = request.options.reports
    if not wanted:
        return []
    views = planes(request, reference_volume(request))
    objects = []
    if ReportKind.KEY_IMAGES.value in wanted:
        objects.extend(build_key_images(request, views))
    if ReportKind.PDF.value in wanted:
        objects.append(build_pdf_report(request, views))
    log.info("built %d report objects for study %s", len(objects), request.study_instance_uid)
    return objects


__all__ = ["ENCAPSULATED_PDF_STORAGE", "build_key_images", "build_pdf_report", "build_reports",
           "orientation_letters"]
