"""The loaded network and how it runs: device, checkpoint, CPU backend and sliding windows.

On CUDA the network runs under float16 autocast (AMP). On a CPU it runs in
float32 or under bfloat16 autocast (``cpu_backend``, :func:`choose_cpu_backend`):
``"auto"`` takes bf16 only where the CPU has native bf16 instructions
(``avx512_bf16``/``amx_bf16``; emulated bf16 is slower than fp32) and the
labels of one check window at the centre of the head, run both ways, agree on
at least :data:`BF16_MIN_AGREEMENT` of its head voxels. The choice, the
flags and the agreement are kept in ``SegmentationResult.cpu_backend``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuroseg.common.enums import CpuBackend
from neuroseg.model.checkpoint import SHIPPED_WEIGHTS, load_checkpoint
from neuroseg.model.network import NetworkConfig, SegmentationNetwork, build_network, set_dropout

log = logging.getLogger(__name__)

BF16_MIN_AGREEMENT = 0.999
"""Share of a check window's head voxels whose bf16 labels must equal the fp32 ones for ``cpu_backend="auto"``."""
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""CPU flags (``/proc/cpuinfo``) of native bfloat16 arithmetic."""


@dataclass
class LoadedModel:
    """A network ready for inference, with its config and metadata.

    Attributes
    ----------
    network: SegmentationNetwork
    config: NetworkConfig
    metadata: dict
        From the checkpoint: name, version, training information, model card.
    device: torch.device
    """

    network: SegmentationNetwork
    config: NetworkConfig
    metadata: dict[str, Any]
    device: torch.device

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", "unknown"))

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", "neuroseg"))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without CUDA raises ``ValueError``."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available; use cpu or auto")
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported; use auto, cpu, cuda or cuda:N")
    return resolved


def load_model(path: Path | str | None = None, device: str | torch.device = "auto") -> LoadedModel:
    """Load a checkpoint for inference.

    Parameters
    ----------
    path: Path or None
        A checkpoint written by :func:`neuroseg.model.checkpoint.save_checkpoint`;
        None means the shipped demo weights (:data:`SHIPPED_WEIGHTS`).
    device: str
        "auto", "cpu", "cuda" or "cuda:N".

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    neuroseg.model.checkpoint.CheckpointError
        If it is not a usable neuroseg checkpoint.
    """
    target = resolve_device(device)
    network, config, metadata = load_checkpoint(SHIPPED_WEIGHTS if path is None else Path(path), target)
    log.info("loaded model %s %s on %s", metadata.get("name"), metadata.get("version"), target)
    return LoadedModel(network=network, config=config, metadata=metadata, device=target)  # type: ignore[arg-type]


def model_from_network(network: SegmentationNetwork, metadata: dict[str, Any] | None = None,
                       device: str | torch.device = "cpu") -> LoadedModel:
    """Wrap an in-memory network (e.g. a randomly initialised one for benchmarks) as a :class:`LoadedModel`."""
    target = resolve_device(device)
    network.to(target).eval()
    meta = {"name": "neuroseg-untrained", "version": "0+random"}
    meta.update(metadata or {})
    return LoadedModel(network=network, config=network.config, metadata=meta, device=target)


def random_model(config: NetworkConfig | None = None, *, seed: int = 0, device: str = "cpu") -> LoadedModel:
    """A randomly initialised model (seeded): for benchmarks and tests before weights exist."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = build_network(config or NetworkConfig())
    return model_from_network(network, {"name": "neuroseg-random", "version": f"0+random.{seed}"}, device)


