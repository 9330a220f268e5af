"""The network: shapes, trunk/head split, config round trip, dropout switches."""

from __future__ import annotations

import pytest
import torch

from neuroseg.model.network import NetworkConfig, build_network, set_dropout, with_presence
from tests.model.model_helpers import TINY


def test_network_maps_images_and_flags_to_four_class_logits() -> None:
    network = build_network(TINY).eval()
    x = torch.randn(2, TINY.in_channels, 16, 16, 8)
    with torch.no_grad():
        out = network(x)
        split = network.head(network.trunk(x))
    assert out.shape == (2, 4, 16, 16, 8)
    assert torch.allclose(out, split)


def test_head_channel_first_logits_match_the_5d_head() -> None:
    network = build_network(TINY).eval()
    features = torch.randn(1, TINY.channels[0], 4, 4, 4)
    with torch.no_grad():
        full = network.head(features)[0].flatten(1)
        flat = network.head.logits_cf(features[0].flatten(1))
    assert torch.allclose(full, flat, atol=1e-6)


def test_mc_logits_equal_masked_single_passes() -> None:
    head = build_network(TINY).head.eval()
    features = torch.randn(TINY.channels[0], 50)
    masks = head.sample_masks(3)
    with torch.no_grad():
        stacked = head.mc_logits(head.hidden_units(features), masks)
        single = torch.stack([head.logits_cf(features, masks[i]) for i in range(3)])
    assert torch.allclose(stacked, single, atol=1e-5)


def test_with_presence_appends_constant_flag_channels() -> None:
    images = torch.randn(1, 4, 3, 3, 3)
    x = with_presence(images, torch.tensor([1.0, 0.0, 1.0, 1.0]))
    assert x.shape == (1, 8, 3, 3, 3)
    assert torch.equal(x[0, 4:, 0, 0, 0], torch.tensor([1.0, 0.0, 1.0, 1.0]))


def test_config_round_trips_through_a_plain_dict() -> None:
    assert NetworkConfig.from_dict(TINY.to_dict()) == TINY


@pytest.mark.parametrize(("field", "value", "message"), [
    ("in_sequences", ("t1", "dwi"), "in_sequences"),
    ("dropout", 1.0, "dropout"),
    ("patch_size", (16, 16, 15), "patch_size"),
    ("channels", (8,), "channels"),
])
def test_config_rejects_bad_values(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NetworkConfig(**{"channels": (4, 8), "patch_size": (16, 16, 16), field: value})


def test_config_from_dict_names_unknown_fields() -> None:
    with pytest.raises(ValueError, match="unknown field.*depth"):
        NetworkConfig.from_dict({**TINY.to_dict(), "depth": 3})


def test_set_dropout_switches_only_the_head() -> None:
    network = build_network(TINY)
    set_dropout(network, head=True)
    assert network.head.drop.training
    assert not any(m.training for n, m in network.trunk.named_modules() if "Dropout" in type(m).__name__)
    set_dropout(network, head=False, trunk=True)
    assert not network.head.drop.training
    assert all(m.training for m in network.trunk.modules() if isinstance(m, torch.nn.Dropout3d))
