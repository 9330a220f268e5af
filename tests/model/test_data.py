"""Training data readers on the real layouts in ``../shared/data/real-gt``.

BraTS 2015 (``OTMultiClass`` with label 3 = non-enhancing tumour, images
z-scored inside ``brainmask``), BraTS 2023+ labels 1/2/3 under another file
name (the algorithm-labelled case), and the BraTS 2018 whole-tumour cases.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np

from neuroseg.model.data import LabelKind, find_case_files, find_cases, preprocess_case, read_case
from tests.services import SHARED_DATA

REAL_GT = SHARED_DATA / "real-gt"
BRATS2015 = REAL_GT / "brats2015-multiclass" / "brats_2013_pat0005_1"
ALGORITHM = REAL_GT / "brats-gli-algorithm-label"


def test_brats2015_label_3_becomes_necrotic_core_and_background_is_zero():
    files = find_case_files(BRATS2015)
    assert set(files.sequences) == {"flair", "t1ce"}
    assert files.label_kind is LabelKind.BRATS and files.label_2015 and files.brain_mask is not None
    raw = np.rint(np.asarray(nib.load(str(files.label)).dataobj)).astype(int)
    case = read_case(files)
    assert set(np.unique(case.label).tolist()) == {0, 1, 2, 4}
    # TC = 1 + 3 + 4 of the BraTS 2015 label, WT = all tumour labels
    assert np.count_nonzero(np.isin(case.label, (1, 4))) == np.count_nonzero(np.isin(raw, (1, 3, 4)))
    assert np.count_nonzero(case.label == 1) == np.count_nonzero(np.isin(raw, (1, 3)))
    mask = np.asarray(nib.load(str(files.brain_mask)).dataobj) > 0.5
    for image in case.images.values():
        assert np.all(image[~mask] == 0) and np.all(image[mask] > 0)


def test_algorithm_label_is_read_as_brats_2023_and_flagged_as_a_machine_label():
    files = find_case_files(ALGORITHM)
    assert set(files.sequences) == {"t1", "t1ce", "t2", "flair"}
    assert files.label_kind is LabelKind.BRATS and files.label_2023
    assert files.label_source == "algorithm"
    raw = np.asarray(nib.load(str(files.label)).dataobj)
    label = read_case(files).label
    assert np.count_nonzero(label == 4) == np.count_nonzero(raw == 3) > 0
    assert 3 not in np.unique(label)


def test_whole_tumour_cases_keep_their_kind():
    cases = find_cases(REAL_GT / "brats2018-wt")
    assert len(cases) == 5
    assert all(c.label_kind is LabelKind.WHOLE_TUMOUR and set(c.sequences) == {"t1", "flair"} for c in cases)


def test_brats2015_case_preprocesses_onto_the_model_grid_with_all_classes():
    cached = preprocess_case(find_case_files(BRATS2015), spacing_mm=3.0)
    assert cached.label_kind is LabelKind.BRATS
    assert set(np.unique(cached.label).tolist()) == {0, 1, 2, 3}  # class indices bg/NCR/ED/ET
    assert list(cached.presence) == [0.0, 1.0, 0.0, 1.0]
