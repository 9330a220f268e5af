"""Evaluation metrics on hand-made cases with known answers."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from neuroseg.model.data import LabelKind
from neuroseg.model.evaluate import (
    HD95_MAX_MM,
    dice_hd95,
    error_auroc,
    evaluate_predictions,
    expected_calibration_error,
    score_case,
)
from neuroseg.worker.cli import main


def cube(shape=(24, 24, 24), lo=(6, 6, 6), size=(6, 6, 6)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, a + s) for a, s in zip(lo, size))] = True
    return mask


def test_dice_hd95_of_identical_masks_is_one_and_zero():
    assert dice_hd95(cube(), cube()) == (1.0, 0.0)


def test_dice_hd95_of_shifted_cube_matches_hand_computation():
    # 6^3 cube shifted by 2 voxels along z: overlap 6*6*4, Dice = 2*144/432
    dice, hd95 = dice_hd95(cube(), cube(lo=(6, 6, 8)))
    assert dice == pytest.approx(2 * 144 / 432)
    assert hd95 == pytest.approx(2.0)


def test_hd95_is_in_millimetres():
    _, hd95 = dice_hd95(cube(), cube(lo=(6, 6, 8)), spacing_mm=(1.0, 1.0, 2.5))
    assert hd95 == pytest.approx(5.0)


def test_both_empty_gives_dice_one_and_hd95_zero():
    empty = np.zeros((8, 8, 8), dtype=bool)
    assert dice_hd95(empty, empty) == (1.0, 0.0)


@pytest.mark.parametrize("empty_side", ["prediction", "truth"])
def test_one_empty_gives_dice_zero_and_hd95_max(empty_side):
    empty = np.zeros((24, 24, 24), dtype=bool)
    pair = (empty, cube()) if empty_side == "prediction" else (cube(), empty)
    assert dice_hd95(*pair) == (0.0, HD95_MAX_MM)


def test_score_case_uses_brats_regions():
    truth = np.zeros((24, 24, 24), dtype=np.uint8)
    truth[cube(size=(10, 10, 10))] = 2
    truth[cube(lo=(8, 8, 8), size=(6, 6, 6))] = 4
    truth[cube(lo=(10, 10, 10), size=(2, 2, 2))] = 1
    prediction = truth.copy()
    prediction[prediction == 4] = 1  # enhancing tumour called necrosis: TC and WT still right
    metrics = score_case("c", prediction, truth, LabelKind.BRATS, (1.0, 1.0, 1.0))
    assert metrics.dice["wt"] == 1.0 and metrics.dice["tc"] == 1.0
    assert metrics.dice["et"] == 0.0 and metrics.hd95["et"] == HD95_MAX_MM


def test_whole_tumour_only_truth_scores_wt_and_leaves_tc_et_missing():
    truth = cube().astype(np.uint8)
    prediction = np.zeros_like(truth)
    prediction[cube()] = 2
    metrics = score_case("c", prediction, truth, LabelKind.WHOLE_TUMOUR, (1.0, 1.0, 1.0))
    assert metrics.dice == {"et": None, "tc": None, "wt": 1.0}
    assert metrics.hd95["tc"] is None


def test_ece_of_perfectly_calibrated_bins_is_zero_and_known_otherwise():
    confidence = np.array([0.75] * 4)
    assert expected_calibration_error(confidence, np.array([1, 1, 1, 0])) == pytest.approx(0.0)
    assert expected_calibration_error(np.array([0.9, 0.9, 0.6, 0.6]), np.array([1, 1, 1, 0])) == pytest.approx(0.1)


def test_error_auroc_is_one_when_every_error_is_more_uncertain():
    assert error_auroc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert error_auroc(np.array([0.1, 0.2]), np.array([0, 0])) is None


def _write_case(folder: Path, case_id: str, label: np.ndarray, image: np.ndarray) -> None:
    case_dir = folder / case_id
    case_dir.mkdir(parents=True)
    for seq in ("t1", "flair"):
        nib.save(nib.Nifti1Image(image, np.eye(4)), case_dir / f"{case_id}_{seq}.nii.gz")
    nib.save(nib.Nifti1Image(label, np.eye(4)), case_dir / f"{case_id}_seg.nii.gz")


def test_evaluate_command_scores_saved_predictions_and_writes_json(tmp_path, capsys):
    truth = np.zeros((24, 24, 24), dtype=np.uint8)
    truth[cube()] = 2
    truth[cube(lo=(7, 7, 7), size=(4, 4, 4))] = 4
    image = np.ones((24, 24, 24), dtype=np.float32)
    _write_case(tmp_path / "data", "Case_1", truth, image)
    pred = tmp_path / "pred" / "Case_1"
    pred.mkdir(parents=True)
    shifted = np.roll(truth, 2, axis=2)
    nib.save(nib.Nifti1Image(shifted, np.eye(4)), pred / "seg.nii.gz")
    out = tmp_path / "metrics.json"
    code = main(["evaluate", "--data", str(tmp_path / "data"), "--pred", str(tmp_path / "pred"),
                 "--json", str(out)])
    assert code == 0
    assert "Case_1" in capsys.readouterr().out
    result = json.loads(out.read_text())
    case = result["cases"][0]
    assert case["dice"]["wt"] == pytest.approx(2 * 144 / 432)
    assert case["hd95"]["wt"] == pytest.approx(2.0)
    assert result["mean"]["dice_wt"] == pytest.approx(case["dice"]["wt"])


def test_evaluate_reads_probability_maps_for_calibration(tmp_path):
    truth = np.zeros((16, 16, 16), dtype=np.uint8)
    truth[4:10, 4:10, 4:10] = 2
    _write_case(tmp_path / "data", "Case_2", truth, np.ones((16, 16, 16), dtype=np.float32))
    pred = tmp_path / "pred" / "Case_2"
    pred.mkdir(parents=True)
    nib.save(nib.Nifti1Image(truth, np.eye(4)), pred / "seg.nii.gz")
    for name in ("ncr", "et"):
        nib.save(nib.Nifti1Image(np.zeros(truth.shape, np.float32), np.eye(4)), pred / f"prob_{name}.nii.gz")
    nib.save(nib.Nifti1Image((truth == 2).astype(np.float32), np.eye(4)), pred / "prob_ed.nii.gz")
    result = evaluate_predictions(tmp_path / "data", tmp_path / "pred", progress=False)
    assert result.cases[0].ece == pytest.approx(0.0)
    assert result.cases[0].dice["wt"] == 1.0


def test_evaluate_names_the_missing_prediction(tmp_path):
    truth = np.zeros((8, 8, 8), dtype=np.uint8)
    _write_case(tmp_path / "data", "Case_3", truth, np.ones((8, 8, 8), dtype=np.float32))
    (tmp_path / "pred").mkdir()
    with pytest.raises(ValueError, match="no prediction for case Case_3"):
        evaluate_predictions(tmp_path / "data", tmp_path / "pred", progress=False)


def test_evaluate_command_runs_a_model_on_cases_with_only_some_sequences(tmp_path, capsys):
    import torch

    from neuroseg.model.checkpoint import save_checkpoint
    from neuroseg.model.network import NetworkConfig, build_network

    torch.manual_seed(0)
    config = NetworkConfig(channels=(4, 8), head_channels=4, patch_size=(16, 16, 16), spacing_mm=4.0)
    checkpoint = tmp_path / "tiny.pt"
    save_checkpoint(checkpoint, build_network(config), config, {"name": "tiny", "version": "0"})
    case = tmp_path / "data" / "case_0"
    case.mkdir(parents=True)
    rng = np.random.default_rng(0)
    head = np.zeros((20, 20, 16), dtype=np.float32)
    head[3:17, 3:17, 2:14] = 100.0
    affine = np.diag([-4.0, -4.0, 4.0, 1.0])
    for name in ("T1", "FLAIR"):
        image = head + rng.normal(0, 5, head.shape).astype(np.float32) * (head > 0)
        nib.save(nib.Nifti1Image(image, affine), case / f"{name}.nii.gz")
    tumour = np.zeros(head.shape, dtype=np.uint8)
    tumour[8:12, 8:12, 6:10] = 1
    nib.save(nib.Nifti1Image(tumour, affine), case / "GT_W.nii.gz")
    out = tmp_path / "metrics.json"
    code = main(["evaluate", "--data", str(tmp_path / "data"), "--model", str(checkpoint),
                 "--mc-samples", "3", "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    case_metrics = result["cases"][0]
    assert case_metrics["label_kind"] == "wt" and case_metrics["sequences"] == ["flair", "t1"]
    assert 0.0 <= case_metrics["dice"]["wt"] <= 1.0
    assert case_metrics["dice"]["et"] is None
    assert case_metrics["ece"] is not None
