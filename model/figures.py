"""PNG figures of a segmentation result, in the style of the seed project.

``overview.png``: one row per given sequence, then the prediction overlay, the
tumour probability (1 - P(background)), the uncertainty (predictive entropy)
and Grad-CAM (the maximum over NCR/ED/ET, in colour over the FLAIR or T1ce
slice, opaque where the map is high); columns are axial slices through
the tumour, then one coronal and one sagittal slice through its centre.
``probability.png``, ``uncertainty.png`` and ``gradcam.png``: one row per class
(NCR, ED, ET), the same columns, as in the seed's per-class figures.

Display convention: radiological (patient right on the image left, anterior
up on axial slices, superior up on coronal and sagittal slices). Slices come
from the input grid, flipped/transposed to the nearest LPS-aligned
orientation (no resampling), with the true pixel aspect ratio.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SEQUENCE_TITLES = {"t1": "T1", "t1ce": "T1ce", "t2": "T2", "flair": "FLAIR"}
CLASS_TITLES = {"ncr": "NCR (necrotic core)", "ed": "ED (edema)", "et": "ET (enhancing)"}
# seed colours: blue necrotic core, green edema, yellow enhancing tumour
LABEL_COLOURS = {1: (0.15, 0.35, 1.0), 2: (0.1, 0.85, 0.2), 4: (1.0, 0.9, 0.0)}
N_AXIAL = 5


def _canonical(affine: np.ndarray) -> tuple[tuple[int, int, int], tuple[bool, bool, bool], np.ndarray]:
    """Axis order and flips that bring an array to the nearest L, P, S orientation; and the spacings."""
    linear = np.asarray(affine, dtype=float)[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    world = np.argmax(np.abs(linear / spacing), axis=0)
    if sorted(world.tolist()) != [0, 1, 2]:  # strongly oblique: keep the array order
        world = np.array([0, 1, 2])
    order = tuple(int(np.where(world == k)[0][0]) for k in range(3))
    flips = tuple(bool(linear[k, order[k]] < 0) for k in range(3))
    return order, flips, spacing[list(order)]  # type: ignore[return-value]


def to_display(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Array with axes (L, P, S) increasing, and its voxel sizes (mm)."""
    order, flips, spacing = _canonical(affine)
    out = np.transpose(array, order)
    for axis, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis)
    return out, spacing


