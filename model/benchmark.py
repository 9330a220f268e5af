"""``neuroseg bench model``: what MC dropout and Grad-CAM cost against one plain pass, measured in one run.

Measured on a random volume covering the given field of view (``shape`` in
1 mm voxels, e.g. BraTS 240x240x155) at the model's own voxel size, fed
straight to the network (no head cropping: the worst case), with
Gaussian-blended sliding windows of the model's patch size:

- ``one_pass``: one deterministic pass of the whole network (the baseline;
  the faster of two runs, as is the trunk pass below).
- ``mc_naive``: N passes of the whole network with dropout on; ``naive_passes``
  of them are run and the cost is extrapolated linearly to N (marked so).
- ``mc_ours``: the trunk once plus N head samples (:func:`neuroseg.model.inference.mc_head`).
- ``gradcam_naive``: per class, a forward and a full backward through the whole
  network (parameter gradients included, as generic Grad-CAM tools do); one
  class is measured and the cost multiplied by 3.
- ``gradcam_ours``: Grad-CAM at the default target layer (a deeper decoder
  stage): its own pass, in one whole-volume window where the volume is small
  enough (else in windows), a forward and one backward per class to the layer
  (:func:`neuroseg.model.gradcam.grad_cam_layer`).
- ``gradcam_head``: Grad-CAM at ``trunk.output``: the trunk once, then one head
  forward and one backward per class (:func:`neuroseg.model.gradcam.grad_cam`).
- ``cpu_variants``: one window (at most 32 voxels a side) through the network
  with the default thread count, with 1 thread, under bfloat16 autocast, and with the trunk exported to
  ONNX and run by ONNX Runtime and by OpenVINO (where installed; the head stays in torch), with the
  fraction of voxels whose label matches the float32 result.
- ``whole_study``: what a job does with the volumes, in a fresh process: rigid
  co-registration of T1, T2 and FLAIR to T1ce, then a complete
  :func:`~neuroseg.model.inference.segment` call (preprocessing to results on
  the input grid), with the step timings and peak resident memory.
- ``uncertainty_auroc``: with trained weights and the phantom generator, the
  AUROC of voxel-wise error against entropy and against the summed class
  variance, for head-only and for full-network MC dropout.

A MONAI bundle or an nnU-Net folder has no dropout: :func:`run_adapter_benchmark`
times its test-time flips (and nnU-Net's fold ensemble) against one plain pass.
"""

from __future__ import annotations

import importlib.util
import logging
import multiprocessing
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuroseg.model.checkpoint import SHIPPED_WEIGHTS
from neuroseg.model.gradcam import grad_cam, grad_cam_layer
from neuroseg.model.inference import mc_head, segment
from neuroseg.model.runtime import LoadedModel, load_model, random_model, resolve_device, sliding_window, window_size
from neuroseg.model.network import HEAD_INPUT_LAYER, default_gradcam_layer, set_dropout
from neuroseg.model.registration import register_rigid

log = logging.getLogger(__name__)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    value = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return value, time.perf_counter() - started


def _best_of(fn: Callable[[], Any], repeats: int = 5) -> tuple[Any, float]:
    """``fn()`` on the CPU ``repeats`` times: the last value and the fastest time."""
    best = float("inf")
    for _ in range(repeats):
        value, seconds = _timed(fn, torch.device("cpu"))
        best = min(best, seconds)
    return value, best


