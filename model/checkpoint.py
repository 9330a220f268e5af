"""Checkpoint files: the weights plus everything needed to rebuild and describe the network.

A checkpoint is a ``torch.save`` dictionary, read back with ``weights_only=True``
(no pickled code runs on load)::

    {
        "format": "neuroseg-checkpoint",
        "format_version": 1,
        "config": NetworkConfig.to_dict(),      # architecture and input spec
        "input_spec": {"sequences": [...], "presence_flags": True, "spacing_mm": 1.0,
                       "normalisation": "robust z-score in head mask"},
        "classes": ["background", "ncr", "ed", "et"],
        "brats_labels": [0, 1, 2, 4],
        "metadata": {"name": ..., "version": ..., ...},   # training info, model card
        "state_dict": {...},
    }

Loading a file that is not such a checkpoint, has another format version, an
unknown config field, or weights that do not fit the config, raises
:class:`CheckpointError` (a ``ValueError``) that names the file and the problem.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neuroseg.common.files import atomic_write
from neuroseg.model.network import BRATS_LABELS, CLASS_NAMES, NetworkConfig, build_network

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "neuroseg-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1

SHIPPED_WEIGHTS: Path = Path(__file__).resolve().parent / "weights" / "neuroseg-demo.pt"
"""The demo weights that ship with the package (trained on phantoms by ``neuroseg train``)."""

REQUIRED_METADATA = ("name", "version")


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message names the file and the problem."""


def input_spec(config: NetworkConfig) -> dict[str, Any]:
    """The input contract recorded in a checkpoint (what preprocessing must deliver)."""
    return {
        "sequences": list(config.in_sequences),
        "presence_flags": True,
        "spacing_mm": config.spacing_mm,
        "orientation": "LPS-aligned array axes",
        "normalisation": "robust z-score inside the head mask, zero outside",
    }


def save_checkpoint(path: str | os.PathLike[str], network: nn.Module, config: NetworkConfig,
                    metadata: dict[str, Any]) -> None:
    """Write ``network``'s weights, its config and ``metadata`` to ``path`` atomically.

    Parameters
    ----------
    path: path-like
        Destination file (conventionally ``.pt``); its folder is created.
    network: torch.nn.Module
        A network built by :func:`neuroseg.model.network.build_network` with ``config``.
    config: NetworkConfig
        The architecture; stored so that :func:`load_checkpoint` can rebuild it.
    metadata: dict
        JSON-serialisable; must hold ``"name"`` and ``"version"`` (strings).
        Put training information and the model card here.

    Raises
    ------
    TypeError
        If ``config`` is not a NetworkConfig or ``metadata`` not a dict.
    ValueError
        If ``metadata`` lacks name/version or is not JSON-serialisable, or the
        network's weights do not match ``config``.
    """
    if not isinstance(config, NetworkConfig):
        raise TypeError(f"config must be a NetworkConfig, not {type(config).__name__}")
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, not {type(metadata).__name__}")
    missing = [key for key in REQUIRED_METADATA if not isinstance(metadata.get(key), str) or not metadata.get(key)]
    if missing:
        raise ValueError(f"checkpoint metadata needs non-empty string(s) {', '.join(missing)}")
    try:
        metadata = json.loads(json.dumps(metadata))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint metadata must be JSON-serialisable: {exc}") from exc
    state = {key: value.detach().cpu().clone() for key, value in network.state_dict().items()}
    _check_state_dict(state, config, source="the network passed to save_checkpoint")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "config": config.to_dict(),
        "input_spec": input_spec(config),
        "classes": list(CLASS_NAMES),
        "brats_labels": list(BRATS_LABELS),
        "metadata": metadata,
        "state_dict": state,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda stream: torch.save(payload, stream))
    log.info("saved checkpoint %s (%s %s)", path, metadata["name"], metadata["version"])


def _check_state_dict(state: dict[str, torch.Tensor], config: NetworkConfig, *, source: str) -> None:
    expected = build_network(config).state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{key} {tuple(state[key].shape)} (expected {tuple(expected[key].shape)})"
        for key in sorted(set(expected) & set(state))
        if tuple(state[key].shape) != tuple(expected[key].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing weights {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected weights {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
    if wrong:
        problems.append(f"wrong shapes {', '.join(wrong[:5])}{' ...' if len(wrong) > 5 else ''}")
    if problems:
        raise CheckpointError(
            f"{source}: weights do not match the network config {config.to_dict()}: {'; '.join(problems)}"
        )


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check the raw checkpoint dictionary (no network is built).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    CheckpointError
        If the file is unreadable or not a neuroseg checkpoint of a supported version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"model checkpoint {path} does not exist; train one with `neuroseg train` "
            f"or point NEUROSEG_MODEL_PATH at a neuroseg checkpoint"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a corrupt or foreign file
        raise CheckpointError(f"{path} is not a readable neuroseg checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a neuroseg checkpoint (no format marker {CHECKPOINT_FORMAT!r}); "
            f"save it with neuroseg.model.checkpoint.save_checkpoint"
        )
    version = payload.get("format_version")
    if version != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r}; this neuroseg reads version "
            f"{CHECKPOINT_FORMAT_VERSION}"
        )
    for key in ("config", "state_dict", "metadata"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"{path} is damaged: its {key!r} entry is missing or not a dictionary")
    return payload


def load_checkpoint(path: str | os.PathLike[str],
                    device: str | torch.device = "cpu") -> tuple[nn.Module, NetworkConfig, dict[str, Any]]:
    """Rebuild the network stored in ``path``.

    Parameters
    ----------
    path: path-like
        A file written by :func:`save_checkpoint`.
    device: str or torch.device
        Where to put the network.

    Returns
    -------
    tuple
        ``(network, config, metadata)``; the network is in eval mode.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    CheckpointError
        If the file is corrupt, of another format or version, or its weights do
        not match its config.
    """
    payload = read_checkpoint(path)
    try:
        config = NetworkConfig.from_dict(payload["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: its network config cannot be used: {exc}") from exc
    state = payload["state_dict"]
    _check_state_dict(state, config, source=str(path))
    network = build_network(config)
    network.load_state_dict(state)
    network.to(device).eval()
    metadata = dict(payload["metadata"])
    metadata.setdefault("input_spec", payload.get("input_spec", input_spec(config)))
    return network, config, metadata
