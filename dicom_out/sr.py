"""TID 1500 Measurement Report of the tumour volumes (highdicom, Comprehensive 3D SR).

Content (PS3.16 TID 1500):

- observation context: the device observer ``neuroseg`` with the model
  name as its model name;
- procedure reported: (24590-2, LN, "Brain MRI");
- one TID 1411 Volumetric ROI group per class (NCR, ED, ET), each
  referencing its segment of the SEG (segment number plus the source series,
  not every source frame), finding type from CID 7168, finding site Brain,
  with:

  - (118565006, SCT, "Volume") in ml;
  - the mean predictive entropy in the region (PRED-ENTROPY, 99NEUROSEG,
    derivation (373098007, SCT, "Mean"), method MC-DROPOUT), when the
    entropy is given and the region has voxels;
  - the mean MC dropout standard deviation of that class's probability
    ((113061, DCM, "Standard Deviation"), derivation Mean), when the
    variance is given and the region has voxels;

- one TID 1501 group each for WT (finding type Lesion of Brain) and TC
  (finding type Neoplasm), which are unions of segments, with the same
  measurements;
- every group carries the Algorithm Identification (TID 4019): model name,
  model version and, as Algorithm Parameters, the sequences used and the
  not-for-diagnostic statement.

An empty segmentation still gives a valid report stating zero volumes.

With a LABELMAP SEG the class groups are TID 1501 groups that cite the SEG as
their source image instead: dciodvfy does not yet treat the Label Map
Segmentation SOP Class as a segmentation and rejects a Referenced Segment
Number pointing at it.
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
    MC_DROPOUT,
    NOT_FOR_DIAGNOSTIC_USE,
    PREDICTIVE_ENTROPY,
    SEGMENT_NUMBERS,
    SERIES_NUMBERS,
    NO_UNITS,
    STANDARD_DEVIATION,
    EncodedObject,
    EncodeRequest,
    class_code,
    series_description,
    software_versions,
)
from neuroseg.dicom_out.enum import TumorClass, TumorRegion
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
        parameters=[f"sequences used: {sequences}", NOT_FOR_DIAGNOSTIC_USE],
    )


def _measurements(request: EncodeRequest, region: TumorRegion, volume_ml: float,
                  algorithm: hd.sr.AlgorithmIdentification) -> list[hd.sr.Measurement]:
    items = [hd.sr.Measurement(name=VOLUME, value=round(float(volume_ml), 4), unit=MILLILITER,
                               algorithm_id=algorithm)]
    mask = np.isin(request.labels, region.label_values)
    if not mask.any():
        return items
    if request.entropy is not None:
        items.append(hd.sr.Measurement(
            name=PREDICTIVE_ENTROPY, value=round(float(request.entropy[mask].mean()), 6), unit=NO_UNITS,
            derivation=MEAN, method=MC_DROPOUT, algorithm_id=algorithm,
        ))
    variance = request.variance.get(region.value)
    if variance is not None:
        sd = np.sqrt(np.clip(variance[mask], 0.0, None))
        items.append(hd.sr.Measurement(
            name=STANDARD_DEVIATION, value=round(float(sd.mean()), 6), unit=NO_UNITS,
            derivation=MEAN, method=MC_DROPOUT, algorithm_id=algorithm,
        ))
    return items


def build_measurement_report(request: EncodeRequest, segmentation: EncodedObject) -> EncodedObject:
    """Build the TID 1500 SR of the region volumes, referencing ``segmentation``.

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
    label_map = seg_ds.SegmentationType == "LABELMAP"
    reference_series_uid = str(request.reference_series[0].SeriesInstanceUID)
    for tumor_class in TumorClass:
        region = TumorRegion(tumor_class.value)
        if label_map:
            # dciodvfy does not (yet) count the Label Map Segmentation SOP class as a segmentation and
            # rejects ReferencedSegmentNumber for it, so a label map's groups cite the SEG as their source
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=output_uid(study_uid, request.model_version, f"segment-{tumor_class.value}", "tracking"),
                    identifier=REGION_NAMES[region],
                ),
                finding_type=class_code(tumor_class),
                finding_sites=[hd.sr.FindingSite(BRAIN)],
                algorithm_id=algorithm,
                measurements=_measurements(request, region, volumes[region.value], algorithm),
                source_images=[hd.sr.SourceImageForMeasurementGroup(seg_ds.SOPClassUID, seg_ds.SOPInstanceUID)],
            ))
            continue
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=output_uid(study_uid, request.model_version, f"segment-{tumor_class.value}", "tracking"),
                identifier=REGION_NAMES[region],
            ),
            # the segment plus its source series (not every source frame: a 155-slice series would
            # put 465 image references into the report and take seconds to build)
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=seg_ds.SOPClassUID,
                sop_instance_uid=seg_ds.SOPInstanceUID,
                segment_number=SEGMENT_NUMBERS[tumor_class],
                source_series=hd.sr.SourceSeriesForSegmentation(reference_series_uid),
            ),
            finding_type=class_code(tumor_class),
            finding_sites=[hd.sr.FindingSite(BRAIN)],
            algorithm_id=algorithm,
            measurements=_measurements(request, region, volumes[region.value], algorithm),
        ))
    for region in (TumorRegion.WT, TumorRegion.TC):
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=output_uid(study_uid, request.model_version, f"region-{region.value}", "tracking"),
                identifier=REGION_NAMES[region],
            ),
            finding_type=REGION_FINDINGS[region],
            finding_sites=[hd.sr.FindingSite(BRAIN)],
            algorithm_id=algorithm,
            measurements=_measurements(request, region, volumes[region.value], algorithm),
        ))
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
        evidence=[*request.source_datasets(), seg_ds],
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
