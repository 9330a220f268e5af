"""Follow-up comparison on real anatomy: one real four-sequence study sent twice, the second copy changed.

The two time points are made from the BraTS-preprocessed adult glioma in
``real-gt/brats-gli-algorithm-label`` (all four sequences, 1 mm SRI24,
skull-stripped), read at test time:

* **prior**: the study as it is;
* **current**: the same study with the tumour **grown** and the head **moved**.

  1. *Growth.* Around the tumour's centroid (the whole tumour of the case's
     machine label, dilated by 2 mm so that the pasted pattern carries its own
     rim of oedema-to-brain transition), every sequence is magnified by
     ``GROWTH_SCALE`` (trilinear sampling of the voxel at
     ``centroid + (x - centroid) / GROWTH_SCALE``) and pasted where the
     magnified tumour lies inside the brain (non-zero T1); elsewhere the
     voxels are untouched. The tumour's whole intensity pattern (necrosis,
     enhancing rim, oedema) so grows by about ``GROWTH_SCALE ** 3`` in volume,
     pushing into the neighbouring brain; the label magnified the same way
     (nearest neighbour, clipped to the brain) is the truth of the change:
     WT 144.7 -> 217.7 ml (+50 %), ED +65 %, NCR +26 %, but ET 21.9 -> 20.4 ml
     (-7 %), because the enhancing rim lies at the brain's edge and much of
     its magnified copy falls outside the brain.
  2. *Motion.* The current study's voxels are placed in the scanner turned
     ``TURN_DEG`` about the head's long axis and shifted ``SHIFT_MM``
     (its affine changed, as if the patient lay differently), so the
     comparison must register the pair before it measures anything.

Both copies are segmented with the shipped weights (one deterministic pass,
no Grad-CAM) and compared with :func:`neuroseg.model.longitudinal.compare`
directly: the pipeline route (DICOM series, spool, job store) is covered on
phantoms in ``tests/worker/test_followup_orthanc.py`` and would add minutes
of encoding here without touching anything this test checks.
"""

from __future__ import annotations

import numpy as np
import pytest

from neuroseg.model.longitudinal import CHANGE_VALUES, classify_et, compare, region_volumes, voxel_ml
from tests.model.test_longitudinal import _moved_affine
from tests.services import SHARED_DATA

CASE = SHARED_DATA / "real-gt" / "brats-gli-algorithm-label"
FILES = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
GROWTH_SCALE = 1.2
TURN_DEG = 5.0
SHIFT_MM = (6.0, -4.0, 3.0)
#: the label file's values (1 NCR, 2 ED, 3 ET) as BraTS label values (ET = 4)
TO_BRATS = {1: 1, 2: 2, 3: 4}


