"""The cached IOD lookup answers exactly like highdicom's own, and the patch still fits highdicom.

``dicom_out/_iod_cache.py`` replaces ``is_attribute_in_iod`` in the highdicom
modules that import it. pyproject.toml pins highdicom to the range these tests
were run against; before widening it, run them on the new version: a failure
says that the patch no longer reaches every caller, or that highdicom caches
the lookup itself and the patch can go.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import highdicom
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


def _highdicoms_own_lookup():
    function = standard_utils.is_attribute_in_iod
    return getattr(function, "__wrapped__", function)


@pytest.mark.parametrize(("attribute", "sop_class_uid", "exclude"), CASES)
def test_cached_lookup_matches_the_original(attribute: str, sop_class_uid: str, exclude) -> None:
    _iod_cache.install()
    cached = standard_utils.is_attribute_in_iod
    assert getattr(cached, "_neuroseg_cached", False)
    original = cached.__wrapped__
    assert cached(attribute, sop_class_uid, exclude) == original(attribute, sop_class_uid, exclude)
    _iod_cache.install()
    assert standard_utils.is_attribute_in_iod is cached, "installing twice keeps one cache"


def test_highdicoms_lookup_keeps_the_signature_we_cache() -> None:
    parameters = inspect.signature(_highdicoms_own_lookup()).parameters
    assert list(parameters) == ["attribute", "sop_class_uid", "exclude_path_elements"]
    assert parameters["exclude_path_elements"].default is None


def test_highdicom_still_scans_the_tables_on_every_call() -> None:
    """When highdicom caches the lookup itself, remove ``_iod_cache`` (and this file)."""
    own = _highdicoms_own_lookup()
    assert not hasattr(own, "cache_info"), "highdicom now caches is_attribute_in_iod: drop the patch"
    source = inspect.getsource(own)
    assert "for module in iod_module_map[iod_name]" in source, "the lookup changed: review the patch"


def test_the_patch_reaches_every_highdicom_module_that_imports_the_lookup() -> None:
    package = Path(highdicom.__file__).parent
    importers = {
        ".".join(("highdicom", *path.relative_to(package).with_suffix("").parts))
        for path in package.rglob("*.py")
        if re.search(r"^\s+is_attribute_in_iod,?$|import .*\bis_attribute_in_iod\b", path.read_text(), re.M)
    }
    assert importers == set(_iod_cache._MODULES) - {"highdicom._standard_utils"}
