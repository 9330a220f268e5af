"""Checkpoints: round trip and clear errors for anything else."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from neuroseg.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from neuroseg.model.network import NetworkConfig, build_network
from tests.model.model_helpers import TINY

META = {"name": "tiny", "version": "1.2.3", "training": {"epochs": 1}, "model_card": {"data": "none"}}


def test_checkpoint_round_trip_restores_config_weights_and_metadata(tmp_path: Path) -> None:
    torch.manual_seed(1)
    network = build_network(TINY).eval()
    save_checkpoint(tmp_path / "m.pt", network, TINY, META)
    loaded, config, metadata = load_checkpoint(tmp_path / "m.pt", "cpu")
    x = torch.randn(1, TINY.in_channels, 8, 8, 8)
    with torch.no_grad():
        assert torch.equal(network(x), loaded(x))
    assert config == TINY
    assert metadata["version"] == "1.2.3" and metadata["model_card"] == {"data": "none"}
    assert metadata["input_spec"]["sequences"] == ["t1", "t1ce", "t2", "flair"]
    assert not loaded.training


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    save_checkpoint(path, build_network(TINY), TINY, META)
    payload = torch.load(path, weights_only=True)
    payload["config"]["channels"] = [8, 16]
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="do not match the network config.*wrong shapes"):
        load_checkpoint(path)


def test_saving_a_network_with_another_config_is_refused(tmp_path: Path) -> None:
    other = NetworkConfig(channels=(4, 8, 16), patch_size=(16, 16, 16))
    with pytest.raises(CheckpointError, match="missing weights"):
        save_checkpoint(tmp_path / "m.pt", build_network(TINY), other, META)


def test_corrupt_file_is_refused_with_its_name(tmp_path: Path) -> None:
    path = tmp_path / "broken.pt"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="broken.pt is not a readable neuroseg checkpoint"):
        load_checkpoint(path)


def test_foreign_torch_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="not a neuroseg checkpoint"):
        load_checkpoint(path)


def test_other_format_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    save_checkpoint(path, build_network(TINY), TINY, META)
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(path)


def test_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing.pt does not exist"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_metadata_needs_name_and_version(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="version"):
        save_checkpoint(tmp_path / "m.pt", build_network(TINY), TINY, {"name": "x"})
