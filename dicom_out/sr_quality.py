"""The per-study quality estimate in the TID 1500 SR (:mod:`neuroseg.dicom_out.sr` calls these).

- the WT, TC and ET measurement groups each carry the **expected Dice** of their
  region, a Measurement ((EXPECTED-DICE, 99NEUROSEG, "Expected Dice coefficient"),
  unit (1, UCUM, "no units"), derivation (EST-QUALITY, 99NEUROSEG, "Estimated from
  the model's own uncertainty")), when the estimate has one for the region;
- the WT group carries the coded finding **review recommended** as a
  Qualitative Evaluation: (REVIEW-REC, 99NEUROSEG, "Review recommended") =
  (373066001, SCT, "Yes") or (373067005, SCT, "No").

The plain-words reasons are in ``report.json``, on the first key image and on
the PDF's first page. The estimate informs the reader; nothing here changes
what is delivered.
"""

from __future__ import annotations

import highdicom as hd
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

from neuroseg.dicom_out.common import LOCAL_SCHEME, NO_UNITS, EncodeRequest
from neuroseg.dicom_out.enum import TumorRegion

EXPECTED_DICE = CodedConcept("EXPECTED-DICE", LOCAL_SCHEME, "Expected Dice coefficient")
ESTIMATED_QUALITY = CodedConcept("EST-QUALITY", LOCAL_SCHEME, "Estimated from the model's own uncertainty")
REVIEW_RECOMMENDED = CodedConcept("REVIEW-REC", LOCAL_SCHEME, "Review recommended")
#: SR region -> the key of ``quality["expected_dice"]``
QUALITY_REGIONS = {TumorRegion.WT: "WT", TumorRegion.TC: "TC", TumorRegion.ET: "ET"}


def quality_measurements(request: EncodeRequest, region: TumorRegion,
                         algorithm: hd.sr.AlgorithmIdentification) -> list[hd.sr.Measurement]:
    """The expected Dice of ``region`` (none without an estimate for it)."""
    key = QUALITY_REGIONS.get(region)
    value = ((request.quality or {}).get("expected_dice") or {}).get(key) if key else None
    if value is None:
        return []
    return [hd.sr.Measurement(name=EXPECTED_DICE, value=round(float(value), 3), unit=NO_UNITS,
                              derivation=ESTIMATED_QUALITY, algorithm_id=algorithm)]


def quality_evaluations(request: EncodeRequest, region: TumorRegion) -> list[hd.sr.QualitativeEvaluation]:
    """The coded "review recommended" finding, in the whole-tumour group."""
    if region is not TumorRegion.WT or not request.quality or "review_recommended" not in request.quality:
        return []
    answer = codes.SCT.Yes if request.quality["review_recommended"] else codes.SCT.No
    return [hd.sr.QualitativeEvaluation(name=REVIEW_RECOMMENDED, value=answer)]
