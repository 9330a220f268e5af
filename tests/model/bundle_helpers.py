"""Tiny MONAI bundles made here with MONAI's own tools (no weights are downloaded)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import torch

# the layout and keys of the Model Zoo's brats_mri_segmentation, shrunk to run in seconds
INFERENCE_CONFIG: dict[str, Any] = {
    "imports": ["$import torch"],
    "bundle_root": ".",
    "device": "$torch.device('cpu')",
    "network_def": {
        "_target_": "SegResNet", "spatial_dims": 3, "blocks_down": [1, 1, 1], "blocks_up": [1, 1],
        "init_filters": 4, "norm": ["GROUP", {"num_groups": 2}], "in_channels": 4, "out_channels": 3,
        "dropout_prob": 0.0,
    },
    "network": "$@network_def.to(@device)",
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32], "sw_batch_size": 1, "overlap": 0.25},
}
METADATA: dict[str, Any] = {
    "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
              "meta_schema_20220324.json",
    "version": "0.3.1",
    "name": "tiny-brats-segresnet",
    "task": "Brain tumour subregion segmentation (test)",
    "description": "A tiny SegResNet with random weights, made by the neuroseg tests",
    "authors": "neuroseg test suite",
    "license": "Apache-2.0",
    "copyright": "Copyright (c) neuroseg contributors",
    "data_source": "none (random weights)",
    "network_data_format": {
        "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "MR", "num_channels": 4,
                             "spatial_shape": [32, 32, 32], "dtype": "float32",
                             "channel_def": {"0": "T1c", "1": "T1", "2": "T2", "3": "FLAIR"}}},
        "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 3,
                             "spatial_shape": [32, 32, 32], "dtype": "float32",
                             "channel_def": {"0": "Tumor core", "1": "Whole tumor", "2": "Enhancing tumor"}}},
    },
}


def make_bundle(root: Path, *, seed: int = 0, torchscript: bool = False, metadata: dict | None = None,
                config: dict | None = None, final_bias: tuple[float, float, float] | None = (0.5, 1.5, -0.5)
                ) -> Path:
    """Write a bundle folder ``root`` (configs/metadata.json, configs/inference.json, models/model.pt|ts).

    The network is built from the config by ``monai.bundle.ConfigParser``; ``final_bias`` shifts the
    output logits (TC, WT, ET) so the random network predicts every region somewhere.
    """
    from monai.bundle import ConfigParser, ckpt_export

    config = copy.deepcopy(config or INFERENCE_CONFIG)
    metadata = copy.deepcopy(metadata or METADATA)
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "models").mkdir(parents=True, exist_ok=True)
    ConfigParser.export_config_file(config, root / "configs" / "inference.json", indent=1)
    ConfigParser.export_config_file(metadata, root / "configs" / "metadata.json", indent=1)
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    torch.manual_seed(seed)
    network = parser.get_parsed_content("network_def")
    if final_bias is not None:
        final = [m for m in network.modules() if isinstance(m, torch.nn.Conv3d)][-1]
        with torch.no_grad():
            final.bias.copy_(torch.tensor(final_bias))
    weights = root / "models" / "model.pt"
    torch.save(network.state_dict(), weights)
    if torchscript:  # MONAI's export: TorchScript with the metadata and config embedded
        ckpt_export(net_id="network_def", filepath=str(root / "models" / "model.ts"), ckpt_file=str(weights),
                    meta_file=str(root / "configs" / "metadata.json"),
                    config_file=str(root / "configs" / "inference.json"))
        weights.unlink()
    return root


def zip_bundle(folder: Path, archive: Path) -> Path:
    """The bundle as a zip holding its folder (as the Model Zoo ships them)."""
    return Path(shutil.make_archive(str(archive.with_suffix("")), "zip", folder.parent, folder.name))


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1))
