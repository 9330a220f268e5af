"""The model adapter: declared label conventions and our own checkpoint through the one interface."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from neuroseg.common.errors import InputError
from neuroseg.model.adapters import (
    LABEL_CONVENTIONS,
    MC_DROPOUT,
    CheckpointAdapter,
    ModelMismatchError,
    label_convention,
    load_adapter,
)
from neuroseg.model.checkpoint import save_checkpoint
from neuroseg.model.network import build_network
from tests.model.model_helpers import TINY, head_volume, lps_affine

REGIONS = LABEL_CONVENTIONS["regions"]


def region_logits(tc: np.ndarray, wt: np.ndarray, et: np.ndarray) -> np.ndarray:
    """Hard region masks as confident logits, in the channel order (TC, WT, ET)."""
    return np.stack([np.where(mask, 8.0, -8.0) for mask in (tc, wt, et)]).astype(np.float32)


def test_regions_become_ncr_ed_et_by_the_declared_rule() -> None:
    rng = np.random.default_rng(0)
    et = rng.random((6, 5, 4)) > 0.7
    tc = et | (rng.random((6, 5, 4)) > 0.6)
    wt = tc | (rng.random((6, 5, 4)) > 0.5)
    probabilities = REGIONS.class_probabilities(region_logits(tc, wt, et)).numpy()
    assert np.allclose(probabilities.sum(axis=0), 1.0, atol=1e-5) and probabilities.min() >= 0
    labels = REGIONS.labels_from_probabilities(probabilities)
    assert np.array_equal(labels == 4, et)
    assert np.array_equal(labels == 1, tc & ~et)
    assert np.array_equal(labels == 2, wt & ~tc)
    assert np.array_equal(labels == 0, ~wt)


def test_regions_in_another_channel_order_are_read_by_name() -> None:
    order = REGIONS.with_channels(("et", "tc", "wt"))
    et = np.array([True, False, False, False])
    tc = np.array([True, True, False, False])
    wt = np.array([True, True, True, False])
    logits = region_logits(tc, wt, et)[[2, 0, 1]]
    assert order.labels_from_probabilities(order.class_probabilities(logits).numpy()).tolist() == [4, 1, 2, 0]


def test_softmax_channels_and_label_values_of_brats_2021_and_2023() -> None:
    logits = torch.eye(4)[:, [3, 0, 1, 2]] * 10  # voxel k is most likely class (3, 0, 1, 2)[k]
    for name in ("brats2021", "brats2023"):
        convention = LABEL_CONVENTIONS[name]
        labels = convention.labels_from_probabilities(convention.class_probabilities(logits).numpy())
        assert labels.tolist() == [4, 0, 1, 2]
    assert LABEL_CONVENTIONS["brats2023"].to_brats2021(np.array([0, 1, 2, 3])).tolist() == [0, 1, 2, 4]
    assert LABEL_CONVENTIONS["brats2021"].to_brats2021(np.array([0, 1, 2, 4])).tolist() == [0, 1, 2, 4]
    with pytest.raises(ModelMismatchError, match=r"label values \[4\] are not in the brats2023"):
        LABEL_CONVENTIONS["brats2023"].to_brats2021(np.array([0, 4]))


def test_unknown_conventions_and_wrong_channel_counts_are_input_errors() -> None:
    with pytest.raises(InputError, match="dataset.json: unknown label convention 'brats2019'"):
        label_convention("brats2019", "dataset.json")
    with pytest.raises(InputError, match="expects 3 output channels"):
        REGIONS.class_probabilities(np.zeros((4, 2, 2, 2), np.float32))
    with pytest.raises(InputError, match="needs the channels"):
        REGIONS.with_channels(("tc", "wt", "ncr"))


def test_our_checkpoint_runs_through_the_adapter(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, build_network(TINY), TINY,
                    {"name": "tiny-adapter", "version": "0.3", "model_card": {"intended_use": "tests"}})
    adapter = load_adapter(path, "cpu")
    assert isinstance(adapter, CheckpointAdapter)
    assert adapter.uncertainty_method == MC_DROPOUT and adapter.labels.name == "brats2021"
    assert adapter.sequences == tuple(TINY.in_sequences)
    card = adapter.metadata["model_card"]
    assert card["intended_use"] == "tests" and card["uncertainty"] == {"method": MC_DROPOUT}
    assert card["provenance"]["name"] == "tiny-adapter" and card["provenance"]["kind"] == "neuroseg-checkpoint"
    result = adapter.segment({"flair": head_volume((20, 18, 16)), "t1": head_volume((20, 18, 16), seed=2)},
                             lps_affine(), mc_samples=2, gradcam=False)
    assert result.labels.shape == (20, 18, 16) and result.model_name == "tiny-adapter"
    assert set(np.unique(result.labels)) <= {0, 1, 2, 4}


def test_a_folder_that_is_no_model_names_what_is_expected(tmp_path: Path) -> None:
    (tmp_path / "nnunet").mkdir()
    (tmp_path / "nnunet" / "plans.json").write_text("{}")
    with pytest.raises(InputError, match="nnU-Net v2 folder"):
        load_adapter(tmp_path / "nnunet", "cpu")
    with pytest.raises(InputError, match="without configs/metadata.json"):
        load_adapter(tmp_path, "cpu")
    with pytest.raises(FileNotFoundError, match="absent"):
        load_adapter(tmp_path / "absent", "cpu")
