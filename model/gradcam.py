"""Segmentation Grad-CAM: which activations made the network predict each tumour class.

For class c the score is the sum of the class-c logits over the voxels
predicted as c; when fewer than :data:`GRADCAM_MIN_VOXELS` model voxels are
predicted as c (a small class that the argmax on the coarse grid may miss),
over the :data:`GRADCAM_MIN_VOXELS` voxels of highest p(c) instead
(:func:`gradcam_score_masks`).

- At a trunk layer (:func:`grad_cam_layer`; the default is
  :func:`neuroseg.model.network.default_gradcam_layer`, the second-to-last
  decoder stage, at half resolution) the gradients of the score weight the
  layer's activations voxel by voxel (``ReLU(sum_k dS/dA_k(v) * A_k(v))``, the
  element-wise "HiResCAM" form: with globally averaged weights the deep-layer
  map lit up healthy brain and missed the tumour on a real case). This costs one
  extra forward pass and a backward from each class score to the layer. The
  pass runs over the whole volume at once where it has at most
  :data:`GRADCAM_WHOLE_VOLUME_MAX_VOXELS` voxels (:func:`gradcam_window`): no
  window edges cut the explanation, and on a real 4-sequence case it took
  0.3 s against 2.5 s over the 18 overlapping training-size windows, with
  maps more concentrated inside their class.
- At ``trunk.output`` (the head's input, :func:`grad_cam`) the weights are the
  gradients averaged over the volume (classic Grad-CAM). No extra pass is
  needed, but as the head is pointwise the map is nearly the class logit again.

Each map is kept inside the head mask and divided by its maximum, so it lies in
[0, 1] and brighter means more important. Should the ReLU leave nothing, the map
is the min-max scaled weighted sum instead, so a predicted class always gets a
non-empty map. (MONAI's ``GradCAM`` default normaliser maps (min, max) to (1, 0),
i.e. it *inverts* the scale; we do not use it.)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from neuroseg.model.network import NetworkConfig, layer_scale, set_dropout
from neuroseg.model.runtime import LoadedModel, autocast, chunk_size, chunks, window_size

GRADCAM_MIN_VOXELS = 8
"""A class with fewer predicted model voxels is explained from its top-probability voxels."""
GRADCAM_WHOLE_VOLUME_MAX_VOXELS = 160**3
"""Largest model-grid volume whose Grad-CAM pass runs as one window (about 0.5 GB of float32 activations
for the default network); larger volumes run in training-size windows."""


def gradcam_window(config: NetworkConfig, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The window of the Grad-CAM pass: the whole volume (padded to the network divisor) when it has at
    most :data:`GRADCAM_WHOLE_VOLUME_MAX_VOXELS` voxels, else the sliding-window size."""
    whole = tuple(int(math.ceil(n / config.divisor)) * config.divisor for n in shape)
    return whole if math.prod(whole) <= GRADCAM_WHOLE_VOLUME_MAX_VOXELS else window_size(config, shape)


def gradcam_score_masks(probabilities: torch.Tensor, predicted: torch.Tensor, n_classes: int,
                        min_voxels: int = GRADCAM_MIN_VOXELS) -> torch.Tensor:
    """(n_classes - 1, V) float masks of the voxels whose class-c logits make the Grad-CAM score of class c.

    The voxels predicted as c; when fewer than ``min_voxels`` are, the
    ``min_voxels`` voxels of highest p(c) (so a small class is still explained).
    """
    masks = torch.zeros(n_classes - 1, predicted.shape[0], device=predicted.device)
    for row, cls in enumerate(range(1, n_classes)):
        chosen = predicted == cls
        if int(chosen.sum()) >= min_voxels:
            masks[row] = chosen.float()
        else:
            masks[row, torch.topk(probabilities[cls], min(min_voxels, predicted.shape[0])).indices] = 1.0
    return masks


def _normalise_maps(raw: torch.Tensor, mask: torch.Tensor | None, explained: torch.Tensor) -> torch.Tensor:
    """ReLU, zero outside ``mask``, divide by the maximum; a class to explain whose ReLU map is empty
    gets its min-max scaled raw map instead (see the module docstring)."""
    maps = raw.clamp_min(0)
    if mask is not None:
        maps[:, ~mask] = 0
    for row in range(maps.shape[0]):
        if not bool(explained[row]):
            maps[row].zero_()
            continue
        peak = maps[row].max()
        if peak <= 0:
            values = raw[row] if mask is None else raw[row][mask]
            low, high = values.min(), values.max()
            maps[row] = (raw[row] - low) / (high - low) if high > low else torch.ones_like(raw[row])
            if mask is not None:
                maps[row, ~mask] = 0
        else:
            maps[row] /= peak
    return maps


