"""Fixtures of the worker tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of a tiny random network: honest for testing the plumbing, useless as a model.

    2 mm voxels and a few channels keep inference to seconds on a small CPU.
    """
    import torch

    from neuroseg.model.checkpoint import save_checkpoint
    from neuroseg.model.network import NetworkConfig, build_network

    torch.manual_seed(0)
    config = NetworkConfig(channels=(4, 8), head_channels=4, patch_size=(32, 32, 32), spacing_mm=2.0)
    path = tmp_path_factory.mktemp("model") / "tiny-random.pt"
    save_checkpoint(path, build_network(config), config,
                    {"name": "tiny-random-test-network", "version": "0.0.test"})
    return path
