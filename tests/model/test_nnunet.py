"""nnU-Net v2 models (made here with nnU-Net's own tools) through the adapter and the CLI.

The worker and PACS round trip is shared with bundles: tests/model/test_own_model_round_trip.py.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from neuroseg.common.errors import InputError
from neuroseg.model.adapters import FLIPS_AND_FOLDS, LABEL_CONVENTIONS, load_adapter
from neuroseg.model.io import write_nifti
from neuroseg.model.nnunet import NnunetAdapter, read_labels, read_sequences
from neuroseg.worker.cli import main
from tests.model.nnunet_helpers import CHANNELS, LABELS, phantom_case

SEQUENCES = ("t1", "t1ce", "t2", "flair")
NNUNET_TO_BRATS2021 = np.array([0, 2, 1, 4], np.uint8)  # nnU-Net's BraTS values 1 ED, 2 NCR, 3 ET
DATASET = {"channel_names": CHANNELS, "labels": LABELS, "regions_class_order": [1, 2, 3], "file_ending": ".nii.gz",
           "numTraining": 6}


def case(seed: int = 7) -> tuple[dict[str, np.ndarray], np.ndarray]:
    images, _ = phantom_case(seed)
    return {key: images[index] for index, key in enumerate(SEQUENCES)}, images


def affine() -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, 3] = (-10.0, 20.0, -5.0)
    return matrix


# --- dataset.json, read without nnU-Net -------------------------------------------------------------

def test_nnunet_brats_regions_and_channel_names_are_read_from_dataset_json(tmp_path: Path) -> None:
    source = tmp_path / "dataset.json"
    assert read_sequences(DATASET, source) == SEQUENCES
    regions = read_labels(DATASET, source)
    assert regions.is_regions and regions.channels == ("wt", "tc", "et")
    brats2023 = {"channel_names": {"0": "t1n", "1": "t1c", "2": "t2w", "3": "t2f"},
                 "labels": {"background": 0, "NETC": 1, "SNFH": 2, "ET": 3}}
    assert read_sequences(brats2023, source) == SEQUENCES
    convention = read_labels(brats2023, source)
    assert convention.name == "brats2023" and convention.channels == ("background", "ncr", "ed", "et")
    brats2021 = {"labels": {"background": 0, "edema": 2, "necrosis": 1, "enhancing tumor": 4}}
    assert read_labels(brats2021, source) == LABEL_CONVENTIONS["brats2021"]


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["labels"].update({"label1": 4}), r"labels \['label1'\] are not ones neuroseg knows"),
    (lambda d: d.update(labels={"background": 0, "ED": 1, "NCR": 2, "ET": 3}),
     r"label values \{'background': 0, 'ncr': 2, 'ed': 1, 'et': 3\} are neither BraTS 2021 .* nor BraTS 2023"),
    (lambda d: d.update(labels={"background": 0, "enhancing tumor": [3], "tumor core": [2, 3],
                                "whole tumor": [1, 2, 3]}),
     "region outputs must come as whole tumor, tumor core, enhancing tumor"),
    (lambda d: d.update(neuroseg={"label_convention": "brats2023"}),
     "declares the label convention 'brats2023' but its labels are regions"),
    (lambda d: d["channel_names"].update({"3": "DWI"}), "input channel 3 is 'DWI', which neuroseg does not know"),
])
def test_a_dataset_json_that_does_not_fit_is_an_error_naming_the_file(tmp_path: Path, change, message: str) -> None:
    dataset = copy.deepcopy(DATASET)
    change(dataset)
    (tmp_path / "dataset.json").write_text(json.dumps(dataset))
    (tmp_path / "plans.json").write_text("{}")
    with pytest.raises(InputError, match=rf"{tmp_path / 'dataset.json'}: {message}"):
        load_adapter(tmp_path, "cpu")


def test_a_folder_without_trained_folds_says_what_it_needs(tmp_path: Path) -> None:
    (tmp_path / "dataset.json").write_text(json.dumps(DATASET))
    (tmp_path / "plans.json").write_text("{}")
    (tmp_path / "fold_0").mkdir()
    with pytest.raises(InputError, match=r"no fold_\*/checkpoint_final.pth"):
        load_adapter(tmp_path, "cpu")


# --- a model made by nnU-Net ------------------------------------------------------------------------

@pytest.mark.slow
def test_an_nnunet_folder_declares_its_inputs_labels_folds_and_provenance(nnunet_model: Path) -> None:
    adapter = load_adapter(nnunet_model, "cpu")
    assert isinstance(adapter, NnunetAdapter)
    assert adapter.sequences == SEQUENCES and adapter.labels.is_regions and adapter.folds == ["0", "1"]
    assert adapter.uncertainty_method == FLIPS_AND_FOLDS and adapter.configuration == "3d_fullres"
    assert len(adapter.mirror_combinations) == 8 and adapter.gradcam_layer == "decoder.stages.1"
    card = adapter.metadata["model_card"]
    assert card["provenance"] == {"name": "TinyGlioma", "version": "0.1", "authors": "neuroseg tests",
                                  "license": "CC-BY-4.0", "kind": "nnunet-v2", "source": str(nnunet_model),
                                  "description": "Synthetic glioma phantoms made by the neuroseg tests"}
    assert card["uncertainty"]["method"] == FLIPS_AND_FOLDS and "2 folds and the 8 mirrorings" in \
        card["uncertainty"]["description"]
    assert "nnUNetTrainer, 3d_fullres (PlainConvUNet)" in card["architecture"]


@pytest.mark.slow
def test_the_labels_are_nnunets_own_and_the_spread_comes_from_mirrorings_and_folds(nnunet_model: Path) -> None:
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    adapter = load_adapter(nnunet_model, "cpu")
    images, stacked = case()
    result = adapter.segment(images, affine(), mc_samples=8)
    assert result.mc_samples == 16 and result.gradcam_layer == "decoder.stages.1"
    # nnU-Net's own predictor (its mirroring and fold ensemble) on the arrays as SimpleITK would give them
    predictor = nnUNetPredictor(device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(nnunet_model), use_folds=(0, 1))
    theirs = predictor.predict_single_npy_array(np.ascontiguousarray(stacked.transpose(0, 3, 2, 1)),
                                                {"spacing": [1.0, 1.0, 1.0]})
    theirs = NNUNET_TO_BRATS2021[theirs.transpose(2, 1, 0)]
    assert np.any(theirs > 0)
    # nnU-Net sums its half-precision logits; ours are float32: a rare voxel at 0.5 may differ
    assert float(np.mean(theirs == result.labels)) > 0.995
    probabilities = np.stack([result.probabilities[k] for k in ("background", "ncr", "ed", "et")])
    assert np.allclose(probabilities.sum(axis=0), 1.0, atol=1e-4)
    assert np.array_equal(result.labels, adapter.labels.labels_from_probabilities(probabilities))
    assert max(float(v.max()) for v in result.variance.values()) > 0.01
    assert float(result.mutual_information.max()) > 0 and float(result.entropy.max()) <= np.log(4) + 1e-4
    for name, value in (("ncr", 1), ("ed", 2), ("et", 4)):
        if np.any(result.labels == value):
            assert np.isclose(result.gradcam[name].max(), 1.0) and result.gradcam[name].min() >= 0
    one = adapter.segment(images, affine(), mc_samples=1, folds=1, gradcam=False)
    assert one.mc_samples == 1 and all(float(v.max()) == 0 for v in one.variance.values())
    # a volume stored in another orientation is reoriented for nnU-Net, not resampled: the same labels
    flipped = {key: np.ascontiguousarray(np.flip(value, axis=0).transpose(2, 0, 1)) for key, value in images.items()}
    moved = affine()
    index_to_world = np.zeros((3, 3))
    index_to_world[2, 0] = 1.0  # new axis 0 is old z
    index_to_world[0, 1] = -1.0  # new axis 1 is old x, flipped
    index_to_world[1, 2] = 1.0  # new axis 2 is old y
    moved[:3, :3] = index_to_world
    moved[:3, 3] = affine()[:3, 3] + np.array([images["t1"].shape[0] - 1, 0, 0])
    again = adapter.segment(flipped, moved, mc_samples=1, folds=1, gradcam=False)
    assert np.array_equal(np.flip(again.labels.transpose(1, 2, 0), axis=0), one.labels)


@pytest.mark.slow
def test_weights_that_do_not_fit_the_dataset_json_name_the_checkpoint(nnunet_model: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(nnunet_model, tmp_path / "three_channels")
    dataset = json.loads((folder / "dataset.json").read_text())
    dataset["channel_names"] = {"0": "T1", "1": "T1ce", "2": "Flair"}
    (folder / "dataset.json").write_text(json.dumps(dataset))
    with pytest.raises(InputError, match=rf"{folder / 'fold_0' / 'checkpoint_final.pth'}: the weights do not fit"):
        load_adapter(folder, "cpu")


@pytest.mark.slow
def test_predict_evaluate_and_bench_run_an_nnunet_folder(nnunet_model: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    images, _ = case()
    arguments = []
    for key, volume in images.items():
        write_nifti(volume, affine(), tmp_path / f"{key}.nii.gz")
        arguments += [f"--{key}", str(tmp_path / f"{key}.nii.gz")]
    code = main(["predict", *arguments, "--out", str(tmp_path / "out"), "--model", str(nnunet_model),
                 "--mc-samples", "2", "--device", "cpu", "--no-figures"])
    assert code == 0, capsys.readouterr().err
    card = json.loads((tmp_path / "out" / "report.json").read_text())["model"]["model_card"]
    assert card["uncertainty"]["method"] == FLIPS_AND_FOLDS and card["provenance"]["kind"] == "nnunet-v2"
    assert f"{FLIPS_AND_FOLDS}, 4 passes; Grad-CAM decoder.stages.1" in capsys.readouterr().out

    data = tmp_path / "cases"
    for seed in (11, 12):  # BraTS 2021 layout, labels 0/1/2/4
        stacked, labels = phantom_case(seed)
        folder = data / f"case{seed}"
        folder.mkdir(parents=True)
        for index, key in enumerate(SEQUENCES):
            write_nifti(stacked[index], affine(), folder / f"case{seed}_{key}.nii.gz")
        write_nifti(NNUNET_TO_BRATS2021[labels], affine(), folder / f"case{seed}_seg.nii.gz")
    code = main(["evaluate", "--data", str(data), "--model", str(nnunet_model), "--mc-samples", "1",
                 "--json", str(tmp_path / "evaluation.json")])
    assert code == 0, capsys.readouterr().err
    evaluation = json.loads((tmp_path / "evaluation.json").read_text())
    assert len(evaluation["cases"]) == 2 and evaluation["source"] == str(nnunet_model)
    assert 0.0 <= evaluation["mean"]["dice_wt"] <= 1.0
    capsys.readouterr()

    code = main(["bench", "model", "--model", str(nnunet_model), "--shape", "40", "40", "32", "--mc-samples", "2",
                 "--device", "cpu", "--json", str(tmp_path / "bench.json")])
    assert code == 0, capsys.readouterr().err
    timings = json.loads((tmp_path / "bench.json").read_text())["timings"]
    assert timings["one_pass"]["ratio"] == 1.0 and timings["uncertainty"]["passes"] == 4
    # 2 mirrorings x 2 folds of the same network cannot cost less than two single passes
    assert timings["uncertainty"]["ratio"] > 2, timings
    # each part of the method on its own, against the same plain pass: 2 mirrorings of fold 0, 2 folds unmirrored
    assert timings["flips"]["passes"] == 2 and timings["fold_ensemble"]["passes"] == 2
    assert timings["flips"]["ratio"] > 1 and timings["fold_ensemble"]["ratio"] > 1, timings
    out = capsys.readouterr().out
    assert "uncertainty" in out and "fold ensemble alone, 2 folds unmirrored" in out