def _window_starts(size: int, window: int, overlap: float) -> list[int]:
    if size <= window:
        return [0]
    interval = max(1, int(window * (1 - overlap)))
    starts = list(range(0, size - window + 1, interval))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def naive_gradcam_class(model: LoadedModel, inputs: torch.Tensor, cls: int, overlap: float = 0.25) -> float:
    """Seconds for generic Grad-CAM of one class: per window a forward and a full backward (all parameters)."""
    network = model.network
    network.eval()
    for parameter in network.parameters():
        parameter.requires_grad_(True)
    captured: dict[str, torch.Tensor] = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        captured["activation"] = output

    handle = network.trunk.output.register_forward_hook(keep)
    roi = window_size(model.config, tuple(inputs.shape[2:]))
    padded = inputs
    pads = [max(0, r - s) for r, s in zip(roi, inputs.shape[2:])]
    if any(pads):
        padded = torch.nn.functional.pad(inputs, [p for pad in reversed(pads) for p in (0, pad)])
    shape = padded.shape[2:]
    started = time.perf_counter()
    try:
        for x0 in _window_starts(shape[0], roi[0], overlap):
            for y0 in _window_starts(shape[1], roi[1], overlap):
                for z0 in _window_starts(shape[2], roi[2], overlap):
                    window = padded[:, :, x0:x0 + roi[0], y0:y0 + roi[1], z0:z0 + roi[2]]
                    network.zero_grad(set_to_none=True)
                    with torch.enable_grad():
                        logits = network(window)
                        chosen = (logits.argmax(dim=1) == cls).to(logits.dtype)
                        score = (logits[:, cls] * chosen).sum()
                        score.backward()
                    activation = captured["activation"]
                    weights = activation.grad.mean(dim=(2, 3, 4), keepdim=True)
                    _ = (weights * activation).sum(dim=1).clamp_min(0).detach()
    finally:
        handle.remove()
        network.zero_grad(set_to_none=True)
        for parameter in network.parameters():
            parameter.requires_grad_(False)
    if inputs.device.type == "cuda":
        torch.cuda.synchronize(inputs.device)
    return time.perf_counter() - started


def _synthetic_head(shape: tuple[int, int, int], seed: int = 0) -> dict[str, np.ndarray]:
    """An ellipsoidal head with a bright ring lesion and brighter edema, on a zero background."""
    rng = np.random.default_rng(seed)
    axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    radius = np.sqrt((x / 0.85) ** 2 + (y / 0.9) ** 2 + (z / 0.8) ** 2)
    lesion = np.sqrt((x - 0.3) ** 2 + (y + 0.2) ** 2 + (z - 0.1) ** 2)
    images = {}
    for index, key in enumerate(("t1", "t1ce", "t2", "flair")):
        volume = np.where(radius < 1.0, 100.0, 0.0).astype(np.float32)
        volume += np.where(lesion < 0.25, 60.0 + 20 * index, 0.0).astype(np.float32)
        volume += (rng.normal(0, 4, shape).astype(np.float32)) * (radius < 1.0)
        images[key] = volume
    return images


