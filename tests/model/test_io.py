"""NIfTI and DICOM-folder input, the result folder, and ``neuroseg predict``."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from neuroseg.model.checkpoint import save_checkpoint
from neuroseg.model.inference import segment
from neuroseg.model.io import (
    load_inputs,
    lps_to_ras,
    read_dicom_folder,
    read_nifti,
    read_result_folder,
    read_volume,
    write_nifti,
    write_result_folder,
)
from neuroseg.model.network import build_network
from neuroseg.model.preprocess import resample_grid
from neuroseg.worker.cli import main
from tests.model.model_helpers import TINY, head_volume, lps_affine, tiny_model

SHAPE = (24, 22, 20)


def test_nifti_round_trip_keeps_array_and_lps_affine(tmp_path: Path) -> None:
    affine = lps_affine(spacing=(0.9, 1.1, 3.0))
    volume = head_volume(SHAPE)
    write_nifti(volume, affine, tmp_path / "v.nii.gz")
    data, read_affine = read_nifti(tmp_path / "v.nii.gz")
    assert np.array_equal(data, volume) and np.allclose(read_affine, affine)
    stored = nib.load(tmp_path / "v.nii.gz")
    assert np.allclose(stored.affine, lps_to_ras(affine))  # RAS in the file
    assert int(stored.header["sform_code"]) == 1


def test_trailing_singleton_axis_is_dropped_and_true_4d_refused(tmp_path: Path) -> None:
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4, 1), np.float32), np.eye(4)), tmp_path / "a.nii.gz")
    assert read_volume(tmp_path / "a.nii.gz")[0].shape == (4, 4, 4)
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4, 2), np.float32), np.eye(4)), tmp_path / "b.nii.gz")
    with pytest.raises(ValueError, match=r"b.nii.gz has shape \(4, 4, 4, 2\)"):
        read_volume(tmp_path / "b.nii.gz", "--flair")


def test_missing_input_names_the_option_and_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="--flair .*absent.nii.gz does not exist"):
        load_inputs({"flair": tmp_path / "absent.nii.gz"})


def test_inputs_on_other_grids_are_resampled_onto_t1ce(tmp_path: Path) -> None:
    write_nifti(head_volume(SHAPE), lps_affine(), tmp_path / "t1ce.nii.gz")
    write_nifti(head_volume((12, 11, 10)), lps_affine(spacing=(2.0, 2.0, 2.0)), tmp_path / "flair.nii.gz")
    images, affine, reference = load_inputs({"flair": tmp_path / "flair.nii.gz", "t1ce": tmp_path / "t1ce.nii.gz"})
    assert reference == "t1ce" and np.allclose(affine, lps_affine())
    assert images["flair"].shape == images["t1ce"].shape == SHAPE


@pytest.mark.parametrize("coregister", [True, False])
def test_a_moved_sequence_is_co_registered_and_the_move_noted(tmp_path: Path, coregister: bool) -> None:
    shape = (40, 40, 32)
    volume = head_volume(shape)
    affine = lps_affine(spacing=(2.0, 2.0, 2.0))
    moved = affine.copy()
    moved[:3, 3] += [5.0, -4.0, 3.0]  # the head moved before the FLAIR; the scanner geometry does not know
    write_nifti(volume, affine, tmp_path / "t1ce.nii.gz")
    write_nifti(volume, moved, tmp_path / "flair.nii.gz")
    notes: list[str] = []
    images, _, _ = load_inputs({"flair": tmp_path / "flair.nii.gz", "t1ce": tmp_path / "t1ce.nii.gz"},
                               coregister=coregister, notes=notes)
    inner = tuple(slice(6, -6) for _ in shape)
    error = np.abs(images["flair"] - images["t1ce"])[inner].mean() / np.abs(images["t1ce"][inner]).mean()
    if coregister:
        assert len(notes) == 1 and notes[0].startswith("flair co-registered to t1ce: moved by"), notes
        assert error < 0.05
    else:
        assert notes == [] and error > 0.1


@pytest.mark.parametrize("series", ["siemens-prisma-t1-sagittal-prone", "ge-mr750-t1-mprage-axial",
                                    "siemens-xa30-enhanced-t1w"])
def test_dicom_folder_matches_dcm2niix(tmp_path: Path, shared_data: Path, series: str) -> None:
    if shutil.which("dcm2niix") is None:
        pytest.skip("dcm2niix is not installed")
    folder = shared_data / "real-dicom" / series
    array, affine = read_dicom_folder(folder)
    subprocess.run(["dcm2niix", "-z", "y", "-f", "ref", "-o", str(tmp_path), str(folder)],
                   check=True, capture_output=True)
    reference, reference_affine = read_nifti(tmp_path / "ref.nii.gz")
    # same voxels at the same patient positions: map dcm2niix's array onto our grid (a signed permutation)
    index_map = np.linalg.solve(reference_affine, affine)
    assert np.allclose(index_map[:3, :3], np.round(index_map[:3, :3]), atol=1e-3)
    mapped = resample_grid(reference, np.round(index_map), array.shape, order=0)
    assert np.array_equal(mapped, array)


def test_result_folder_round_trip(tmp_path: Path) -> None:
    images = {"flair": head_volume(SHAPE), "t1": head_volume(SHAPE, seed=4)}
    affine = lps_affine()
    result = segment(images, affine, tiny_model(), mc_samples=2)
    report = write_result_folder(result, images, affine, tmp_path / "out", model_metadata={"model_card": {"a": 1}})
    names = {p.name for p in (tmp_path / "out").iterdir()}
    expected = {"seg.nii.gz", "entropy.nii.gz", "report.json", "image_flair.nii.gz", "image_t1.nii.gz",
                "mutual_information.nii.gz"}
    expected |= {f"{kind}_{c}.nii.gz" for kind in ("prob", "variance", "gradcam") for c in ("ncr", "ed", "et")}
    assert expected <= names
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == report
    assert report["sequences_used"] == ["t1", "flair"] and report["model"]["model_card"] == {"a": 1}
    assert "not for diagnostic use" in report["statement"]
    back = read_result_folder(tmp_path / "out")
    assert np.array_equal(back.labels, result.labels) and np.allclose(back.affine, affine)
    for kind in ("gradcam", "probabilities", "variance"):  # 16-bit stored: within one step of the range
        written, read = getattr(result, kind)["et"], getattr(back, kind)["et"]
        step = (float(written.max()) - float(written.min())) / 65535
        assert read.dtype == np.float32 and np.abs(read - written).max() <= step
    assert set(back.images) == {"t1", "flair"}


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, build_network(TINY), TINY, {"name": "tiny-cli", "version": "0.1"})
    return path


def test_predict_writes_the_result_folder_and_figures(tmp_path: Path, tiny_checkpoint: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    write_nifti(head_volume(SHAPE), lps_affine(), tmp_path / "flair.nii.gz")
    write_nifti(head_volume(SHAPE, seed=5), lps_affine(), tmp_path / "t2.nii.gz")
    code = main(["predict", "--flair", str(tmp_path / "flair.nii.gz"), "--t2", str(tmp_path / "t2.nii.gz"),
                 "--out", str(tmp_path / "out"), "--model", str(tiny_checkpoint), "--mc-samples", "2",
                 "--device", "cpu"])
    assert code == 0
    out = tmp_path / "out"
    assert (out / "seg.nii.gz").is_file() and (out / "report.json").is_file()
    for figure in ("overview.png", "probability.png", "uncertainty.png", "gradcam.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["name"] == "tiny-cli" and report["model"]["version"] == "0.1"
    assert report["mc_samples"] == 2
    # the settings' defaults: Grad-CAM at the second-to-last decoder stage, post-processing on, no TTA
    assert report["model"]["gradcam_layer"] == "trunk.decoders.0" and report["model"]["tta"] is False
    assert report["model"]["postprocessing"]["min_et_ml"] == 0.5
    assert "tiny-cli" in capsys.readouterr().out


def test_predict_without_flair_or_t1ce_fails_clearly(tmp_path: Path, tiny_checkpoint: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    write_nifti(head_volume(SHAPE), lps_affine(), tmp_path / "t1.nii.gz")
    code = main(["predict", "--t1", str(tmp_path / "t1.nii.gz"), "--out", str(tmp_path / "out"),
                 "--model", str(tiny_checkpoint)])
    assert code == 2
    assert "--t1ce or --flair" in capsys.readouterr().err


def test_predict_with_a_missing_file_names_it(tmp_path: Path, tiny_checkpoint: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    code = main(["predict", "--flair", str(tmp_path / "nope.nii.gz"), "--out", str(tmp_path / "out"),
                 "--model", str(tiny_checkpoint)])
    assert code == 2
    assert "nope.nii.gz does not exist" in capsys.readouterr().err


def test_predict_mc_samples_default_comes_from_settings(tmp_path: Path, tiny_checkpoint: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEUROSEG_MC_SAMPLES", "3")
    monkeypatch.setenv("NEUROSEG_MODEL_PATH", str(tiny_checkpoint))
    write_nifti(head_volume(SHAPE), lps_affine(), tmp_path / "flair.nii.gz")
    assert main(["predict", "--flair", str(tmp_path / "flair.nii.gz"), "--out", str(tmp_path / "out"),
                 "--no-figures", "--no-gradcam"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["mc_samples"] == 3 and report["model"]["name"] == "tiny-cli"
