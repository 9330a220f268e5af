"""Training of the segmentation network (``neuroseg train``).

The recipe:

* cases (phantoms, BraTS 2021/2023, WT-only cases) are preprocessed once with
  :func:`neuroseg.model.preprocess.preprocess`, the code inference uses, at the
  network's working spacing, and cached as ``.npz`` in the work folder;
* each step draws ``batch_size`` patches, most of them centred on tumour;
* augmentation (MONAI dictionary transforms, :func:`neuroseg.model.data.augmentation`):
  flips, small rotations and scaling, intensity scale/shift,
  gamma, bias field, noise, thick-slice simulation, and random sequence
  dropout (a dropped sequence becomes zeros with its presence flag off, as at
  inference; at least one of FLAIR/T1ce always stays);
* loss: MONAI ``DiceCELoss`` on the four classes (optionally with the Dice
  term on the three tumour classes only); cases with only a
  whole-tumour label get a Dice + binary cross-entropy loss on
  p(WT) = 1 - p(background);
* AdamW with linear warm-up then cosine decay; mixed precision on CUDA;
* every random draw of step ``k`` comes from generators seeded with
  ``(seed, k)``, and the resumable state holds model, optimiser, scheduler and
  scaler, so a resumed run gives the same weights as an uninterrupted one.

Outputs in the work folder: ``metrics.csv`` (one row per step),
``metrics.json`` (summary and validation), ``training_curve.png`` and
``state.pt`` (resume). The final checkpoint (``--out``) is written with
:func:`neuroseg.model.checkpoint.save_checkpoint` and records the exact command.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from neuroseg.model.data import (
    CLASS_VALUES,
    SEQUENCES,
    CachedCase,
    LabelKind,
    augment_batch,
    cache_cases,
    drop_sequences,
    sample_patch,
    split_cases,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (recorded in the checkpoint)."""

    data_dirs: tuple[Path, ...]
    steps: int = 1000
    batch_size: int = 2
    patch_size: int = 48
    spacing_mm: float = 2.0
    channels: tuple[int, ...] = (8, 16, 32, 64)
    head_channels: int = 16
    dropout: float = 0.2
    trunk_dropout: float = 0.1
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    tumour_fraction: float = 0.7
    sequence_dropout: float = 0.35
    val_fraction: float = 0.1
    val_every: int = 100
    checkpoint_every: int = 50
    wt_only_weight: float = 1.0
    background_dice: bool = True
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    name: str = "neuroseg-unet"
    version: str = "0.1.0"
    val_dirs: tuple[Path, ...] = ()
    """Folders of validation-only cases (never trained on), besides the ``val_fraction`` split."""
    data_weights: tuple[float, ...] = ()
    """Share of the drawn patches per ``data_dirs`` folder (spread evenly over its cases);
    empty: every case equally likely. Lets a few real cases weigh as much as many phantoms."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dirs", tuple(Path(p) for p in self.data_dirs))
        object.__setattr__(self, "val_dirs", tuple(Path(p) for p in self.val_dirs))
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "data_weights", tuple(float(w) for w in self.data_weights))
        if not self.data_dirs:
            raise ValueError("give at least one --data folder")
        if self.data_weights and (len(self.data_weights) != len(self.data_dirs)
                                  or min(self.data_weights) <= 0):
            raise ValueError(f"give one positive --data-weight per --data folder "
                             f"({len(self.data_dirs)} folders, weights {list(self.data_weights)})")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps={self.steps} and batch_size={self.batch_size} must be positive")
        divisor = 2 ** (len(self.channels) - 1)
        if self.patch_size % divisor or self.patch_size < divisor:
            raise ValueError(f"patch_size={self.patch_size} must be a positive multiple of {divisor} "
                             f"for {len(self.channels)} U-Net levels")
        for name in ("tumour_fraction", "sequence_dropout", "val_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0 and not (name != "val_fraction" and value == 1.0):
                raise ValueError(f"{name}={value} must be in [0, 1)")

    def network_config(self):  # noqa: ANN201 - NetworkConfig, imported lazily with torch
        """The architecture this run trains."""
        from neuroseg.model.network import NetworkConfig

        return NetworkConfig(
            channels=self.channels, head_channels=self.head_channels, dropout=self.dropout,
            trunk_dropout=self.trunk_dropout, patch_size=(self.patch_size,) * 3, spacing_mm=self.spacing_mm,
        )

    def to_dict(self) -> dict:
        data = asdict(self)
        data["data_dirs"] = [str(p) for p in self.data_dirs]
        data["val_dirs"] = [str(p) for p in self.val_dirs]
        data["channels"] = list(self.channels)
        data["data_weights"] = list(self.data_weights)
        return data


@dataclass
class TrainResult:
    """What a run produced."""

    checkpoint: Path
    steps: int
    final_loss: float
    validation: dict
    seconds: float

    def summary(self) -> str:
        val = self.validation.get("mean", {})
        parts = [f"{self.steps} steps", f"loss {self.final_loss:.3f}", f"{self.seconds / 60:.1f} min"]
        parts += [f"val {k} {v:.3f}" for k, v in val.items() if v is not None]
        return ", ".join(parts)


# --- loss -----------------------------------------------------------------------------------


def segmentation_loss(logits, labels, whole_tumour_only, dice_ce, wt_weight: float = 1.0):
    """DiceCE on 4 classes for BraTS samples; Dice + BCE on p(WT) for whole-tumour-only samples."""
    import torch
    import torch.nn.functional as F

    losses = []
    weights = []
    brats = ~whole_tumour_only
    if brats.any():
        target = F.one_hot(labels[brats], 4).movedim(-1, 1).float()
        losses.append(dice_ce(logits[brats].float(), target))
        weights.append(float(brats.sum()))
    if whole_tumour_only.any():
        sub = logits[whole_tumour_only].float()
        wt_logit = torch.logsumexp(sub[:, 1:], dim=1) - sub[:, 0]
        target = (labels[whole_tumour_only] > 0).float()
        bce = F.binary_cross_entropy_with_logits(wt_logit, target)
        prob = torch.sigmoid(wt_logit)
        dice = 1.0 - (2.0 * (prob * target).sum() + 1e-5) / (prob.sum() + target.sum() + 1e-5)
        losses.append(wt_weight * (bce + dice))
        weights.append(float(whole_tumour_only.sum()))
    total = sum(w * loss for w, loss in zip(weights, losses)) / sum(weights)
    return total


def _run_summary(rows: list[dict], validations: list[dict]) -> tuple[float, dict]:
    """Mean loss of the last 20 steps and the last validation of a run."""
    final_loss = float(np.mean([r["loss"] for r in rows[-20:]])) if rows else float("nan")
    return final_loss, (validations[-1] if validations else {"mean": {}})


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 2 % of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# --- the loop -------------------------------------------------------------------------------


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} asked for, but CUDA is not available; use --device cpu")
    return torch.device(name)


def _case_probabilities(cases: list[CachedCase], case_dirs: dict[str, int],
                        config: TrainConfig) -> np.ndarray | None:
    """Drawing probability of each training case from ``config.data_weights`` (None: uniform)."""
    if not config.data_weights:
        return None
    counts = np.bincount([case_dirs[c.case_id] for c in cases], minlength=len(config.data_dirs))
    weights = np.array([config.data_weights[case_dirs[c.case_id]] / counts[case_dirs[c.case_id]]
                        for c in cases])
    return weights / weights.sum()


def _make_batch(cases: list[CachedCase], step: int, config: TrainConfig, sequences: tuple[str, ...],
                probabilities: np.ndarray | None = None):
    """The (deterministic given seed and step) batch of one step."""
    import torch

    rng = np.random.default_rng([config.seed, step, 1])
    augment_seed = int(rng.integers(2**32))
    images, labels, presence, wt_only = [], [], [], []
    for _ in range(config.batch_size):
        index = rng.integers(len(cases)) if probabilities is None else rng.choice(len(cases), p=probabilities)
        case = cases[int(index)]
        image, label = sample_patch(case, rng, config.patch_size, config.tumour_fraction)
        flags = case.presence.copy()
        if rng.random() < config.sequence_dropout:
            flags = drop_sequences(flags, rng, sequences)
        image *= flags[:, None, None, None]
        images.append(image)
        labels.append(label)
        presence.append(flags)
        wt_only.append(case.label_kind is LabelKind.WHOLE_TUMOUR)
    images_t, labels_t = augment_batch(torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels)),
                                       augment_seed)
    return images_t, labels_t, torch.from_numpy(np.stack(presence)), torch.tensor(wt_only)


def validate(network, cases: list[CachedCase], config: TrainConfig, device) -> dict:
    """Dice per region on whole validation cases at the training spacing (sliding window)."""
    import torch
    from monai.inferers import sliding_window_inference

    from neuroseg.model.evaluate import dice_hd95, region_mask
    from neuroseg.model.network import with_presence

    network.eval()
    per_case = []
    with torch.no_grad():
        for case in cases:
            image = torch.from_numpy(case.image.astype(np.float32))[None].to(device)
            x = with_presence(image, torch.from_numpy(case.presence)[None].to(device))
            logits = sliding_window_inference(x, (config.patch_size,) * 3, 4, network, overlap=0.25,
                                              mode="gaussian")
            index = logits.argmax(1)[0].cpu().numpy()
            prediction = np.asarray(CLASS_VALUES, dtype=np.uint8)[index]
            scores = {}
            if case.label_kind is LabelKind.WHOLE_TUMOUR:
                scores["dice_wt"] = dice_hd95(prediction > 0, case.label > 0)[0]
            else:
                truth = np.asarray(CLASS_VALUES, dtype=np.uint8)[case.label]
                for region in ("wt", "tc", "et"):
                    scores[f"dice_{region}"] = dice_hd95(region_mask(prediction, region),
                                                         region_mask(truth, region))[0]
            per_case.append({"case_id": case.case_id, **scores})
    network.train()
    mean = {}
    for key in ("dice_wt", "dice_tc", "dice_et"):
        values = [c[key] for c in per_case if key in c]
        mean[key] = float(np.mean(values)) if values else None
    return {"mean": mean, "cases": per_case}


def _plot_curves(rows: list[dict], validations: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 4))
    steps = [r["step"] for r in rows]
    losses = np.array([r["loss"] for r in rows])
    ax_loss.plot(steps, losses, alpha=0.3, label="loss")
    if len(losses) >= 10:
        kernel = np.ones(10) / 10
        ax_loss.plot(steps[9:], np.convolve(losses, kernel, mode="valid"), label="loss (mean of 10)")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("Dice + CE loss")
    ax_loss.legend()
    for key in ("dice_wt", "dice_tc", "dice_et"):
        points = [(v["step"], v["mean"][key]) for v in validations if v["mean"].get(key) is not None]
        if points:
            ax_dice.plot(*zip(*points), marker="o", label=key)
    ax_dice.set_ylim(0, 1)
    ax_dice.set_xlabel("step")
    ax_dice.set_ylabel("validation Dice")
    if ax_dice.lines:
        ax_dice.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def train(config: TrainConfig, out: Path, work_dir: Path | None = None, *, resume: bool = False,
          init: Path | None = None, command: str = "", stop_after: int | None = None,
          progress: bool = True, model_card: dict | None = None) -> TrainResult:
    """Train the network and write the checkpoint ``out``.

    Parameters
    ----------
    config: TrainConfig
        The run.
    out: Path
        Final checkpoint (written when the run reaches ``config.steps``).
    work_dir: Path, optional
        Cache, metrics, plots and resumable state; default ``<out>.work``.
    resume: bool
        Continue from ``work_dir/state.pt``.
    init: Path, optional
        Start from the weights of this checkpoint (same architecture).
    command: str
        The command line, recorded in the checkpoint.
    stop_after: int, optional
        Stop (with state saved) after this many steps of this call, as if interrupted.
    model_card: dict, optional
        Model card to carry in the checkpoint metadata.
    """
    import torch
    from monai.losses import DiceCELoss
    from tqdm import tqdm

    from neuroseg.model.checkpoint import load_checkpoint, save_checkpoint
    from neuroseg.model.network import build_network, with_presence

    started = time.perf_counter()
    out = Path(out)
    work_dir = Path(work_dir) if work_dir is not None else out.with_name(out.name + ".work")
    work_dir.mkdir(parents=True, exist_ok=True)
    device = _device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    net_config = config.network_config()
    sequences = net_config.in_sequences
    if tuple(sequences) != SEQUENCES:
        raise ValueError(f"the network's sequences {sequences} differ from the data's {SEQUENCES}")
    cases, case_dirs = [], {}
    for index, data_dir in enumerate(config.data_dirs):
        folder_cases = cache_cases((data_dir,), work_dir / "cache", config.spacing_mm, progress=progress)
        case_dirs.update({c.case_id: index for c in folder_cases})
        cases += folder_cases
    train_cases, val_cases = split_cases(cases, config.val_fraction, config.seed)
    probabilities = _case_probabilities(train_cases, case_dirs, config)
    if config.val_dirs:
        val_cases += cache_cases(config.val_dirs, work_dir / "cache", config.spacing_mm, progress=progress)
        both = {c.case_id for c in train_cases} & {c.case_id for c in val_cases}
        if both:
            raise ValueError(f"cases {', '.join(sorted(both))} are both in --data and --val-data; "
                             "a validation case must not be trained on")
    log.info("training on %d cases, validating on %d (%s)", len(train_cases), len(val_cases),
             ", ".join(c.case_id for c in val_cases))
    network = build_network(net_config)
    if init is not None:
        loaded, init_config, _ = load_checkpoint(init)
        # window and spacing are not part of the layers: weights trained at 3 mm can be fine-tuned at 2 mm
        same_layers = dataclasses.replace(init_config, patch_size=net_config.patch_size,
                                          spacing_mm=net_config.spacing_mm, dropout=net_config.dropout,
                                          trunk_dropout=net_config.trunk_dropout)
        if same_layers != net_config:
            raise ValueError(f"--init {init}: its architecture {init_config.to_dict()} differs from this run's")
        if init_config.spacing_mm != net_config.spacing_mm:
            log.info("fine-tuning weights trained at %g mm at %g mm", init_config.spacing_mm, net_config.spacing_mm)
        network.load_state_dict(loaded.state_dict())
    network.to(device).train()
    optimiser = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: lr_factor(s, config.warmup_steps, config.steps))
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    # without the background class in the Dice term, the small tumour classes weigh more
    dice_ce = DiceCELoss(softmax=True, include_background=config.background_dice, batch=True)
    state_path = work_dir / "state.pt"
    rows: list[dict] = []
    validations: list[dict] = []
    step = 0
    if resume:
        if not state_path.is_file():
            raise ValueError(f"--resume: no saved state {state_path}; start without --resume")
        state = torch.load(state_path, map_location=device, weights_only=False)
        if state["config"] != config.to_dict():
            raise ValueError(f"--resume: {state_path} belongs to another configuration; "
                             "use the same options or another --work-dir")
        network.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        step, rows, validations = state["step"], state["rows"], state["validations"]
        log.info("resumed at step %d", step)

    def save_state() -> None:
        tmp = state_path.with_suffix(".tmp")
        torch.save({"config": config.to_dict(), "step": step, "model": network.state_dict(),
                    "optimiser": optimiser.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(), "rows": rows, "validations": validations}, tmp)
        tmp.replace(state_path)

    end = config.steps if stop_after is None else min(config.steps, step + stop_after)
    bar = tqdm(total=config.steps, initial=step, desc="train", unit="step", disable=not progress)
    while step < end:
        tick = time.perf_counter()
        images, labels, presence, wt_only = _make_batch(train_cases, step, config, sequences, probabilities)
        x = with_presence(images, presence).to(device)
        labels, wt_only = labels.to(device), wt_only.to(device)
        torch.manual_seed(config.seed * 1_000_003 + step)  # dropout masks of this step
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            logits = network(x)
        loss = segmentation_loss(logits, labels, wt_only, dice_ce, config.wt_only_weight)
        optimiser.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimiser)
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
        scaler.step(optimiser)
        scaler.update()
        scheduler.step()
        step += 1
        rows.append({"step": step, "loss": float(loss.item()), "lr": optimiser.param_groups[0]["lr"],
                     "seconds": time.perf_counter() - tick})
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean([r['loss'] for r in rows[-20:]]):.3f}")
        if val_cases and (step % config.val_every == 0 or step == config.steps):
            validation = validate(network, val_cases, config, device)
            validations.append({"step": step, **validation})
            log.info("step %d validation %s", step, validation["mean"])
        if step % config.checkpoint_every == 0 or step == end:
            save_state()
            _write_metrics(work_dir, rows, validations, config)
    bar.close()
    final_loss, last_validation = _run_summary(rows, validations)
    if step >= config.steps:
        metadata = {
            "name": config.name,
            "version": config.version,
            "training": {
                "command": command,
                "config": config.to_dict(),
                "train_cases": [c.case_id for c in train_cases],
                "validation_cases": [c.case_id for c in val_cases],
                "final_loss": final_loss,
                "validation": last_validation.get("mean", {}),
                "device": str(device),
                "seconds": round(sum(r["seconds"] for r in rows), 1),
            },
        }
        if model_card is not None:
            metadata["model_card"] = model_card
        save_checkpoint(out, network.cpu(), net_config, metadata)
        _write_metrics(work_dir, rows, validations, config)
    return TrainResult(checkpoint=out, steps=step, final_loss=final_loss, validation=last_validation,
                       seconds=time.perf_counter() - started)


def _write_metrics(work_dir: Path, rows: list[dict], validations: list[dict], config: TrainConfig) -> None:
    with open(work_dir / "metrics.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=["step", "loss", "lr", "seconds"])
        writer.writeheader()
        writer.writerows(rows)
    summary = {"config": config.to_dict(), "steps": len(rows),
               "final_loss": float(np.mean([r["loss"] for r in rows[-20:]])) if rows else None,
               "validation": validations}
    (work_dir / "metrics.json").write_text(json.dumps(summary, indent=1))
    if rows:
        _plot_curves(rows, validations, work_dir / "training_curve.png")


def embed_model_card(checkpoint: Path, card_path: Path) -> None:
    """Put the model card JSON into a checkpoint's metadata; the weights are unchanged."""
    from neuroseg.model.checkpoint import load_checkpoint, save_checkpoint

    card = json.loads(Path(card_path).read_text())
    network, config, metadata = load_checkpoint(checkpoint)
    metadata.pop("input_spec", None)
    metadata["model_card"] = card
    save_checkpoint(checkpoint, network, config, metadata)


