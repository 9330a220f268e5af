"""The cached IOD lookup answers exactly like highdicom's own."""

from __future__ import annotations

import highdicom._standard_utils as standard_utils
import pytest

from neuroseg.dicom_out import _iod_cache

CASES = [
    ("PixelData", "1.2.840.10008.5.1.4.1.1.4", None),
    ("NumberOfFrames", "1.2.840.10008.5.1.4.1.1.4", None),
    ("NumberOfFrames", "1.2.840.10008.5.1.4.1.1.30", None),
    ("PixelData", "1.2.840.10008.5.1.4.1.1.88.34", ["IconImageSequence"]),
    ("ContentDate", "1.2.840.10008.5.1.4.1.1.104.3", None),
]


@pytest.mark.parametrize(("attribute", "sop_class_uid", "exclude"), CASES)
def test_cached_lookup_matches_the_original(attribute: str, sop_class_uid: str, exclude) -> None:
    _iod_cache.install()
    cached = standard_utils.is_attribute_in_iod
    assert getattr(cached, "_neuroseg_cached", False)
    original = cached.__wrapped__
    assert cached(attribute, sop_class_uid, exclude) == original(attribute, sop_class_uid, exclude)
    _iod_cache.install()
    assert standard_utils.is_attribute_in_iod is cached, "installing twice keeps one cache"
