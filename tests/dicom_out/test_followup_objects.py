"""The change SEG of a follow-up: five coded change segments on the reference series, valid, deterministic UIDs."""

from __future__ import annotations

import io

import numpy as np
import pydicom

from neuroseg.dicom_out.change_seg import CHANGE_SEGMENTS, build_change_segmentation
from neuroseg.model.longitudinal import CHANGE_VALUES, change_map
from tests.dicom_out.dciodvfy import assert_dciodvfy_clean


def _change(study) -> np.ndarray:
    current = study.labels > 0
    prior = np.roll(current, 3, axis=2)  # the tumour was elsewhere: part stable, part grown, part shrunk
    prior[:, :4, :4] = True              # and a lesion that is gone
    current[:, -4:, -4:] = True          # and one that is new
    out, _ = change_map(prior, current)
    return out


def test_change_seg_is_valid_and_its_segments_are_the_change_map(study):
    request = study.request()
    changes = _change(study)
    obj = build_change_segmentation(request, changes, "1.2.3.4", "20260301")
    assert obj.kind == "change-seg"
    assert_dciodvfy_clean(obj.dataset)
    buffer = io.BytesIO()
    obj.dataset.save_as(buffer, enforce_file_format=True)
    ds = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
    labels = [(item.SegmentNumber, item.SegmentLabel,
               item.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0].CodeValue)
              for item in ds.SegmentSequence]
    assert labels == [(number, label, code.value) for number, (label, code, _) in CHANGE_SEGMENTS.items()]
    assert {label.lower(): number for number, (label, _, _) in CHANGE_SEGMENTS.items()} == CHANGE_VALUES
    assert ds.StudyInstanceUID == study.reference[0].StudyInstanceUID
    assert "20260301" in ds.SeriesDescription and "Not for diagnostic use" in ds.ContentDescription
    # frame (slice k, segment s) holds the map == s on slice k, in the reference's slice order
    frames = ds.pixel_array.reshape(len(CHANGE_SEGMENTS), *changes.shape) if ds.NumberOfFrames > 1 else None
    assert frames is not None or not changes.any()
    by_uid = {source.SOPInstanceUID: index for index, source in enumerate(study.reference)}
    per_frame = ds.PerFrameFunctionalGroupsSequence
    for frame_index, item in enumerate(per_frame):
        segment = item.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        expected = changes[by_uid[source]] == segment
        assert np.array_equal(ds.pixel_array[frame_index].astype(bool), expected)
    for value in CHANGE_VALUES.values():
        assert (changes == value).any()


def test_reencoding_the_same_follow_up_gives_the_same_uids(study):
    request = study.request()
    first = build_change_segmentation(request, _change(study), "1.2.3.4")
    second = build_change_segmentation(request, _change(study), "1.2.3.4")
    assert (first.sop_instance_uid, first.dataset.SeriesInstanceUID) == (second.sop_instance_uid,
                                                                         second.dataset.SeriesInstanceUID)
    assert first.sop_instance_uid != request.study_instance_uid


def test_the_sr_holds_both_time_points_each_on_its_own_studys_seg(study, tmp_path):
    import highdicom as hd

    from neuroseg.dicom_out.seg import build_segmentation
    from neuroseg.dicom_out.sr import build_measurement_report
    from neuroseg.dicom_out.sr_followup import PriorTimePoint
    from tests.dicom_out.synthetic import synthetic_study

    earlier = synthetic_study(seed="dicom-out-prior")
    prior_seg = build_segmentation(earlier.request())
    request = study.request()
    seg = build_segmentation(request)
    volumes = {"ncr": 1.0, "ed": 2.0, "et": 3.0, "tc": 4.0, "wt": 6.0}
    report = build_measurement_report(request, seg, prior=PriorTimePoint(
        seg=prior_seg.dataset, labels=earlier.labels, volumes_ml=volumes, study_date="20260101"))
    path = tmp_path / "sr.dcm"
    report.dataset.save_as(path, enforce_file_format=True)
    assert_dciodvfy_clean(path)

    read = hd.sr.srread(path)
    groups = read.content.get_image_measurement_groups()
    assert len(groups) == 10
    by_time: dict[str, dict[str, tuple[float, str]]] = {}
    for group in groups:
        time_point = next(item for item in group[0].ContentSequence  # the group's container
                          if item.ConceptNameCodeSequence[0].CodeValue == "C2348792")  # Time Point (NCI)
        volume = group.get_measurements(name=hd.sr.CodedConcept("118565006", "SCT", "Volume"))[0]
        by_time.setdefault(time_point.TextValue, {})[group.tracking_uid] = (
            float(volume.value), group.source_images[0].referenced_sop_instance_uid)
    assert set(by_time) == {"current", "prior 20260101"}
    assert set(by_time["current"]) == set(by_time["prior 20260101"])  # each region tracked across both
    assert {seg_uid for _, seg_uid in by_time["current"].values()} == {seg.sop_instance_uid}
    assert {seg_uid for _, seg_uid in by_time["prior 20260101"].values()} == {prior_seg.sop_instance_uid}
    assert sorted(value for value, _ in by_time["prior 20260101"].values()) == sorted(volumes.values())
    other = {item.StudyInstanceUID for item in read.get("PertinentOtherEvidenceSequence", [])}
    assert earlier.reference[0].StudyInstanceUID in other
