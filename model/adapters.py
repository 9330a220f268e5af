"""One small interface in front of every kind of model the service can run.

A :class:`ModelAdapter` says which input sequences it needs (in channel
order), its label convention, its uncertainty method and its provenance, and
:meth:`ModelAdapter.segment` yields a
:class:`~neuroseg.model.inference.SegmentationResult` on the caller's grid
(per-class probabilities for background, NCR, ED and ET; BraTS 2021 labels
0/1/2/4), so the stages after the model do not care which kind ran:

- :class:`CheckpointAdapter`: our own checkpoint, through
  :func:`neuroseg.model.runtime.load_model` and
  :func:`~neuroseg.model.inference.segment` (MC dropout);
- :class:`neuroseg.model.bundle.BundleAdapter`: a MONAI bundle folder or zip
  (test-time flips, MONAI's Grad-CAM);
- :class:`neuroseg.model.nnunet.NnunetAdapter`: an nnU-Net v2 trained-model
  folder, run by nnU-Net's own predictor (test-time mirroring and the fold
  ensemble, MONAI's Grad-CAM).

The uncertainty method (:data:`MC_DROPOUT`, :data:`TEST_TIME_FLIPS`,
:data:`FLIPS_AND_FOLDS`) is one fact, ``model_card["uncertainty"]["method"]``,
from which the DICOM outputs take their wording.

Label conventions are declared, never guessed (:data:`LABEL_CONVENTIONS`):
BraTS 2021 (1 NCR, 2 ED, 4 ET), BraTS 2023+ (1 NCR, 2 ED/SNFH, 3 ET), and the
overlapping regions TC/WT/ET (one sigmoid each), converted with
ET = ET, NCR = TC & ~ET, ED = WT & ~TC, background = ~WT.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neuroseg.common.errors import InputError

Progress = Callable[[str, float], None]
CLASS_NAMES = ("background", "ncr", "ed", "et")
REGION_NAMES = ("tc", "wt", "et")
MC_DROPOUT = "mc-dropout"
TEST_TIME_FLIPS = "test-time-flips"
FLIPS_AND_FOLDS = "test-time-flips-and-fold-ensemble"


class ModelMismatchError(InputError):
    """The model and the study (or the model's own files) do not fit: wrong channels, missing sequence, unknown labels."""


@dataclass(frozen=True)
class LabelConvention:
    """How a model's output channels or label values map onto NCR/ED/ET.

    Attributes
    ----------
    name: str
        "brats2021", "brats2023" or "regions".
    channels: tuple[str, ...]
        Output channel order: class names (softmax over them) for the label conventions,
        region names "tc", "wt", "et" (one sigmoid each) for "regions".
    label_values: tuple[int, ...]
        For the label conventions, the label value of each of ``CLASS_NAMES``; empty for "regions".
    """

    name: str
    channels: tuple[str, ...]
    label_values: tuple[int, ...] = ()

    @property
    def is_regions(self) -> bool:
        return self.name == "regions"

    def with_channels(self, channels: tuple[str, ...]) -> LabelConvention:
        """The same convention with the channel order a model declares."""
        expected = set(REGION_NAMES if self.is_regions else CLASS_NAMES)
        if set(channels) != expected or len(channels) != len(expected):
            raise ModelMismatchError(f"label convention {self.name} needs the channels {sorted(expected)}; "
                                     f"got {list(channels)}")
        return LabelConvention(self.name, tuple(channels), self.label_values)

    def class_probabilities(self, outputs: np.ndarray | Any) -> Any:
        """Raw network outputs (C, ...) (logits) -> (4, ...) probabilities of background, NCR, ED, ET.

        Works on numpy arrays and torch tensors. For "regions" the sigmoids are made nested first
        (TC >= ET, WT >= TC), then NCR = TC - ET, ED = WT - TC, background = 1 - WT, which sum to 1
        and reduce to the declared set rule for hard masks.
        """
        import torch

        logits = torch.as_tensor(outputs)
        if logits.shape[0] != len(self.channels):
            raise ModelMismatchError(f"label convention {self.name} expects {len(self.channels)} output channels "
                                     f"({', '.join(self.channels)}); the model gave {logits.shape[0]}")
        if self.is_regions:
            sig = torch.sigmoid(logits.float())
            et = sig[self.channels.index("et")]
            tc = torch.maximum(sig[self.channels.index("tc")], et)
            wt = torch.maximum(sig[self.channels.index("wt")], tc)
            return torch.stack([1 - wt, tc - et, wt - tc, et])
        soft = torch.softmax(logits.float(), dim=0)
        return torch.stack([soft[self.channels.index(name)] for name in CLASS_NAMES])

    def labels_from_probabilities(self, probabilities: np.ndarray) -> np.ndarray:
        """(4, ...) class probabilities -> BraTS 2021 label map (0/1/2/4), by the convention's own rule.

        Softmax conventions take the argmax; "regions" thresholds the regions at 0.5 and applies
        ET = ET, NCR = TC & ~ET, ED = WT & ~TC.
        """
        if not self.is_regions:
            return np.array((0, 1, 2, 4), np.uint8)[np.argmax(probabilities, axis=0)]
        et = probabilities[3] > 0.5
        tc = (probabilities[1] + probabilities[3]) > 0.5
        wt = (1.0 - probabilities[0]) > 0.5
        tc |= et
        wt |= tc
        labels = np.zeros(probabilities.shape[1:], np.uint8)
        labels[wt & ~tc] = 2
        labels[tc & ~et] = 1
        labels[et] = 4
        return labels

    def to_brats2021(self, labels: np.ndarray) -> np.ndarray:
        """A label map in this convention -> BraTS 2021 values (0/1/2/4); unknown values are an error."""
        if self.is_regions:
            raise ModelMismatchError("a region convention has no label values; convert its probabilities instead")
        labels = np.asarray(labels)
        unknown = sorted(set(np.unique(labels).tolist()) - set(self.label_values))
        if unknown:
            raise ModelMismatchError(f"label values {unknown} are not in the {self.name} convention "
                                     f"({dict(zip(self.label_values, CLASS_NAMES))})")
        lookup = np.zeros(max(self.label_values) + 1, np.uint8)
        lookup[list(self.label_values)] = (0, 1, 2, 4)
        return lookup[labels]


LABEL_CONVENTIONS: dict[str, LabelConvention] = {
    "brats2021": LabelConvention("brats2021", CLASS_NAMES, (0, 1, 2, 4)),
    "brats2023": LabelConvention("brats2023", CLASS_NAMES, (0, 1, 2, 3)),
    "regions": LabelConvention("regions", REGION_NAMES),
}


def label_convention(name: str, source: str = "the model") -> LabelConvention:
    """The declared convention ``name``; an unknown one is a :class:`ModelMismatchError` naming ``source``."""
    try:
        return LABEL_CONVENTIONS[str(name).lower()]
    except KeyError:
        raise ModelMismatchError(f"{source}: unknown label convention {name!r}; declare one of "
                                 f"{', '.join(LABEL_CONVENTIONS)}") from None


@dataclass(frozen=True)
class Provenance:
    """Who made the model and under which terms (copied into report.json, the SEG and the SR)."""

    name: str
    version: str
    authors: str = ""
    license: str = ""
    description: str = ""
    kind: str = ""
    source: str = ""

    def to_dict(self) -> dict[str, str]:
        return {key: value for key, value in self.__dict__.items() if value}


class ModelAdapter(ABC):
    """What the pipeline needs from a model, whatever its kind."""

    source: Path | None
    device: Any

    @property
    @abstractmethod
    def sequences(self) -> tuple[str, ...]:
        """The input sequences in channel order ("t1", "t1ce", "t2", "flair")."""

    @property
    @abstractmethod
    def required_sequences(self) -> tuple[str, ...]:
        """The sequences a study must have (the others may be missing)."""

    @property
    @abstractmethod
    def labels(self) -> LabelConvention:
        """The model's declared label convention."""

    @property
    @abstractmethod
    def uncertainty_method(self) -> str:
        """:data:`MC_DROPOUT`, :data:`TEST_TIME_FLIPS` or :data:`FLIPS_AND_FOLDS`."""

    @property
    @abstractmethod
    def provenance(self) -> Provenance:
        """Name, version, authors and licence."""

    @abstractmethod
    def segment(self, images: Mapping[str, np.ndarray], affine: np.ndarray, *, mc_samples: int = 20,
                gradcam: bool = True, seed: int = 0, progress: Progress | None = None, **options: Any) -> Any:
        """A :class:`~neuroseg.model.inference.SegmentationResult` on the grid of ``images``.

        ``mc_samples`` is the number of stochastic passes of the model's uncertainty method
        (dropout masks, or flips up to 8); ``options`` are the keywords of
        :func:`neuroseg.model.inference.segment` (``tta``, ``gradcam_layer``, ``postprocess``).
        """

    @property
    def name(self) -> str:
        return self.provenance.name

    @property
    def version(self) -> str:
        return self.provenance.version

    @property
    def metadata(self) -> dict[str, Any]:
        """Checkpoint-style metadata: name, version and a ``model_card`` carrying provenance and uncertainty."""
        card = dict(self.model_card())
        card["provenance"] = self.provenance.to_dict()
        card["uncertainty"] = {"method": self.uncertainty_method}
        card["label_convention"] = self.labels.name
        card["inputs"] = list(self.sequences)
        return {"name": self.name, "version": self.version, "model_card": card}

    def model_card(self) -> Mapping[str, Any]:
        """The model's own card (intended use, architecture, limitations); empty when it has none."""
        return {}

    def check_sequences(self, images: Mapping[str, Any]) -> None:
        """A study without one of :attr:`required_sequences` is a :class:`ModelMismatchError` naming the model."""
        missing = [key for key in self.required_sequences if key not in images]
        if missing:
            raise ModelMismatchError(
                f"model {self.source or self.name} needs the sequences {', '.join(self.sequences)} "
                f"(in that order); the study lacks {', '.join(missing)}")


class DeclaredModelAdapter(ModelAdapter):
    """A model whose own files declare its inputs and labels (a MONAI bundle, an nnU-Net folder).

    It needs every declared sequence, and its uncertainty comes from repeated passes, not dropout;
    a subclass sets :attr:`method` and says in :meth:`uncertainty_description` what the passes are.
    """

    method: str = ""
    """:data:`TEST_TIME_FLIPS` or :data:`FLIPS_AND_FOLDS`."""

    def __init__(self, *, root: Path, source: Path, sequences: tuple[str, ...], labels: LabelConvention,
                 gradcam_layer: str, device: Any) -> None:
        self.root = root
        self.source = source
        self._sequences = sequences
        self._labels = labels
        self.gradcam_layer = gradcam_layer
        self.device = device

    @property
    def sequences(self) -> tuple[str, ...]:
        return self._sequences

    @property
    def required_sequences(self) -> tuple[str, ...]:
        return self._sequences  # no presence flags: the network was trained with every channel

    @property
    def labels(self) -> LabelConvention:
        return self._labels

    @property
    def uncertainty_method(self) -> str:
        return self.method

    @abstractmethod
    def uncertainty_description(self) -> str:
        """What the passes behind the uncertainty maps are, for the model card."""

    @property
    def metadata(self) -> dict[str, Any]:
        meta = super().metadata
        meta["model_card"]["uncertainty"] = {"method": self.method, "description": self.uncertainty_description()}
        return meta

    def check_inputs(self, images: Mapping[str, Any], mc_samples: Any) -> None:
        """:meth:`check_sequences`, and ``mc_samples`` must be a positive integer."""
        self.check_sequences(images)
        if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
            raise ValueError(f"mc_samples={mc_samples!r}: must be a positive integer")


class CheckpointAdapter(ModelAdapter):
    """Our own checkpoint (:func:`neuroseg.model.runtime.load_model`), with MC dropout uncertainty."""

    def __init__(self, model: Any, source: Path | None = None) -> None:
        self.model = model
        self.source = source
        self.device = getattr(model, "device", None)

    @property
    def sequences(self) -> tuple[str, ...]:
        return tuple(self.model.config.in_sequences)

    @property
    def required_sequences(self) -> tuple[str, ...]:
        return ()  # the network takes any subset with FLAIR or T1ce (presence flags)

    @property
    def labels(self) -> LabelConvention:
        return LABEL_CONVENTIONS["brats2021"]

    @property
    def uncertainty_method(self) -> str:
        return MC_DROPOUT

    @property
    def provenance(self) -> Provenance:
        meta = self.model.metadata or {}
        card = meta.get("model_card") or {}
        return Provenance(name=str(meta.get("name", "neuroseg")), version=str(meta.get("version", "unknown")),
                          authors=str(card.get("authors", "neuroseg maintainers")),
                          license=str(card.get("license", "")), description=str(card.get("intended_use", "")),
                          kind="neuroseg-checkpoint", source=str(self.source or "shipped weights"))

    def model_card(self) -> Mapping[str, Any]:
        return (self.model.metadata or {}).get("model_card") or {}

    @property
    def metadata(self) -> dict[str, Any]:
        meta = dict(self.model.metadata or {})
        card = meta.get("model_card")
        if card is not None:  # a checkpoint without a card keeps none (the outputs say so)
            meta["model_card"] = {**super().metadata["model_card"], **card}
        return meta

    def segment(self, images: Mapping[str, np.ndarray], affine: np.ndarray, *, mc_samples: int = 20,
                gradcam: bool = True, seed: int = 0, progress: Progress | None = None, **options: Any) -> Any:
        from neuroseg.model import inference  # looked up per call, so a patched segment is honoured

        options = {key: value for key, value in options.items() if value is not None}
        return inference.segment(images, affine, self.model, mc_samples=mc_samples, gradcam=gradcam, seed=seed,
                                 progress=progress, **options)


def as_adapter(model: Any) -> ModelAdapter:
    """``model`` itself when it is an adapter, else a :class:`CheckpointAdapter` around a loaded checkpoint."""
    return model if isinstance(model, ModelAdapter) else CheckpointAdapter(model)


def is_nnunet_folder(path: Path) -> bool:
    """An nnU-Net v2 trained-model folder: ``dataset.json`` and ``plans.json`` side by side."""
    return path.is_dir() and (path / "dataset.json").is_file() and (path / "plans.json").is_file()


def is_bundle(path: Path) -> bool:
    """A MONAI bundle: a folder with ``configs/metadata.json`` or a ``.zip``."""
    return (path.is_dir() and (path / "configs" / "metadata.json").is_file()) or \
        (path.is_file() and path.suffix.lower() == ".zip")


def load_adapter(path: Path | str | None = None, device: str = "auto") -> ModelAdapter:
    """The adapter for ``path``: our checkpoint (None: the shipped weights), a MONAI bundle folder/zip or an
    nnU-Net v2 trained-model folder.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ModelMismatchError
        For a folder of an unsupported kind, or a bundle or nnU-Net folder that does not fit.
    """
    from neuroseg.model.runtime import load_model

    if path is None:
        return CheckpointAdapter(load_model(None, device))
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model {path} does not exist")
    if is_bundle(path):
        from neuroseg.model.bundle import BundleAdapter

        return BundleAdapter.load(path, device)
    if is_nnunet_folder(path):
        from neuroseg.model.nnunet import NnunetAdapter

        return NnunetAdapter.load(path, device)
    if path.is_dir():
        if (path / "plans.json").is_file() or (path / "dataset.json").is_file():
            missing = "plans.json" if (path / "dataset.json").is_file() else "dataset.json"
            raise ModelMismatchError(f"model {path} looks like an nnU-Net v2 folder but has no {missing}; give the "
                                     "trained-model folder (dataset.json, plans.json, fold_*/checkpoint_final.pth)")
        raise ModelMismatchError(f"model {path} is a folder without configs/metadata.json or plans.json; give a "
                                 "neuroseg checkpoint (.pt), a MONAI bundle folder or zip, or an nnU-Net v2 "
                                 "trained-model folder")
    return CheckpointAdapter(load_model(path, device), source=path)
