"""encode_outputs: only dicom_out's own bad-input errors become InputError; a bug stays a bug."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from neuroseg.common.errors import InputError
from neuroseg.dicom_out import DicomOutError, GridMismatchError, SourceSeriesError
from neuroseg.worker.contracts import SequenceRole
from neuroseg.worker.pipeline import JobContext, encode_outputs
from tests.dicom_out.synthetic import synthetic_study

SHAPE = (8, 32, 32)


def _context(settings, labels) -> JobContext:  # noqa: ANN001
    study = synthetic_study(SHAPE)
    reference = SimpleNamespace(datasets=study.reference, frame_numbers=None)
    loaded = SimpleNamespace(reference=reference, volumes={SequenceRole.T1CE: reference})
    result = SimpleNamespace(labels=labels, model_name="neuroseg-unet3d", model_version="1.0",
                             probabilities={}, variance={}, gradcam={}, entropy=None, sequences_used=("t1ce",))
    return JobContext(job_id="j", settings=settings, store=None, manifest=None, folder=None,  # type: ignore[arg-type]
                      loaded=loaded, result=result)


def test_dicom_out_errors_are_input_errors() -> None:
    for error in (DicomOutError, SourceSeriesError, GridMismatchError):
        assert issubclass(error, InputError) and issubclass(error, ValueError)


def test_labels_the_encoder_refuses_fail_the_job_as_bad_input(make_settings) -> None:
    labels = np.full(SHAPE, 3, np.uint8)  # 3 is no BraTS label
    settings = make_settings(send_maps="", send_reports="", mesh_formats="stl")
    with pytest.raises(InputError, match=r"cannot be encoded.*BraTS labels are 0, 1, 2 and 4"):
        encode_outputs(_context(settings, labels))


def test_a_value_error_from_our_own_code_is_not_bad_input(make_settings) -> None:
    ragged = [[0, 1], [0]]  # what a broken adapter could return: numpy refuses it with a plain ValueError
    settings = make_settings(send_maps="", send_reports="", mesh_formats="stl")
    with pytest.raises(ValueError) as caught:
        encode_outputs(_context(settings, ragged))
    assert not isinstance(caught.value, InputError)
