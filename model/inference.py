"""Whole-volume inference: sliding window, Monte Carlo dropout and Grad-CAM, back on the caller's grid.

How one call of :func:`segment` works
-------------------------------------
1. :func:`neuroseg.model.preprocess.preprocess` brings the case onto the
   network's working grid (``spacing_mm`` of its config), cropped to the head.
2. The deterministic **trunk** runs once over the volume with MONAI's
   ``sliding_window_inference`` (Gaussian blending, 25 % overlap); the result is
   the blended full-resolution feature volume (``channels[0]`` per voxel) - the
   activations of the Grad-CAM target layer ``trunk.output``.
3. The stochastic **head** (a per-voxel MLP with unit dropout) runs
   ``mc_samples`` times on those features, chunk by chunk; sample s uses one
   seeded dropout mask for the whole volume (one thinned network). From the softmax samples we
   keep the mean probability, the per-class variance (population variance over
   the samples), the predictive entropy ``H[mean p]`` and the mutual
   information ``H[mean p] - mean H[p]`` (nats). With ``mc_samples=1`` the head
   runs once with dropout off (a deterministic pass; variance and MI are 0).
4. Optional **test-time augmentation** (``tta=True``): the whole network runs
   once more, deterministically, on each of the 7 flipped copies of the input
   (every subset of the three axes); the reported probabilities are the mean
   over the unflipped MC mean and the 7 flipped passes, and their population
   variance per class is reported as ``tta_variance``, beside (not mixed into)
   the MC-dropout ``variance``.
5. **Grad-CAM** (:mod:`neuroseg.model.gradcam`) at a chosen target layer,
   by default a deeper decoder stage, for every class with predicted voxels.
6. Everything is mapped back onto the caller's grid (trilinear; probabilities
   renormalised) and the labels are the argmax of the mapped-back mean
   probabilities, exported as BraTS values 0/1/2/4, then optionally
   post-processed with BraTS conventions (:mod:`neuroseg.model.postprocess`).
   A class that is not in the final labels gets an all-zero Grad-CAM map.

The network runs on the device and CPU backend that
:mod:`neuroseg.model.runtime` chooses; the head and the statistics run in float32.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from neuroseg.common.enums import CpuBackend
from neuroseg.common.parallel import map_in_threads
from neuroseg.model.gradcam import gradcam_score_masks, grad_cam, grad_cam_layer
from neuroseg.model.network import (
    BRATS_LABELS,
    CLASS_NAMES,
    HEAD_INPUT_LAYER,
    default_gradcam_layer,
    layer_scale,
    set_dropout,
)
from neuroseg.model.postprocess import PostprocessConfig, postprocess_labels
from neuroseg.model.preprocess import PreprocessedCase, preprocess, to_input_grid, voxel_volume_ml
from neuroseg.model.runtime import LoadedModel, chunk_size, chunks, choose_cpu_backend, sliding_window

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]
TUMOUR_CLASSES: tuple[str, ...] = ("ncr", "ed", "et")
MC_SCHEMES = ("head", "full")
TTA_FLIPS: tuple[tuple[int, ...], ...] = tuple(
    axes for n in (1, 2, 3) for axes in itertools.combinations((2, 3, 4), n))
"""The flips of test-time augmentation: every non-empty subset of the three spatial axes of (1, C, X, Y, Z)."""


@dataclass
class SegmentationResult:
    """What :func:`segment` returns; every array is on the caller's grid (input shape and affine).

    Attributes
    ----------
    labels: np.ndarray
        uint8 BraTS labels 0 (background), 1 (NCR), 2 (ED), 4 (ET).
    probabilities: dict[str, np.ndarray]
        "background", "ncr", "ed", "et": float32 mean softmax over the MC passes; they sum to 1.
    variance: dict[str, np.ndarray]
        "ncr", "ed", "et": float32 variance of the softmax over the MC passes.
    entropy: np.ndarray
        float32 predictive entropy of the mean softmax (nats, 0..ln 4).
    mutual_information: np.ndarray
        float32 mutual information between prediction and dropout mask (nats), the epistemic part.
    gradcam: dict[str, np.ndarray]
        "ncr", "ed", "et": float32 in [0, 1], brighter = more important for that class.
    volumes_ml: dict[str, float]
        "ncr", "ed", "et" and the BraTS regions "wt" (1+2+4) and "tc" (1+4), in mL.
    sequences_used: list[str]
    model_name: str
    model_version: str
    timings: dict[str, float]
        Seconds per step ("preprocessing", "inference", "mc_dropout", "tta", "gradcam", "postprocessing", "total").
    mc_samples: int
    tta_variance: dict[str, np.ndarray]
        "ncr", "ed", "et": float32 variance of the softmax over the flips of test-time
        augmentation; empty when it did not run.
    gradcam_layer: str
        The Grad-CAM target layer ("" when Grad-CAM did not run).
    postprocessing: dict
        The post-processing settings and what they changed (empty when off).
    sample_volumes_ml: dict[str, list[float]]
        "ncr", "ed", "et", "tc", "wt": each MC sample's argmax volume on the model grid (mL);
        empty without MC samples (one pass, ``mc_scheme="full"``, or another adapter).
    cpu_backend: dict
        How the network ran (:func:`choose_cpu_backend`): ``name`` ("fp32", "bf16" or "cuda-fp16"),
        ``requested``, ``reason``, the native bf16 flags and, when checked, ``label_agreement``.
    """

    labels: np.ndarray
    probabilities: dict[str, np.ndarray]
    variance: dict[str, np.ndarray]
    entropy: np.ndarray
    mutual_information: np.ndarray
    gradcam: dict[str, np.ndarray]
    volumes_ml: dict[str, float]
    sequences_used: list[str]
    model_name: str
    model_version: str
    timings: dict[str, float] = field(default_factory=dict)
    mc_samples: int = 1
    tta_variance: dict[str, np.ndarray] = field(default_factory=dict)
    gradcam_layer: str = ""
    postprocessing: dict[str, Any] = field(default_factory=dict)
    sample_volumes_ml: dict[str, list[float]] = field(default_factory=dict)
    cpu_backend: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelGridOutput:
    """Results on the model grid (before mapping back); arrays are (C, X, Y, Z) or (X, Y, Z) float32."""

    probabilities: np.ndarray
    variance: np.ndarray
    entropy: np.ndarray
    mutual_information: np.ndarray
    gradcam: np.ndarray | None
    timings: dict[str, float]
    tta_variance: np.ndarray | None = None
    gradcam_layer: str = ""
    sample_volumes_ml: dict[str, list[float]] = field(default_factory=dict)
    cpu_backend: dict[str, Any] = field(default_factory=dict)


def mc_head(model: LoadedModel, features: torch.Tensor, mc_samples: int, seed: int,
            progress: Callable[[float], None] | None = None,
            sample_counts: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Monte Carlo dropout of the head over a feature volume.

    Parameters
    ----------
    features: torch.Tensor
        (C, V) trunk features of V voxels.
    mc_samples: int
        Number of stochastic passes; 1 means one deterministic pass.
    sample_counts: torch.Tensor, optional
        (mc_samples, K) int64 buffer, zeroed and filled with each sample's argmax voxel count per
        class (the per-sample volumes that :mod:`neuroseg.model.quality` compares).

    Returns
    -------
    tuple of torch.Tensor
        mean (K, V), variance (K, V), entropy (V,), mutual information (V,), float32.
    """
    head = model.network.head
    set_dropout(model.network, head=False)
    n_classes, total = model.config.n_classes, features.shape[1]
    mean = torch.empty(n_classes, total, device=features.device)
    variance = torch.empty_like(mean)
    expected_entropy = torch.empty(total, device=features.device)
    devices = [features.device.index or 0] if features.device.type == "cuda" else []
    chunk = chunk_size(features.device)
    if sample_counts is not None:
        sample_counts.zero_()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        # one mask per sample, shared by every chunk: sample s is one thinned network
        masks = head.sample_masks(mc_samples, features.device) if mc_samples > 1 else None
    with torch.inference_mode():
        for start, stop in chunks(total, chunk):
            hidden = head.hidden_units(features[:, start:stop].float())
            if masks is None:
                logits = head.classify.weight @ hidden + head.classify.bias[:, None]
                logits = logits[None]
            else:
                logits = head.mc_logits(hidden, masks)  # (N, K, V)
            # softmax and log-softmax over the class axis, written out: much faster than
            # torch.softmax/xlogy over a short axis on the CPU
            shifted = logits - logits.amax(dim=1, keepdim=True)
            exp = shifted.exp()
            norm = exp.sum(dim=1, keepdim=True)
            p = exp / norm
            log_p = shifted - norm.log()
            m = p.mean(dim=0)
            mean[:, start:stop] = m
            variance[:, start:stop] = (p - m).square_().mean(dim=0)
            if sample_counts is not None and masks is not None:
                # argmax over the short class axis, written out (argmax itself was a third of the head's
                # time): the first class whose shifted logit is the maximum, 0, as argmax breaks ties
                taken = torch.zeros_like(shifted[:, 0], dtype=torch.bool)
                for k in range(n_classes):
                    first = (shifted[:, k] == 0) & ~taken
                    sample_counts[:, k] += first.sum(dim=1)
                    taken |= first
            expected_entropy[start:stop] = -(p * log_p).sum(dim=1).mean(dim=0)
            if progress is not None:
                progress(stop / total)
    set_dropout(model.network, head=False)
    entropy = -(mean * mean.clamp_min(1e-30).log()).sum(dim=0)
    mutual = (entropy - expected_entropy).clamp_min_(0)
    if mc_samples == 1:
        variance.zero_()
        mutual.zero_()
    return mean, variance, entropy, mutual


