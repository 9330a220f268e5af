"""Shared fixtures of the dicom_out tests."""

from __future__ import annotations

import pytest

from neuroseg.dicom_out import EncodeOptions, encode_study
from tests.dicom_out.synthetic import SyntheticStudy, synthetic_study


@pytest.fixture(scope="module")
def study() -> SyntheticStudy:
    """24 slices of 64x64, T1ce reference plus a FLAIR on a coarser grid."""
    return synthetic_study()


@pytest.fixture(scope="module")
def all_objects(study: SyntheticStudy):
    """Every object kind of the study (BINARY SEG, all maps, STL and Surface SEG, SR)."""
    request = study.request(EncodeOptions(maps={"probability", "uncertainty", "gradcam"},
                                          mesh_formats={"stl", "surface"}))
    return request, encode_study(request)
