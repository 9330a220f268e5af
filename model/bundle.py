"""MONAI bundles behind the model adapter: read with MONAI's bundle API, uncertainty by test-time flips.

A bundle is a folder (or a zip of one) with ``configs/metadata.json``,
``configs/inference.json`` and ``models/model.pt`` (a state dict) or
``models/model.ts`` (TorchScript).

- The network is ``network_def`` of inference.json, built by
  ``monai.bundle.ConfigParser``; the weights come through ``monai.bundle.load``
  (TorchScript) or MONAI's ``copy_model_state`` with a check that every
  weight was found.
- The inputs and outputs are declared by metadata.json's
  ``network_data_format``: the input ``channel_def`` names the sequences in
  channel order (T1c, T1, T2, FLAIR and their usual spellings), the output
  ``channel_def`` the label convention (TC/WT/ET regions, or the classes
  background/NCR/ED/ET). An optional ``neuroseg`` block in metadata.json
  declares what the names do not: ``label_convention`` (brats2021, brats2023,
  regions), ``sequences``, ``gradcam_layer``, ``spacing_mm``.
- Sliding window: the bundle's ``inferer`` when it is a MONAI
  ``SlidingWindowInferer``, else one over the declared input ``spatial_shape``.
- The volume is brought to the model grid by our preprocessing
  (:func:`neuroseg.model.preprocess.preprocess`: head crop, isotropic
  ``spacing_mm`` (1 mm by default), z-score inside the head), not by the
  bundle's own file-loading transforms.
- Uncertainty: the network runs on the unflipped volume and up to 7 flipped
  copies; the result is the mean class probability over the passes, the
  per-class variance, the predictive entropy and the mutual information.
- Grad-CAM: MONAI's ``GradCAM`` at a named layer (declared, else SegResNet's
  last decoder stage), without its normaliser (which inverts the scale): the
  ReLU map (MONAI's) is kept inside the head and divided by its maximum
  (all zero where the ReLU leaves nothing). TorchScript
  modules take no hooks, so they get no Grad-CAM (said in the model card).
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from neuroseg.model.adapters import (
    CLASS_NAMES,
    LABEL_CONVENTIONS,
    TEST_TIME_FLIPS,
    DeclaredModelAdapter,
    LabelConvention,
    ModelMismatchError,
    Progress,
    Provenance,
    label_convention,
)

log = logging.getLogger(__name__)

MAX_PASSES = 8
"""The unflipped pass and the 7 flips of every subset of the three axes."""
DEFAULT_DIVISOR = 16
"""Grad-CAM runs on the whole volume, padded to a multiple of this (SegResNet's four downsamplings)."""

SEQUENCE_NAMES = {
    "t1": "t1", "t1w": "t1", "t1n": "t1", "native t1": "t1",
    "t1c": "t1ce", "t1ce": "t1ce", "t1gd": "t1ce", "t1-gd": "t1ce", "t1 contrast": "t1ce", "t1 gd": "t1ce",
    "t2": "t2", "t2w": "t2",
    "flair": "flair", "t2f": "flair", "t2-flair": "flair", "t2 flair": "flair",
}
OUTPUT_NAMES = {
    "tc": "tc", "tumor core": "tc", "tumour core": "tc",
    "wt": "wt", "whole tumor": "wt", "whole tumour": "wt",
    "et": "et", "enhancing tumor": "et", "enhancing tumour": "et",
    "background": "background", "bg": "background",
    "ncr": "ncr", "necrotic core": "ncr", "necrosis": "ncr", "ncr/net": "ncr", "necrotic tumor core": "ncr",
    "netc": "ncr", "non-enhancing tumor core": "ncr",
    "ed": "ed", "edema": "ed", "oedema": "ed", "peritumoral edema": "ed", "snfh": "ed",
    "surrounding non-enhancing flair hyperintensity": "ed",
    "gd-enhancing tumor": "et", "enhancing tumor core": "et",
}
# which output channel explains each tumour class in Grad-CAM
REGION_FOR_CLASS = {"ncr": "tc", "ed": "wt", "et": "et"}


def bundle_root(path: Path) -> Path:
    """The folder holding ``configs/metadata.json``: the path itself, or the zip unpacked to a temporary folder."""
    if path.is_dir():
        return path
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise ModelMismatchError(f"model {path} is not a readable zip: {exc}") from exc
    target = Path(tempfile.mkdtemp(prefix="neuroseg-bundle-"))
    with archive:
        archive.extractall(target)  # zipfile drops absolute paths and ".." parts
    for candidate in [target, *sorted(p for p in target.iterdir() if p.is_dir())]:
        if (candidate / "configs" / "metadata.json").is_file():
            return candidate
    raise ModelMismatchError(f"model {path}: the zip has no configs/metadata.json (at the top or in one folder)")


def _names(channel_def: Mapping[str, Any], table: Mapping[str, str], what: str, source: Path) -> tuple[str, ...]:
    names = []
    for index in sorted(channel_def, key=lambda key: int(key)):
        raw = str(channel_def[index]).strip().lower()
        if raw not in table:
            raise ModelMismatchError(
                f"{source}: {what} channel {index} is {channel_def[index]!r}, which neuroseg does not know; "
                f"use one of {sorted(set(table))} or declare it in a \"neuroseg\" block of metadata.json")
        names.append(table[raw])
    return tuple(names)


def _first(fmt: Mapping[str, Any], key: str, source: Path) -> Mapping[str, Any]:
    block = fmt.get(key) or {}
    if not block:
        raise ModelMismatchError(f"{source}: network_data_format has no {key}; the bundle must declare its "
                                 f"{key} (channels and channel_def)")
    return next(iter(block.values()))


class BundleAdapter(DeclaredModelAdapter):
    """A MONAI bundle ready for inference (build it with :meth:`load`)."""

    method = TEST_TIME_FLIPS

    def __init__(self, *, network: Any, root: Path, source: Path, meta: Mapping[str, Any], inferer: Any,
                 sequences: tuple[str, ...], labels: LabelConvention, gradcam_layer: str, spacing_mm: float,
                 torchscript: bool, device: Any) -> None:
        super().__init__(root=root, source=source, sequences=sequences, labels=labels, gradcam_layer=gradcam_layer,
                         device=device)
        self.network = network
        self.meta = dict(meta)
        self.inferer = inferer
        self.spacing_mm = spacing_mm
        self.torchscript = torchscript

    # --- loading ------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path, device: str = "auto") -> BundleAdapter:
        """Read a bundle folder or zip with ``monai.bundle``; mismatches raise :class:`ModelMismatchError`."""
        from monai.bundle import ConfigParser
        from monai.inferers import SlidingWindowInferer

        from neuroseg.model.runtime import resolve_device

        target = resolve_device(device)
        root = bundle_root(Path(path))
        meta_file, config_file = root / "configs" / "metadata.json", root / "configs" / "inference.json"
        if not config_file.is_file():
            raise ModelMismatchError(f"model {path}: configs/inference.json is missing (it defines network_def)")
        parser = ConfigParser()
        parser.read_meta(str(meta_file))
        parser.read_config(str(config_file))
        parser["bundle_root"] = str(root)
        parser["device"] = f"$torch.device('{target}')"
        meta = parser.get("_meta_") or {}
        ours = meta.get("neuroseg") or {}
        fmt = meta.get("network_data_format") or {}
        inputs, outputs = _first(fmt, "inputs", meta_file), _first(fmt, "outputs", meta_file)

        if ours.get("sequences"):
            sequences = tuple(SEQUENCE_NAMES.get(str(s).lower(), str(s).lower()) for s in ours["sequences"])
        else:
            sequences = _names(inputs.get("channel_def") or {}, SEQUENCE_NAMES, "input", meta_file)
        declared_in = int(inputs.get("num_channels", len(sequences)))
        if len(sequences) != declared_in or len(set(sequences)) != len(sequences):
            raise ModelMismatchError(f"{meta_file}: the input declares {declared_in} channels but names "
                                     f"{list(sequences)}; each channel must be one distinct sequence")
        unknown = sorted(set(sequences) - set(SEQUENCE_NAMES.values()))
        if unknown:
            raise ModelMismatchError(f"{meta_file}: unknown input sequences {unknown}; neuroseg has t1, t1ce, t2, "
                                     "flair")
        channels = _names(outputs.get("channel_def") or {}, OUTPUT_NAMES, "output", meta_file)
        if ours.get("label_convention"):
            labels = label_convention(ours["label_convention"], str(meta_file)).with_channels(channels)
        elif set(channels) == {"tc", "wt", "et"}:
            labels = LABEL_CONVENTIONS["regions"].with_channels(channels)
        elif set(channels) == set(CLASS_NAMES):
            labels = LABEL_CONVENTIONS["brats2021"].with_channels(channels)
        else:
            raise ModelMismatchError(
                f"{meta_file}: output channels {list(channels)} are neither the regions TC/WT/ET nor the classes "
                "background/NCR/ED/ET; declare \"neuroseg\": {\"label_convention\": ...} in metadata.json")

        ts_file, pt_file = root / "models" / "model.ts", root / "models" / "model.pt"
        if pt_file.is_file():
            network = cls._state_dict_network(parser, pt_file, target, declared_in, len(channels))
            torchscript = False
        elif ts_file.is_file():
            from monai.bundle import load

            network, _, _ = load(name=root.name, bundle_dir=root.parent, load_ts_module=True, device=str(target),
                                 model_file=str(Path("models") / "model.ts"))
            torchscript = True
        else:
            raise ModelMismatchError(f"model {path}: neither models/model.pt nor models/model.ts is there")
        network.to(target).eval()

        inferer = parser.get_parsed_content("inferer") if "inferer" in parser else None
        if not isinstance(inferer, SlidingWindowInferer):
            roi = inputs.get("spatial_shape") or [96, 96, 96]
            roi = [int(n) if isinstance(n, int) or str(n).isdigit() else 96 for n in roi]
            inferer = SlidingWindowInferer(roi_size=roi, sw_batch_size=1, overlap=0.25, mode="gaussian")
        layer = str(ours.get("gradcam_layer") or "")
        if not layer and hasattr(network, "up_layers") and not torchscript:
            layer = f"up_layers.{len(network.up_layers) - 1}"
        if layer and not torchscript and layer not in dict(network.named_modules()):
            raise ModelMismatchError(f"{meta_file}: gradcam_layer {layer!r} is not a layer of the network")
        adapter = cls(network=network, root=root, source=Path(path), meta=meta, inferer=inferer,
                      sequences=sequences, labels=labels, gradcam_layer="" if torchscript else layer,
                      spacing_mm=float(ours.get("spacing_mm", 1.0)), torchscript=torchscript, device=target)
        log.info("loaded MONAI bundle %s %s (%s, %s) on %s", adapter.name, adapter.version,
                 "TorchScript" if torchscript else "state dict", labels.name, target)
        return adapter

    @staticmethod
    def _state_dict_network(parser: Any, weights: Path, target: Any, in_channels: int, out_channels: int) -> Any:
        """``network_def`` built by the parser, with every weight of ``models/model.pt`` copied in."""
        import torch
        from monai.networks.utils import copy_model_state

        if "network_def" not in parser:
            raise ModelMismatchError(f"{parser.get('bundle_root')}/configs/inference.json has no network_def")
        definition = parser["network_def"]
        for key, declared in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(definition, Mapping) and isinstance(definition.get(key), int) \
                    and definition[key] != declared:
                raise ModelMismatchError(
                    f"{weights.parent.parent}: network_def has {key}={definition[key]} but metadata.json's "
                    f"network_data_format declares {declared}")
        network = parser.get_parsed_content("network_def")
        state = torch.load(weights, map_location=target, weights_only=True)
        for key in ("model", "state_dict", "network"):
            if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
                state = state[key]
        _, updated, unchanged = copy_model_state(network, state, inplace=True)
        missing = [key for key in network.state_dict() if key not in set(updated)]
        if missing or unchanged:
            raise ModelMismatchError(f"{weights}: the weights do not fit network_def ({len(missing)} parameters "
                                     f"not found, {len(unchanged)} of other shape, e.g. "
                                     f"{(missing + list(unchanged))[:3]})")
        return network

    # --- the adapter interface ----------------------------------------------------------------

    @property
    def provenance(self) -> Provenance:
        meta = self.meta
        authors = meta.get("authors", "")
        licence = meta.get("license") or meta.get("licence") or ""
        if not licence:
            files = [self.root / name for name in ("LICENSE", "LICENSE.txt", "docs/LICENSE")]
            found = next((file for file in files if file.is_file()), None)
            licence = found.read_text(errors="replace").strip().splitlines()[0] if found else \
                str(meta.get("copyright", ""))
        return Provenance(name=str(meta.get("name") or self.root.name), version=str(meta.get("version", "unknown")),
                          authors=", ".join(authors) if isinstance(authors, list) else str(authors),
                          license=str(licence), description=str(meta.get("description", "")),
                          kind="monai-bundle", source=str(self.source))

    def model_card(self) -> Mapping[str, Any]:
        meta = self.meta
        card: dict[str, Any] = {
            "name": self.name, "version": self.version,
            "intended_use": str(meta.get("intended_use") or meta.get("description") or ""),
            "architecture": f"MONAI bundle network {type(self.network).__name__}"
                            f"{' (TorchScript)' if self.torchscript else ''}, inputs {', '.join(self.sequences)}, "
                            f"outputs {', '.join(self.labels.channels)} ({self.labels.name})",
            "training_data": str(meta.get("data_source", "")),
            "limitations": [str(item) for item in ([meta["limitations"]] if isinstance(meta.get("limitations"), str)
                                                    else meta.get("limitations") or [])],
            "gradcam": {"method": "MONAI GradCAM, ReLU map divided by its maximum inside the head",
                        "layer": self.gradcam_layer} if self.gradcam_layer else
                       {"method": "none", "why": "TorchScript modules take no hooks" if self.torchscript
                        else "no Grad-CAM layer declared (neuroseg.gradcam_layer in metadata.json)"},
        }
        return card

    def uncertainty_description(self) -> str:
        return ("variance and entropy of the class probabilities over the unflipped volume and up "
                f"to {MAX_PASSES - 1} flipped copies (every subset of the three axes)")

    def segment(self, images: Mapping[str, np.ndarray], affine: np.ndarray, *, mc_samples: int = MAX_PASSES,
                gradcam: bool = True, seed: int = 0, progress: Progress | None = None,
                gradcam_layer: str | None = None, postprocess: Any = None, **_ignored: Any) -> Any:
        """See :meth:`ModelAdapter.segment`; ``gradcam_layer`` names a layer of the bundle's network.

        ``postprocess`` (a :class:`~neuroseg.model.postprocess.PostprocessConfig`) is applied to the labels;
        other options of our own network (``tta``: the flips are the method here anyway) are ignored.
        """
        from neuroseg.model.inference import ModelGridOutput, label_volumes_ml, to_result
        from neuroseg.model.preprocess import preprocess

        self.check_inputs(images, mc_samples)
        report = progress or (lambda stage, fraction: None)
        begin = time.perf_counter()
        report("preprocessing", 0.0)
        case = preprocess({key: images[key] for key in self.sequences}, affine, spacing=self.spacing_mm,
                          sequences=self.sequences)
        timings = {"preprocessing": time.perf_counter() - begin}
        report("preprocessing", 1.0)
        started = time.perf_counter()
        passes = min(mc_samples, MAX_PASSES)
        mean, variance, entropy, mutual = self._flip_passes(case.image, passes, report)
        timings["tta"] = time.perf_counter() - started
        layer = self._layer(gradcam_layer)
        cams = None
        if gradcam and layer:
            started = time.perf_counter()
            report("explaining", 0.0)
            cams = self._grad_cam(case.image, case.mask, layer)
            timings["gradcam"] = time.perf_counter() - started
        grid = ModelGridOutput(probabilities=mean, variance=variance, entropy=entropy, mutual_information=mutual,
                               gradcam=cams, timings=timings, gradcam_layer=layer if cams is not None else "")
        started = time.perf_counter()
        result = to_result(case, grid, self, passes)
        if self.labels.is_regions:  # the declared set rule, not the argmax of the derived classes
            stacked = np.stack([result.probabilities[name] for name in CLASS_NAMES])
            result.labels = self.labels.labels_from_probabilities(stacked)
        if postprocess is not None and getattr(postprocess, "enabled", False):
            from neuroseg.model.postprocess import postprocess_labels

            result.labels, changes = postprocess_labels(result.labels, case.input_affine, postprocess)
            result.postprocessing = {**postprocess.to_dict(), **changes}
        result.volumes_ml = label_volumes_ml(result.labels, case.input_affine)
        for index, name in enumerate(CLASS_NAMES[1:]):  # a class not in the final labels is explained by nothing
            if not np.any(result.labels == (1, 2, 4)[index]):
                result.gradcam[name] = np.zeros_like(result.gradcam[name])
        timings["postprocessing"] = time.perf_counter() - started
        timings["total"] = time.perf_counter() - begin
        result.timings = {key: round(value, 3) for key, value in timings.items()}
        report("explaining", 1.0)
        return result

    # --- the passes -----------------------------------------------------------------------------

    def _flip_passes(self, image: np.ndarray, passes: int, report: Progress
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Mean class probabilities, their variance, predictive entropy and mutual information over the flips."""
        import torch

        from neuroseg.model.inference import TTA_FLIPS

        flips: list[tuple[int, ...]] = [(), *TTA_FLIPS][:passes]
        inputs = torch.from_numpy(np.ascontiguousarray(image[None], dtype=np.float32)).to(self.device)
        total = total_sq = total_h = None
        with torch.inference_mode():
            for number, axes in enumerate(flips):
                report("inference", number / len(flips))
                flipped = inputs.flip(axes) if axes else inputs
                try:
                    logits = self.inferer(inputs=flipped, network=self.network)
                except RuntimeError as exc:
                    if "channels" in str(exc) or "size" in str(exc):
                        raise ModelMismatchError(f"model {self.source}: the network rejected a "
                                                 f"{inputs.shape[1]}-channel input ({', '.join(self.sequences)}): "
                                                 f"{exc}") from exc
                    raise
                if isinstance(logits, (tuple, list)):  # deep supervision: the first is the full-resolution output
                    logits = logits[0]
                if axes:
                    logits = logits.flip(axes)
                p = self.labels.class_probabilities(logits[0]).float()
                h = -torch.special.xlogy(p, p).sum(dim=0)
                total = p if total is None else total + p
                total_sq = p * p if total_sq is None else total_sq + p * p
                total_h = h if total_h is None else total_h + h
        report("inference", 1.0)
        n = float(len(flips))
        mean = total / n
        variance = (total_sq / n - mean * mean).clamp_min(0)
        entropy = -torch.special.xlogy(mean, mean).sum(dim=0)
        mutual = (entropy - total_h / n).clamp_min(0)
        return tuple(t.cpu().numpy().astype(np.float32) for t in (mean, variance, entropy, mutual))  # type: ignore

    def _layer(self, wanted: str | None) -> str:
        """The Grad-CAM layer: ``wanted`` (checked), else the declared or default one; "" for TorchScript."""
        if not wanted:
            return self.gradcam_layer
        if self.torchscript:
            raise ModelMismatchError(f"model {self.source} is TorchScript, which takes no Grad-CAM hooks; "
                                     f"unset the Grad-CAM layer ({wanted!r}) or give the bundle's model.pt")
        if wanted not in dict(self.network.named_modules()):
            raise ModelMismatchError(f"Grad-CAM layer {wanted!r} is not a layer of {self.source}; "
                                     f"e.g. {', '.join(self._layer_examples())}")
        return wanted

    def _layer_examples(self) -> list[str]:
        return [name for name, _ in self.network.named_children()][:6]

    def _grad_cam(self, image: np.ndarray, mask: np.ndarray, layer: str) -> np.ndarray:
        """(3, X, Y, Z) Grad-CAM of NCR, ED, ET at ``layer``, each in [0, 1] inside the head."""
        channels = [self.labels.channels.index(REGION_FOR_CLASS[name] if self.labels.is_regions else name)
                    for name in CLASS_NAMES[1:]]
        return grad_cam_maps(self.network, image, mask, layer, channels, DEFAULT_DIVISOR, self.device)


def grad_cam_maps(network: Any, image: np.ndarray, mask: np.ndarray, layer: str, channels: list[int],
                  divisor: int | tuple[int, ...], device: Any) -> np.ndarray:
    """(len(channels), X, Y, Z) MONAI Grad-CAM of output ``channels`` at ``layer`` of any PyTorch network.

    The (C, X, Y, Z) ``image`` is padded to a multiple of ``divisor`` (per axis, or one for all), the ReLU
    map is kept inside ``mask`` (dilated by 2 voxels) and divided by its maximum (all zero where the ReLU
    leaves nothing); MONAI's own normaliser is off, since it inverts the scale.
    """
    import torch
    from monai.transforms import DivisiblePad
    from monai.visualize import GradCAM
    from scipy import ndimage

    shape = image.shape[1:]
    pad = DivisiblePad(k=divisor, mode="constant")
    inputs = pad(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)))
    inputs = torch.as_tensor(inputs).as_subclass(torch.Tensor)[None].to(device)
    crop = tuple(slice((p - n) // 2, (p - n) // 2 + n) for p, n in zip(inputs.shape[2:], shape))
    head = ndimage.binary_dilation(mask, iterations=2)
    # MONAI's hooks stay on the module they are put on: a copy keeps them off the inference network
    cam = GradCAM(nn_module=copy.deepcopy(network), target_layers=layer, postprocessing=lambda x: x)
    maps = []
    with torch.enable_grad():
        for channel in channels:
            raw = cam(inputs, class_idx=channel)[0, 0].detach()
            raw = raw[crop].float().cpu().numpy() * head
            top = float(raw.max())
            maps.append((raw / top if top > 0 else raw * 0).astype(np.float32))
    return np.stack(maps)