def tta_flips(model: LoadedModel, inputs: torch.Tensor, mean: torch.Tensor, *, overlap: float = 0.25,
              cpu_bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Test-time augmentation by flips: the mean and population variance over the passes.

    The passes are the given (unflipped) mean probabilities ``mean`` (K, V) and
    one deterministic whole-network pass per flip of :data:`TTA_FLIPS`, each
    flipped back. Returns mean (K, V) and variance (K, V).
    """
    set_dropout(model.network, head=False)
    total = mean.clone()
    squares = mean * mean
    for axes in TTA_FLIPS:
        logits = sliding_window(model.network, torch.flip(inputs, axes), model, overlap=overlap, cpu_bf16=cpu_bf16)
        p = torch.softmax(torch.flip(logits, axes)[0].flatten(1), dim=0)
        total += p
        squares += p * p
    count = len(TTA_FLIPS) + 1
    tta_mean = total / count
    return tta_mean, (squares / count - tta_mean * tta_mean).clamp_min_(0)


def mc_full_network(model: LoadedModel, inputs: torch.Tensor, mc_samples: int, seed: int, *,
                    overlap: float = 0.25) -> tuple[torch.Tensor, ...]:
    """Full-network MC dropout (trunk and head dropout on, N sliding-window passes): the costly reference scheme.

    Returns mean (K, V), variance (K, V), entropy (V,), mutual information (V,).
    """
    devices = [inputs.device.index or 0] if inputs.device.type == "cuda" else []
    sum_p = sum_p2 = None
    sum_h = None
    set_dropout(model.network, head=mc_samples > 1, trunk=mc_samples > 1)
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for _ in range(mc_samples):
                logits = sliding_window(model.network, inputs, model, overlap=overlap)
                p = torch.softmax(logits[0].flatten(1), dim=0)
                h = -torch.special.xlogy(p, p).sum(dim=0)
                if sum_p is None:
                    sum_p, sum_p2, sum_h = p.clone(), p * p, h
                else:
                    sum_p += p
                    sum_p2 += p * p
                    sum_h += h
    finally:
        set_dropout(model.network, head=False)
    mean = sum_p / mc_samples
    variance = (sum_p2 / mc_samples - mean * mean).clamp_min_(0)
    entropy = -torch.special.xlogy(mean, mean).sum(dim=0)
    mutual = (entropy - sum_h / mc_samples).clamp_min_(0)
    return mean, variance, entropy, mutual


def infer_model_grid(case: PreprocessedCase, model: LoadedModel, *, mc_samples: int = 20, gradcam: bool = True,
                     seed: int = 0, mc_scheme: str = "head", overlap: float = 0.25, cpu_bf16: bool = False,
                     progress: Progress | None = None, tta: bool = False,
                     gradcam_layer: str | None = None,
                     cpu_backend: str | CpuBackend = CpuBackend.FP32) -> ModelGridOutput:
    """Steps 2-5 of :func:`segment` on a preprocessed case; results stay on the model grid.

    ``cpu_bf16=True`` is ``cpu_backend="bf16"``.
    """
    if mc_scheme not in MC_SCHEMES:
        raise ValueError(f"mc_scheme={mc_scheme!r}: use one of {', '.join(MC_SCHEMES)}")
    gradcam_layer = gradcam_layer or default_gradcam_layer(model.config)
    if gradcam:
        layer_scale(model.config, gradcam_layer)  # a bad layer name fails before the long passes
    report = progress or (lambda stage, fraction: None)
    timings: dict[str, float] = {}
    shape = case.shape
    inputs = torch.from_numpy(case.network_input()[None]).to(model.device)
    model.network.eval()
    started = time.perf_counter()
    backend = choose_cpu_backend(model, inputs, case.mask, CpuBackend.BF16 if cpu_bf16 else cpu_backend)
    bf16 = backend["name"] == "bf16"
    timings["backend_check"] = time.perf_counter() - started
    started = time.perf_counter()
    report("inference", 0.0)
    if mc_scheme == "head":
        features = sliding_window(model.network.trunk, inputs, model, overlap=overlap, cpu_bf16=bf16,
                                  progress=lambda f: report("inference", 0.9 * f))
        features = features[0].flatten(1)
        timings["inference"] = time.perf_counter() - started
        started = time.perf_counter()
        counts = torch.zeros(mc_samples, model.config.n_classes, dtype=torch.int64, device=features.device) \
            if mc_samples > 1 else None
        mean, variance, entropy, mutual = mc_head(model, features, mc_samples, seed,
                                                  progress=lambda f: report("inference", 0.9 + 0.1 * f),
                                                  sample_counts=counts)
    else:
        counts = None
        timings["inference"] = 0.0
        mean, variance, entropy, mutual = mc_full_network(model, inputs, mc_samples, seed, overlap=overlap)
        with torch.inference_mode():
            features = sliding_window(model.network.trunk, inputs, model, overlap=overlap)[0].flatten(1)
    timings["mc_dropout"] = time.perf_counter() - started
    report("inference", 1.0)
    tta_variance = None
    if tta:
        started = time.perf_counter()
        mean, tta_variance = tta_flips(model, inputs, mean, overlap=overlap, cpu_bf16=bf16)
        entropy = -(mean * mean.clamp_min(1e-30).log()).sum(dim=0)
        timings["tta"] = time.perf_counter() - started
    cams = None
    if gradcam:
        started = time.perf_counter()
        report("explaining", 0.0)
        head = torch.from_numpy(ndimage.binary_dilation(case.mask, iterations=2).ravel()).to(features.device)
        predicted = mean.argmax(dim=0)
        score_masks = gradcam_score_masks(mean, predicted, model.config.n_classes)
        if gradcam_layer == HEAD_INPUT_LAYER:
            cams = grad_cam(model, features, predicted, head, score_masks=score_masks)
        else:
            cams = grad_cam_layer(model, inputs, score_masks.reshape(-1, *shape), gradcam_layer,
                                  mask=head.reshape(shape), cpu_bf16=bf16)
        cams = cams.reshape(-1, *shape).cpu().numpy()
        timings["gradcam"] = time.perf_counter() - started
    del features, inputs

    def grid(t: torch.Tensor) -> np.ndarray:
        return t.reshape(*t.shape[:-1], *shape).float().cpu().numpy()

    return ModelGridOutput(probabilities=grid(mean), variance=grid(variance), entropy=grid(entropy),
                           mutual_information=grid(mutual), gradcam=cams, timings=timings,
                           tta_variance=None if tta_variance is None else grid(tta_variance),
                           gradcam_layer=gradcam_layer if gradcam else "",
                           sample_volumes_ml=_region_volumes(counts, model.config.spacing_mm), cpu_backend=backend)


def _region_volumes(counts: torch.Tensor | None, spacing_mm: float) -> dict[str, list[float]]:
    """Per-sample volumes (mL, model grid) of the classes and BraTS regions from (N, K) argmax counts."""
    if counts is None:
        return {}
    c = counts.cpu().numpy().astype(np.float64) * spacing_mm ** 3 / 1000.0  # classes: bg, ncr, ed, et
    regions = {"ncr": c[:, 1], "ed": c[:, 2], "et": c[:, 3], "tc": c[:, 1] + c[:, 3], "wt": c[:, 1:].sum(axis=1)}
    return {name: [round(float(v), 3) for v in values] for name, values in regions.items()}


def segment(images: Mapping[str, np.ndarray], affine: np.ndarray, model: LoadedModel, *, mc_samples: int = 20,
            gradcam: bool = True, seed: int = 0, progress: Progress | None = None, mc_scheme: str = "head",
            overlap: float = 0.25, cpu_bf16: bool = False, tta: bool = False,
            gradcam_layer: str | None = None,
            postprocess: PostprocessConfig | None = None,
            cpu_backend: str | CpuBackend = CpuBackend.FP32) -> SegmentationResult:
    """Segment a glioma and explain the result (see the module docstring for the method).

    Parameters
    ----------
    images: Mapping[str, np.ndarray]
        Sequence key ("t1", "t1ce", "t2", "flair") to a 3D array, all on one grid;
        any subset holding at least one of "flair" and "t1ce".
    affine: np.ndarray
        4x4 map from array indices to LPS millimetres, shared by all arrays.
    model: LoadedModel
        From :func:`load_model`.
    mc_samples: int
        Monte Carlo dropout passes (1 = one deterministic pass, no uncertainty).
    gradcam: bool
        Compute Grad-CAM maps (else they are all zero).
    seed: int
        Seed of the dropout masks; the same seed gives the same result.
    progress: callable, optional
        ``progress(stage, fraction)`` with stage "preprocessing", "inference", "explaining".
    mc_scheme: str
        "head" (the default: trunk once, MC over the head) or "full" (MC over the whole
        network, N times the cost; for comparisons).
    overlap: float
        Sliding-window overlap fraction.
    cpu_bf16: bool
        The same as ``cpu_backend="bf16"``.
    tta: bool
        Test-time augmentation by flips (7 more passes; see the module docstring).
    gradcam_layer: str, optional
        Grad-CAM target layer (:func:`neuroseg.model.network.gradcam_layers`); default
        :func:`neuroseg.model.network.default_gradcam_layer`.
    postprocess: PostprocessConfig, optional
        BraTS-style post-processing of the labels; None leaves them as predicted.
    cpu_backend: str
        "fp32" (the default, the reference path), "bf16" (autocast of the trunk and Grad-CAM
        passes) or "auto" (:func:`choose_cpu_backend`); ignored on CUDA.

    Returns
    -------
    SegmentationResult
        Every array on the input grid (same shape and affine as ``images``).

    Raises
    ------
    TypeError, ValueError
        For bad input, naming it (missing FLAIR/T1ce, shapes, NaNs, empty sequences, 2D/4D arrays).
    """
    if not isinstance(model, LoadedModel):
        raise TypeError(f"model must be a LoadedModel (see load_model), not {type(model).__name__}")
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
        raise ValueError(f"mc_samples={mc_samples!r}: must be a positive integer")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap={overlap!r}: must be in [0, 1)")
    try:
        cpu_backend = CpuBackend(cpu_backend)
    except ValueError:
        raise ValueError(f"cpu_backend={cpu_backend!r}: use one of "
                         f"{', '.join(b.value for b in CpuBackend)}") from None
    import monai.inferers  # noqa: F401  (a slow first import; keep it out of the step timings)

    report = progress or (lambda stage, fraction: None)
    begin = time.perf_counter()
    report("preprocessing", 0.0)
    case = preprocess(images, affine, spacing=model.config.spacing_mm, sequences=model.config.in_sequences)
    timings = {"preprocessing": time.perf_counter() - begin}
    report("preprocessing", 1.0)
    grid = infer_model_grid(case, model, mc_samples=mc_samples, gradcam=gradcam, seed=seed, mc_scheme=mc_scheme,
                            overlap=overlap, cpu_bf16=cpu_bf16, progress=report, tta=tta,
                            gradcam_layer=gradcam_layer, cpu_backend=cpu_backend)
    timings.update(grid.timings)
    started = time.perf_counter()
    result = to_result(case, grid, model, mc_samples, postprocess)
    timings["postprocessing"] = time.perf_counter() - started
    timings["total"] = time.perf_counter() - begin
    result.timings = {key: round(value, 3) for key, value in timings.items()}
    report("explaining", 1.0)
    return result


def to_result(case: PreprocessedCase, grid: ModelGridOutput, model: LoadedModel, mc_samples: int,
              postprocess: PostprocessConfig | None = None) -> SegmentationResult:
    """Map model-grid outputs back onto the input grid and derive labels (post-processed) and volumes."""
    # every map is resampled independently (scipy.ndimage releases the GIL): all of them in threads
    maps: dict[str, tuple[np.ndarray, float]] = {
        f"p_{name}": (grid.probabilities[index], 1.0 if index == 0 else 0.0) for index, name in enumerate(CLASS_NAMES)}
    maps.update({f"variance_{name}": (grid.variance[index + 1], 0.0) for index, name in enumerate(TUMOUR_CLASSES)})
    if grid.tta_variance is not None:
        maps.update({f"tta_{name}": (grid.tta_variance[index + 1], 0.0) for index, name in enumerate(TUMOUR_CLASSES)})
    maps.update(entropy=(grid.entropy, 0.0), mutual=(grid.mutual_information, 0.0))
    if grid.gradcam is not None:
        maps.update({f"gradcam_{name}": (grid.gradcam[index], 0.0) for index, name in enumerate(TUMOUR_CLASSES)})
    mapped = dict(zip(maps, map_in_threads(lambda key: to_input_grid(maps[key][0], case, order=1, cval=maps[key][1]),
                                           maps, name="map-back")))
    probabilities = np.stack([mapped[f"p_{name}"] for name in CLASS_NAMES])
    np.clip(probabilities, 0.0, None, out=probabilities)
    probabilities /= probabilities.sum(axis=0, keepdims=True)
    lookup = np.array(BRATS_LABELS, dtype=np.uint8)
    labels = lookup[np.argmax(probabilities, axis=0)]
    postprocessing: dict[str, Any] = {}
    if postprocess is not None and postprocess.enabled:
        labels, changes = postprocess_labels(labels, case.input_affine, postprocess)
        postprocessing = {**postprocess.to_dict(), **changes}
    variance = {name: mapped[f"variance_{name}"].clip(0, None) for name in TUMOUR_CLASSES}
    tta_variance = {} if grid.tta_variance is None else {
        name: mapped[f"tta_{name}"].clip(0, None).astype(np.float32, copy=False) for name in TUMOUR_CLASSES}
    entropy = mapped["entropy"].clip(0, None)
    mutual = mapped["mutual"].clip(0, None)
    if grid.gradcam is None:
        cams = {name: np.zeros(case.input_shape, dtype=np.float32) for name in TUMOUR_CLASSES}
    else:
        # a class that is not in the final labels is explained by nothing
        cams = {name: (mapped[f"gradcam_{name}"].clip(0, 1) if np.any(labels == BRATS_LABELS[index + 1])
                       else np.zeros(case.input_shape, np.float32))
                for index, name in enumerate(TUMOUR_CLASSES)}
    return SegmentationResult(
        labels=labels,
        probabilities={name: probabilities[index].astype(np.float32, copy=False)
                       for index, name in enumerate(CLASS_NAMES)},
        variance={k: v.astype(np.float32, copy=False) for k, v in variance.items()},
        entropy=entropy.astype(np.float32, copy=False),
        mutual_information=mutual.astype(np.float32, copy=False),
        gradcam={k: v.astype(np.float32, copy=False) for k, v in cams.items()},
        volumes_ml=label_volumes_ml(labels, case.input_affine),
        sequences_used=list(case.sequences_present),
        model_name=model.name,
        model_version=model.version,
        mc_samples=mc_samples,
        tta_variance=tta_variance,
        gradcam_layer=grid.gradcam_layer,
        postprocessing=postprocessing,
        sample_volumes_ml=grid.sample_volumes_ml,
        cpu_backend=dict(grid.cpu_backend),
    )


def label_volumes_ml(labels: np.ndarray, affine: np.ndarray) -> dict[str, float]:
    """Volumes (mL) of NCR, ED, ET and the BraTS regions WT (1+2+4) and TC (1+4)."""
    voxel = voxel_volume_ml(affine)
    counts = np.bincount(labels.ravel(), minlength=5)
    ncr, ed, et = int(counts[1]), int(counts[2]), int(counts[4])
    return {name: round(count * voxel, 3) for name, count in
            (("ncr", ncr), ("ed", ed), ("et", et), ("wt", ncr + ed + et), ("tc", ncr + et))}