def _whole_study_child(shape: tuple[int, int, int], mc_samples: int, model_path: str | None, device: str,
                       threads: int, queue: Any) -> None:
    try:
        model = load_model(model_path, device) if model_path else random_model(device=device)
        torch.set_num_threads(threads)
        images = _synthetic_head(shape)
        affine = np.eye(4)
        before = _peak_rss_mb()
        # what the worker and predict do before segmenting: co-register the other sequences to T1ce
        started = time.perf_counter()
        for key in ("t1", "t2", "flair"):
            register_rigid(images[key], affine, images["t1ce"], affine)
        coregistration = time.perf_counter() - started
        result = segment(images, affine, model, mc_samples=mc_samples, gradcam=True)
        timings = {"coregistration": round(coregistration, 3), **result.timings}
        timings["total"] = round(result.timings["total"] + coregistration, 3)
        queue.put({"timings_s": timings, "peak_rss_mb": round(_peak_rss_mb(), 1),
                   "peak_rss_before_segment_mb": round(before, 1), "input_shape": list(shape),
                   "input": "synthetic 4-sequence head with a lesion, 1 mm"})
    except Exception as exc:  # reported in the table instead of killing the benchmark
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def whole_study(shape: tuple[int, int, int], mc_samples: int, model_path: str | None, device: str) -> dict[str, Any]:
    """Co-register and segment one study in a fresh process, as a job does; timings and peak RSS."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_whole_study_child,
                              args=(shape, mc_samples, model_path, device, torch.get_num_threads(), queue))
    process.start()
    try:
        report = queue.get(timeout=3600)
    finally:
        process.join(timeout=60)
    return report


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positives`` (ties counted half)."""
    from scipy.stats import rankdata

    positives = positives.astype(bool).ravel()
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores.ravel())
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def uncertainty_auroc(model: LoadedModel, mc_samples: int, seed: int = 4242) -> dict[str, Any]:
    """AUROC of voxel-wise error vs entropy / variance on a fresh phantom, head-only vs full-network MC."""
    from neuroseg.model.phantom import PhantomConfig, make_phantom

    phantom = make_phantom(seed, PhantomConfig(output_spacing_mm=1.0, skull_probability=0.0))
    truth = phantom.label
    brain = np.zeros(truth.shape, bool)
    for image in phantom.images.values():
        brain |= image > 0
    report: dict[str, Any] = {"phantom_seed": seed, "voxels": int(brain.sum()), "mc_samples": mc_samples}
    for scheme in ("head", "full"):
        started = time.perf_counter()
        result = segment(phantom.images, phantom.affine, model, mc_samples=mc_samples, gradcam=False,
                         mc_scheme=scheme)
        error = (result.labels != truth)[brain]
        variance = sum(result.variance.values())[brain]
        report[scheme] = {
            "seconds": round(time.perf_counter() - started, 2),
            "error_rate": round(float(error.mean()), 5),
            "auroc_entropy": round(auroc(result.entropy[brain], error), 4),
            "auroc_variance": round(auroc(variance, error), 4),
            "auroc_mutual_information": round(auroc(result.mutual_information[brain], error), 4),
        }
    return report


