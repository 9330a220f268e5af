"""TID 1500 Measurement Report of the tumour volumes (highdicom, Comprehensive 3D SR).

Content (PS3.16 TID 1500):

- observation context: the device observer ``neuroseg`` with the model
  name as its model name;
- procedure reported: (24590-2, LN, "Brain MRI");
- one TID 1501 Measurement group per region: NCR, ED, ET (finding type from
  CID 7168), WT (Lesion of Brain) and TC (Neoplasm), finding site Brain, the
  SEG as the group's source image, and for the classes the Tracking UID of
  their SEG segment (which links group and segment), with:

  - (118565006, SCT, "Volume") in ml, INFERRED FROM a SCOORD POINT on one
    image of the reference series (see "Image coordinates" below);
  - the mean predictive entropy in the region (PRED-ENTROPY, 99NEUROSEG,
    derivation (373098007, SCT, "Mean"), method the model card's uncertainty
    method: MC-DROPOUT, TTA-FLIPS or TTA-FLIPS-FOLDS), when the entropy is
    given and the region has voxels;
  - the mean standard deviation of that class's probability over the same
    method's passes ((113061, DCM, "Standard Deviation"), derivation Mean),
    when the variance is given and the region has voxels;

- every group carries the Algorithm Identification (TID 4019): model name,
  model version and, as Algorithm Parameters, the sequences used, the
  uncertainty method, the Grad-CAM layer and the not-for-diagnostic statement.

An empty segmentation still gives a valid report stating zero volumes.

Image coordinates
-----------------
OHIF (extension cornerstone-dicom-sr) turns every measurement group into an
annotation and reads ``coords[0].ReferencedSOPSequence`` of it: a group whose
measurements have no image coordinates crashes the viewer ("Cannot read
properties of undefined (reading 'ReferencedSOPSequence')"). So the Volume of
every group (the five regions) is INFERRED FROM a SCOORD POINT, the region's
voxel nearest its centroid (in mm, so always inside the region), on the
reference image of that voxel's slice (SELECTED FROM). The Volume item has
that coordinate as its only child, as OHIF's own reports do (the algorithm
is stated once per group); an empty region points at the whole tumour's
point, or at the centre of the grid when there is no tumour at all.

Why TID 1501 and not TID 1411 with a Referenced Segment: TID 1411 defines
its ROI by exactly one of image regions, a volume surface or a segment, and
its measurements may not carry coordinates of their own; a TID 1501 group
can hold the point OHIF needs next to the volume.
"""

from __future__ import annotations

import logging

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

from neuroseg.dicom_out.common import (
    LOCAL_SCHEME,
    MANUFACTURER,
    NOT_FOR_DIAGNOSTIC_USE,
    PREDICTIVE_ENTROPY,
    SERIES_NUMBERS,
    NO_UNITS,
    STANDARD_DEVIATION,
    EncodedObject,
    EncodeRequest,
    class_code,
    series_description,
    slice_spacing,
    software_versions,
)
from neuroseg.dicom_out.enum import TumorClass, TumorRegion
from neuroseg.dicom_out.sr_followup import CURRENT, PriorTimePoint, prior_groups
from neuroseg.dicom_out.sr_quality import quality_evaluations, quality_measurements
from neuroseg.dicom_out.uids import output_uid

log = logging.getLogger(__name__)

MILLILITER = CodedConcept("ml", "UCUM", "milliliter")
VOLUME = CodedConcept("118565006", "SCT", "Volume")
MEAN = CodedConcept("373098007", "SCT", "Mean")
BRAIN = CodedConcept("12738006", "SCT", "Brain")
BRAIN_MRI = CodedConcept("24590-2", "LN", "Brain MRI")
REGION_FINDINGS = {
    TumorRegion.WT: CodedConcept("301766008", "SCT", "Lesion of Brain"),
    TumorRegion.TC: CodedConcept("108369006", "SCT", "Neoplasm"),
}
REGION_NAMES = {
    TumorRegion.NCR: "NCR (necrotic core)", TumorRegion.ED: "ED (edema)", TumorRegion.ET: "ET (enhancing tumour)",
    TumorRegion.WT: "WT (whole tumour)", TumorRegion.TC: "TC (tumour core)",
}