def window_size(config: NetworkConfig, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Sliding-window size: the config's patch size, shrunk (to a multiple of the network divisor) for small volumes."""
    div = config.divisor
    return tuple(min(p, max(div, int(math.ceil(n / div)) * div)) for p, n in zip(config.patch_size, shape))  # type: ignore[return-value]


def _count_windows(shape: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> int:
    count = 1
    for size, window in zip(shape, roi):
        interval = max(1, int(window * (1 - overlap)))
        count *= 1 if size <= window else int(math.ceil((size - window) / interval)) + 1
    return count


def autocast(device: torch.device, cpu_bf16: bool = False) -> torch.autocast:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    if cpu_bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def native_bf16_flags() -> list[str]:
    """The CPU's native bfloat16 flags among :data:`NATIVE_BF16_FLAGS` (empty where ``/proc/cpuinfo`` is not)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as stream:
            flags = next((line.split(":", 1)[1].split() for line in stream if line.startswith("flags")), [])
    except OSError:
        return []
    return [flag for flag in NATIVE_BF16_FLAGS if flag in flags]


def _check_window(mask: np.ndarray, roi: tuple[int, ...]) -> tuple[slice, ...]:
    """The window of size ``roi`` centred on the head mask's bounding box, inside the volume."""
    coords = np.argwhere(mask)
    centre = (coords.min(axis=0) + coords.max(axis=0)) // 2 if len(coords) else np.array(mask.shape) // 2
    starts = [int(min(max(0, c - r // 2), max(0, n - r))) for c, r, n in zip(centre, roi, mask.shape)]
    return tuple(slice(start, start + r) for start, r in zip(starts, roi))


def choose_cpu_backend(model: LoadedModel, inputs: torch.Tensor, mask: np.ndarray,
                       requested: str | CpuBackend = CpuBackend.FP32) -> dict[str, Any]:
    """How the network runs for this case: fp32 or bf16 autocast on a CPU (see the module docstring).

    For ``auto`` and ``bf16`` on a CPU with native bf16, one check window at the centre of the head
    (``inputs`` (1, C, X, Y, Z) on the model grid, ``mask`` its head) runs through the whole network
    in fp32 and in bf16; ``label_agreement`` is the share of its head voxels with the same argmax.
    ``auto`` keeps fp32 below :data:`BF16_MIN_AGREEMENT`; an explicit ``bf16`` is kept (the admin's
    override) with the agreement recorded. Returns the record kept in ``SegmentationResult.cpu_backend``.
    """
    requested = CpuBackend(requested)
    if model.device.type != "cpu":
        return {"name": f"{model.device.type}-fp16", "requested": requested.value,
                "reason": "float16 autocast on the accelerator"}
    flags = native_bf16_flags()
    record: dict[str, Any] = {"requested": requested.value, "native_bf16_flags": flags,
                              "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if requested is CpuBackend.FP32:
        return {"name": "fp32", **record, "reason": "fp32 requested"}
    if requested is CpuBackend.AUTO and not flags:
        return {"name": "fp32", **record, "reason": f"the CPU has none of {', '.join(NATIVE_BF16_FLAGS)}"}
    window = (slice(None), slice(None), *_check_window(mask, window_size(model.config, tuple(inputs.shape[2:]))))
    x = inputs[window]
    head = torch.from_numpy(np.ascontiguousarray(mask[window[2:]]))
    short = [(0, -n % model.config.divisor) for n in x.shape[2:]]  # a small volume: pad as the windows do
    if any(pad for _, pad in short):
        flat = [size for pair in reversed(short) for size in pair]
        x = torch.nn.functional.pad(x, flat)
        head = torch.nn.functional.pad(head, flat)
    network = model.network
    set_dropout(network, head=False)
    with torch.inference_mode():
        started = time.perf_counter()
        reference = network(x).argmax(dim=1)[0]
        fp32_seconds = time.perf_counter() - started
        started = time.perf_counter()
        with autocast(model.device, cpu_bf16=True):
            fast = network(x).float().argmax(dim=1)[0]
        bf16_seconds = time.perf_counter() - started
    voxels = int(head.sum())
    agreement = float((reference == fast)[head].float().mean()) if voxels else 1.0
    record.update(label_agreement=round(agreement, 6), checked_voxels=voxels,
                  check_window=[int(n) for n in x.shape[2:]],
                  check_seconds={"fp32": round(fp32_seconds, 4), "bf16": round(bf16_seconds, 4)})
    if requested is CpuBackend.BF16:
        return {"name": "bf16", **record, "reason": "bf16 requested" + ("" if flags else " (no native bf16)")}
    if agreement < BF16_MIN_AGREEMENT:
        return {"name": "fp32", **record, "reason": f"bf16 labels agree on {agreement:.4%} of the check window's "
                f"head voxels, below {BF16_MIN_AGREEMENT:.1%}"}
    return {"name": "bf16", **record, "reason": f"native {', '.join(flags)}; check window agrees on "
            f"{agreement:.4%} of head voxels"}


def sliding_window(predictor: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, model: LoadedModel, *,
                   overlap: float = 0.25, progress: Callable[[float], None] | None = None,
                   cpu_bf16: bool = False) -> torch.Tensor:
    """Run ``predictor`` over ``inputs`` (1, C, X, Y, Z) with Gaussian-blended sliding windows (MONAI).

    Returns the blended (1, C', X, Y, Z) float32 output on the model's device.
    """
    from monai.inferers import sliding_window_inference

    roi = window_size(model.config, tuple(inputs.shape[2:]))
    total = _count_windows(tuple(inputs.shape[2:]), roi, overlap)
    done = [0]

    def run(window: torch.Tensor) -> torch.Tensor:
        with autocast(model.device, cpu_bf16):
            out = predictor(window)
        done[0] += window.shape[0]
        if progress is not None:
            progress(min(1.0, done[0] / total))
        return out.float()

    with torch.inference_mode():
        return sliding_window_inference(inputs, roi, 1, run, overlap=overlap, mode="gaussian",
                                        sw_device=model.device, device=model.device)


def chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(total, start + size)


def chunk_size(device: torch.device) -> int:
    return 1 << 20 if device.type == "cuda" else 1 << 15
