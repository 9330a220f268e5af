"""The 3D U-Net of neuroseg, split into a deterministic trunk and a cheap stochastic head.

Architecture
------------
Input: ``len(in_sequences)`` image channels (z-scored, a missing sequence is a
zero channel) followed by the same number of *presence flags*, each a constant
channel that is 1 where the sequence was given and 0 where it is missing. The
network therefore knows which inputs it sees, so a study with two sequences
still segments (part 2 trains with random sequence dropout).

Output: 4 class logits per voxel, in the order of :data:`CLASS_NAMES`
(background, NCR, ED, ET). :data:`BRATS_LABELS` gives the BraTS label value each
class is exported with (0, 1, 2, 4).

The network is a classic U-Net (two 3x3x3 convolutions with instance norm and
LeakyReLU per stage, strided convolution down, transposed convolution up, skip
connections by concatenation), cut in two parts:

``trunk``
    Everything up to and including the last (full resolution) decoder stage. It
    returns ``channels[0]`` feature maps per voxel. At inference the trunk runs
    once per sliding window, in eval mode (deterministic). Decoder stages carry
    ``trunk_dropout`` (used in training, and by the "full network" Monte Carlo
    scheme that the benchmark compares against).
``head``
    A per-voxel MLP (two 1x1x1 convolutions) with unit dropout ``dropout`` on
    its hidden units (:class:`UnitDropout`: a dropped unit is dropped for every
    voxel of the sample, i.e. one mask is one thinned network). Monte Carlo
    dropout samples only the head, and only its last layer depends on the
    mask: N stochastic passes cost one small matrix product on top of one
    deterministic pass.
    Because the head is pointwise it can run on any set of voxels
    (:meth:`NetworkHead.logits_cf`), which the inference code uses to run
    the N passes and Grad-CAM on the blended feature volume in chunks.

Grad-CAM target layers (:func:`gradcam_layers`): ``"trunk.output"`` is the
last decoder stage at full resolution, just before the per-voxel head: its
Grad-CAM map is nearly a copy of the class logit (the head is pointwise).
The default (:func:`default_gradcam_layer`; :data:`GRADCAM_TARGET_LAYER`
for the 4-level networks) is a deeper decoder stage
(``"trunk.decoders.1"``, half resolution), whose activations still carry
context from the coarser levels, so the map shows which region drove the
prediction rather than repeating it. Any ``trunk.decoders.<i>`` or
``trunk.encoders.<i>`` can be chosen (``NEUROSEG_GRADCAM_LAYER``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

SEQUENCES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
"""Sequence keys the model knows, in channel order."""

CLASS_NAMES: tuple[str, ...] = ("background", "ncr", "ed", "et")
"""Output classes in logit order."""

BRATS_LABELS: tuple[int, ...] = (0, 1, 2, 4)
"""BraTS label value of each output class (same order as :data:`CLASS_NAMES`)."""

GRADCAM_TARGET_LAYER = "trunk.decoders.1"
"""Default Grad-CAM target layer of the 4-level networks: the second-to-last decoder stage (half resolution)."""
HEAD_INPUT_LAYER = "trunk.output"
"""The trunk output (the head's input): Grad-CAM there nearly repeats the prediction."""


def gradcam_layers(config: "NetworkConfig") -> tuple[str, ...]:
    """Names of the layers Grad-CAM can target in a network of this config."""
    levels = len(config.channels)
    return (HEAD_INPUT_LAYER, *(f"trunk.decoders.{i}" for i in range(levels - 1)),
            *(f"trunk.encoders.{i}" for i in range(levels)))


def default_gradcam_layer(config: "NetworkConfig") -> str:
    """The second-to-last decoder stage (:data:`GRADCAM_TARGET_LAYER` for 4 levels); the only one for 2 levels."""
    return f"trunk.decoders.{max(0, len(config.channels) - 3)}"


def layer_scale(config: "NetworkConfig", layer: str) -> int:
    """How many input voxels one voxel of ``layer``'s activations spans along each axis."""
    if layer not in gradcam_layers(config):
        raise ValueError(f"Grad-CAM layer {layer!r} is not one of {', '.join(gradcam_layers(config))}")
    if layer == HEAD_INPUT_LAYER:
        return 1
    kind, index = layer.split(".")[1:]
    levels = len(config.channels)
    level = int(index) if kind == "encoders" else levels - 2 - int(index)
    return 2**level


@dataclass(frozen=True)
class NetworkConfig:
    """Everything needed to rebuild the architecture; serialised into checkpoints.

    Parameters
    ----------
    in_sequences: tuple[str, ...]
        Sequence keys in channel order; the network gets these image channels
        followed by one presence flag per sequence.
    channels: tuple[int, ...]
        Feature channels per U-Net level, from full resolution down. The number
        of levels is ``len(channels)``; input sizes must be divisible by
        ``2 ** (len(channels) - 1)`` (the inference code pads).
    dropout: float
        Dropout probability in the head (the Monte Carlo dropout layers).
    trunk_dropout: float
        Dropout probability in the decoder stages of the trunk (training
        regulariser; off at inference unless full-network MC is asked for).
    head_channels: int
        Width of the hidden layer of the per-voxel head.
    n_classes: int
        Output classes; 4 (background, NCR, ED, ET).
    patch_size: tuple[int, int, int]
        Sliding-window size (voxels at 1 mm) used at inference; a hint for training.
    spacing_mm: float
        Isotropic voxel size (mm) the network expects; preprocessing resamples to it.
    """

    in_sequences: tuple[str, ...] = SEQUENCES
    channels: tuple[int, ...] = (16, 32, 64, 128)
    dropout: float = 0.2
    trunk_dropout: float = 0.1
    head_channels: int = 32
    n_classes: int = 4
    patch_size: tuple[int, int, int] = (128, 128, 128)
    spacing_mm: float = 1.0
    negative_slope: float = field(default=0.01)

    def __post_init__(self) -> None:
        object.__setattr__(self, "in_sequences", tuple(str(s) for s in self.in_sequences))
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        unknown = sorted(set(self.in_sequences) - set(SEQUENCES))
        if unknown or len(set(self.in_sequences)) != len(self.in_sequences) or not self.in_sequences:
            raise ValueError(
                f"in_sequences={self.in_sequences!r}: use distinct keys among {', '.join(SEQUENCES)}"
            )
        if len(self.channels) < 2 or any(c < 1 for c in self.channels):
            raise ValueError(f"channels={self.channels!r}: need at least 2 levels of positive widths")
        for name in ("dropout", "trunk_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name}={value!r}: a dropout probability must be in [0, 1)")
        if self.n_classes != len(CLASS_NAMES):
            raise ValueError(f"n_classes={self.n_classes!r}: the model exports {len(CLASS_NAMES)} classes")
        if self.head_channels < 1:
            raise ValueError(f"head_channels={self.head_channels!r}: must be positive")
        if len(self.patch_size) != 3 or any(p % self.divisor or p < self.divisor for p in self.patch_size):
            raise ValueError(
                f"patch_size={self.patch_size!r}: need 3 sizes, each a positive multiple of {self.divisor}"
            )
        if self.spacing_mm <= 0:
            raise ValueError(f"spacing_mm={self.spacing_mm!r}: must be positive")

    @property
    def in_channels(self) -> int:
        """Image channels plus presence flags."""
        return 2 * len(self.in_sequences)

    @property
    def divisor(self) -> int:
        """Spatial sizes fed to the network must be multiples of this."""
        return 2 ** (len(self.channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (lists, numbers, strings) for checkpoints and JSON."""
        data = dataclasses.asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "NetworkConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"network config has unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        values = {key: tuple(value) if isinstance(value, list) else value for key, value in data.items()}
        return cls(**values)


def _norm(channels: int) -> nn.Module:
    return nn.InstanceNorm3d(channels, affine=True)


class ConvBlock(nn.Sequential):
    """Two 3x3x3 convolutions, each followed by instance norm and LeakyReLU (optional dropout between)."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1,
                 dropout: float = 0.0, negative_slope: float = 0.01) -> None:
        layers: list[nn.Module] = [
            nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            _norm(out_channels),
            nn.LeakyReLU(negative_slope, inplace=True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout3d(dropout))
        layers += [
            nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False),
            _norm(out_channels),
            nn.LeakyReLU(negative_slope, inplace=True),
        ]
        super().__init__(*layers)


class UpStage(nn.Module):
    """Transposed convolution up by 2, concatenation with the skip, then a :class:`ConvBlock`."""

    def __init__(self, in_channels: int, out_channels: int, *, dropout: float, negative_slope: float) -> None:
        super().__init__()
        self.up = nn.ConvTranspose3d(in_channels, out_channels, 2, stride=2, bias=False)
        self.block = ConvBlock(2 * out_channels, out_channels, dropout=dropout, negative_slope=negative_slope)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([self.up(x), skip], dim=1))


class NetworkTrunk(nn.Module):
    """The deterministic part of the U-Net: input (B, in_channels, X, Y, Z) -> features (B, channels[0], X, Y, Z)."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        slope = config.negative_slope
        chans = config.channels
        self.encoders = nn.ModuleList()
        previous = config.in_channels
        for level, width in enumerate(chans):
            self.encoders.append(ConvBlock(previous, width, stride=1 if level == 0 else 2, negative_slope=slope))
            previous = width
        self.decoders = nn.ModuleList(
            UpStage(chans[level + 1], chans[level], dropout=config.trunk_dropout, negative_slope=slope)
            for level in reversed(range(len(chans) - 1))
        )
        self.output = nn.Identity()  # the Grad-CAM target layer: hooks attach here

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
        skips.pop()
        for decoder in self.decoders:
            x = decoder(x, skips.pop())
        return self.output(x)


class UnitDropout(nn.Module):
    """Dropout of whole units, shared by every voxel of a sample (channel-last input).

    In Monte Carlo terms one mask is one thinned network, applied to the whole
    volume (the weight-dropout view of MC dropout in convolutional networks). For
    input (B, X, Y, Z, C) one mask per batch item; for voxel-major input (V, C)
    one mask for all V voxels. In eval mode, or with ``p == 0``, it is the identity.
    An explicit ``mask`` (already scaled by ``1 / (1 - p)``) overrides sampling.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)

    def sample(self, count: int, channels: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """``count`` masks of ``channels`` units, scaled by ``1 / (1 - p)``, from the global torch RNG."""
        keep = 1.0 - self.p
        return torch.empty(count, channels, device=device).bernoulli_(keep) / keep

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            if not self.training or self.p == 0:
                return x
            batch = x.shape[0] if x.ndim > 2 else 1
            mask = self.sample(batch, x.shape[-1], x.device).to(x.dtype)
            if x.ndim > 2:
                mask = mask.reshape(batch, *([1] * (x.ndim - 2)), x.shape[-1])
        return x * mask


class NetworkHead(nn.Module):
    """Per-voxel MLP with Monte Carlo unit dropout: features (B, C, ...) -> logits (B, n_classes, ...).

    ``logits = classify(dropout(act(hidden(features))))``: the dropout sits on the
    hidden units just before the classifier, so the hidden activations are
    computed once and each Monte Carlo sample is one small matrix product
    (:meth:`mc_logits`). The ``*_cf`` methods take voxels channel-first, (C, V).
    """

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.hidden = nn.Linear(config.channels[0], config.head_channels)
        self.act = nn.LeakyReLU(config.negative_slope)
        self.drop = UnitDropout(config.dropout)
        self.classify = nn.Linear(config.head_channels, config.n_classes)

    def sample_masks(self, count: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """``count`` dropout masks of the hidden units, (count, head_channels), from the global torch RNG."""
        return self.drop.sample(count, self.hidden.out_features, device)

    def hidden_units(self, features: torch.Tensor) -> torch.Tensor:
        """The deterministic part of the head, channel-first voxels: (C, V) -> (H, V)."""
        return self.act(torch.addmm(self.hidden.bias[:, None], self.hidden.weight, features))

    def logits_cf(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for channel-first voxels: (C, V) -> (n_classes, V).

        ``mask`` (one row of :meth:`sample_masks`) fixes the thinned network;
        without it the head samples one mask per call in train mode.
        """
        hidden = self.hidden_units(features)
        if mask is not None:
            hidden = hidden * mask[:, None]
        elif self.drop.training and self.drop.p > 0:
            hidden = hidden * self.sample_masks(1, hidden.device)[0][:, None]
        return torch.addmm(self.classify.bias[:, None], self.classify.weight, hidden)

    def mc_logits(self, hidden: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Logits of N thinned heads at once: hidden (H, V) and masks (N, H) -> (N, n_classes, V)."""
        weight = self.classify.weight  # (K, H)
        stacked = (masks[:, None, :] * weight[None, :, :]).reshape(-1, weight.shape[1])  # (N*K, H)
        bias = self.classify.bias.repeat(masks.shape[0])[:, None]
        return torch.addmm(bias, stacked, hidden).reshape(masks.shape[0], weight.shape[0], -1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        moved = features.movedim(1, -1)
        return self.classify(self.drop(self.act(self.hidden(moved)))).movedim(-1, 1)


class SegmentationNetwork(nn.Module):
    """The whole network: ``head(trunk(x))``; see the module docstring."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        self.trunk = NetworkTrunk(config)
        self.head = NetworkHead(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


def build_network(config: NetworkConfig) -> SegmentationNetwork:
    """Build the (randomly initialised) network described by ``config``.

    Parameters
    ----------
    config: NetworkConfig
        Architecture; see :class:`NetworkConfig`.

    Returns
    -------
    SegmentationNetwork
        ``forward(x)`` maps (B, 2 * len(in_sequences), X, Y, Z) to
        (B, 4, X, Y, Z) logits; ``trunk`` and ``head`` can be called separately.
    """
    if not isinstance(config, NetworkConfig):
        raise TypeError(f"config must be a NetworkConfig, not {type(config).__name__}")
    return SegmentationNetwork(config)


def with_presence(images: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
    """Append presence flags as constant channels.

    Parameters
    ----------
    images: torch.Tensor
        (B, S, X, Y, Z) z-scored images, a missing sequence being zeros.
    presence: torch.Tensor
        (B, S) or (S,) flags, 1 for a given sequence and 0 for a missing one.

    Returns
    -------
    torch.Tensor
        (B, 2S, X, Y, Z) network input.
    """
    if images.ndim != 5:
        raise ValueError(f"images must have shape (B, S, X, Y, Z), got {tuple(images.shape)}")
    batch, sequences = images.shape[:2]
    flags = presence.to(images.dtype).to(images.device).reshape(-1, sequences)
    if flags.shape[0] == 1 and batch > 1:
        flags = flags.expand(batch, sequences)
    if flags.shape != (batch, sequences):
        raise ValueError(f"presence must have shape ({batch}, {sequences}) or ({sequences},), got {tuple(presence.shape)}")
    planes = flags[:, :, None, None, None].expand(-1, -1, *images.shape[2:])
    return torch.cat([images, planes], dim=1)


def set_dropout(module: nn.Module, *, head: bool, trunk: bool = False) -> None:
    """Switch dropout layers on (train mode) or off, leaving every other layer in eval mode.

    Parameters
    ----------
    module: nn.Module
        A :class:`SegmentationNetwork` (or any module holding one).
    head: bool
        Dropout of the head (the Monte Carlo layers).
    trunk: bool
        Dropout of the trunk's decoder stages (full-network Monte Carlo).
    """
    module.eval()
    for name, sub in module.named_modules():
        if isinstance(sub, (nn.Dropout, nn.Dropout3d, UnitDropout)):
            in_head = name.startswith("head.") or ".head." in name
            sub.train(head if in_head else trunk)