def export_state(work_dir: Path, out: Path, command: str = "") -> TrainResult:
    """Write a checkpoint from the last saved state of an interrupted run (``work_dir/state.pt``).

    The weights are those the run had after its last ``--checkpoint-every``
    step; the metadata records that the run stopped before its schedule ended.
    """
    import torch

    from neuroseg.model.checkpoint import save_checkpoint
    from neuroseg.model.network import build_network

    state_path = Path(work_dir) / "state.pt"
    if not state_path.is_file():
        raise ValueError(f"no saved training state {state_path}")
    state = torch.load(state_path, map_location="cpu", weights_only=False)
    config = TrainConfig(**state["config"])
    net_config = config.network_config()
    network = build_network(net_config)
    network.load_state_dict(state["model"])
    rows, validations = state["rows"], state["validations"]
    final_loss, last_validation = _run_summary(rows, validations)
    metadata = {
        "name": config.name,
        "version": config.version,
        "training": {
            "command": command,
            "config": config.to_dict(),
            "stopped_at_step": int(state["step"]),
            "final_loss": final_loss,
            "validation": last_validation.get("mean", {}),
            "seconds": round(sum(r["seconds"] for r in rows), 1),
        },
    }
    save_checkpoint(out, network, net_config, metadata)
    return TrainResult(checkpoint=Path(out), steps=int(state["step"]), final_loss=final_loss,
                       validation=last_validation, seconds=0.0)
