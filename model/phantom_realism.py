"""How close the phantoms' contrasts are to real images (``neuroseg phantom --compare-real``).

Both sides are measured the same way (:func:`intensity_statistics`), so the
tissue table of :mod:`neuroseg.model.phantom` can be calibrated against real
skull-stripped cases: ratios of each tissue, and of each tumour sub-region a
multi-class label defines, to white matter, plus z-scored histograms.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from neuroseg.model.phantom import LABEL_ED, LABEL_ET, LABEL_NCR, SEQUENCES, PhantomConfig, make_phantom

log = logging.getLogger(__name__)

COMPARISON_BINS = np.linspace(-4.0, 6.0, 81)
COMPARED_TISSUES = ("gm", "csf", "tumour", "ed", "et", "ncr")


def sub_regions(label: np.ndarray | None, kind: str = "brats") -> dict[str, np.ndarray]:
    """NCR, ED and ET masks of a multi-class label; empty for a whole-tumour-only label."""
    if label is None or kind != "brats":
        return {}
    return {"ncr": label == LABEL_NCR, "ed": label == LABEL_ED, "et": label == LABEL_ET}


def intensity_statistics(images: dict[str, np.ndarray], tumour: np.ndarray | None = None,
                         seed: int = 0, regions: dict[str, np.ndarray] | None = None) -> dict:
    """Tissue contrast ratios and a normalised histogram per sequence of one skull-stripped case.

    White matter, grey matter and CSF are found the same way on real and
    synthetic images: a 3-component Gaussian mixture on the T1 intensities of
    the non-zero (brain) voxels outside the tumour (when a tumour mask is
    known). Ratios are medians relative to white matter, also of each tumour
    sub-region in ``regions`` (``ncr``, ``ed``, ``et``) when a multi-class
    label defines them; the histogram is of the z-scored brain intensities.

    Returns
    -------
    dict
        ``{"ratios": {seq: {"gm": r, "csf": r, "tumour": r, ...}}, "histograms": {seq: array}}``
    """
    from sklearn.mixture import GaussianMixture

    if "t1" not in images:
        raise ValueError("intensity_statistics needs the T1 image to find the tissues")
    brain = images["t1"] > 0
    for image in images.values():
        brain &= image > 0
    healthy = brain & ~tumour if tumour is not None else brain
    values = images["t1"][healthy]
    rng = np.random.default_rng(seed)
    sample = values[rng.choice(values.size, min(values.size, 60000), replace=False)]
    mixture = GaussianMixture(3, random_state=seed).fit(sample[:, None])
    order = np.argsort(mixture.means_[:, 0])  # csf, gm, wm by T1 brightness
    rank = np.argsort(order)[mixture.predict(values[:, None])]
    classes = np.full(brain.shape, -1, dtype=np.int8)
    classes[healthy] = rank
    stats: dict = {"ratios": {}, "histograms": {}}
    for seq, image in images.items():
        wm = float(np.median(image[classes == 2]))
        ratios = {"gm": float(np.median(image[classes == 1])) / wm,
                  "csf": float(np.median(image[classes == 0])) / wm}
        if tumour is not None and tumour.any():
            ratios["tumour"] = float(np.median(image[tumour & brain])) / wm
        for name, region in (regions or {}).items():
            if (region & brain).sum() >= 50:  # a median of a few voxels says nothing
                ratios[name] = float(np.median(image[region & brain])) / wm
        stats["ratios"][seq] = ratios
        inside = image[brain]
        z = (inside - inside.mean()) / (inside.std() or 1.0)
        hist, _ = np.histogram(z, bins=COMPARISON_BINS)
        stats["histograms"][seq] = hist / max(hist.sum(), 1)
    return stats


def compare_with_real(real_dirs: list[Path], count: int = 4, seed: int = 9000,
                      progress: bool = True) -> dict:
    """Compare phantom intensity statistics with real skull-stripped cases.

    Phantoms are generated like BraTS (skull-stripped, 1 mm axial) so both
    sides are measured the same way (:func:`intensity_statistics`). Real cases
    with a whole-tumour label contribute a tumour ratio; cases whose images
    are not skull-stripped (their corners are not zero) are skipped.

    Returns
    -------
    dict
        ``{"sequences": {seq: {"real": {...mean, sd...}, "phantom": {...},
        "histogram_overlap": float}}, "real_cases": [...], "phantoms": n}``;
        histogram overlap is the intersection of the mean normalised
        histograms (1 = identical, 0 = disjoint).
    """
    from tqdm import tqdm

    from neuroseg.model.data import find_cases, read_case

    real_stats, real_names = [], []
    for real_dir in real_dirs:
        for files in find_cases(Path(real_dir)):
            try:
                case = read_case(files)
            except ValueError as exc:
                log.info("skipping %s: %s", files.case_id, exc)
                continue
            corners = [image[tuple(slice(0, 3) for _ in range(3))].max() for image in case.images.values()]
            if max(corners) > 0:
                log.info("skipping %s: not skull-stripped", files.case_id)
                continue
            tumour = case.label > 0 if case.label is not None else None
            real_stats.append(intensity_statistics(case.images, tumour, regions=sub_regions(case.label, case.label_kind)))
            real_names.append(files.case_id)
    if not real_stats:
        raise ValueError(f"no skull-stripped real case with a T1 found in {', '.join(map(str, real_dirs))}")
    config = PhantomConfig(skull_probability=0.0, clinical_grid_probability=0.0)
    phantom_stats = []
    for index in tqdm(range(count), desc="phantoms", disable=not progress):
        phantom = make_phantom(seed + index, config)
        phantom_stats.append(intensity_statistics(phantom.images, phantom.label > 0,
                                                  regions=sub_regions(phantom.label)))
    report: dict = {"real_cases": real_names, "phantoms": count, "sequences": {}}
    for seq in SEQUENCES:
        entry: dict = {}
        for side, stats in (("real", real_stats), ("phantom", phantom_stats)):
            have = [s for s in stats if seq in s["ratios"]]
            if not have:
                continue
            summary = {}
            for key in COMPARED_TISSUES:
                values = [s["ratios"][seq][key] for s in have if key in s["ratios"][seq]]
                if values:
                    summary[key] = {"mean": float(np.mean(values)), "sd": float(np.std(values)), "n": len(values)}
            entry[side] = summary
            entry[f"{side}_histogram"] = np.mean([s["histograms"][seq] for s in have], axis=0)
        if "real_histogram" in entry and "phantom_histogram" in entry:
            entry["histogram_overlap"] = float(np.minimum(entry["real_histogram"], entry["phantom_histogram"]).sum())
        entry.pop("real_histogram", None)
        entry.pop("phantom_histogram", None)
        report["sequences"][seq] = entry
    return report


def format_comparison(report: dict) -> str:
    """The comparison as a plain-text table (ratios to white matter, mean +- sd)."""
    lines = [f"real cases: {', '.join(report['real_cases'])}; phantoms: {report['phantoms']}",
             f"{'sequence':<8} {'ratio to WM':<12} {'real':>16} {'phantom':>16}"]
    for seq, entry in report["sequences"].items():
        for key in COMPARED_TISSUES:
            cells = []
            for side in ("real", "phantom"):
                value = entry.get(side, {}).get(key)
                cells.append(f"{value['mean']:.2f} +- {value['sd']:.2f}" if value else "-")
            if cells == ["-", "-"]:
                continue
            lines.append(f"{seq:<8} {key:<12} {cells[0]:>16} {cells[1]:>16}")
        if "histogram_overlap" in entry:
            lines.append(f"{seq:<8} {'hist overlap':<12} {entry['histogram_overlap']:>16.2f}")
    return "\n".join(lines)