def grad_cam(model: LoadedModel, features: torch.Tensor, predicted: torch.Tensor,
             mask: torch.Tensor | None = None, score_masks: torch.Tensor | None = None) -> torch.Tensor:
    """Segmentation Grad-CAM at the trunk output (the head's input) for the tumour classes.

    Cheap (no extra trunk pass), but as the head is pointwise the map is close
    to the class logit itself; :func:`grad_cam_layer` explains from a deeper layer.

    Parameters
    ----------
    features: torch.Tensor
        (C, V) activations of the target layer ``trunk.output``.
    predicted: torch.Tensor
        (V,) predicted class index per voxel (0..3).
    mask: torch.Tensor, optional
        (V,) bool: voxels that may carry an explanation (the head); the map is
        zero elsewhere and normalised over the rest.
    score_masks: torch.Tensor, optional
        (3, V) voxels whose logits make each class's score
        (:func:`gradcam_score_masks`); default the voxels predicted as the class.

    Returns
    -------
    torch.Tensor
        (3, V) float32 maps for NCR, ED, ET, each in [0, 1].
    """
    head = model.network.head
    set_dropout(model.network, head=False)
    channels, total = features.shape
    classes = range(1, model.config.n_classes)
    if score_masks is None:
        score_masks = torch.stack([(predicted == cls).float() for cls in classes])
    weights = torch.zeros(len(classes), channels, device=features.device)
    chunk = chunk_size(features.device)
    with torch.enable_grad():
        for start, stop in chunks(total, chunk):
            chosen = score_masks[:, start:stop]
            present = [(row, cls) for row, cls in enumerate(classes) if bool(chosen[row].any())]
            if not present:
                continue
            flat = features[:, start:stop].clone().float().requires_grad_(True)
            logits = head.logits_cf(flat)  # one forward, (K, V)
            for index, (row, cls) in enumerate(present):  # one backward per class, to the target layer only
                seed_gradient = torch.zeros_like(logits)
                seed_gradient[cls] = chosen[row].to(logits.dtype)
                (gradient,) = torch.autograd.grad(logits, flat, grad_outputs=seed_gradient,
                                                  retain_graph=index < len(present) - 1)
                weights[row] += gradient.sum(dim=1)
    weights /= total
    raw = torch.empty(len(classes), total, device=features.device)
    with torch.inference_mode():
        for start, stop in chunks(total, chunk):
            raw[:, start:stop] = weights @ features[:, start:stop].float()
        return _normalise_maps(raw, mask, score_masks.any(dim=1))


@contextmanager
def _frozen_parameters(network: torch.nn.Module) -> Iterator[None]:
    """No parameter records gradients inside (Grad-CAM needs gradients of activations only)."""
    flags = [(p, p.requires_grad) for p in network.parameters()]
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def grad_cam_layer(model: LoadedModel, inputs: torch.Tensor, score_masks: torch.Tensor, layer: str, *,
                   mask: torch.Tensor | None = None, overlap: float = 0.0, cpu_bf16: bool = False) -> torch.Tensor:
    """Segmentation Grad-CAM at a trunk layer, in one window or in windows (see the module docstring).

    The gradient of each class score weights the layer's activations voxel by
    voxel (the element-wise form of Grad-CAM, "HiResCAM", which is faithful to
    what the layer contributed where): the map of class c is
    ``ReLU(sum_k dS_c/dA_k(v) * A_k(v))``. A window that holds no voxel of any
    class's score contributes zero and is not run at all. Where the volume
    is too large for one window (:func:`gradcam_window`) the windows do not
    overlap by default: an explanation map does not need the blending that
    the probabilities do.

    Parameters
    ----------
    inputs: torch.Tensor
        (1, C, X, Y, Z) network input on the model grid.
    score_masks: torch.Tensor
        (3, X, Y, Z) voxels whose class logits make each class's score (:func:`gradcam_score_masks`).
    layer: str
        Target layer (:func:`neuroseg.model.network.gradcam_layers`).
    mask: torch.Tensor, optional
        (X, Y, Z) bool: voxels that may carry an explanation.
    cpu_bf16: bool
        Forward (and so backward) under bfloat16 autocast on a CPU; the activations and their
        gradients at the layer stay float32.

    Returns
    -------
    torch.Tensor
        (3, X, Y, Z) float32 maps for NCR, ED, ET, each in [0, 1].
    """
    from monai.inferers import sliding_window_inference

    scale = layer_scale(model.config, layer)  # names the valid layers if this one is not
    network = model.network
    set_dropout(network, head=False)
    module = network.get_submodule(layer)
    n_in, shape = inputs.shape[1], tuple(inputs.shape[2:])
    n_maps = score_masks.shape[0]
    captured: dict[str, torch.Tensor] = {}

    def capture(_module: torch.nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor:
        output = output.detach().float().requires_grad_(True)
        captured["activations"] = output
        return output

    def run(window: torch.Tensor) -> torch.Tensor:
        x, chosen = window[:, :n_in], window[:, n_in:]
        coarse = [size // scale for size in window.shape[2:]]
        maps = torch.zeros(1, n_maps, *coarse, device=window.device)
        present = [row for row in range(n_maps) if bool(chosen[:, row].any())]
        if not present:
            return maps
        with torch.enable_grad():
            with autocast(model.device, cpu_bf16):
                logits = network(x).float()
            activations = captured["activations"]
            for index, row in enumerate(present):  # one backward per class in this window, to the layer only
                score = (logits[:, row + 1] * chosen[:, row]).sum()
                (gradient,) = torch.autograd.grad(score, activations, retain_graph=index < len(present) - 1)
                maps[0, row] = (gradient * activations.detach())[0].sum(dim=0)
        return maps

    roi = gradcam_window(model.config, shape)
    handle = module.register_forward_hook(capture)
    try:
        with _frozen_parameters(network), torch.no_grad():
            blended = sliding_window_inference(torch.cat([inputs, score_masks[None].to(inputs.dtype)], dim=1),
                                               roi, 1, run, overlap=overlap, mode="gaussian",
                                               sw_device=model.device, device=model.device)
    finally:
        handle.remove()
    with torch.inference_mode():
        raw = blended[0].float()
        if tuple(raw.shape[1:]) != shape:
            raw = torch.nn.functional.interpolate(raw[None], size=shape, mode="trilinear", align_corners=False)[0]
        flat_mask = None if mask is None else mask.reshape(-1)
        maps = _normalise_maps(raw.reshape(n_maps, -1), flat_mask, score_masks.reshape(n_maps, -1).any(dim=1))
    return maps.reshape(n_maps, *shape)
