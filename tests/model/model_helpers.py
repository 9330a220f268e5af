"""Small synthetic volumes and tiny networks shared by the model (part 1) tests."""

from __future__ import annotations

import numpy as np
import torch

from neuroseg.model.runtime import LoadedModel, model_from_network
from neuroseg.model.network import NetworkConfig, build_network

TINY = NetworkConfig(channels=(4, 8), head_channels=8, patch_size=(16, 16, 16))


def tiny_model(config: NetworkConfig = TINY, seed: int = 0) -> LoadedModel:
    """A randomly initialised tiny network (seeded)."""
    torch.manual_seed(seed)
    return model_from_network(build_network(config), {"name": "tiny-test", "version": "0.test"})


def head_volume(shape: tuple[int, int, int] = (28, 26, 24), seed: int = 0, *,
                cube: tuple[slice, slice, slice] | None = None, brightness: float = 3.0) -> np.ndarray:
    """An ellipsoidal 'head' of intensity ~100 with noise on a zero background, optionally a bright cube."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    inside = (grid ** 2).sum(axis=0) < 0.8
    volume = np.where(inside, 100.0 + rng.normal(0, 5, shape), 0.0).astype(np.float32)
    if cube is not None:
        volume[cube] = 100.0 * brightness + rng.normal(0, 5, volume[cube].shape)
    return volume


def lps_affine(spacing=(1.0, 1.0, 1.0), origin=(-10.0, 20.0, -5.0)) -> np.ndarray:
    """An axis-aligned LPS affine."""
    affine = np.diag([*spacing, 1.0]).astype(float)
    affine[:3, 3] = origin
    return affine


def rotation(degrees: float, axis: int) -> np.ndarray:
    """A 3x3 rotation about one world axis."""
    angle = np.deg2rad(degrees)
    c, s = np.cos(angle), np.sin(angle)
    i, j = [k for k in range(3) if k != axis]
    matrix = np.eye(3)
    matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = c, -s, s, c
    return matrix
