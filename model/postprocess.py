"""Post-processing of a label map with BraTS conventions (switchable, on the caller's grid).

Two rules, applied in this order to the BraTS labels 0/1/2/4:

1. **Small disconnected components**: a connected component of the whole
   tumour (labels 1+2+4, 26-connectivity) smaller than ``min_component_ml``
   is removed (set to background), unless it is the largest component.
2. **Minimum enhancing-tumour volume**: when the whole enhancing tumour
   (label 4) is smaller than ``min_et_ml``, it is relabelled as necrotic core
   (label 1). This is the BraTS practice (e.g. the winning BraTS 2020
   post-processing) against the Dice-0 penalty that a few false-positive ET
   voxels cost on a non-enhancing tumour; TC and WT are unchanged by it.

Only the label map changes; probabilities, uncertainty and Grad-CAM maps stay
as the network gave them. The thresholds of the shipped defaults were chosen on
the real validation cases (see ``model/MODEL_CARD.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from neuroseg.model.preprocess import voxel_volume_ml

DEFAULT_MIN_ET_ML = 0.5
DEFAULT_MIN_COMPONENT_ML = 0.2


@dataclass(frozen=True)
class PostprocessConfig:
    """What :func:`postprocess_labels` does; ``enabled=False`` leaves the labels as predicted."""

    enabled: bool = True
    min_et_ml: float = DEFAULT_MIN_ET_ML
    min_component_ml: float = DEFAULT_MIN_COMPONENT_ML

    def __post_init__(self) -> None:
        for name in ("min_et_ml", "min_component_ml"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"{name}={value!r}: must be a volume in mL >= 0")

    def to_dict(self) -> dict[str, float | bool]:
        return {"enabled": self.enabled, "min_et_ml": self.min_et_ml, "min_component_ml": self.min_component_ml}


def postprocess_labels(labels: np.ndarray, affine: np.ndarray, config: PostprocessConfig) -> tuple[np.ndarray, dict]:
    """Apply the rules of the module docstring; returns the new labels and what was changed.

    Parameters
    ----------
    labels: numpy.ndarray
        BraTS labels 0/1/2/4 (not changed in place).
    affine: numpy.ndarray
        4x4 voxel-to-mm affine of ``labels`` (for volumes).
    config: PostprocessConfig

    Returns
    -------
    tuple
        The labels and ``{"removed_components": n, "removed_ml": v, "et_to_ncr_ml": v}``.
    """
    changes = {"removed_components": 0, "removed_ml": 0.0, "et_to_ncr_ml": 0.0}
    if not config.enabled:
        return labels, changes
    out = np.array(labels, dtype=np.uint8, copy=True)
    voxel_ml = voxel_volume_ml(affine)
    if config.min_component_ml > 0:
        components, count = ndimage.label(out > 0, structure=np.ones((3, 3, 3), dtype=bool))
        if count > 1:
            sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
            small = (sizes * voxel_ml < config.min_component_ml) & (np.arange(count) != int(np.argmax(sizes)))
            if small.any():
                drop = np.isin(components, np.flatnonzero(small) + 1)
                out[drop] = 0
                changes["removed_components"] = int(small.sum())
                changes["removed_ml"] = round(float(sizes[small].sum() * voxel_ml), 3)
    et = out == 4
    et_ml = float(et.sum()) * voxel_ml
    if 0 < et_ml < config.min_et_ml:
        out[et] = 1
        changes["et_to_ncr_ml"] = round(et_ml, 3)
    return out, changes
