"""Bad input gets a clear error; an empty segmentation is still a valid result."""

from __future__ import annotations

import copy
import io

import numpy as np
import pydicom
import pytest

from neuroseg.dicom_out import (
    DicomOutError,
    EncodeOptions,
    GridMismatchError,
    SourceSeriesError,
    encode_study,
)
from tests.dicom_out.dciodvfy import assert_dciodvfy_clean
from tests.dicom_out.synthetic import synthetic_study

SMALL = (8, 32, 32)


@pytest.fixture(scope="module")
def small_study():
    return synthetic_study(SMALL)


def test_labels_on_the_wrong_grid_are_refused(small_study) -> None:
    with pytest.raises(GridMismatchError, match=r"labels has shape \(8, 32, 31\) but the reference series grid "
                                                 r"is \(8, 32, 32\)"):
        small_study.request(labels=np.zeros((8, 32, 31), np.uint8))


def test_a_probability_map_on_the_wrong_grid_is_refused(small_study) -> None:
    request = small_study.request()
    with pytest.raises(GridMismatchError, match=r"probabilities\['et'\] has shape \(9, 32, 32\)"):
        small_study.request(probabilities={**request.probabilities, "et": np.zeros((9, 32, 32), np.float32)})


def test_a_source_without_frame_of_reference_is_refused(small_study) -> None:
    reference = [copy.deepcopy(ds) for ds in small_study.reference]
    del reference[3].FrameOfReferenceUID
    with pytest.raises(SourceSeriesError, match=f"instance {reference[3].SOPInstanceUID} has no "
                                                r"FrameOfReferenceUID \(0020,0052\)"):
        small_study.request(reference_series=reference)


def test_an_unsorted_reference_series_is_refused(small_study) -> None:
    reference = list(small_study.reference)
    reference[2], reference[5] = reference[5], reference[2]
    with pytest.raises(SourceSeriesError, match="not sorted along the slice normal"):
        small_study.request(reference_series=reference)


def test_a_series_from_another_study_is_refused(small_study) -> None:
    other = synthetic_study((4, 8, 8), seed="another-study").reference
    with pytest.raises(SourceSeriesError, match=r"other_series\['T2'\]: instance .* belongs to study"):
        small_study.request(other_series={"T2": other})


def test_labels_outside_brats_values_are_refused(small_study) -> None:
    labels = small_study.labels.copy()
    labels[0, 0, 0] = 3
    with pytest.raises(DicomOutError, match=r"labels contain values \[3\]; BraTS labels are 0, 1, 2 and 4"):
        small_study.request(labels=labels)


def test_nan_in_a_map_is_refused(small_study) -> None:
    entropy = np.zeros(SMALL, np.float32)
    entropy[1, 2, 3] = np.nan
    with pytest.raises(DicomOutError, match="entropy contains NaN"):
        small_study.request(entropy=entropy)


@pytest.mark.parametrize(("options", "match"), [
    (dict(segmentation_type="FRACTIONAL"), "segmentation_type='FRACTIONAL'; use 'BINARY' or 'LABELMAP'"),
    (dict(maps={"saliency"}), "maps has 'saliency'; allowed: probability, entropy, uncertainty, gradcam"),
    (dict(mesh_formats={"obj"}), "mesh_formats has 'obj'; allowed: stl, surface"),
    (dict(include_brain_surface=True), "include_brain_surface=True needs brain_mask"),
])
def test_bad_options_are_refused(options: dict, match: str) -> None:
    with pytest.raises(DicomOutError, match=match):
        EncodeOptions(**options)


def test_asking_for_maps_without_arrays_is_refused(small_study) -> None:
    with pytest.raises(DicomOutError, match="asks for gradcam maps but EncodeRequest.gradcam is empty"):
        small_study.request(EncodeOptions(maps={"probability", "gradcam"}), gradcam={})
    with pytest.raises(DicomOutError, match="asks for the entropy map but EncodeRequest.entropy is None"):
        small_study.request(entropy=None)  # the default maps include the entropy


def test_empty_segmentation_still_gives_a_valid_seg_and_an_sr_of_zero_volume() -> None:
    study = synthetic_study(SMALL, empty=True)
    request = study.request(EncodeOptions(maps={"probability"}, mesh_formats={"stl", "surface"}, reports=()))
    objects = encode_study(request)
    kinds = [obj.kind for obj in objects]
    assert kinds == ["seg", "pmap-probability-ncr", "pmap-probability-ed", "pmap-probability-et", "sr"]
    seg = objects[0].dataset
    assert int(seg.NumberOfFrames) == SMALL[0] * 3 and not seg.pixel_array.any()
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, objects[-1].dataset, enforce_file_format=True)
    buffer.seek(0)
    sr = pydicom.dcmread(buffer)
    volumes = [float(item.MeasuredValueSequence[0].NumericValue)
               for group in sr.ContentSequence if group.ValueType == "CONTAINER"
               for measurement in group.get("ContentSequence", [])
               for item in measurement.get("ContentSequence", [])
               if item.ValueType == "NUM" and item.ConceptNameCodeSequence[0].CodeMeaning == "Volume"]
    assert volumes == [0.0] * 5
    for obj in objects:
        assert_dciodvfy_clean(obj.dataset)
