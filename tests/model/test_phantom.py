"""The phantom generator: labels match intensities, determinism, layout on disk.

Phantoms here are built on a 4 mm version of the template so each takes well
under a second.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from neuroseg.model.data import find_cases, read_case
from neuroseg.model.phantom import (
    SEQUENCES,
    PhantomConfig,
    make_phantom,
    write_brats_case,
)
from neuroseg.model.phantom_realism import intensity_statistics, sub_regions
from neuroseg.worker.cli import main

FAST = dict(anatomy_spacing_mm=4.0, output_spacing_mm=4.0, multifocal_probability=0.0)


@pytest.fixture(scope="module")
def enhancing_phantom():
    config = PhantomConfig(**FAST, skull_probability=0.0, no_enhancement_probability=0.0,
                           no_necrosis_probability=0.0, radius_mm=(26.0, 30.0), noise_fraction=(0.01, 0.01),
                           bias_amplitude=(0.0, 0.0))
    return make_phantom(3, config)


def _normal_brain(phantom):
    brain = phantom.images["t1"] > 0
    return brain & (phantom.label == 0)


def test_labels_are_brats_values_on_the_image_grid(enhancing_phantom):
    assert set(np.unique(enhancing_phantom.label)) == {0, 1, 2, 4}
    for seq in SEQUENCES:
        assert enhancing_phantom.images[seq].shape == enhancing_phantom.label.shape


def test_enhancing_rim_is_bright_on_t1ce_only(enhancing_phantom):
    images, et = enhancing_phantom.images, enhancing_phantom.label == 4
    normal = _normal_brain(enhancing_phantom)
    for seq in SEQUENCES:
        ratio = np.median(images[seq][et]) / np.median(images[seq][normal])
        if seq == "t1ce":
            assert ratio > 1.4, f"ET/brain on T1ce is {ratio:.2f}"
        elif seq == "t1":
            assert ratio < 1.0, f"ET/brain on T1 is {ratio:.2f}"
    t1_ratio = np.median(images["t1"][et]) / np.median(images["t1"][normal])
    t1ce_ratio = np.median(images["t1ce"][et]) / np.median(images["t1ce"][normal])
    assert t1ce_ratio > 1.5 * t1_ratio


def test_edema_is_bright_on_flair_and_t2_and_dark_on_t1(enhancing_phantom):
    images, edema = enhancing_phantom.images, enhancing_phantom.label == 2
    normal = _normal_brain(enhancing_phantom)
    ratio = {seq: np.median(images[seq][edema]) / np.median(images[seq][normal]) for seq in SEQUENCES}
    assert ratio["flair"] > 1.4
    assert ratio["t2"] > 1.2
    # on T1, edema is darker than white matter (the bright end of normal brain)
    white_matter = np.percentile(images["t1"][normal], 80)
    assert np.median(images["t1"][edema]) < 0.9 * white_matter


def test_necrotic_core_is_dark_on_t1ce_inside_the_bright_rim(enhancing_phantom):
    images, label = enhancing_phantom.images["t1ce"], enhancing_phantom.label
    assert np.median(images[label == 1]) < 0.75 * np.median(images[label == 4])


def test_no_enhancement_option_gives_no_et_label():
    phantom = make_phantom(5, PhantomConfig(**FAST, no_enhancement_probability=1.0))
    assert 4 not in np.unique(phantom.label)
    assert (phantom.label == 1).any()


def test_same_seed_gives_the_same_phantom_and_another_seed_does_not():
    config = PhantomConfig(**FAST)
    first, again, other = make_phantom(11, config), make_phantom(11, config), make_phantom(12, config)
    np.testing.assert_array_equal(first.label, again.label)
    np.testing.assert_array_equal(first.images["flair"], again.images["flair"])
    assert not np.array_equal(first.label, other.label) or first.label.shape != other.label.shape


def test_skull_option_controls_signal_outside_the_brain():
    stripped = make_phantom(2, PhantomConfig(**FAST, skull_probability=0.0))
    with_skull = make_phantom(2, PhantomConfig(**FAST, skull_probability=1.0))
    assert stripped.info["skull"] is False and with_skull.info["skull"] is True
    assert (with_skull.images["t1"] > 0).sum() > 1.3 * (stripped.images["t1"] > 0).sum()


def test_scalp_fat_is_bright_on_t1_and_flair_and_never_labelled():
    # what real heads look like and what a network must learn not to call edema
    config = PhantomConfig(anatomy_spacing_mm=2.0, output_spacing_mm=2.0, multifocal_probability=0.0,
                           skull_probability=1.0, noise_fraction=(0.01, 0.01), bias_amplitude=(0.0, 0.0))
    phantom = make_phantom(4, config)
    t1, flair = phantom.images["t1"], phantom.images["flair"]
    head = t1 > 0.25 * np.percentile(t1, 99)  # not the noisy air around the head
    brightest_t1 = head & (t1 >= np.percentile(t1[head], 99))
    assert not np.any(phantom.label[brightest_t1])
    assert np.median(flair[brightest_t1]) > 1.4 * np.median(flair[head])


def test_clinical_grid_has_thick_slices_and_an_oblique_affine():
    config = PhantomConfig(anatomy_spacing_mm=4.0, clinical_grid_probability=1.0,
                           inplane_spacing_mm=(3.0, 3.0), slice_thickness_mm=(5.0, 6.0))
    phantom = make_phantom(4, config)
    spacing = np.linalg.norm(phantom.affine[:3, :3], axis=0)
    assert spacing[2] == pytest.approx(phantom.info["grid"]["spacing_mm"][2], abs=1e-3)
    assert 5.0 <= spacing[2] <= 6.0
    assert phantom.info["grid"]["clinical"] is True


def test_written_case_reads_back_in_brats_2021_layout(tmp_path):
    phantom = make_phantom(7, PhantomConfig(**FAST))
    case_dir = write_brats_case(phantom, tmp_path, "Phantom_00007")
    names = sorted(p.name for p in case_dir.iterdir())
    assert names == sorted([f"Phantom_00007_{s}.nii.gz" for s in (*SEQUENCES, "seg")] + ["phantom.json"])
    files = find_cases(tmp_path)[0]
    case = read_case(files)
    np.testing.assert_array_equal(case.label, phantom.label)
    np.testing.assert_allclose(case.affine, phantom.affine, atol=1e-4)
    # NIfTI stores RAS: the first two rows are negated
    stored = nib.load(str(case_dir / "Phantom_00007_t1.nii.gz")).affine
    np.testing.assert_allclose(stored[:2], -phantom.affine[:2], atol=1e-4)
    assert json.loads((case_dir / "phantom.json").read_text())["seed"] == 7


def test_intensity_statistics_orders_tissues_like_t1(enhancing_phantom):
    stats = intensity_statistics(enhancing_phantom.images, enhancing_phantom.label > 0)
    t1 = stats["ratios"]["t1"]
    assert t1["csf"] < t1["gm"] < 1.0
    assert stats["ratios"]["flair"]["tumour"] > 1.2
    assert stats["histograms"]["t2"].sum() == pytest.approx(1.0)


def test_phantom_command_writes_cases(tmp_path, capsys):
    code = main(["phantom", "--out", str(tmp_path), "-n", "2", "--seed", "40",
                 "--anatomy-spacing", "4", "--output-spacing", "4"])
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Phantom_00040", "Phantom_00041"]


def test_phantom_command_rejects_a_bad_probability(tmp_path, capsys):
    code = main(["phantom", "--out", str(tmp_path), "-n", "1", "--skull-probability", "2"])
    assert code == 2
    assert "skull_probability=2.0" in capsys.readouterr().err


def test_intensity_statistics_measure_each_sub_region_of_a_multi_class_label(enhancing_phantom):
    label = enhancing_phantom.label
    stats = intensity_statistics(enhancing_phantom.images, label > 0, regions=sub_regions(label))
    ratios = stats["ratios"]
    assert ratios["t1ce"]["et"] > 1.0 > ratios["t1ce"]["ed"]  # the enhancing rim is bright on T1ce only
    assert ratios["t1"]["et"] < 1.0
    assert ratios["t2"]["ed"] > ratios["t2"]["gm"]
    assert sub_regions(label > 0, "wt") == {}  # a whole-tumour label has no sub-regions
