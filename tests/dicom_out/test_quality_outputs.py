"""The per-study quality estimate in the SR (read back with highdicom), the key images and the PDF."""

from __future__ import annotations

import numpy as np
import pytest

from neuroseg.dicom_out import EncodeOptions, encode_study
from neuroseg.dicom_out.reports import build_reports
from tests.dicom_out.dciodvfy import assert_dciodvfy_clean
from tests.dicom_out.test_objects import round_trip

FLAGGED = {"expected_dice": {"WT": 0.612, "TC": 0.55, "ET": None}, "review_recommended": True,
           "reasons": ["expected whole-tumour Dice 0.61 is below the review threshold 0.80",
                       "enhancing region unstable across samples: volume 4.1 +- 2.3 mL"]}
CLEAR = {"expected_dice": {"WT": 0.91, "TC": 0.88, "ET": 0.84}, "review_recommended": False, "reasons": []}
NO_MAPS = EncodeOptions(maps=(), mesh_formats=(), reports=())


def _sr(study, quality):
    objects = encode_study(study.request(NO_MAPS, quality=quality))
    return next(obj for obj in objects if obj.kind == "sr").dataset


@pytest.mark.parametrize("quality", [FLAGGED, CLEAR], ids=["flagged", "clear"])
def test_sr_carries_expected_dice_and_the_coded_review_finding(study, quality) -> None:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from neuroseg.dicom_out.enum import TumorRegion
    from neuroseg.dicom_out.sr_quality import EXPECTED_DICE, QUALITY_REGIONS, REVIEW_RECOMMENDED

    sr = _sr(study, quality)
    assert_dciodvfy_clean(sr)
    report = hd.sr.MeasurementReport.from_sequence([round_trip(sr)])
    groups = dict(zip(TumorRegion, report.get_image_measurement_groups(), strict=True))
    for region, group in groups.items():
        found = group.get_measurements(name=EXPECTED_DICE)
        expected = quality["expected_dice"].get(QUALITY_REGIONS.get(region, ""))
        if expected is None:
            assert found == [], f"{region.value} has an expected Dice it should not have"
        else:
            (item,) = found
            assert item.value == pytest.approx(expected, abs=1e-3)
            assert item.unit.value == "1"
    (finding,) = groups[TumorRegion.WT].get_qualitative_evaluations(name=REVIEW_RECOMMENDED)
    assert finding.value == (codes.SCT.Yes if quality["review_recommended"] else codes.SCT.No)
    for region in (TumorRegion.TC, TumorRegion.ET, TumorRegion.NCR):
        assert groups[region].get_qualitative_evaluations(name=REVIEW_RECOMMENDED) == []


def test_sr_without_an_estimate_has_no_quality_items(study) -> None:
    from neuroseg.dicom_out.sr_quality import EXPECTED_DICE, REVIEW_RECOMMENDED

    sr = _sr(study, None)
    names = {str(item.ConceptNameCodeSequence[0].CodeValue) for item in _walk(sr)
             if "ConceptNameCodeSequence" in item}
    assert EXPECTED_DICE.value not in names and REVIEW_RECOMMENDED.value not in names


def _walk(dataset):
    for item in dataset.get("ContentSequence", []):
        yield item
        yield from _walk(item)


def test_key_image_and_pdf_state_the_flag_on_the_first_page(study) -> None:
    from neuroseg.dicom_out.figures import quality_lines

    options = EncodeOptions(maps=(), mesh_formats=())
    flagged = {obj.kind: obj for obj in build_reports(study.request(options, quality=FLAGGED))}
    plain = {obj.kind: obj for obj in build_reports(study.request(options))}
    request = study.request(options, quality=FLAGGED)
    assert quality_lines(request)[0].startswith("REVIEW RECOMMENDED - expected Dice WT 0.61, TC 0.55")
    assert quality_lines(request)[2] == "- enhancing region unstable across samples: volume 4.1 +- 2.3 mL"
    assert quality_lines(study.request(options, quality=CLEAR))[0].startswith("Quality estimate: no review flag")
    # the first key image shows the headline in amber above the image; without an estimate it is not there
    first = round_trip(flagged["keyimage-axial"].dataset).pixel_array.astype(int)
    bare = round_trip(plain["keyimage-axial"].dataset).pixel_array.astype(int)
    rows = slice(int(0.09 * first.shape[0]), int(0.16 * first.shape[0]))
    amber = (first[rows, :, 0] > 200) & (first[rows, :, 1] > 130) & (first[rows, :, 2] < 80)
    assert amber.sum() > 50
    assert not ((bare[rows, :, 0] > 200) & (bare[rows, :, 1] > 130) & (bare[rows, :, 2] < 80)).any()
    for kind in ("keyimage-axial", "report-pdf"):
        assert_dciodvfy_clean(flagged[kind].dataset)
    document = bytes(round_trip(flagged["report-pdf"].dataset).EncapsulatedDocument)
    assert b"REVIEW RECOMMENDED" in document  # the document information names it too
    assert not np.array_equal(first, bare)