def _algorithm(request: EncodeRequest) -> hd.sr.AlgorithmIdentification:
    sequences = ", ".join(request.sequences_used) or "unknown"
    return hd.sr.AlgorithmIdentification(
        name=request.model_name[:64],
        version=request.model_version[:64],
        parameters=[f"sequences used: {sequences}",
                    f"uncertainty: {request.uncertainty_method()[0].meaning}",
                    *([f"Grad-CAM layer: {request.gradcam_layer()}"] if request.gradcam_layer() else []),
                    *(f"model {key}: {value}" for key, value in request.provenance().items()),
                    NOT_FOR_DIAGNOSTIC_USE],
    )


def region_point(request: EncodeRequest, region: TumorRegion) -> tuple[int, int, int]:
    """(slice, row, column) of the region's voxel nearest its centroid (mm), inside the region.

    Empty regions fall back to the whole tumour's point, then to the centre of the grid.
    """
    for labels in (region.label_values, TumorRegion.WT.label_values):
        voxels = np.argwhere(np.isin(request.labels, labels))
        if len(voxels):
            break
    else:
        return tuple(int(n) // 2 for n in request.grid_shape)
    first = request.reference_series[0]
    if request.reference_frames is not None:  # frames of a multi-frame image
        spacing = np.linalg.norm(request.reference_affine()[:3, :3], axis=0)
    else:
        spacing = np.asarray([slice_spacing(request.reference_series), *(float(v) for v in first.PixelSpacing)])
    millimetres = voxels * spacing
    nearest = np.argmin(((millimetres - millimetres.mean(axis=0)) ** 2).sum(axis=1))
    return tuple(int(v) for v in voxels[nearest])


def _point_coordinates(request: EncodeRequest, region: TumorRegion) -> hd.sr.CoordinatesForMeasurement:
    """A SCOORD POINT (column, row of the pixel centre) on the reference image of the region's point."""
    index, row, column = region_point(request, region)
    image, frame = request.reference_slices()[index]
    if frame is None:
        source = hd.sr.SourceImageForRegion.from_source_image(image)
    else:  # the frame of a multi-frame reference
        source = hd.sr.SourceImageForRegion(referenced_sop_class_uid=image.SOPClassUID,
                                            referenced_sop_instance_uid=image.SOPInstanceUID,
                                            referenced_frame_numbers=[frame])
    return hd.sr.CoordinatesForMeasurement(
        graphic_type=hd.sr.GraphicTypeValues.POINT,
        graphic_data=np.asarray([[column + 0.5, row + 0.5]]),  # SCOORD: (0, 0) is the pixel's top-left corner
        source_image=source,
    )


def _measurements(request: EncodeRequest, region: TumorRegion, volume_ml: float,
                  algorithm: hd.sr.AlgorithmIdentification) -> list[hd.sr.Measurement]:
    # the point is the Volume's only child: OHIF reads it as ContentSequence.ReferencedSOPSequence
    items = [hd.sr.Measurement(name=VOLUME, value=round(float(volume_ml), 4), unit=MILLILITER,
                               referenced_coordinates=[_point_coordinates(request, region)])]
    mask = np.isin(request.labels, region.label_values)
    if not mask.any():
        return items
    if request.entropy is not None:
        items.append(hd.sr.Measurement(
            name=PREDICTIVE_ENTROPY, value=round(float(request.entropy[mask].mean()), 6), unit=NO_UNITS,
            derivation=MEAN, method=request.uncertainty_method()[0], algorithm_id=algorithm,
        ))
    variance = request.variance.get(region.value)
    if variance is not None:
        sd = np.sqrt(np.clip(variance[mask], 0.0, None))
        items.append(hd.sr.Measurement(
            name=STANDARD_DEVIATION, value=round(float(sd.mean()), 6), unit=NO_UNITS,
            derivation=MEAN, method=request.uncertainty_method()[0], algorithm_id=algorithm,
        ))
    return items


def _tracking_uid(request: EncodeRequest, region: TumorRegion) -> str:
    """The class regions share the Tracking UID of their SEG segment, which links the two."""
    what = f"segment-{region.value}" if region.value in {c.value for c in TumorClass} else f"region-{region.value}"
    return output_uid(request.study_instance_uid, request.model_version, what, "tracking")


def _finding_type(region: TumorRegion) -> CodedConcept:
    return REGION_FINDINGS.get(region) or class_code(TumorClass(region.value))


def build_measurement_report(request: EncodeRequest, segmentation: EncodedObject,
                             prior: PriorTimePoint | None = None) -> EncodedObject:
    """Build the TID 1500 SR of the region volumes, referencing ``segmentation``; with ``prior``, both time points.

    Parameters
    ----------
    request: EncodeRequest
        Checked inputs (volumes from ``request.region_volumes_ml()``).
    segmentation: EncodedObject
        The SEG built for the same request (kind ``"seg"``).

    Returns
    -------
    EncodedObject
        Kind ``"sr"``.
    """
    if segmentation.kind != "seg":
        raise ValueError(f"build_measurement_report needs the SEG object; got kind {segmentation.kind!r}")
    study_uid = request.study_instance_uid
    algorithm = _algorithm(request)
    volumes = request.region_volumes_ml()
    seg_ds = segmentation.dataset
    groups: list = []
    seg_source = hd.sr.SourceImageForMeasurementGroup(seg_ds.SOPClassUID, seg_ds.SOPInstanceUID)
    for region in TumorRegion:
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=_tracking_uid(request, region),
                identifier=REGION_NAMES[region],
            ),
            finding_type=_finding_type(region),
            finding_sites=[hd.sr.FindingSite(BRAIN)],
            algorithm_id=algorithm,
            measurements=[*_measurements(request, region, volumes[region.value], algorithm),
                          *quality_measurements(request, region, algorithm)],
            qualitative_evaluations=quality_evaluations(request, region) or None,
            source_images=[seg_source],
            time_point_context=CURRENT if prior is not None else None,
        ))
    evidence = [*request.source_datasets(), seg_ds]
    if prior is not None:  # the follow-up: see dicom_out/sr_followup.py
        earlier, more = prior_groups(prior, list(TumorRegion), REGION_NAMES, _finding_type,
                                     lambda region: _tracking_uid(request, region), algorithm)
        groups.extend(earlier)
        evidence.extend(more)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=output_uid(study_uid, request.model_version, "device", "observer"),
            name="neuroseg",
            manufacturer_name=MANUFACTURER,
            model_name=request.model_name[:64],
            serial_number=request.model_version[:64],
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=BRAIN_MRI,
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=output_uid(study_uid, request.model_version, "sr", "series"),
        series_number=SERIES_NUMBERS["sr"],
        sop_instance_uid=output_uid(study_uid, request.model_version, "sr"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=request.model_name[:64],
        software_versions=software_versions(request.model_name, request.model_version),
        device_serial_number=request.model_version[:64],
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=series_description("AI tumour volumes TID1500", request.options),
        coding_schemes=[hd.coding_schemes.CodingSchemeIdentificationItem(
            designator=LOCAL_SCHEME, name="neuroseg local codes", responsible_organization="neuroseg project")],
    )
    log.info("built SR for study %s: volumes %s ml", study_uid,
             ", ".join(f"{key}={value:.2f}" for key, value in volumes.items()))
    return EncodedObject("sr", str(sr.SOPClassUID), str(sr.SOPInstanceUID), sr)
