"""The prior time point in the TID 1500 SR: the same regions, tracked, measured on the prior study's SEG.

With a prior, :func:`neuroseg.dicom_out.sr.build_measurement_report` gives
every current measurement group a Time Point Context (TID 1502, "current",
order 2) and adds one group per region for the prior ("prior", order 1):

- the same Tracking Identifier and UID as the current group of the region,
  so a reader sees one finding at two time points (TID 1501 tracks a finding
  across reports by its UID);
- the prior study's SEG as the group's source image (each measurement refers
  to its own study's SEG);
- the Volume in ml, INFERRED FROM a SCOORD POINT on the prior's reference
  image under the region's centroid (OHIF needs image coordinates on every
  group), that image found through the prior SEG's frame of the slice;

The prior's images are named in the SR's evidence by their UIDs (from the
prior SEG), as highdicom files evidence of another study under Pertinent
Other Evidence.
"""

from __future__ import annotations

from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

CURRENT = hd.sr.TimePointContext(time_point="current", time_point_order=2)
RESEARCH_USE = "research use, not a response assessment"
#: the prior SEG's segment whose frames locate each region's slice (NCR 1, ED 2, ET 3)
REGION_SEGMENT = {"ncr": 1, "ed": 2, "et": 3, "tc": 3, "wt": 2}


@dataclass(frozen=True)
class PriorTimePoint:
    """What the SR needs of the prior study: its SEG, its labels on the SEG's grid and its volumes."""

    seg: Dataset
    labels: np.ndarray
    volumes_ml: dict[str, float]
    study_date: str = ""
    et_class: str = ""

    def time_point(self) -> hd.sr.TimePointContext:
        return hd.sr.TimePointContext(time_point=f"prior {self.study_date}".strip()[:64], time_point_order=1)


def _slice_image(seg: Dataset, segment: int, index: int) -> tuple[str, str, Dataset]:
    """(SOP class, SOP instance, evidence data set) of the prior reference image under the SEG's ``index``-th
    frame of ``segment`` (frames of one segment follow the source slices, empty frames kept)."""
    frames = [item for item in seg.PerFrameFunctionalGroupsSequence
              if int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber) == segment]
    frame = frames[min(max(index, 0), len(frames) - 1)]
    source = frame.DerivationImageSequence[0].SourceImageSequence[0]
    evidence = Dataset()
    evidence.StudyInstanceUID = seg.StudyInstanceUID
    evidence.SeriesInstanceUID = seg.ReferencedSeriesSequence[0].SeriesInstanceUID
    evidence.SOPClassUID, evidence.SOPInstanceUID = source.ReferencedSOPClassUID, source.ReferencedSOPInstanceUID
    return str(source.ReferencedSOPClassUID), str(source.ReferencedSOPInstanceUID), evidence


def _region_voxel(labels: np.ndarray, values: tuple[int, ...]) -> tuple[int, int, int]:
    for wanted in (values, (1, 2, 4)):
        voxels = np.argwhere(np.isin(labels, wanted))
        if len(voxels):
            nearest = np.argmin(((voxels - voxels.mean(axis=0)) ** 2).sum(axis=1))
            return tuple(int(v) for v in voxels[nearest])
    return tuple(int(n) // 2 for n in labels.shape)


def prior_groups(prior: PriorTimePoint, regions: list, names: dict, finding_type, tracking_uid,
                 algorithm: hd.sr.AlgorithmIdentification) -> tuple[list, list[Dataset]]:
    """The prior's measurement groups (one per region) and the evidence data sets they need.

    ``regions``, ``names``, ``finding_type`` and ``tracking_uid`` are the SR's own (so both time points name
    and track each region alike).
    """
    from neuroseg.dicom_out.sr import MILLILITER, VOLUME, BRAIN

    seg_source = hd.sr.SourceImageForMeasurementGroup(prior.seg.SOPClassUID, prior.seg.SOPInstanceUID)
    groups, evidence = [], {}
    for region in regions:
        k, row, column = _region_voxel(prior.labels, region.label_values)
        sop_class, sop_instance, item = _slice_image(prior.seg, REGION_SEGMENT[region.value], k)
        evidence[sop_instance] = item
        point = hd.sr.CoordinatesForMeasurement(
            graphic_type=hd.sr.GraphicTypeValues.POINT, graphic_data=np.asarray([[column + 0.5, row + 0.5]]),
            source_image=hd.sr.SourceImageForRegion(referenced_sop_class_uid=sop_class,
                                                    referenced_sop_instance_uid=sop_instance))
        volume = hd.sr.Measurement(name=VOLUME, value=round(float(prior.volumes_ml.get(region.value, 0.0)), 4),
                                   unit=MILLILITER, referenced_coordinates=[point])
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid(region), identifier=names[region]),
            time_point_context=prior.time_point(), finding_type=finding_type(region),
            finding_sites=[hd.sr.FindingSite(BRAIN)], algorithm_id=algorithm, measurements=[volume],
            source_images=[seg_source]))
    return groups, [prior.seg, *evidence.values()]