def choose_slices(labels: np.ndarray, n_axial: int = N_AXIAL) -> tuple[list[int], int, int]:
    """Axial slice indices through the tumour (or the volume centre), and the coronal and sagittal ones."""
    tumour = np.argwhere(labels > 0)
    if len(tumour) == 0:
        centre = [s // 2 for s in labels.shape]
        low, high = labels.shape[2] // 4, 3 * labels.shape[2] // 4
    else:
        centre = [int(round(c)) for c in tumour.mean(axis=0)]
        low, high = int(tumour[:, 2].min()), int(tumour[:, 2].max())
    axial = sorted({int(round(v)) for v in np.linspace(low, high, n_axial + 2)[1:-1]}) if high > low else [low]
    if len(tumour):
        areas = np.bincount(tumour[:, 2], minlength=labels.shape[2])
        axial = sorted(set(axial) | {int(np.argmax(areas))})
    return axial, centre[1], centre[0]


def _views(volume: np.ndarray, axial: list[int], coronal: int, sagittal: int) -> list[np.ndarray]:
    """2D images (rows, columns) for display with origin 'upper'."""
    views = [volume[:, :, k].T for k in axial]  # rows P (anterior up), columns L (patient right on the left)
    views.append(volume[:, coronal, :].T[::-1])  # rows S (superior up), columns L
    views.append(volume[sagittal, :, :].T[::-1])  # rows S, columns P (anterior on the left)
    return views


def _aspects(spacing: np.ndarray, n_axial: int) -> list[float]:
    return [spacing[1] / spacing[0]] * n_axial + [spacing[2] / spacing[0], spacing[2] / spacing[1]]


def _column_titles(axial: list[int], coronal: int, sagittal: int) -> list[str]:
    return [f"axial {k}" for k in axial] + [f"coronal {coronal}", f"sagittal {sagittal}"]


def _window(image: np.ndarray) -> tuple[float, float]:
    values = image[image != 0]
    if values.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(values, [1, 99])
    return float(low), float(high if high > low else low + 1)


def _overlay(image_views: list[np.ndarray], label_views: list[np.ndarray], window: tuple[float, float]) -> list[np.ndarray]:
    out = []
    for image, labels in zip(image_views, label_views):
        grey = np.clip((image - window[0]) / (window[1] - window[0]), 0, 1)
        rgb = np.repeat(grey[..., None], 3, axis=2)
        for value, colour in LABEL_COLOURS.items():
            rgb[labels == value] = 0.45 * rgb[labels == value] + 0.55 * np.array(colour)
        out.append(rgb)
    return out


def _heat_overlay(image_views: list[np.ndarray], map_views: list[np.ndarray], window: tuple[float, float],
                  cmap: str = "jet") -> list[np.ndarray]:
    """A [0, 1] map in colour over the grey MR slice; the colour's opacity is the map's value (0: the slice shows)."""
    from matplotlib import colormaps

    colours = colormaps[cmap]
    out = []
    for image, heat in zip(image_views, map_views):
        grey = np.clip((image - window[0]) / (window[1] - window[0]), 0, 1)
        rgb = np.repeat(grey[..., None], 3, axis=2)
        value = np.clip(heat, 0, 1)
        alpha = (0.75 * value)[..., None]
        out.append((1 - alpha) * rgb + alpha * colours(value)[..., :3])
    return out


def _grid_figure(rows: list[tuple[str, list[np.ndarray], dict[str, Any]]], columns: list[str],
                 aspects: list[float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(rows), len(columns)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.2 * n_cols + 0.8, 2.2 * n_rows + 0.6), squeeze=False)
    fig.patch.set_facecolor("black")
    for r, (row_title, views, style) in enumerate(rows):
        for c, view in enumerate(views):
            ax = axes[r, c]
            shown = ax.imshow(view, aspect=aspects[c], interpolation="nearest", **style)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_facecolor("black")
            if r == 0:
                ax.set_title(columns[c], color="white", fontsize=9)
            if c == 0:
                ax.set_ylabel(row_title, color="white", fontsize=9)
        if "cmap" in style:
            bar = fig.colorbar(shown, ax=axes[r, :].tolist(), fraction=0.02, pad=0.01)
            bar.ax.tick_params(colors="white", labelsize=7)
    fig.suptitle(title, color="white", fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, facecolor="black")
    plt.close(fig)


def write_figures(result: Any, images: Mapping[str, np.ndarray], affine: np.ndarray,
                  out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write ``overview.png``, ``probability.png``, ``uncertainty.png`` and ``gradcam.png`` into ``out_dir``.

    Parameters
    ----------
    result: SegmentationResult
        On the grid of ``images``.
    images: Mapping[str, np.ndarray]
        The input sequences.
    affine: np.ndarray
        Their LPS affine.

    Returns
    -------
    list[Path]
        The files written.
    """
    out = Path(out_dir)
    labels, spacing = to_display(result.labels, affine)
    axial, coronal, sagittal = choose_slices(labels)
    columns = _column_titles(axial, coronal, sagittal)
    aspects = _aspects(spacing, len(axial))

    def views(array: np.ndarray) -> list[np.ndarray]:
        return _views(to_display(array, affine)[0], axial, coronal, sagittal)

    label_views = views(result.labels)
    grey = {"cmap": "gray"}
    rows: list[tuple[str, list[np.ndarray], dict[str, Any]]] = []
    first_image = None
    for key in ("t1", "t1ce", "t2", "flair"):
        if key in images:
            image_views = views(np.asarray(images[key], dtype=np.float32))
            window = _window(np.asarray(images[key]))
            rows.append((SEQUENCE_TITLES[key], image_views, {**grey, "vmin": window[0], "vmax": window[1]}))
            if first_image is None or key in ("flair", "t1ce"):
                first_image = (image_views, window)
    if first_image is None:
        raise ValueError(f"no input sequence to show; given: {', '.join(images) or 'none'}")
    rows.append(("prediction", _overlay(first_image[0], label_views, first_image[1]), {}))
    tumour_probability = 1.0 - result.probabilities["background"]
    rows.append(("P(tumour)", views(tumour_probability), {"cmap": "inferno", "vmin": 0, "vmax": 1}))
    rows.append(("entropy (nats)", views(result.entropy), {"cmap": "magma", "vmin": 0,
                                                           "vmax": max(1e-6, float(result.entropy.max()))}))
    cam = np.max(np.stack([result.gradcam[k] for k in ("ncr", "ed", "et")]), axis=0)
    rows.append(("Grad-CAM (max)", _heat_overlay(first_image[0], views(cam), first_image[1]), {}))
    header = f"{result.model_name} {result.model_version} - not for diagnostic use"
    written = [out / "overview.png"]
    _grid_figure(rows, columns, aspects, written[0], header)
    per_class = (
        ("probability.png", "softmax probability", result.probabilities, "inferno", 1.0),
        ("uncertainty.png", "MC dropout variance", result.variance, "magma", None),
        ("gradcam.png", "Grad-CAM", result.gradcam, "jet", 1.0),
    )
    for name, what, maps, cmap, top in per_class:
        class_rows = []
        for key in ("ncr", "ed", "et"):
            if maps is result.gradcam:  # the explanation is read on the anatomy it explains
                class_rows.append((CLASS_TITLES[key], _heat_overlay(first_image[0], views(maps[key]), first_image[1]),
                                   {}))
                continue
            vmax = top if top is not None else max(1e-6, float(maps[key].max()))
            class_rows.append((CLASS_TITLES[key], views(maps[key]), {"cmap": cmap, "vmin": 0, "vmax": vmax}))
        _grid_figure(class_rows, columns, aspects, out / name, f"{what} - {header}")
        written.append(out / name)
    log.info("wrote %d figures to %s", len(written), out)
    return written
