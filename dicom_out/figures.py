"""Figures for the key images and the PDF report (matplotlib, no display).

Everything is drawn from an :class:`EncodeRequest`: the reference images, the
labels, the volumes, the entropy and Grad-CAM maps. The three planes go
through the tumour where it is largest: the axial (acquired) slice with the
most whole-tumour voxels, and the coronal and sagittal reformats with the
most whole-tumour voxels, each outlined per class in the SEG's colours with a
legend of the volumes, the model and the not-for-diagnostic statement burned in.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from neuroseg.dicom_out.common import CLASS_COLOURS, NOT_FOR_DIAGNOSTIC_USE, EncodeRequest  # noqa: E402
from neuroseg.dicom_out.enum import TumorClass, TumorRegion  # noqa: E402

#: Key image size in pixels (square): large enough to read the legend on a PACS monitor.
KEY_IMAGE_PIXELS = 768
_DPI = 96
_SHORT = {TumorClass.NCR: "NCR", TumorClass.ED: "ED", TumorClass.ET: "ET"}


@dataclass(frozen=True)
class Plane:
    """One displayed plane: a 2D view of the grid and what it came from."""

    name: str  # "axial", "coronal", "sagittal"
    index: int  # slice index along the plane's grid axis
    image: np.ndarray  # 2D, displayed rows x columns
    labels: np.ndarray  # 2D, same shape
    aspect: float  # displayed pixel height / width
    row_direction: np.ndarray  # LPS unit vector along a displayed row (left to right)
    column_direction: np.ndarray  # LPS unit vector down a displayed column (top to bottom)
    axis: int  # grid axis the plane is perpendicular to (0 slices, 1 rows, 2 columns)


def reference_volume(request: EncodeRequest) -> np.ndarray:
    """The reference images as one (slices, rows, columns) float array."""
    slices = request.reference_slices()
    if slices[0][1] is None:
        return np.stack([ds.pixel_array for ds, _ in slices]).astype(np.float32)
    frames = slices[0][0].pixel_array  # multi-frame: (frames, rows, columns)
    return np.stack([frames[frame - 1] for _, frame in slices]).astype(np.float32)


def _largest(mask: np.ndarray, axis: int) -> int:
    counts = mask.sum(axis=tuple(a for a in range(3) if a != axis))
    return int(np.argmax(counts)) if counts.any() else mask.shape[axis] // 2


def planes(request: EncodeRequest, volume: np.ndarray) -> list[Plane]:
    """Axial, coronal and sagittal views through the largest extent of the whole tumour.

    Reformats are turned so the head is up (the slice axis runs bottom to top
    when the slice normal points to the head).
    """
    affine = request.reference_affine()
    steps = np.linalg.norm(affine[:3, :3], axis=0)
    directions = affine[:3, :3] / steps
    wt = np.isin(request.labels, TumorRegion.WT.label_values)
    views = []
    index = _largest(wt, 0)
    views.append(Plane("axial", index, volume[index], request.labels[index], steps[1] / steps[2],
                       directions[:, 2], directions[:, 1], 0))
    for name, axis in (("coronal", 1), ("sagittal", 2)):
        index = _largest(wt, axis)
        image = np.take(volume, index, axis=axis)  # (slices, other in-plane axis)
        labels = np.take(request.labels, index, axis=axis)
        other = 2 if axis == 1 else 1
        down = -directions[:, 0]
        if directions[2, 0] > 0:  # slices run towards the head: put the last slice on top
            image, labels = image[::-1], labels[::-1]
        else:
            down = directions[:, 0]
        views.append(Plane(name, index, image, labels, steps[0] / steps[other], directions[:, other], down, axis))
    return views


def _window(image: np.ndarray) -> tuple[float, float]:
    inside = image[image > 0]
    if inside.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(inside, [1, 99.5])
    return float(low), float(max(high, low + 1))


def _outline(ax: Any, plane: Plane) -> None:
    for tumor_class in TumorClass:
        mask = plane.labels == tumor_class.label_value
        if mask.any():
            colour = np.asarray(CLASS_COLOURS[tumor_class]) / 255.0
            ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linewidths=1.6)


def _volume_legend(request: EncodeRequest) -> list[Patch]:
    volumes = request.region_volumes_ml()
    handles = [Patch(facecolor=np.asarray(CLASS_COLOURS[c]) / 255.0, edgecolor="white",
                     label=f"{_SHORT[c]} {c.display_name}: {volumes[c.value]:.1f} ml") for c in TumorClass]
    handles.append(Patch(facecolor="none", edgecolor="none",
                         label=f"WT {volumes['wt']:.1f} ml, TC {volumes['tc']:.1f} ml"))
    return handles


def _model_line(request: EncodeRequest) -> str:
    return f"Model {request.model_name} {request.model_version} (AI, automatic)"


def quality_lines(request: EncodeRequest) -> list[str]:
    """The quality estimate in words: headline (review or not), expected Dice, then one line per reason."""
    quality = request.quality
    if not quality:
        return []
    expected = quality.get("expected_dice") or {}
    dice = ", ".join(f"{key} {value:.2f}" for key, value in expected.items() if value is not None) or "n/a"
    if quality.get("review_recommended"):
        return [f"REVIEW RECOMMENDED - expected Dice {dice}", *(f"- {reason}" for reason in quality.get("reasons", []))]
    return [f"Quality estimate: no review flag - expected Dice {dice}"]


def draw_plane(ax: Any, plane: Plane, *, overlay: np.ndarray | None = None, overlay_label: str = "",
               outline: bool = True) -> None:
    """The plane in grey, optionally a heat overlay, and the class outlines."""
    low, high = _window(plane.image)
    ax.imshow(plane.image, cmap="gray", vmin=low, vmax=high, aspect=plane.aspect, interpolation="bilinear")
    if overlay is not None:
        shown = np.ma.masked_less_equal(overlay, 0.02 * max(float(overlay.max()), 1e-6))
        handle = ax.imshow(shown, cmap="inferno", alpha=0.6, aspect=plane.aspect, interpolation="bilinear")
        colourbar = ax.figure.colorbar(handle, ax=ax, fraction=0.046, pad=0.02)
        colourbar.set_label(overlay_label, color="white", fontsize=8)
        colourbar.ax.tick_params(colors="white", labelsize=7)
    if outline:
        _outline(ax, plane)
    ax.set_axis_off()


def key_image(request: EncodeRequest, plane: Plane) -> np.ndarray:
    """One key image: the plane with outlines, legend, volumes, model and statement; RGB uint8."""
    size = KEY_IMAGE_PIXELS / _DPI
    figure = Figure(figsize=(size, size), dpi=_DPI, facecolor="black")
    ax = figure.add_axes((0.02, 0.13, 0.96, 0.78))
    draw_plane(ax, plane)
    figure.text(0.5, 0.965, f"AI glioma segmentation - {plane.name} (slice {plane.index + 1})", color="white",
                ha="center", va="top", fontsize=13, weight="bold")
    figure.text(0.5, 0.925, NOT_FOR_DIAGNOSTIC_USE, color="#ff5050", ha="center", va="top", fontsize=11,
                weight="bold")
    legend = figure.legend(handles=_volume_legend(request), loc="lower left", bbox_to_anchor=(0.02, 0.0),
                           fontsize=9, frameon=False, ncol=2, labelcolor="white")
    legend.set_in_layout(False)
    lines = quality_lines(request)
    if lines:
        flagged = bool(request.quality.get("review_recommended"))
        figure.text(0.5, 0.895, "\n".join([lines[0], *lines[1:3]])[:300], color="#ffb000" if flagged else "#a0e0a0",
                    ha="center", va="top", fontsize=9, weight="bold" if flagged else "normal")
    figure.text(0.98, 0.01, _model_line(request), color="#c0c0c0", ha="right", va="bottom", fontsize=8)
    return _rgb(figure)


def _rgb(figure: Figure) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def model_card_lines(card: Mapping[str, Any] | None, request: EncodeRequest) -> list[str]:
    """A short, plain-text summary of the model card (name, version, intended use, architecture, limits)."""
    lines = [f"Model: {request.model_name} {request.model_version}"]
    if not card:
        return lines + ["No model card was shipped with these weights."]
    for key, title in (("intended_use", "Intended use"), ("architecture", "Architecture"),
                       ("training_data", "Training data")):
        if card.get(key):
            lines.append(f"{title}: {card[key]}")
    limitations = card.get("limitations") or []
    if isinstance(limitations, str):
        limitations = [limitations]
    lines += [f"Limitation: {item}" for item in limitations[:6]]
    return lines


def pdf_report(request: EncodeRequest, views: list[Plane], model_card: Mapping[str, Any] | None) -> bytes:
    """The PDF report: key images, uncertainty and Grad-CAM panels, volumes, model card summary."""
    import textwrap

    buffer = io.BytesIO()
    metadata = {"Title": "neuroseg AI glioma segmentation report", "Creator": "neuroseg",
                "CreationDate": None, "Subject": NOT_FOR_DIAGNOSTIC_USE}
    if quality_lines(request):  # also in the document information, where a search finds it
        metadata["Keywords"] = quality_lines(request)[0]
    volumes = request.region_volumes_ml()
    with PdfPages(buffer, metadata=metadata) as pdf:
        page = plt.figure(figsize=(8.27, 11.69), facecolor="white")  # A4 portrait
        page.text(0.5, 0.97, "AI glioma segmentation report", ha="center", va="top", fontsize=16, weight="bold")
        page.text(0.5, 0.945, NOT_FOR_DIAGNOSTIC_USE, ha="center", va="top", fontsize=12, color="#c00000",
                  weight="bold")
        identity = request.reference_series[0]
        page.text(0.06, 0.915, f"Patient {identity.get('PatientName', '')} ({identity.get('PatientID', '')}), "
                  f"study {identity.get('StudyDate', '')} {identity.get('StudyDescription', '')}", fontsize=9)
        page.text(0.06, 0.897, _model_line(request) + f"; on the grid of the {request.reference_role} series; "
                  f"sequences read: {', '.join(request.sequences_used) or 'unknown'}", fontsize=9)
        for column, plane in enumerate(views):
            ax = page.add_axes((0.04 + column * 0.32, 0.58, 0.3, 0.3), facecolor="black")
            draw_plane(ax, plane)
            ax.set_title(f"{plane.name} (slice {plane.index + 1})", fontsize=9)
        page.legend(handles=_volume_legend(request), loc="upper left", bbox_to_anchor=(0.06, 0.57), fontsize=9,
                    frameon=False)
        table = page.add_axes((0.06, 0.33, 0.88, 0.16))
        table.set_axis_off()
        rows = [[name, f"{volumes[key]:.2f}"] for key, name in (
            ("ncr", "NCR necrotic core"), ("ed", "ED edema"), ("et", "ET enhancing tumour"),
            ("wt", "WT whole tumour"), ("tc", "TC tumour core"))]
        table.table(cellText=rows, colLabels=["Region", "Volume (ml)"], loc="center", cellLoc="left")
        page.text(0.06, 0.28, "\n".join(textwrap.wrap(request.derivation_description(), 110)), fontsize=7,
                  va="top", color="#404040")
        lines = quality_lines(request)
        if lines:
            flagged = bool(request.quality.get("review_recommended"))
            page.text(0.06, 0.19, lines[0], fontsize=11, va="top", weight="bold",
                      color="#c06000" if flagged else "#206020")
            details = [part for line in lines[1:6] for part in textwrap.wrap(line, 100)]
            details.append("The estimate informs the reader; the results are delivered either way.")
            page.text(0.06, 0.165, "\n".join(details), fontsize=8, va="top", color="#202020")
        pdf.savefig(page)
        plt.close(page)

        page = plt.figure(figsize=(8.27, 11.69), facecolor="white")
        page.text(0.5, 0.97, "Uncertainty and explanation (axial, largest tumour extent)", ha="center", va="top",
                  fontsize=13, weight="bold")
        page.text(0.5, 0.945, NOT_FOR_DIAGNOSTIC_USE, ha="center", va="top", fontsize=10, color="#c00000")
        axial = views[0]
        panels = []
        if request.entropy is not None:
            panels.append(("Predictive entropy (nats), MC dropout", request.entropy[axial.index]))
        for tumor_class in TumorClass:
            if tumor_class.value in request.gradcam:
                panels.append((f"Grad-CAM {_SHORT[tumor_class]}", request.gradcam[tumor_class.value][axial.index]))
        if not panels:
            page.text(0.5, 0.5, "No uncertainty or Grad-CAM maps were computed.", ha="center")
        for number, (title, overlay) in enumerate(panels[:4]):
            row, column = divmod(number, 2)
            ax = page.add_axes((0.05 + column * 0.47, 0.5 - row * 0.43, 0.42, 0.4), facecolor="black")
            draw_plane(ax, axial, overlay=overlay, overlay_label=title)
            ax.set_title(title, fontsize=9)
        pdf.savefig(page)
        plt.close(page)

        page = plt.figure(figsize=(8.27, 11.69), facecolor="white")
        page.text(0.5, 0.97, "Model card summary", ha="center", va="top", fontsize=13, weight="bold")
        wrapped = []
        for line in model_card_lines(model_card, request):
            wrapped += textwrap.wrap(str(line), 105) + [""]
        page.text(0.06, 0.93, "\n".join(wrapped[:70]), va="top", fontsize=8, family="monospace")
        page.text(0.5, 0.03, NOT_FOR_DIAGNOSTIC_USE, ha="center", fontsize=10, color="#c00000", weight="bold")
        pdf.savefig(page)
        plt.close(page)
    return buffer.getvalue()
