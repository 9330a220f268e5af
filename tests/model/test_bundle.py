"""MONAI bundles (made here with MONAI's tools) through the adapter and ``neuroseg predict``.

The worker and PACS round trip is shared with nnU-Net: tests/model/test_own_model_round_trip.py.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from neuroseg.common.errors import InputError
from neuroseg.model.adapters import TEST_TIME_FLIPS, load_adapter
from neuroseg.model.bundle import BundleAdapter
from neuroseg.model.io import write_nifti
from neuroseg.worker.cli import main
from tests.model.bundle_helpers import INFERENCE_CONFIG, METADATA, make_bundle, zip_bundle
from tests.model.model_helpers import head_volume, lps_affine

SHAPE = (24, 22, 20)
SEQUENCES = ("t1", "t1ce", "t2", "flair")
CUBE = (slice(8, 14), slice(8, 14), slice(7, 13))


def images() -> dict[str, np.ndarray]:
    return {key: head_volume(SHAPE, seed=index, cube=CUBE) for index, key in enumerate(SEQUENCES)}


def test_a_bundle_declares_its_inputs_labels_and_provenance(bundle: Path) -> None:
    adapter = load_adapter(bundle, "cpu")
    assert isinstance(adapter, BundleAdapter)
    assert adapter.sequences == ("t1ce", "t1", "t2", "flair")  # channel_def T1c, T1, T2, FLAIR
    assert adapter.labels.name == "regions" and adapter.labels.channels == ("tc", "wt", "et")
    assert adapter.uncertainty_method == TEST_TIME_FLIPS and adapter.gradcam_layer == "up_layers.1"
    assert type(adapter.inferer).__name__ == "SlidingWindowInferer" and list(adapter.inferer.roi_size) == [32] * 3
    provenance = adapter.metadata["model_card"]["provenance"]
    assert provenance["name"] == "tiny-brats-segresnet" and provenance["version"] == "0.3.1"
    assert provenance["authors"] == "neuroseg test suite" and provenance["license"] == "Apache-2.0"


@pytest.mark.slow
def test_a_bundle_segments_with_flip_uncertainty_and_gradcam(bundle: Path) -> None:
    adapter = load_adapter(bundle, "cpu")
    result = adapter.segment(images(), lps_affine(), mc_samples=3)
    assert result.labels.shape == SHAPE and set(np.unique(result.labels)) <= {0, 1, 2, 4}
    assert result.mc_samples == 3 and result.gradcam_layer == "up_layers.1"
    stacked = np.stack([result.probabilities[k] for k in ("background", "ncr", "ed", "et")])
    assert np.allclose(stacked.sum(axis=0), 1.0, atol=1e-4)
    # the labels follow the declared region rule on the mapped-back probabilities
    assert np.array_equal(result.labels, adapter.labels.labels_from_probabilities(stacked))
    assert max(float(v.max()) for v in result.variance.values()) > 0, "three different flips must disagree"
    present = [name for name, value in (("ncr", 1), ("ed", 2), ("et", 4)) if np.any(result.labels == value)]
    assert present, "the shifted output bias makes the random network predict tumour"
    for name in present:
        assert 0.0 <= result.gradcam[name].min() and np.isclose(result.gradcam[name].max(), 1.0)
    one = adapter.segment(images(), lps_affine(), mc_samples=1, gradcam=False)
    assert all(float(v.max()) == 0 for v in one.variance.values()) and one.gradcam_layer == ""


def test_a_torchscript_bundle_in_a_zip_loads_through_monai(tmp_path: Path) -> None:
    folder = make_bundle(tmp_path / "ts_bundle", torchscript=True)
    assert not (folder / "models" / "model.pt").exists()
    adapter = load_adapter(zip_bundle(folder, tmp_path / "ts_bundle.zip"), "cpu")
    assert adapter.torchscript and adapter.gradcam_layer == ""
    assert adapter.metadata["model_card"]["gradcam"]["why"] == "TorchScript modules take no hooks"
    result = adapter.segment(images(), lps_affine(), mc_samples=2)
    assert result.labels.shape == SHAPE and result.gradcam_layer == ""
    with pytest.raises(InputError, match="TorchScript, which takes no Grad-CAM hooks"):
        adapter.segment(images(), lps_affine(), mc_samples=1, gradcam_layer="up_layers.1")


def test_a_study_without_a_needed_sequence_is_refused_naming_the_bundle(bundle: Path) -> None:
    adapter = load_adapter(bundle, "cpu")
    partial = {key: value for key, value in images().items() if key != "t2"}
    with pytest.raises(InputError, match=rf"model {bundle} needs the sequences t1ce, t1, t2, flair .*lacks t2"):
        adapter.segment(partial, lps_affine(), mc_samples=1)


@pytest.mark.parametrize(("change", "message"), [
    (lambda meta, config: config["network_def"].update(in_channels=3),
     "network_def has in_channels=3 but metadata.json's network_data_format declares 4"),
    (lambda meta, config: meta["network_data_format"]["inputs"]["image"]["channel_def"].update({"3": "DWI"}),
     "input channel 3 is 'DWI', which neuroseg does not know"),
    (lambda meta, config: meta["network_data_format"]["outputs"]["pred"]["channel_def"].update({"2": "Necrosis"}),
     "neither the regions TC/WT/ET nor the classes"),
    (lambda meta, config: meta.update(neuroseg={"label_convention": "brats2019"}),
     "unknown label convention 'brats2019'"),
])
def test_a_bundle_that_does_not_fit_is_a_clear_input_error(tmp_path: Path, change, message: str) -> None:
    meta, config = copy.deepcopy(METADATA), copy.deepcopy(INFERENCE_CONFIG)
    change(meta, config)
    build = copy.deepcopy(INFERENCE_CONFIG) if "in_channels" in message else config
    folder = make_bundle(tmp_path / "bad", metadata=meta, config=build)
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=message):
        load_adapter(folder, "cpu")


def test_weights_that_do_not_fit_the_network_are_refused(tmp_path: Path) -> None:
    folder = make_bundle(tmp_path / "bundle")
    config = copy.deepcopy(INFERENCE_CONFIG)
    config["network_def"]["init_filters"] = 8
    config["network_def"]["norm"] = ["GROUP", {"num_groups": 4}]
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="the weights do not fit network_def"):
        load_adapter(folder, "cpu")


@pytest.mark.slow
def test_predict_runs_a_bundle_and_reports_its_provenance(tmp_path: Path, bundle: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    arguments = []
    for key, volume in images().items():
        write_nifti(volume, lps_affine(), tmp_path / f"{key}.nii.gz")
        arguments += [f"--{key}", str(tmp_path / f"{key}.nii.gz")]
    code = main(["predict", *arguments, "--out", str(tmp_path / "out"), "--model", str(bundle),
                 "--mc-samples", "2", "--device", "cpu", "--no-figures"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["model"]["name"] == "tiny-brats-segresnet" and report["model"]["version"] == "0.3.1"
    card = report["model"]["model_card"]
    assert card["provenance"]["license"] == "Apache-2.0" and card["uncertainty"]["method"] == TEST_TIME_FLIPS
    assert card["label_convention"] == "regions" and card["gradcam"]["layer"] == "up_layers.1"
    assert "test-time-flips, 2 passes; Grad-CAM up_layers.1" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_model_times_a_bundles_flips_against_one_plain_pass(tmp_path: Path, bundle: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    code = main(["bench", "model", "--model", str(bundle), "--shape", "40", "40", "32", "--mc-samples", "4",
                 "--device", "cpu", "--json", str(tmp_path / "bench.json")])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["model"]["kind"] == "monai-bundle"
    timings = report["timings"]
    assert timings["one_pass"]["ratio"] == 1.0 and "fold_ensemble" not in timings
    assert timings["flips"]["passes"] == 4 and timings["uncertainty"]["passes"] == 4
    # four passes of the same network cannot cost less than two single ones
    assert timings["flips"]["ratio"] > 2 and timings["uncertainty"]["ratio"] > 2, timings
    assert timings["gradcam"]["note"] == "layer up_layers.1"
    out = capsys.readouterr().out
    assert "test-time flips alone, 4 passes of one network" in out and "x one pass" in out
