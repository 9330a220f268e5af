"""Synthetic multi-contrast glioma phantoms built from real anatomy.

The anatomy is the MNI ICBM152 2009 template that ``nilearn`` ships (T1 and
grey/white-matter probability maps; CSF is the rest of the brain mask). Each
tissue gets T1, T1ce, T2 and FLAIR intensities; gliomas are planted as nested
irregular regions (necrotic core inside an enhancing rim inside edema) that push
the surrounding anatomy aside. A skull and scalp can be wrapped around the
brain. The volume is then "acquired" on a random grid (orientation, in-plane
spacing, slice thickness with partial-volume averaging), with a smooth bias
field and Rician noise per sequence.

Phantoms are written in the BraTS 2021 layout
(``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``, labels 0/1/2/4), so training
and evaluation read phantoms and BraTS alike.

All affines here map array indices to LPS millimetres (the project convention);
NIfTI files store RAS, converted at the file boundary.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)

SEQUENCES = ("t1", "t1ce", "t2", "flair")
LABEL_NCR, LABEL_ED, LABEL_ET = 1, 2, 4

# Relative intensity of each tissue per sequence (white matter on T1 = 1).
# Brain tissues and tumour sub-regions are calibrated so that
# ``neuroseg phantom --compare-real`` measures the same ratios to white matter
# on phantoms as on the real four-sequence cases (MODEL_CARD.md, "Intensity
# realism"); bone, marrow and scalp come from published relaxation behaviour.
TISSUE_INTENSITY: dict[str, dict[str, float]] = {
    #            t1     t1ce   t2     flair
    "wm":      {"t1": 1.00, "t1ce": 1.00, "t2": 0.55, "flair": 0.70},
    "gm":      {"t1": 0.78, "t1ce": 0.78, "t2": 0.64, "flair": 0.76},
    "csf":     {"t1": 0.30, "t1ce": 0.43, "t2": 1.18, "flair": 0.24},
    "edema":   {"t1": 0.70, "t1ce": 0.64, "t2": 1.46, "flair": 1.80},
    "et":      {"t1": 0.52, "t1ce": 1.34, "t2": 1.46, "flair": 1.51},
    "net":     {"t1": 0.55, "t1ce": 0.58, "t2": 1.40, "flair": 1.35},
    "ncr":     {"t1": 0.42, "t1ce": 0.54, "t2": 1.76, "flair": 1.24},
    "bone":    {"t1": 0.08, "t1ce": 0.08, "t2": 0.06, "flair": 0.06},
    "marrow":  {"t1": 1.10, "t1ce": 1.12, "t2": 0.75, "flair": 0.90},
    "scalp":   {"t1": 1.05, "t1ce": 1.20, "t2": 0.80, "flair": 0.85},
}
# Tumour contrast varies between patients and scanners far more than that of
# healthy tissue (enhancement strength, edema water content), so it is jittered more.
TUMOUR_TISSUES = ("edema", "et", "net", "ncr")
TISSUE_JITTER = 0.10
TUMOUR_JITTER = 0.20

# Scalp soft tissue, same scale. Fat is bright on T1 and, with fast spin echo,
# on T2 and FLAIR too; muscle is darker than white matter everywhere.
HEAD_SOFT_TISSUE_INTENSITY: dict[str, dict[str, float]] = {
    "fat":     {"t1": 1.45, "t1ce": 1.45, "t2": 1.05, "flair": 1.30},
    "muscle":  {"t1": 0.62, "t1ce": 0.72, "t2": 0.42, "flair": 0.52},
}

PAD_MM = 18.0


@dataclass(frozen=True)
class PhantomConfig:
    """Knobs of the phantom generator; the defaults give the training mix.

    Parameters
    ----------
    anatomy_spacing_mm: float
        Resolution the anatomy is built at (1 = the template's own grid; tests
        use 3-4 mm to stay fast).
    skull_probability: float
        Chance that the head (skull, marrow, scalp) is kept; otherwise the image
        is skull-stripped like BraTS.
    clinical_grid_probability: float
        Chance of a clinical acquisition grid (random orientation, thick slices)
        instead of a BraTS-like 1 mm isotropic axial grid.
    slice_thickness_mm: tuple[float, float]
        Range of slice thickness on a clinical grid.
    inplane_spacing_mm: tuple[float, float]
        Range of in-plane spacing on a clinical grid.
    max_rotation_deg: float
        Largest head rotation on a clinical grid.
    radius_mm: tuple[float, float]
        Range of the edema radius of a tumour.
    multifocal_probability: float
        Chance of two or three tumours.
    no_enhancement_probability: float
        Chance of a tumour without enhancing rim (core is non-enhancing, label 1).
    no_necrosis_probability: float
        Chance of a solidly enhancing core without necrosis.
    noise_fraction: tuple[float, float]
        Rician noise sigma as a fraction of white-matter intensity.
    bias_amplitude: tuple[float, float]
        Peak-to-peak amplitude of the log bias field.
    mass_effect: tuple[float, float]
        Fraction of the tumour radius by which the anatomy is pushed away.
    output_spacing_mm: float | None
        Force one isotropic output spacing and an axial unrotated grid
        (tests, caches); ``None`` keeps the random acquisition grid.
    """

    anatomy_spacing_mm: float = 1.0
    skull_probability: float = 0.4
    clinical_grid_probability: float = 0.35
    slice_thickness_mm: tuple[float, float] = (3.0, 6.0)
    inplane_spacing_mm: tuple[float, float] = (0.8, 1.2)
    max_rotation_deg: float = 15.0
    radius_mm: tuple[float, float] = (14.0, 34.0)
    multifocal_probability: float = 0.2
    no_enhancement_probability: float = 0.15
    no_necrosis_probability: float = 0.2
    noise_fraction: tuple[float, float] = (0.01, 0.05)
    bias_amplitude: tuple[float, float] = (0.0, 0.4)
    mass_effect: tuple[float, float] = (0.1, 0.45)
    output_spacing_mm: float | None = None

    def __post_init__(self) -> None:
        if not 0.5 <= self.anatomy_spacing_mm <= 8.0:
            raise ValueError(
                f"anatomy_spacing_mm={self.anatomy_spacing_mm} is outside 0.5-8 mm"
            )
        for name in ("skull_probability", "clinical_grid_probability", "multifocal_probability",
                     "no_enhancement_probability", "no_necrosis_probability"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value} is not a probability in [0, 1]")


@dataclass
class Phantom:
    """One generated case.

    Attributes
    ----------
    images: dict[str, numpy.ndarray]
        ``t1``, ``t1ce``, ``t2``, ``flair`` on one grid (float32, scanner-like units).
    label: numpy.ndarray
        BraTS labels 0/1/2/4 (uint8) on the same grid.
    affine: numpy.ndarray
        4x4, array indices to LPS millimetres.
    info: dict
        What was drawn (seed, tumours, skull, grid), for the record.
    """

    images: dict[str, np.ndarray]
    label: np.ndarray
    affine: np.ndarray
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Anatomy:
    """Tissue maps on a padded template grid (index -> LPS mm affine)."""

    wm: np.ndarray
    gm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    head_distance_mm: np.ndarray
    depth_mm: np.ndarray
    affine: np.ndarray
    spacing_mm: float


def _ras_to_lps(affine: np.ndarray) -> np.ndarray:
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return flip @ np.asarray(affine, dtype=float)


@lru_cache(maxsize=4)
def load_anatomy(spacing_mm: float = 1.0) -> Anatomy:
    """Tissue probability maps of the MNI ICBM152 2009 template shipped by nilearn.

    No network access: nilearn ships these files inside the package.

    Parameters
    ----------
    spacing_mm: float
        Isotropic spacing of the returned grid; the 1 mm template is
        block-averaged (linear zoom) for coarser grids.
    """
    from nilearn import datasets

    t1_img = datasets.load_mni152_template(resolution=1)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).get_fdata(), dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).get_fdata(), dtype=np.float32)
    mask = np.asarray(datasets.load_mni152_brain_mask(resolution=1).get_fdata(), dtype=np.float32)
    affine = _ras_to_lps(t1_img.affine)
    pad = int(round(PAD_MM))
    gm, wm, mask = (np.pad(a, pad) for a in (gm, wm, mask))
    # keep the brain's bounding box plus room for skull and scalp
    inside = np.argwhere(mask > 0.5)
    lo = np.maximum(inside.min(0) - pad, 0)
    hi = np.minimum(inside.max(0) + pad + 1, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    gm, wm, mask = gm[box], wm[box], mask[box]
    affine = affine.copy()
    affine[:3, 3] += affine[:3, :3] @ (lo - pad)
    scale = np.ones(3)
    if spacing_mm != 1.0:
        factor = 1.0 / spacing_mm
        fine_shape = np.array(gm.shape)
        gm, wm, mask = (ndimage.zoom(a, factor, order=1) for a in (gm, wm, mask))
        # zoom maps the first and last voxel centres onto each other
        scale = (fine_shape - 1) / (np.array(gm.shape) - 1)
        affine[:3, :3] = affine[:3, :3] * scale
    brain = mask > 0.5
    wm = np.where(brain, wm, 0.0).astype(np.float32)
    gm = np.where(brain, gm, 0.0).astype(np.float32)
    total = wm + gm
    over = total > 1.0
    wm[over] /= total[over]
    gm[over] /= total[over]
    csf = np.where(brain, 1.0 - wm - gm, 0.0).astype(np.float32)
    distance = ndimage.distance_transform_edt(~brain, sampling=scale).astype(np.float32)
    depth = ndimage.distance_transform_edt(brain, sampling=scale).astype(np.float32)
    return Anatomy(wm=wm, gm=gm, csf=csf, brain=brain, head_distance_mm=distance, depth_mm=depth,
                   affine=affine, spacing_mm=float(scale.mean()))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: float) -> np.ndarray:
    """Gaussian-smoothed white noise scaled to unit standard deviation."""
    coarse_factor = max(1, int(sigma_vox // 2))
    coarse_shape = tuple(max(2, -(-s // coarse_factor)) for s in shape)
    noise = rng.standard_normal(coarse_shape).astype(np.float32)
    noise = ndimage.gaussian_filter(noise, sigma_vox / coarse_factor, mode="wrap")
    if coarse_factor > 1:
        zoom = [s / c for s, c in zip(shape, coarse_shape)]
        noise = ndimage.zoom(noise, zoom, order=1)[tuple(slice(0, s) for s in shape)]
    std = float(noise.std()) or 1.0
    return (noise - noise.mean()) / std


def _grid_mm(shape: tuple[int, ...], spacing: float, centre_vox: np.ndarray) -> list[np.ndarray]:
    return [((np.arange(n, dtype=np.float32) - c) * spacing).reshape(
        [-1 if i == axis else 1 for i in range(3)])
        for axis, (n, c) in enumerate(zip(shape, centre_vox))]


@dataclass
class _Tumour:
    centre_vox: np.ndarray
    radius_mm: float
    core_fraction: float
    necrosis_fraction: float
    enhancing: bool
    mass_effect: float


def _draw_tumours(rng: np.random.Generator, anatomy: Anatomy, config: PhantomConfig) -> list[_Tumour]:
    count = 1
    if rng.random() < config.multifocal_probability:
        count = int(rng.integers(2, 4))
    depth = anatomy.depth_mm
    tumours: list[_Tumour] = []
    for index in range(count):
        radius = float(rng.uniform(*config.radius_mm)) * (0.7 if index else 1.0)
        candidates = np.argwhere((anatomy.wm > 0.5) & (depth > 0.45 * radius))
        if len(candidates) == 0:
            candidates = np.argwhere(anatomy.brain)
        centre = candidates[rng.integers(len(candidates))].astype(float)
        enhancing = bool(rng.random() >= config.no_enhancement_probability)
        necrosis = 0.0 if (enhancing and rng.random() < config.no_necrosis_probability) \
            else float(rng.uniform(0.3, 0.75))
        tumours.append(_Tumour(
            centre_vox=centre,
            radius_mm=radius,
            core_fraction=float(rng.uniform(0.35, 0.75)),
            necrosis_fraction=necrosis,
            enhancing=enhancing,
            mass_effect=float(rng.uniform(*config.mass_effect)),
        ))
    return tumours


def _deform(anatomy: Anatomy, tumours: list[_Tumour]) -> dict[str, np.ndarray]:
    """Push the anatomy away from each tumour centre (mass effect)."""
    maps = {"wm": anatomy.wm, "gm": anatomy.gm, "csf": anatomy.csf,
            "brain": anatomy.brain.astype(np.float32), "head": anatomy.head_distance_mm}
    shape = anatomy.wm.shape
    for tumour in tumours:
        sigma = 1.1 * tumour.radius_mm
        reach = int(np.ceil(2.5 * sigma / anatomy.spacing_mm))
        lo = np.maximum(tumour.centre_vox.astype(int) - reach, 0)
        hi = np.minimum(tumour.centre_vox.astype(int) + reach + 1, shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        local_centre = tumour.centre_vox - lo
        axes = np.meshgrid(*[np.arange(b - a, dtype=np.float32) for a, b in zip(lo, hi)], indexing="ij")
        offsets = [ax - c for ax, c in zip(axes, local_centre)]
        r2 = sum((o * anatomy.spacing_mm) ** 2 for o in offsets)
        # backward map: the anatomy seen at x comes from closer to the centre
        shrink = 1.0 - tumour.mass_effect * np.exp(-r2 / (2.0 * sigma**2))
        coords = [c + o * shrink for c, o in zip(local_centre, offsets)]
        for name, volume in maps.items():
            region = volume[box].astype(np.float32)
            warped = ndimage.map_coordinates(region, coords, order=1, mode="nearest")
            volume = volume.astype(np.float32, copy=True)
            volume[box] = warped
            maps[name] = volume
    return maps


def _tumour_labels(rng: np.random.Generator, tumours: list[_Tumour], brain: np.ndarray,
                   wm: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Label map (0/1/2/4) and a map that marks non-enhancing core voxels."""
    label = np.zeros(brain.shape, dtype=np.uint8)
    non_enhancing = np.zeros(brain.shape, dtype=bool)
    for tumour in tumours:
        reach = int(np.ceil(1.6 * tumour.radius_mm / spacing))
        lo = np.maximum(tumour.centre_vox.astype(int) - reach, 0)
        hi = np.minimum(tumour.centre_vox.astype(int) + reach + 1, brain.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        shape = tuple(int(b - a) for a, b in zip(lo, hi))
        grids = _grid_mm(shape, spacing, tumour.centre_vox - lo)
        # anisotropic ellipsoid with random axes
        stretch = rng.uniform(0.75, 1.3, size=3)
        distance = np.sqrt(sum((g / s) ** 2 for g, s in zip(grids, stretch)))

        def region(radius: float, roughness: float, sigma_mm: float) -> np.ndarray:
            noise = _smooth_noise(rng, shape, max(sigma_mm / spacing, 0.8))
            return distance < radius * (1.0 + roughness * noise)

        edema = region(tumour.radius_mm, 0.22, 0.35 * tumour.radius_mm)
        # edema spreads along white matter, not into CSF
        local_brain = brain[box] & ((wm[box] > 0.25) | (distance < tumour.core_fraction * tumour.radius_mm * 1.2))
        edema &= local_brain
        core_radius = tumour.core_fraction * tumour.radius_mm
        core = region(core_radius, 0.18, 0.3 * core_radius) & brain[box]
        necrosis = np.zeros(shape, dtype=bool)
        if tumour.necrosis_fraction > 0:
            necrosis = region(tumour.necrosis_fraction * core_radius, 0.15, 0.3 * core_radius) & core
        local = label[box]
        local_ne = non_enhancing[box]
        local[edema & (local == 0)] = LABEL_ED
        if tumour.enhancing:
            local[core] = LABEL_ET
            local[necrosis] = LABEL_NCR
        else:
            local[core] = LABEL_NCR
            local_ne[core & ~necrosis] = True
        label[box] = local
        non_enhancing[box] = local_ne
    return label, non_enhancing


def _head_layers(rng: np.random.Generator, distance_mm: np.ndarray) -> dict[str, np.ndarray]:
    """Fuzzy membership of the layers outside the brain, inside out.

    CSF rim, inner table, marrow, outer table, then the soft tissue of the
    scalp: muscle (galea, temporalis), subcutaneous fat and skin. Fat matters
    most: it is bright on every sequence, FLAIR included, so without it a
    network learns "bright on FLAIR = edema" and marks the scalp of real heads.
    """
    wobble = 1.0 + 0.12 * _smooth_noise(rng, distance_mm.shape, 10.0)
    d = distance_mm / np.clip(wobble, 0.5, None)
    # thicknesses in mm; together at most about PAD_MM, the room left around the brain
    inner_csf = float(rng.uniform(1.5, 3.0))
    table = float(rng.uniform(1.0, 2.0))
    marrow = float(rng.uniform(1.5, 3.0))
    muscle = float(rng.uniform(0.5, 2.5))
    fat = float(rng.uniform(2.0, 4.5))
    skin = float(rng.uniform(1.0, 2.0))
    # the temporalis: a thick muscle with fat around it over the lower sides of the head,
    # where real scalp is thickest (axes of the template grid: 0 left-right, 2 foot-head)
    x = np.abs(np.linspace(-1.0, 1.0, distance_mm.shape[0]))[:, None, None]
    z = np.linspace(0.0, 1.0, distance_mm.shape[2])[None, None, :]
    temporal = np.clip((x - 0.55) / 0.3, 0, 1) * np.clip((0.7 - z) / 0.25, 0, 1)
    muscle = muscle + float(rng.uniform(2.0, 8.0)) * temporal
    fat = fat + float(rng.uniform(0.0, 4.0)) * temporal
    edges = [0.0, inner_csf, table, marrow, table, muscle, fat, skin]
    edges = [sum(edges[:n + 1]) for n in range(len(edges))]

    def band(lo, hi) -> np.ndarray:  # noqa: ANN001 - mm, scalars or maps
        return np.clip(d - lo + 0.5, 0, 1) * np.clip(hi - d + 0.5, 0, 1) * (distance_mm > 0)

    return {
        "csf": band(edges[0], edges[1]),
        "bone": band(edges[1], edges[2]) + band(edges[3], edges[4]),
        "marrow": band(edges[2], edges[3]),
        "muscle": band(edges[4], edges[5]),
        "fat": band(edges[5], edges[6]),
        "scalp": band(edges[6], edges[7]),
    }


def _head_intensities(rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """Per-case jitter of the scalp soft tissues (drawn only for phantoms with a head)."""
    return {tissue: {seq: v * float(rng.uniform(0.85, 1.15)) for seq, v in values.items()}
            for tissue, values in HEAD_SOFT_TISSUE_INTENSITY.items()}


def _tissue_intensities(rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """Jitter the tissue table per case (scanner and patient variability)."""
    table = {}
    for tissue, values in TISSUE_INTENSITY.items():
        jitter = TUMOUR_JITTER if tissue in TUMOUR_TISSUES else TISSUE_JITTER
        table[tissue] = {seq: v * float(rng.uniform(1 - jitter, 1 + jitter)) for seq, v in values.items()}
    return table


def _random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def _acquisition_grid(rng: np.random.Generator, anatomy: Anatomy, extent_mask: np.ndarray,
                      config: PhantomConfig) -> tuple[np.ndarray, tuple[int, int, int], float, dict]:
    """Output affine (LPS), shape, slice thickness and a description of the grid."""
    points = np.argwhere(extent_mask)
    lo_vox, hi_vox = points.min(0), points.max(0)
    corners = np.array([[x, y, z] for x in (lo_vox[0], hi_vox[0]) for y in (lo_vox[1], hi_vox[1])
                        for z in (lo_vox[2], hi_vox[2])], dtype=float)
    corners_mm = corners @ anatomy.affine[:3, :3].T + anatomy.affine[:3, 3]
    centre_mm = corners_mm.mean(0)
    clinical = config.output_spacing_mm is None and rng.random() < config.clinical_grid_probability
    if clinical:
        plane = str(rng.choice(["axial", "axial", "axial", "coronal", "sagittal"]))
        base = {"axial": np.eye(3), "coronal": np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0]], float),
                "sagittal": np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], float)}[plane]
        directions = _random_rotation(rng, config.max_rotation_deg) @ base
        inplane = float(rng.uniform(*config.inplane_spacing_mm))
        thickness = float(rng.uniform(*config.slice_thickness_mm))
        spacing = np.array([inplane, inplane, thickness])
    else:
        plane = "axial"
        directions = np.eye(3)
        iso = config.output_spacing_mm or 1.0
        spacing = np.full(3, iso)
        thickness = float(iso)
    # random axis flips: the stored orientation varies like it does between scanners
    flips = np.where(rng.random(3) < 0.3, -1.0, 1.0) if clinical else np.ones(3)
    directions = directions * flips
    local = (corners_mm - centre_mm) @ directions
    half = np.abs(local).max(0) + 4.0
    shape = tuple(int(np.ceil(2 * h / s)) + 1 for h, s in zip(half, spacing))
    affine = np.eye(4)
    affine[:3, :3] = directions * spacing
    affine[:3, 3] = centre_mm - affine[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    desc = {"plane": plane, "spacing_mm": [round(float(s), 3) for s in spacing],
            "clinical": bool(clinical)}
    return affine, shape, thickness, desc


def _resample(volumes: dict[str, np.ndarray], source_affine: np.ndarray, target_affine: np.ndarray,
              shape: tuple[int, int, int], thickness: float, nearest: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Sample volumes on a target grid; thick slices average sub-samples across the slab."""
    to_source = np.linalg.inv(source_affine) @ target_affine
    slice_step = float(np.linalg.norm(target_affine[:3, 2]))
    subsamples = max(1, int(round(thickness))) if thickness > 1.5 else 1
    offsets = (np.arange(subsamples) - (subsamples - 1) / 2.0) / subsamples if subsamples > 1 else [0.0]
    out: dict[str, np.ndarray] = {}
    for name, volume in volumes.items():
        if name in nearest:
            out[name] = ndimage.affine_transform(volume, to_source[:3, :3], to_source[:3, 3],
                                                 output_shape=shape, order=0, mode="constant")
            continue
        acc = np.zeros(shape, dtype=np.float32)
        for offset in offsets:
            shift = to_source[:3, :3] @ np.array([0.0, 0.0, offset * thickness / slice_step])
            acc += ndimage.affine_transform(volume, to_source[:3, :3], to_source[:3, 3] + shift,
                                            output_shape=shape, order=1, mode="constant")
        out[name] = acc / len(offsets)
    return out


def _bias_field(rng: np.random.Generator, shape: tuple[int, ...], amplitude: float) -> np.ndarray:
    grids = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    log_field = np.zeros(shape, dtype=np.float32)
    for g in grids:
        log_field += float(rng.normal()) * g + float(rng.normal()) * 0.5 * (g**2 - 0.33)
    log_field += float(rng.normal()) * grids[0] * grids[1]
    span = float(log_field.max() - log_field.min()) or 1.0
    return np.exp(amplitude * (log_field - log_field.mean()) / span)


def make_phantom(seed: int, config: PhantomConfig | None = None) -> Phantom:
    """Generate one phantom, fully determined by ``seed`` and ``config``.

    Parameters
    ----------
    seed: int
        Seed of the random generator.
    config: PhantomConfig, optional
        Generator knobs; defaults to the training mix.

    Returns
    -------
    Phantom
        Four sequences and BraTS labels on one grid with an LPS affine.
    """
    config = config or PhantomConfig()
    rng = np.random.default_rng(seed)
    anatomy = load_anatomy(config.anatomy_spacing_mm)
    spacing = anatomy.spacing_mm
    tumours = _draw_tumours(rng, anatomy, config)
    maps = _deform(anatomy, tumours)
    brain = maps["brain"] > 0.5
    wm, gm, csf = (np.clip(maps[k], 0, 1) * brain for k in ("wm", "gm", "csf"))
    label, non_enhancing = _tumour_labels(rng, tumours, brain, wm, spacing)
    skull = bool(rng.random() < config.skull_probability)
    head = _head_layers(rng, maps["head"]) if skull else None
    head_table = _head_intensities(rng) if skull else {}
    table = _tissue_intensities(rng)
    texture = 1.0 + 0.04 * _smooth_noise(rng, wm.shape, 2.0 / spacing)
    heterogeneity = 1.0 + 0.10 * _smooth_noise(rng, wm.shape, 3.0 / spacing)
    tumour_mask = label > 0
    ed, et, ncr = label == LABEL_ED, label == LABEL_ET, (label == LABEL_NCR) & ~non_enhancing
    images: dict[str, np.ndarray] = {}
    for seq in SEQUENCES:
        healthy = wm * table["wm"][seq] + gm * table["gm"][seq] + csf * table["csf"][seq]
        image = np.where(tumour_mask, 0.0, healthy).astype(np.float32)
        # partial volume at the tumour border: edema mixes with the tissue it infiltrates
        image += ed * (0.75 * table["edema"][seq] + 0.25 * healthy)
        image += et * table["et"][seq] * heterogeneity
        image += ncr * table["ncr"][seq] * heterogeneity
        image += non_enhancing * table["net"][seq] * heterogeneity
        if head is not None:
            outside = ~brain
            image += outside * (head["csf"] * table["csf"][seq] + head["bone"] * table["bone"][seq]
                                + head["marrow"] * table["marrow"][seq] + head["scalp"] * table["scalp"][seq]
                                + head["fat"] * head_table["fat"][seq]
                                + head["muscle"] * head_table["muscle"][seq])
        images[seq] = (image * texture).astype(np.float32)
    extent = brain | (maps["head"] < 25.0) if skull else brain
    out_affine, out_shape, thickness, grid_info = _acquisition_grid(rng, anatomy, extent, config)
    sampled = _resample({**images, "seg": label}, anatomy.affine, out_affine, out_shape, thickness,
                        nearest=("seg",))
    out_label = sampled.pop("seg").astype(np.uint8)
    noise_fraction = float(rng.uniform(*config.noise_fraction))
    bias_amplitude = float(rng.uniform(*config.bias_amplitude))
    final: dict[str, np.ndarray] = {}
    for seq in SEQUENCES:
        image = sampled[seq] * _bias_field(rng, out_shape, bias_amplitude)
        sigma = noise_fraction * table["wm"][seq] * 0.7
        real = image + rng.normal(0.0, sigma, out_shape).astype(np.float32)
        imag = rng.normal(0.0, sigma, out_shape).astype(np.float32)
        magnitude = np.sqrt(real**2 + imag**2)
        if head is None:
            # skull-stripped data is zero outside the brain, like BraTS
            magnitude *= sampled[seq] > 1e-3
        scale = float(rng.uniform(300.0, 1500.0))
        final[seq] = (magnitude * scale).astype(np.float32)
    info = {
        "seed": int(seed),
        "skull": skull,
        "grid": grid_info,
        "noise_fraction": round(noise_fraction, 4),
        "bias_amplitude": round(bias_amplitude, 3),
        "tumours": [{"radius_mm": round(t.radius_mm, 1), "enhancing": t.enhancing,
                     "necrosis": t.necrosis_fraction > 0, "mass_effect": round(t.mass_effect, 2)}
                    for t in tumours],
        "config": asdict(config),
    }
    return Phantom(images=final, label=out_label, affine=out_affine, info=info)


def write_brats_case(phantom: Phantom, out_dir: Path, case_id: str) -> Path:
    """Write a phantom as ``out_dir/case_id/case_id_{t1,t1ce,t2,flair,seg}.nii.gz``.

    Images are stored as int16 (rounded), labels as uint8; the affine is
    converted from LPS to the RAS that NIfTI stores.
    """
    import json

    import nibabel as nib

    case_dir = Path(out_dir) / case_id
    case_dir.mkdir(parents=True, exist_ok=True)
    ras = _ras_to_lps(phantom.affine)
    for seq, image in phantom.images.items():
        data = np.clip(np.rint(image), 0, np.iinfo(np.int16).max).astype(np.int16)
        nib.save(nib.Nifti1Image(data, ras), case_dir / f"{case_id}_{seq}.nii.gz")
    nib.save(nib.Nifti1Image(phantom.label.astype(np.uint8), ras), case_dir / f"{case_id}_seg.nii.gz")
    (case_dir / "phantom.json").write_text(json.dumps(phantom.info, indent=1))
    return case_dir


def generate_phantoms(out_dir: Path, count: int, seed: int, config: PhantomConfig | None = None,
                      prefix: str = "Phantom", progress: bool = True) -> list[Path]:
    """Generate ``count`` phantoms with seeds ``seed, seed+1, ...`` in the BraTS 2021 layout.

    Case ``i`` is named ``{prefix}_{seed+i:05d}`` so a case can be regenerated
    from its name alone.
    """
    from tqdm import tqdm

    if count < 1:
        raise ValueError(f"count={count}: ask for at least one phantom")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in tqdm(range(count), desc="phantoms", unit="case", disable=not progress):
        case_seed = seed + index
        phantom = make_phantom(case_seed, config)
        paths.append(write_brats_case(phantom, out_dir, f"{prefix}_{case_seed:05d}"))
    return paths