def grow_tumour(images: dict[str, np.ndarray], labels: np.ndarray, scale: float,
                rim_mm: float = 2.0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The study with the tumour's intensity pattern magnified by ``scale`` about its centroid (1 mm grid).

    Returns the changed images and the label magnified the same way (the truth of the change).
    """
    from scipy import ndimage

    wt = labels > 0
    region = ndimage.binary_dilation(wt, iterations=int(round(rim_mm)))
    centroid = np.array(ndimage.center_of_mass(wt))
    brain = images["t1"] > 0
    # only a box around the magnified region can change
    found = np.argwhere(region)
    low = np.maximum(np.floor(centroid + (found.min(axis=0) - centroid) * scale) - 2, 0).astype(int)
    high = np.minimum(np.ceil(centroid + (found.max(axis=0) - centroid) * scale) + 3, labels.shape).astype(int)
    box = tuple(slice(a, b) for a, b in zip(low, high))
    grid = np.indices(high - low, dtype=np.float64) + low.reshape(3, 1, 1, 1)
    source = centroid.reshape(3, 1, 1, 1) + (grid - centroid.reshape(3, 1, 1, 1)) / scale
    pasted = ndimage.map_coordinates(region.astype(np.uint8), source, order=0) > 0
    pasted &= brain[box]
    grown = {}
    for key, image in images.items():
        out = image.copy()
        out[box][pasted] = ndimage.map_coordinates(image, source, order=1)[pasted]
        grown[key] = out
    grown_labels = labels.copy()
    moved_labels = ndimage.map_coordinates(labels, source, order=0)
    grown_labels[box][pasted] = moved_labels[pasted]
    grown_labels[~brain] = 0
    return grown, grown_labels


def _read_case() -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    from neuroseg.model.io import read_nifti

    images = {}
    for key, name in FILES.items():
        images[key], affine = read_nifti(CASE / f"{name}.nii.gz", key)
    raw, _ = read_nifti(CASE / "label-brats25-algorithm2.nii.gz", "label")
    labels = np.zeros(raw.shape, np.uint8)
    for value, brats in TO_BRATS.items():
        labels[np.rint(raw) == value] = brats
    return {key: image.astype(np.float32) for key, image in images.items()}, labels, affine


@pytest.mark.slow
def test_a_real_tumour_grown_between_two_copies_of_one_study_is_measured_as_growth():
    import torch

    from neuroseg.model.inference import segment
    from neuroseg.model.runtime import load_model

    if not CASE.is_dir():
        pytest.fail(f"real case missing: {CASE}")
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    images, labels, affine = _read_case()
    grown_images, grown_labels = grow_tumour(images, labels, GROWTH_SCALE)
    moved = _moved_affine(affine, labels.shape, TURN_DEG, SHIFT_MM)
    truth_prior, truth_current = region_volumes(labels, affine), region_volumes(grown_labels, affine)

    model = load_model()
    prior = segment(images, affine, model, mc_samples=1, gradcam=False)
    current = segment(grown_images, moved, model, mc_samples=1, gradcam=False)
    result = compare(prior.labels, images["t1ce"], affine, current.labels, grown_images["t1ce"], moved)

    wt = result.regions["wt"]
    unit = voxel_ml(affine)
    segments = {name: float((result.change_map == value).sum()) * unit for name, value in CHANGE_VALUES.items()}
    print(f"truth {truth_prior} -> {truth_current}; "
          f"regions { {k: v.to_dict() for k, v in result.regions.items()} }; segments {segments}; "
          f"registration {result.registration.rotation_deg:.2f} deg {result.registration.translation_mm:.2f} mm; "
          f"ET {result.et_class.category}")  # figures for the record
    # the registration finds the motion that was applied (the angle is frame-free; the translation depends
    # on the rotation centre, so only the angle is checked); measured 4.93 degrees
    assert result.registration.rotation_deg == pytest.approx(TURN_DEG, abs=1.0)
    # every region changes the way the truth does (measured - truth, in points of relative change, one run:
    # WT -18, ED -24, NCR +6, TC +5, ET -1): the model draws the pasted oedema's outer edge tighter than the
    # machine label, on the prior too (ED 94.6 against 108.6 ml), and that edge is where the growth is
    for region in ("wt", "ed", "ncr", "tc", "et"):
        expected = truth_current[region] / truth_prior[region] - 1.0
        assert result.regions[region].change_fraction == pytest.approx(expected, abs=0.3), (region, expected)
    assert wt.change_ml > 0.4 * (truth_current["wt"] - truth_prior["wt"])  # measured at 59 % of the truth's gain
    assert result.regions["ed"].change_ml > 0 and result.regions["ncr"].change_ml > 0
    # the enhancing rim lies at the brain's edge, so the magnification pushes much of it out of the brain:
    # the truth's ET changes by -7 %, between RANO's thresholds, and so must the measured one
    assert result.et_class.category == classify_et(truth_prior["et"], truth_current["et"]).category == "stable"
    # the change map (what the change SEG encodes): a stable core with a grown rim, nothing new or vanished
    # (measured: grown 59.7, stable 119.7, shrunk 16.2, new 0.0, vanished 0.1 ml); "shrunk" is where the grown
    # copy's segmentation misses part of the prior's after registration
    assert segments["grown"] > 0.5 * wt.change_ml, segments
    assert segments["stable"] > 0.8 * wt.prior_ml, segments
    assert segments["grown"] > 2 * segments["shrunk"], segments
    assert segments["shrunk"] < 0.2 * wt.prior_ml, segments
    assert segments["new"] + segments["vanished"] < 0.02 * wt.current_ml, segments