def cpu_variants(model: LoadedModel) -> dict[str, Any]:
    """One window through the network: default threads vs 1 thread vs bf16 autocast vs exported trunks; label agreement.

    Each variant is timed five times and its fastest run kept: one small window takes tens of
    milliseconds, where a single run mostly measures the machine's other work.
    """
    network = model.network.eval()
    generator = torch.Generator().manual_seed(0)
    window = tuple(min(p, 32) for p in model.config.patch_size)
    x = torch.randn(1, model.config.in_channels, *window, generator=generator)
    x[:, model.config.in_channels // 2:] = 1.0
    threads = torch.get_num_threads()
    rows: dict[str, Any] = {}
    with torch.inference_mode():
        network(x)  # warm-up
        reference, seconds = _best_of(lambda: network(x))
        labels = reference.argmax(dim=1)
        rows[f"fp32_{threads}_threads"] = {"seconds": round(seconds, 3), "label_agreement": 1.0}
        if threads > 1:
            torch.set_num_threads(1)
            try:
                out, seconds = _best_of(lambda: network(x))
            finally:
                torch.set_num_threads(threads)
            rows["fp32_1_thread"] = {"seconds": round(seconds, 3),
                                     "label_agreement": round(float((out.argmax(1) == labels).float().mean()), 5)}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, seconds = _best_of(lambda: network(x))
        rows["bf16_autocast"] = {"seconds": round(seconds, 3),
                                 "label_agreement": round(float((out.float().argmax(1) == labels).float().mean()), 5)}
    rows.update(_exported_trunk_variants(network, x, labels))
    base = rows[f"fp32_{threads}_threads"]["seconds"]
    for row in rows.values():
        if "seconds" in row:
            row["ratio"] = round(row["seconds"] / base, 3)
    return {"window": list(window), **rows}


def _exported_trunk_variants(network: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """The trunk exported to ONNX, run by ONNX Runtime and by OpenVINO where installed, the head in torch.

    Only the trunk: the head's MC dropout samples and Grad-CAM's backward pass need torch. Each row is the
    whole network's time on the window (exported trunk + torch head) and its label agreement with fp32.
    """
    runners = {name: importlib.util.find_spec(name) is not None for name in ("onnxruntime", "openvino")}
    rows: dict[str, Any] = {name: {"available": False, "note": "not installed; not measured"}
                            for name, present in runners.items() if not present}
    if not any(runners.values()) or importlib.util.find_spec("onnx") is None:
        for name, present in runners.items():
            if present:
                rows[name] = {"available": True, "note": "the onnx package is missing: cannot export; not measured"}
        return rows
    import io
    import warnings

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and instance-norm notices
        torch.onnx.export(network.trunk, (x,), buffer, dynamo=False, opset_version=17, input_names=["image"],
                          output_names=["features"])
    exported = buffer.getvalue()
    threads = torch.get_num_threads()
    trunks: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    if runners["onnxruntime"]:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(exported, options, providers=["CPUExecutionProvider"])
        trunks["onnxruntime"] = lambda array: session.run(None, {"image": array})[0]
    if runners["openvino"]:
        import openvino

        core = openvino.Core()
        compiled = core.compile_model(core.read_model(exported), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                                          "INFERENCE_PRECISION_HINT": "f32"})
        trunks["openvino"] = lambda array: compiled(array)[0]
    array = x.numpy()
    for name, trunk in trunks.items():
        def run(trunk=trunk):  # noqa: ANN202 - exported trunk, torch head
            return network.head(torch.from_numpy(np.asarray(trunk(array))))

        with torch.inference_mode():
            run()  # warm-up
            out, seconds = _best_of(run)
        rows[name] = {"available": True, "seconds": round(seconds, 3),
                      "label_agreement": round(float((out.argmax(1) == labels).float().mean()), 5),
                      "note": "trunk exported to ONNX, head in torch"}
    return rows


def run_benchmark(shape: tuple[int, int, int] = (240, 240, 155), mc_samples: int = 20, naive_passes: int = 2,
                  device: str = "auto", model_path: Path | None = None, measure_auroc: bool = True,
                  measure_whole_study: bool = True, random_weights: bool = False) -> dict[str, Any]:
    """Run every measurement; returns the report (see the module docstring)."""
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"--shape {shape}: need three sizes of at least 8 voxels")
    if mc_samples < 2 or naive_passes < 1:
        raise ValueError("--mc-samples must be at least 2 and --naive-passes at least 1")
    target = resolve_device(device)
    if random_weights:
        model, weights = random_model(device=str(target)), "random (default architecture)"
    elif model_path is not None:
        model, weights = load_model(model_path, target), str(model_path)
    elif SHIPPED_WEIGHTS.is_file():
        model, weights = load_model(None, target), "shipped"
    else:
        model, weights = random_model(device=str(target)), "random (no weights yet)"
    import monai.inferers  # noqa: F401  (import cost out of the timings)

    naive_passes = min(naive_passes, mc_samples)
    field_of_view = tuple(int(n) for n in shape)
    shape = tuple(max(8, int(round(n / model.config.spacing_mm))) for n in field_of_view)
    report: dict[str, Any] = {
        "device": str(target), "torch_threads": torch.get_num_threads(), "shape": list(shape),
        "field_of_view_mm": list(field_of_view), "spacing_mm": model.config.spacing_mm,
        "mc_samples": mc_samples, "model": {"name": model.name, "version": model.version, "weights": weights,
                                            "config": model.config.to_dict()},
        "window": list(window_size(model.config, shape)),
    }
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(1, model.config.in_channels, *shape, generator=generator)
    inputs[:, model.config.in_channels // 2:] = 1.0
    inputs = inputs.to(target)
    network = model.network.eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    times: dict[str, dict[str, Any]] = {}
    with torch.inference_mode():  # warm-up: first-call kernel selection stays out of the timings
        small = inputs[:, :, :model.config.divisor * 2, :model.config.divisor * 2, :model.config.divisor * 2]
        network(small)
        warm = network.trunk(small)[0].flatten(1)
        mc_head(model, warm, mc_samples, seed=0)
    grad_cam(model, warm, torch.zeros(warm.shape[1], dtype=torch.long, device=warm.device))

    # the baseline and the trunk are each timed twice and the faster run kept, so that a
    # burst of load from other processes on a shared machine does not skew the ratios
    logits, seconds = _timed(lambda: sliding_window(network, inputs, model), target)
    seconds = min(seconds, _timed(lambda: sliding_window(network, inputs, model), target)[1])
    labels = logits[0].argmax(dim=0).flatten()
    del logits
    times["one_pass"] = {"seconds": seconds, "runs": 2}
    log.info("one pass: %.1f s", seconds)

    set_dropout(network, head=True)
    _, seconds = _timed(lambda: [sliding_window(network, inputs, model) for _ in range(naive_passes)], target)
    set_dropout(network, head=False)
    times["mc_naive"] = {"seconds": seconds * mc_samples / naive_passes, "measured_passes": naive_passes,
                         "extrapolated": naive_passes < mc_samples}
    log.info("naive MC: %d passes in %.1f s", naive_passes, seconds)

    features, trunk_seconds = _timed(lambda: sliding_window(network.trunk, inputs, model)[0].flatten(1), target)
    trunk_seconds = min(trunk_seconds,
                        _timed(lambda: sliding_window(network.trunk, inputs, model)[0].flatten(1), target)[1])
    stats, head_seconds = _timed(lambda: mc_head(model, features, mc_samples, seed=0), target)
    times["mc_ours"] = {"seconds": trunk_seconds + head_seconds, "trunk_s": trunk_seconds, "head_samples_s": head_seconds}
    log.info("our MC: trunk %.1f s + %d head samples %.1f s", trunk_seconds, mc_samples, head_seconds)
    mc_labels = stats[0].argmax(dim=0)
    _, cam_seconds = _timed(lambda: grad_cam(model, features, mc_labels), target)
    times["gradcam_head"] = {"seconds": trunk_seconds + cam_seconds, "trunk_s": trunk_seconds,
                             "head_backward_s": cam_seconds, "layer": HEAD_INPUT_LAYER}
    layer = default_gradcam_layer(model.config)
    masks = torch.stack([(mc_labels == cls).float() for cls in (1, 2, 3)]).reshape(3, *shape)
    _, deep_seconds = _timed(lambda: grad_cam_layer(model, inputs, masks, layer), target)
    times["gradcam_ours"] = {"seconds": deep_seconds, "layer": layer}
    times["mc_and_gradcam_ours"] = {"seconds": trunk_seconds + head_seconds + deep_seconds,
                                    "note": "what segment() does: the trunk pass for MC, then the Grad-CAM pass"}
    log.info("Grad-CAM at %s: %.1f s", layer, deep_seconds)
    del features, stats
    present = [c for c in (3, 2, 1) if bool((labels == c).any())] or [3]
    one_class = naive_gradcam_class(model, inputs, present[0])
    times["gradcam_naive"] = {"seconds": 3 * one_class, "measured_classes": 1, "extrapolated": True}
    log.info("Grad-CAM: ours %.1f s after the trunk, naive %.1f s for one class", cam_seconds, one_class)
    base = times["one_pass"]["seconds"]
    for row in times.values():
        row["ratio"] = round(row["seconds"] / base, 3)
        row["seconds"] = round(row["seconds"], 3)
    report["timings"] = times
    report["targets"] = {"mc_ours_max_ratio": 1.5, "gradcam_ours_max_ratio": 2.0,
                         "mc_ours_ok": times["mc_ours"]["ratio"] <= 1.5,
                         "gradcam_ours_ok": times["gradcam_ours"]["ratio"] <= 2.0}
    del inputs
    if target.type == "cpu":
        report["cpu_variants"] = cpu_variants(model)
    report["peak_rss_mb_bench_process"] = round(_peak_rss_mb(), 1)
    if measure_whole_study:
        report["whole_study"] = whole_study(field_of_view, mc_samples, str(model_path) if model_path else (
            None if weights.startswith("random") else str(SHIPPED_WEIGHTS)), str(target))
    if measure_auroc:
        if weights.startswith("random"):
            report["uncertainty_auroc"] = {"skipped": "needs trained weights"}
        elif importlib.util.find_spec("neuroseg.model.phantom") is None:
            report["uncertainty_auroc"] = {"skipped": "phantom generator not available"}
        else:
            report["uncertainty_auroc"] = uncertainty_auroc(model, mc_samples)
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report as a plain-text table."""
    lines = [f"neuroseg bench model: {report['model']['name']} {report['model']['version']} "
             f"({report['model']['weights']}) on {report['device']}, {report['torch_threads']} threads, "
             f"field of view {'x'.join(map(str, report['field_of_view_mm']))} mm -> network input "
             f"{'x'.join(map(str, report['shape']))} at {report['spacing_mm']} mm, "
             f"window {'x'.join(map(str, report['window']))}, N={report['mc_samples']}",
             f"{'measurement':<22}{'seconds':>10}{'x one pass':>12}  note"]
    for name, row in report["timings"].items():
        note = ""
        if row.get("extrapolated"):
            note = (f"extrapolated from {row.get('measured_passes', row.get('measured_classes'))} "
                    f"{'passes' if 'measured_passes' in row else 'class'}")
        lines.append(f"{name:<22}{row['seconds']:>10.2f}{row['ratio']:>12.2f}  {note or row.get('note', '')}")
    targets = report["targets"]
    lines.append(f"targets: MC <= {targets['mc_ours_max_ratio']}x: {'met' if targets['mc_ours_ok'] else 'MISSED'}; "
                 f"Grad-CAM <= {targets['gradcam_ours_max_ratio']}x: {'met' if targets['gradcam_ours_ok'] else 'MISSED'}")
    if "cpu_variants" in report:
        lines.append(f"CPU variants on one {'x'.join(map(str, report['cpu_variants']['window']))} window:")
        for name, row in report["cpu_variants"].items():
            if name == "window":
                continue
            if "seconds" in row:
                lines.append(f"  {name:<20}{row['seconds']:>10.2f}{row['ratio']:>12.2f}  "
                             f"labels equal on {100 * row['label_agreement']:.3f} % of voxels")
            else:
                lines.append(f"  {name:<20}  {row['note']}")
    lines.append(f"peak RSS of this benchmark process: {report['peak_rss_mb_bench_process']:.0f} MB")
    study = report.get("whole_study")
    if study:
        if "error" in study:
            lines.append(f"whole study: failed: {study['error']}")
        else:
            steps = ", ".join(f"{k} {v:.1f}" for k, v in study["timings_s"].items())
            lines.append(f"whole study ({study['input']}, {'x'.join(map(str, study['input_shape']))}): "
                         f"peak RSS {study['peak_rss_mb']:.0f} MB; seconds: {steps}")
    auc = report.get("uncertainty_auroc")
    if auc:
        if "skipped" in auc:
            lines.append(f"uncertainty AUROC: skipped ({auc['skipped']})")
        else:
            for scheme in ("head", "full"):
                row = auc[scheme]
                lines.append(f"uncertainty AUROC, {scheme:>4}-MC: entropy {row['auroc_entropy']:.3f}, variance "
                             f"{row['auroc_variance']:.3f}, MI {row['auroc_mutual_information']:.3f} "
                             f"(error rate {row['error_rate']:.4f}, {row['seconds']:.0f} s)")
    return "\n".join(lines)


def run_adapter_benchmark(path: Path, shape: tuple[int, int, int] = (240, 240, 155), mc_samples: int = 8,
                          device: str = "auto") -> dict[str, Any]:
    """A MONAI bundle or nnU-Net folder: its uncertainty method's cost against one plain pass, in one run.

    On a synthetic head of ``shape`` (1 mm voxels), through the adapter's own ``segment``; every ratio is
    to ``one_pass``'s inference time:

    - ``one_pass``: one unflipped pass of one network (the first fold of an nnU-Net model), the faster of two;
    - ``flips``: the test-time flips alone, ``mc_samples`` passes (at most 8) of that one network;
    - ``fold_ensemble`` (nnU-Net with more than one fold): every fold once, unmirrored;
    - ``uncertainty``: the model's whole method (flips, times the folds for nnU-Net), then ``gradcam`` and
      ``segment_total`` of that same call.
    """
    from neuroseg.model.adapters import load_adapter

    adapter = load_adapter(path, device)
    images = {key: value for key, value in _synthetic_head(tuple(int(n) for n in shape)).items()
              if key in adapter.sequences}
    affine = np.eye(4)

    def run(**options: Any) -> Any:
        return adapter.segment(images, affine, seed=0, **options)

    small = {key: value[:48, :48, :48] for key, value in images.items()}
    adapter.segment(small, affine, mc_samples=1, gradcam=False, folds=1)  # warm-up, out of the timings
    plain = [run(mc_samples=1, gradcam=False, folds=1) for _ in range(2)]
    base = min(result.timings["tta"] for result in plain)
    flips = run(mc_samples=mc_samples, gradcam=False, folds=1)
    times: dict[str, dict[str, Any]] = {
        "one_pass": {"seconds": base, "passes": 1, "runs": 2, "note": "one unflipped pass of one network"},
        "flips": {"seconds": flips.timings["tta"], "passes": flips.mc_samples,
                  "note": f"test-time flips alone, {flips.mc_samples} passes of one network"},
    }
    folds = len(getattr(adapter, "folds", ()) or ())
    if folds > 1:  # nnU-Net's fold ensemble on its own: each fold once, unmirrored
        ensemble = run(mc_samples=1, gradcam=False)
        times["fold_ensemble"] = {"seconds": ensemble.timings["tta"], "passes": ensemble.mc_samples,
                                  "note": f"fold ensemble alone, {folds} folds unmirrored"}
    full = run(mc_samples=mc_samples, gradcam=True)
    times["uncertainty"] = {"seconds": full.timings["tta"], "passes": full.mc_samples,
                            "note": f"{adapter.uncertainty_method}, {full.mc_samples} passes"}
    times["gradcam"] = {"seconds": full.timings.get("gradcam", 0.0), "note": f"layer {full.gradcam_layer or 'none'}"}
    times["segment_total"] = {"seconds": full.timings["total"], "note": "preprocessing to results on the input grid"}
    for row in times.values():
        row["ratio"] = round(row["seconds"] / base, 3) if base > 0 else None
        row["seconds"] = round(row["seconds"], 3)
    for row in times.values():
        if row.get("passes", 1) > 1 and row["ratio"] is not None:
            row["ratio_per_pass"] = round(row["ratio"] / row["passes"], 3)
    return {"device": str(adapter.device), "torch_threads": torch.get_num_threads(), "shape": list(shape),
            "mc_samples": mc_samples, "model": {"name": adapter.name, "version": adapter.version,
                                                "kind": adapter.provenance.kind, "weights": str(path)},
            "timings": times, "peak_rss_mb_bench_process": round(_peak_rss_mb(), 1)}


def format_adapter_report(report: dict[str, Any]) -> str:
    """:func:`run_adapter_benchmark`'s report as a plain-text table."""
    model = report["model"]
    lines = [f"neuroseg bench model: {model['name']} {model['version']} ({model['kind']}, {model['weights']}) on "
             f"{report['device']}, {report['torch_threads']} threads, synthetic head "
             f"{'x'.join(map(str, report['shape']))} at 1 mm, --mc-samples {report['mc_samples']}",
             f"{'measurement':<22}{'seconds':>10}{'x one pass':>12}  note"]
    for name, row in report["timings"].items():
        ratio = f"{row['ratio']:>12.2f}" if row["ratio"] is not None else f"{'-':>12}"
        lines.append(f"{name:<22}{row['seconds']:>10.2f}{ratio}  {row.get('note', '')}")
    lines.append(f"peak RSS of this benchmark process: {report['peak_rss_mb_bench_process']:.0f} MB")
    return "\n".join(lines)
