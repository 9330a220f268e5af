"""nnU-Net v2 trained-model folders behind the model adapter, run by nnU-Net's own predictor.

A trained-model folder is what ``nnUNetv2_train`` writes:
``dataset.json``, ``plans.json`` and ``fold_*/checkpoint_final.pth``
(install the extra: ``pip install -e ".[nnunet]"``).

- The network, the folds' weights and the mirroring axes come from
  ``nnUNetPredictor.initialize_from_trained_model_folder``; the volume is
  preprocessed by the configuration's own preprocessor (crop to non-zero,
  normalisation, resampling to the plans' spacing), predicted by nnU-Net's
  sliding window (its patch size, step 0.5, Gaussian weights) and brought
  back by its own resampling, so the labels are nnU-Net's: the logits are
  averaged over every fold and every mirroring (nnU-Net's ensemble), then
  nnU-Net's non-linearity and label rule make the segmentation.
- Uncertainty: each (fold, mirroring) pair is one pass; the variance of the
  class probabilities over the passes, the predictive entropy of the final
  probabilities and the mutual information (entropy of the mean pass minus
  the mean pass entropy). ``mc_samples`` caps the mirrorings per fold (one:
  the fold ensemble alone); every fold always runs.
- Orientation: nnU-Net takes arrays as its reader gave them in training. The
  volume is reoriented (axis permutation and flips, no interpolation) to
  voxel axes +L, +P, +S, the orientation of BraTS files, and handed over in
  SimpleITK's (z, y, x) order; for the ``NibabelIOWithReorient`` reader, RAS.
- Inputs and labels come from dataset.json: ``channel_names`` name the
  sequences (T1, T1ce, T2, Flair and the BraTS 2023 t1n/t1c/t2w/t2f); the
  ``labels`` are the regions whole tumour / tumour core / enhancing tumour
  (nnU-Net's BraTS conversion) or the classes background/NCR/ED/ET with the
  values of BraTS 2021 (1/2/4) or 2023 (1/2/3). An optional ``neuroseg`` block
  in dataset.json declares ``label_convention``, ``sequences`` and
  ``gradcam_layer``; a declaration the labels contradict is an error.
- Grad-CAM: MONAI's ``GradCAM`` on the first fold's network at a named layer
  (default: the second-to-last decoder stage, half resolution), normalised as
  for bundles (:func:`neuroseg.model.bundle.grad_cam_maps`).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from neuroseg.model.adapters import (
    CLASS_NAMES,
    FLIPS_AND_FOLDS,
    LABEL_CONVENTIONS,
    DeclaredModelAdapter,
    LabelConvention,
    ModelMismatchError,
    Progress,
    Provenance,
    label_convention,
)
from neuroseg.model.bundle import OUTPUT_NAMES, REGION_FOR_CLASS, SEQUENCE_NAMES, grad_cam_maps

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint_final.pth"
# voxel axes of the arrays nnU-Net was trained on, as (world axis, direction) rows in LPS patient coordinates
LPS_AXES = np.array([[0, 1], [1, 1], [2, 1]])
RAS_AXES = np.array([[0, -1], [1, -1], [2, 1]])
BRATS2021_OF_CLASS = {"ncr": 1, "ed": 2, "et": 4}


def _fail(source: Path, message: str) -> ModelMismatchError:
    return ModelMismatchError(f"{source}: {message}")


def read_sequences(dataset: Mapping[str, Any], source: Path) -> tuple[str, ...]:
    """The input sequences in channel order, from ``neuroseg.sequences`` or ``channel_names``."""
    declared = (dataset.get("neuroseg") or {}).get("sequences")
    channels = dataset.get("channel_names") or dataset.get("modality") or {}
    if not channels:
        raise _fail(source, "has no channel_names; nnU-Net v2's dataset.json names each input channel")
    names = [str(name) for name in declared] if declared else \
        [str(channels[key]) for key in sorted(channels, key=lambda key: int(key))]
    sequences = []
    for index, name in enumerate(names):
        key = SEQUENCE_NAMES.get(name.strip().lower())
        if key is None:
            raise _fail(source, f"input channel {index} is {name!r}, which neuroseg does not know; name it one of "
                                f"{sorted(set(SEQUENCE_NAMES))} or declare \"neuroseg\": {{\"sequences\": [...]}}")
        sequences.append(key)
    if len(sequences) != len(channels) or len(set(sequences)) != len(sequences):
        raise _fail(source, f"{len(channels)} input channels but the sequences {sequences}; each channel must be "
                            "one distinct sequence")
    return tuple(sequences)


def read_labels(dataset: Mapping[str, Any], source: Path) -> LabelConvention:
    """The declared label convention of dataset.json's ``labels`` (see the module docstring)."""
    labels = dataset.get("labels") or {}
    expected = ("regions whole tumor, tumor core, enhancing tumor (with regions_class_order), or background 0 "
                "plus NCR, ED, ET with the values of BraTS 2021 (1, 2, 4) or BraTS 2023 (1, 2, 3)")
    names = {key: OUTPUT_NAMES.get(str(key).strip().lower()) for key in labels}
    unknown = [key for key, name in names.items() if name is None]
    if unknown or not labels:
        raise _fail(source, f"labels {unknown or '(none)'} are not ones neuroseg knows; it expects {expected}")
    if any(isinstance(value, (list, tuple)) for value in labels.values()):
        # nnU-Net's region outputs: one sigmoid per foreground region, in the order of the labels dict
        channels = tuple(names[key] for key in labels if names[key] != "background")
        try:
            convention = LABEL_CONVENTIONS["regions"].with_channels(channels)
        except ModelMismatchError as exc:
            raise _fail(source, f"{exc}; it expects {expected}") from None
        if channels != ("wt", "tc", "et") or len(dataset.get("regions_class_order") or ()) != 3:
            raise _fail(source, "region outputs must come as whole tumor, tumor core, enhancing tumor with a "
                                f"regions_class_order of three values (nnU-Net paints them in that order); got "
                                f"{list(labels)} and {dataset.get('regions_class_order')}")
    else:
        values = {names[key]: int(value) for key, value in labels.items()}
        if set(values) != set(CLASS_NAMES) or len(values) != len(labels):
            raise _fail(source, f"labels {dict(labels)} are not one each of background, NCR, ED and ET; it expects "
                                f"{expected}")
        found = tuple(values[name] for name in CLASS_NAMES)
        matching = [c for c in ("brats2021", "brats2023") if LABEL_CONVENTIONS[c].label_values == found]
        if not matching:
            raise _fail(source, f"label values {dict(zip(CLASS_NAMES, found))} are neither BraTS 2021 (0/1/2/4) nor "
                                "BraTS 2023 (0/1/2/3)")
        # nnU-Net's softmax channel i is the i-th smallest label value
        channels = tuple(sorted(values, key=lambda name: values[name]))
        convention = LABEL_CONVENTIONS[matching[0]].with_channels(channels)
    declared = (dataset.get("neuroseg") or {}).get("label_convention")
    if declared and label_convention(declared, str(source)).name != convention.name:
        raise _fail(source, f"declares the label convention {declared!r} but its labels are {convention.name} "
                            f"({dict(labels)})")
    return convention


