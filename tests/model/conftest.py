"""Test models made here with the libraries' own tools, shared by every module that runs them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.model.bundle_helpers import make_bundle
from tests.model.nnunet_helpers import make_nnunet_model


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SegResNet TC/WT/ET bundle written and saved through ``monai.bundle`` (seconds)."""
    return make_bundle(tmp_path_factory.mktemp("bundles") / "tiny_brats")


@pytest.fixture(scope="session")
def nnunet_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Planned, preprocessed and trained (3 iterations, folds 0 and 1) by nnU-Net itself: about 3 minutes.

    Session-scoped: the adapter tests and the PACS round trip share the one model.
    """
    return make_nnunet_model(tmp_path_factory.mktemp("nnunet"))