def fold_folders(root: Path) -> list[str]:
    """The folds with a ``checkpoint_final.pth`` ("0", "1", ... and "all"), as nnU-Net names them."""
    found = [path.name.removeprefix("fold_") for path in sorted(root.glob("fold_*")) if (path / CHECKPOINT).is_file()]
    return sorted(found, key=lambda fold: (fold == "all", int(fold) if fold.isdigit() else 0))


class NnunetAdapter(DeclaredModelAdapter):
    """An nnU-Net v2 trained-model folder ready for inference (build it with :meth:`load`)."""

    method = FLIPS_AND_FOLDS

    def __init__(self, *, predictor: Any, root: Path, dataset: Mapping[str, Any], folds: list[str],
                 sequences: tuple[str, ...], labels: LabelConvention, gradcam_layer: str, device: Any) -> None:
        super().__init__(root=root, source=root, sequences=sequences, labels=labels, gradcam_layer=gradcam_layer,
                         device=device)
        self.predictor = predictor
        self.dataset = dict(dataset)
        self.folds = folds

    @classmethod
    def load(cls, path: Path | str, device: str = "auto", folds: list[str] | None = None) -> NnunetAdapter:
        """Read the folder with nnU-Net's predictor; mismatches raise :class:`ModelMismatchError`."""
        from neuroseg.model.runtime import resolve_device

        root = Path(path)
        dataset_file = root / "dataset.json"
        dataset = json.loads(dataset_file.read_text())
        sequences, labels = read_sequences(dataset, dataset_file), read_labels(dataset, dataset_file)
        folds = folds or fold_folders(root)
        if not folds:
            raise _fail(root, f"no fold_*/{CHECKPOINT}; nnUNetv2_train writes one per trained fold")
        target = resolve_device(device)
        with contextlib.redirect_stdout(io.StringIO()) as said:  # nnU-Net prints its paths and choices
            try:
                from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
            except ImportError as exc:
                raise ModelMismatchError(f"model {root} is an nnU-Net v2 folder, which needs nnunetv2: "
                                         f"pip install -e \".[nnunet]\" ({exc})") from None
            predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                        perform_everything_on_device=target.type == "cuda", device=target,
                                        verbose=False, verbose_preprocessing=False, allow_tqdm=False)
            try:
                predictor.initialize_from_trained_model_folder(str(root), use_folds=tuple(folds),
                                                               checkpoint_name=CHECKPOINT)
                for params in predictor.list_of_parameters[1:]:  # every fold must fit, not only the first
                    predictor.network.load_state_dict(params)
                predictor.network.load_state_dict(predictor.list_of_parameters[0])
            except RuntimeError as exc:
                raise _fail(root / f"fold_{folds[0]}" / CHECKPOINT,
                            "the weights do not fit the network nnU-Net builds from plans.json and dataset.json "
                            f"({len(sequences)} inputs, {len(labels.channels)} outputs): "
                            f"{str(exc).splitlines()[0]}") from None
        log.debug("nnU-Net: %s", said.getvalue().strip())
        heads = predictor.label_manager.num_segmentation_heads
        if heads != len(labels.channels):
            raise _fail(dataset_file, f"nnU-Net makes {heads} outputs of these labels, neuroseg reads "
                                      f"{len(labels.channels)} ({', '.join(labels.channels)})")
        predictor.network.to(target).eval()
        layer = str((dataset.get("neuroseg") or {}).get("gradcam_layer") or "")
        stages = getattr(getattr(predictor.network, "decoder", None), "stages", None)
        if not layer and stages is not None and len(stages):
            layer = f"decoder.stages.{max(len(stages) - 2, 0)}"
        if layer and layer not in dict(predictor.network.named_modules()):
            raise _fail(dataset_file, f"gradcam_layer {layer!r} is not a layer of the nnU-Net network")
        adapter = cls(predictor=predictor, root=root, dataset=dataset, folds=list(folds), sequences=sequences,
                      labels=labels, gradcam_layer=layer, device=target)
        log.info("loaded nnU-Net model %s (%s, folds %s, %s) on %s", adapter.name, adapter.configuration,
                 ",".join(folds), labels.name, target)
        return adapter

    # --- the adapter interface ----------------------------------------------------------------

    @property
    def configuration(self) -> str:
        """The nnU-Net configuration ("3d_fullres", ...): the last part of the folder's Trainer__Plans__Config name."""
        parts = self.root.name.split("__")
        return parts[-1] if len(parts) == 3 else str(self.predictor.configuration_manager.data_identifier)

    @property
    def mirror_combinations(self) -> list[tuple[int, ...]]:
        """The unmirrored pass and every combination of the checkpoint's mirroring axes, as nnU-Net runs them."""
        axes = tuple(self.predictor.allowed_mirroring_axes or ())
        return [(), *[c for n in range(len(axes)) for c in itertools.combinations(axes, n + 1)]]

    @property
    def provenance(self) -> Provenance:
        data, plans = self.dataset, self.predictor.plans_manager.plans
        licence = data.get("licence") or data.get("license") or ""
        return Provenance(name=str(data.get("name") or plans.get("dataset_name") or self.root.parent.name),
                          version=str(data.get("release") or data.get("version") or "unknown"),
                          authors=str(data.get("reference") or data.get("authors") or ""), license=str(licence),
                          description=str(data.get("description", "")), kind="nnunet-v2", source=str(self.root))

    def model_card(self) -> Mapping[str, Any]:
        manager = self.predictor.configuration_manager
        return {
            "name": self.name, "version": self.version,
            "intended_use": str(self.dataset.get("description", "")),
            "architecture": f"nnU-Net v2 {self.predictor.trainer_name}, {self.configuration} "
                            f"({manager.network_arch_class_name.rsplit('.', 1)[-1]}), patch "
                            f"{list(manager.patch_size)}, spacing {list(manager.spacing)} mm, folds "
                            f"{', '.join(self.folds)}, inputs {', '.join(self.sequences)}, outputs "
                            f"{', '.join(self.labels.channels)} ({self.labels.name})",
            "training_data": str(self.dataset.get("name", "")),
            "gradcam": {"method": "MONAI GradCAM on the first fold, ReLU map divided by its maximum inside the head",
                        "layer": self.gradcam_layer} if self.gradcam_layer else
                       {"method": "none", "why": "the network has no decoder.stages; declare neuroseg.gradcam_layer"},
        }

    def uncertainty_description(self) -> str:
        return (f"variance and entropy of the class probabilities over the {len(self.folds)} folds and the "
                f"{len(self.mirror_combinations)} mirrorings of each (nnU-Net's own test-time augmentation and "
                "fold ensemble)")

    def segment(self, images: Mapping[str, np.ndarray], affine: np.ndarray, *, mc_samples: int = 8,
                gradcam: bool = True, seed: int = 0, progress: Progress | None = None,
                gradcam_layer: str | None = None, postprocess: Any = None, folds: int | None = None,
                **_ignored: Any) -> Any:
        """See :meth:`ModelAdapter.segment`; ``mc_samples`` caps the mirrorings per fold.

        ``folds`` runs only the first that many folds (a quick look; ``neuroseg bench model``'s plain pass);
        None runs every fold, nnU-Net's ensemble.
        """
        from neuroseg.model.inference import SegmentationResult, label_volumes_ml

        self.check_inputs(images, mc_samples)
        layer = self._layer(gradcam_layer)
        report = progress or (lambda stage, fraction: None)
        begin = time.perf_counter()
        report("preprocessing", 0.0)
        volume = np.stack([np.asarray(images[key], np.float32) for key in self.sequences])
        data, properties, to_caller = self._to_nnunet(volume, affine)
        data, crop_seg, properties = self._preprocessor().run_case_npy(
            data, None, properties, self.predictor.plans_manager, self.predictor.configuration_manager,
            self.predictor.dataset_json)
        timings = {"preprocessing": time.perf_counter() - begin}
        report("preprocessing", 1.0)

        started = time.perf_counter()
        mirrors = self.mirror_combinations[:min(mc_samples, len(self.mirror_combinations))]
        parameters = self.predictor.list_of_parameters[:folds or None]
        mean_logits, variance, mutual = self._passes(data, parameters, mirrors, report)
        timings["tta"] = time.perf_counter() - started

        started = time.perf_counter()
        back = self._back(properties)
        logits = back(mean_logits)
        nn_seg = self.predictor.label_manager.convert_probabilities_to_segmentation(
            self.predictor.label_manager.apply_inference_nonlin(logits))
        labels = to_caller(self._insert(self._brats2021(np.asarray(nn_seg)), properties, 0))
        probabilities = self.labels.class_probabilities(logits).numpy()
        probabilities = to_caller(self._insert(probabilities, properties, [1, 0, 0, 0]))
        spread = to_caller(self._insert(np.clip(np.asarray(back(np.concatenate([variance, mutual[None]]))), 0, None),
                                        properties, 0))
        entropy = -np.sum(probabilities * np.log(np.clip(probabilities, 1e-12, None)), axis=0)
        cams = np.zeros((3, *labels.shape), np.float32)
        if gradcam and layer:
            report("explaining", 0.0)
            cam_started = time.perf_counter()
            cams = self._grad_cam(data, crop_seg[0] >= 0, layer)
            cams = to_caller(self._insert(np.clip(np.asarray(back(cams)), 0, 1), properties, 0))
            timings["gradcam"] = time.perf_counter() - cam_started
        postprocessing: dict[str, Any] = {}
        if postprocess is not None and getattr(postprocess, "enabled", False):
            from neuroseg.model.postprocess import postprocess_labels

            labels, changes = postprocess_labels(labels, affine, postprocess)
            postprocessing = {**postprocess.to_dict(), **changes}
        tumour = CLASS_NAMES[1:]
        result = SegmentationResult(
            labels=labels.astype(np.uint8),
            probabilities={name: probabilities[i].astype(np.float32) for i, name in enumerate(CLASS_NAMES)},
            variance={name: spread[i].astype(np.float32) for i, name in enumerate(tumour)},
            entropy=entropy.astype(np.float32), mutual_information=spread[3].astype(np.float32),
            gradcam={name: (cams[i] if np.any(labels == BRATS2021_OF_CLASS[name]) else np.zeros_like(cams[i]))
                     .astype(np.float32) for i, name in enumerate(tumour)},
            volumes_ml=label_volumes_ml(labels, affine), sequences_used=list(self.sequences),
            model_name=self.name, model_version=self.version, mc_samples=len(mirrors) * len(parameters),
            gradcam_layer=layer if gradcam and layer else "", postprocessing=postprocessing)
        timings["postprocessing"] = time.perf_counter() - started - timings.get("gradcam", 0.0)
        timings["total"] = time.perf_counter() - begin
        result.timings = {key: round(value, 3) for key, value in timings.items()}
        report("explaining", 1.0)
        return result

    # --- nnU-Net's grid -------------------------------------------------------------------------

    def _preprocessor(self) -> Any:
        return self.predictor.configuration_manager.preprocessor_class(verbose=False)

    def _to_nnunet(self, volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, dict, Any]:
        """(C, X, Y, Z) on ``affine`` -> nnU-Net's (C, z, y, x) array, its properties, and the way back."""
        import nibabel.orientations as orientations

        reader = str(self.predictor.plans_manager.plans.get("image_reader_writer", ""))
        target = RAS_AXES if reader == "NibabelIOWithReorient" else LPS_AXES
        source = orientations.io_orientation(np.asarray(affine, float))
        forward = orientations.ornt_transform(source, target)
        backward = orientations.ornt_transform(target, source)
        zooms = np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(axis=0))
        spacing = [float(zooms[int(forward_axis)]) for forward_axis in np.argsort(forward[:, 0])]
        data = np.stack([orientations.apply_orientation(channel, forward) for channel in volume])
        data = np.ascontiguousarray(data.transpose(0, 3, 2, 1))

        def to_caller(array: np.ndarray) -> np.ndarray:
            array = np.asarray(array)
            if array.ndim == 3:
                return np.ascontiguousarray(orientations.apply_orientation(array.transpose(2, 1, 0), backward))
            return np.stack([to_caller(channel) for channel in array])

        return data, {"spacing": spacing[::-1]}, to_caller

    def _back(self, properties: Mapping[str, Any]) -> Any:
        """nnU-Net's resampling of (C, ...) maps from its grid to the cropped input grid, as in its export."""
        plans, manager = self.predictor.plans_manager, self.predictor.configuration_manager
        spacing = [properties["spacing"][i] for i in plans.transpose_forward]
        shape = properties["shape_after_cropping_and_before_resampling"]
        current = manager.spacing if len(manager.spacing) == len(shape) else [spacing[0], *manager.spacing]

        def resample(array: Any) -> Any:
            import torch

            out = manager.resampling_fn_probabilities(array, shape, current, spacing)
            return torch.as_tensor(np.asarray(out)) if not isinstance(out, torch.Tensor) else out

        return resample

    def _insert(self, array: Any, properties: Mapping[str, Any], outside: Any) -> np.ndarray:
        """A cropped map (C, ...) or (...) put back into the uncropped volume and nnU-Net's transpose undone."""
        from acvl_utils.cropping_and_padding.bounding_boxes import bounding_box_to_slice

        array = np.asarray(array)
        shape = tuple(properties["shape_before_cropping"])
        backward = list(self.predictor.plans_manager.transpose_backward)
        box = bounding_box_to_slice(properties["bbox_used_for_cropping"])
        if array.ndim == 3:
            full = np.full(shape, outside, dtype=array.dtype)
            full[box] = array
            return full.transpose(backward)
        full = np.empty((array.shape[0], *shape), dtype=array.dtype)
        full[:] = np.reshape(np.broadcast_to(outside, (array.shape[0],)), (-1, 1, 1, 1))
        full[(slice(None), *box)] = array
        return full.transpose([0, *[i + 1 for i in backward]])

    def _brats2021(self, segmentation: np.ndarray) -> np.ndarray:
        """nnU-Net's label map (its own values) -> BraTS 2021 values."""
        if not self.labels.is_regions:
            return self.labels.to_brats2021(segmentation)
        order = list(self.dataset["regions_class_order"])  # painted whole tumor, tumor core, enhancing tumor
        lookup = np.zeros(max(order) + 1, np.uint8)
        lookup[order] = (2, 1, 4)
        return lookup[segmentation]

    def _passes(self, data: np.ndarray, parameters: list[Any], mirrors: list[tuple[int, ...]], report: Progress
                ) -> tuple[Any, np.ndarray, np.ndarray]:
        """Mean logits over every (fold, mirroring), the class-probability variance (3, ...) and the MI."""
        import torch

        predictor = self.predictor
        inputs = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
        total_logits = total = total_sq = total_h = None
        count = len(parameters) * len(mirrors)
        try:
            for number, params in enumerate(parameters):
                report("inference", number / len(parameters))
                predictor.network.load_state_dict(params)
                for logits in self._mirrored_logits(inputs, mirrors):
                    p = self.labels.class_probabilities(logits)
                    h = -torch.special.xlogy(p, p).sum(dim=0)
                    total_logits = logits if total_logits is None else total_logits + logits
                    total = p if total is None else total + p
                    total_sq = p * p if total_sq is None else total_sq + p * p
                    total_h = h if total_h is None else total_h + h
        finally:
            predictor.network.load_state_dict(predictor.list_of_parameters[0])
        report("inference", 1.0)
        mean = total / count
        variance = (total_sq / count - mean * mean).clamp_min(0)[1:]
        mutual = (-torch.special.xlogy(mean, mean).sum(dim=0) - total_h / count).clamp_min(0)
        return total_logits / count, variance.numpy(), mutual.numpy()

    def _mirrored_logits(self, inputs: Any, mirrors: list[tuple[int, ...]]) -> Any:
        """(heads, ...) logits of the loaded fold for each mirroring: nnU-Net's sliding window, kept apart.

        nnU-Net's own tiles (padding to the patch, its slicers, its Gaussian weights); each tile goes
        through the network once per mirroring, as nnU-Net's ``_internal_maybe_mirror_and_predict``
        does, but the mirrorings are accumulated separately instead of averaged.
        """
        import torch
        from acvl_utils.cropping_and_padding.padding import pad_nd_image
        from nnunetv2.inference.sliding_window_prediction import compute_gaussian

        predictor = self.predictor
        patch = tuple(predictor.configuration_manager.patch_size)
        device = self.device
        padded, revert = pad_nd_image(inputs, patch, "constant", {"value": 0}, True, None)
        slicers = predictor._internal_get_sliding_window_slicers(padded.shape[1:])
        gaussian = compute_gaussian(patch, sigma_scale=1.0 / 8, value_scaling_factor=10, device=device)
        heads = predictor.label_manager.num_segmentation_heads
        sums = torch.zeros((len(mirrors), heads, *padded.shape[1:]), dtype=torch.float32, device=device)
        weights = torch.zeros(padded.shape[1:], dtype=torch.float32, device=device)
        network = predictor.network.to(device).eval()
        autocast = torch.autocast(device.type) if device.type == "cuda" else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            for where in slicers:
                tile = padded[where][None].to(device)
                for index, axes in enumerate(mirrors):
                    dims = [axis + 2 for axis in axes]
                    out = network(tile.flip(dims) if dims else tile)
                    out = out.flip(dims) if dims else out
                    sums[index][where] += out[0].float() * gaussian
                weights[where[1:]] += gaussian
        sums /= weights
        for index in range(len(mirrors)):
            yield sums[index][(slice(None), *revert[1:])].cpu()

    def _layer(self, wanted: str | None) -> str:
        if not wanted:
            return self.gradcam_layer
        if wanted not in dict(self.predictor.network.named_modules()):
            examples = [name for name, _ in self.predictor.network.named_modules() if name.count(".") <= 2][1:7]
            raise ModelMismatchError(f"Grad-CAM layer {wanted!r} is not a layer of {self.root}; "
                                     f"e.g. {', '.join(examples)}")
        return wanted

    def _grad_cam(self, data: np.ndarray, mask: np.ndarray, layer: str) -> np.ndarray:
        """(3, ...) Grad-CAM of NCR, ED, ET on nnU-Net's grid, with the first fold's weights."""
        manager = self.predictor.configuration_manager
        strides = manager.network_arch_init_kwargs.get("strides") or \
            manager.network_arch_init_kwargs.get("pool_op_kernel_sizes") or [[1, 1, 1]]
        divisor = tuple(int(np.prod([np.atleast_1d(s)[axis % len(np.atleast_1d(s))] for s in strides]))
                        for axis in range(data.ndim - 1))
        channels = [self.labels.channels.index(REGION_FOR_CLASS[name] if self.labels.is_regions else name)
                    for name in CLASS_NAMES[1:]]
        return grad_cam_maps(self.predictor.network, data, mask, layer, channels, divisor, self.device)
