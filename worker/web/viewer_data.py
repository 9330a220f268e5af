"""Compact data for the 3D viewer, built from a finished job's result folder.

The worker writes each finished job's arrays as NIfTI files into
``settings.results_dir / job_id / "viewer"`` (see
:func:`neuroseg.model.io.write_result_folder`): ``seg.nii.gz``
(BraTS labels 0/1/2/4), ``prob_*``, ``variance_*``, ``entropy``, ``gradcam_*``,
``image_*`` and ``report.json``, all on one grid with RAS affines.

This module turns them into what the browser needs, in a small binary format
(:func:`pack_arrays`) that is gzip-compressed once and cached on disk next to
the job's results (``results_dir/<job id>/viewer-cache``, removed with them):

- volumes reoriented to the closest canonical orientation (array axes point to
  patient Right, Anterior, Superior; only flips and transposes, no
  resampling), strided down so no axis exceeds :data:`MAX_VOLUME_DIM`, and
  quantised to ``uint8`` with the value range in the header;
- surface meshes of NCR, ED and ET (and a head/brain surface for context) by
  :func:`neuroseg.dicom_out.mesh.surface_mesh`, vertices in patient LPS
  millimetres, with the entropy, the region's class variance and the region's
  class Grad-CAM sampled at every vertex;
- after a follow-up comparison, the prior study's whole-tumour surface
  (:data:`PRIOR_MESH`), meshed from the prior labels that the comparison
  brought onto this job's grid with its registration
  (:data:`neuroseg.worker.followup.PRIOR_LABELS_FILE`), so it lies in the
  same patient coordinates as the current surfaces.

Binary layout (little endian): ``b"NSV1"``, ``uint32`` header length, the
header as UTF-8 JSON padded with spaces to a multiple of 4 bytes, then the
arrays, each starting at a multiple of 4 bytes. The header's ``arrays`` entry
lists ``{"name", "dtype", "shape", "offset"}`` with offsets from the start of
the array section.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neuroseg.common.files import atomic_write

log = logging.getLogger(__name__)

MAGIC = b"NSV1"
MAX_VOLUME_DIM = 256
HEAD_MESH_MAX_DIM = 96
HEAD_TARGET_FACES = 30000
MAX_LOADED_VOLUMES = 4
REGION_TARGET_FACES = 40000
CACHE_VERSION = "1"

SEQUENCES = {"t1": "T1", "t1ce": "T1ce", "t2": "T2", "flair": "FLAIR"}
CLASSES = {"ncr": 1, "ed": 2, "et": 4}
REGIONS = {
    "ncr": {"label": "Necrotic core (NCR)", "label_value": 1, "color": "#e0443e"},
    "ed": {"label": "Edema (ED)", "label_value": 2, "color": "#3aa35b"},
    "et": {"label": "Enhancing tumour (ET)", "label_value": 4, "color": "#f2c230"},
}
HEAD_REGION = {"label": "Head / brain surface", "color": "#c8ccd2"}
# overlay key -> (file name, kind, description)
OVERLAYS: dict[str, tuple[str, str, str]] = {
    "seg": ("seg.nii.gz", "labels", "Segmentation"),
    **{f"prob_{c}": (f"prob_{c}.nii.gz", "probability", f"Probability {c.upper()}") for c in CLASSES},
    "entropy": ("entropy.nii.gz", "uncertainty", "Uncertainty: predictive entropy"),
    "mutual_information": ("mutual_information.nii.gz", "uncertainty", "Uncertainty: mutual information"),
    **{
        f"variance_{c}": (f"variance_{c}.nii.gz", "uncertainty", f"Uncertainty: MC variance {c.upper()}")
        for c in CLASSES
    },
    **{f"gradcam_{c}": (f"gradcam_{c}.nii.gz", "gradcam", f"Grad-CAM {c.upper()}") for c in CLASSES},
}
VOLUME_FILES: dict[str, str] = {
    **{f"image_{key}": f"image_{key}.nii.gz" for key in SEQUENCES},
    **{key: value[0] for key, value in OVERLAYS.items()},
}
MESH_NAMES = (*REGIONS, "head")
#: the compared prior's whole-tumour surface; only for jobs with a comparison, so not in MESH_NAMES
PRIOR_MESH = "prior"
PRIOR_REGION = {"label": "Prior whole tumour", "color": "#8fb8ff"}
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class ResultNotFound(LookupError):
    """The job has no result folder, or the folder lacks the requested file."""


# --- binary packing ------------------------------------------------------------------------


def pack_arrays(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
    """Pack ``arrays`` (C order, little endian) after a JSON ``header`` (see module docstring)."""
    entries = []
    chunks = []
    offset = 0
    for name, array in arrays.items():
        array = np.ascontiguousarray(array)
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        data = array.tobytes()
        entries.append({"name": name, "dtype": array.dtype.name, "shape": list(array.shape), "offset": offset})
        padding = -len(data) % 4
        chunks.append(data + b"\0" * padding)
        offset += len(data) + padding
    text = json.dumps({**header, "arrays": entries}, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 4)
    return MAGIC + len(text).to_bytes(4, "little") + text + b"".join(chunks)


def unpack_arrays(blob: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Inverse of :func:`pack_arrays` (used by tests and tools)."""
    if blob[:4] != MAGIC:
        raise ValueError(f"not a neuroseg viewer blob: starts with {blob[:4]!r}, expected {MAGIC!r}")
    length = int.from_bytes(blob[4:8], "little")
    header = json.loads(blob[8 : 8 + length])
    base = 8 + length
    arrays = {}
    for entry in header["arrays"]:
        dtype = np.dtype(entry["dtype"]).newbyteorder("<")
        count = int(np.prod(entry["shape"])) if entry["shape"] else 1
        start = base + entry["offset"]
        arrays[entry["name"]] = np.frombuffer(blob, dtype=dtype, count=count, offset=start).reshape(entry["shape"])
    return header, arrays


# --- geometry helpers ------------------------------------------------------------------------


def ras_to_lps(affine: np.ndarray) -> np.ndarray:
    """Convert a NIfTI (RAS) affine to the LPS convention by negating its first two rows."""
    result = np.array(affine, dtype=float)
    result[:2] *= -1
    return result


def _strides(shape: tuple[int, ...], max_dim: int) -> tuple[int, ...]:
    return tuple(max(1, math.ceil(size / max_dim)) for size in shape)


def _strided_affine(affine: np.ndarray, steps: tuple[int, ...]) -> np.ndarray:
    result = np.array(affine, dtype=float)
    result[:3, :3] = result[:3, :3] * np.asarray(steps, dtype=float)[None, :]
    return result


def _sample(volume: np.ndarray, voxels: np.ndarray) -> np.ndarray:
    """Trilinear samples of ``volume`` at fractional voxel coordinates ``voxels`` (N, 3)."""
    from scipy import ndimage

    return ndimage.map_coordinates(volume, voxels.T, order=1, mode="nearest").astype(np.float32)


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file; a failure only logs (the cache is optional)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data, fsync=False)  # a cache: rebuilt when lost
    except OSError as exc:
        log.warning("cannot cache viewer data in %s: %s", path.parent, exc)


# --- the result folder ------------------------------------------------------------------------


@dataclass
class _Loaded:
    data: np.ndarray
    affine_ras: np.ndarray


class ResultFolder:
    """Read-only access to one job's result folder, with canonically oriented arrays.

    Parameters
    ----------
    folder: Path
        ``settings.results_dir / job_id``.
    cache_dir: Path or None
        Where packed, gzipped blobs are cached; ``None`` disables the disk cache.
    """

    def __init__(self, folder: Path, cache_dir: Path | None = None) -> None:
        self.folder = Path(folder)
        if not (self.folder / "seg.nii.gz").is_file():
            raise ResultNotFound(
                f"no segmentation in {self.folder}: the job has not finished or its results were removed"
            )
        self.cache_dir = cache_dir
        self._lock = threading.Lock()
        self._loaded: dict[str, _Loaded] = {}
        self._blobs: dict[str, bytes] = {}
        self._blob_locks: dict[str, threading.Lock] = {}
        self.created_stamp = self.stamp()

    # identity of the folder's content, so a reprocess invalidates cached blobs
    def stamp(self) -> str:
        parts = []
        for name, path in (("seg.nii.gz", self.folder / "seg.nii.gz"), ("report.json", self.folder / "report.json"),
                           ("prior", self.prior_labels_path())):
            if path.is_file():
                info = path.stat()
                parts.append(f"{name}:{info.st_size}:{info.st_mtime_ns}")
        return hashlib.sha256(("|".join(parts) + CACHE_VERSION).encode()).hexdigest()[:16]

    def prior_labels_path(self) -> Path:
        """Where the follow-up step leaves the prior's labels on this job's grid (may not exist)."""
        from neuroseg.worker.followup import PRIOR_LABELS_FILE

        job_folder = self.folder.parent if self.folder.name == "viewer" else self.folder
        return job_folder / PRIOR_LABELS_FILE

    def available(self) -> set[str]:
        """Volume keys (see :data:`VOLUME_FILES`) whose files exist."""
        return {key for key, name in VOLUME_FILES.items() if (self.folder / name).is_file()}

    def report(self) -> dict[str, Any]:
        path = self.folder / "report.json"
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("cannot read %s: %s", path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def load(self, key: str) -> _Loaded:
        """The canonically oriented float array (or label array) for volume ``key``."""
        if key not in VOLUME_FILES:
            raise ResultNotFound(f"unknown volume {key!r}; known: {', '.join(sorted(VOLUME_FILES))}")
        with self._lock:
            if key in self._loaded:
                return self._loaded[key]
        path = self.folder / VOLUME_FILES[key]
        if not path.is_file():
            raise ResultNotFound(f"{path.name} is not in the results of this job")
        import nibabel as nib

        image = nib.as_closest_canonical(nib.load(str(path)))
        data = np.asanyarray(image.dataobj)
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise ValueError(f"{path} has shape {data.shape}; the viewer needs a 3D volume")
        if key == "seg":
            data = np.rint(data).astype(np.uint8)
        else:
            data = np.nan_to_num(data.astype(np.float32, copy=False))
        loaded = _Loaded(data=data, affine_ras=np.array(image.affine, dtype=float))
        with self._lock:
            self._loaded[key] = loaded
            # keep memory bounded: the segmentation and the few volumes used last
            others = [name for name in self._loaded if name != "seg"]
            for name in others[:-MAX_LOADED_VOLUMES]:
                del self._loaded[name]
        return loaded

    # --- cached blobs --------------------------------------------------------------------------

    def _cached(self, name: str, build) -> bytes:
        """The gzipped blob ``name``, from memory, the disk cache, or built now (once, even when
        several requests ask for it at the same time) and cached."""
        stamp = self.stamp()
        key = f"{stamp}/{name}"
        with self._lock:
            if key in self._blobs:
                return self._blobs[key]
            blob_lock = self._blob_locks.setdefault(key, threading.Lock())
        with blob_lock:
            with self._lock:
                if key in self._blobs:
                    return self._blobs[key]
            path = None
            blob = None
            if self.cache_dir is not None:
                path = self.cache_dir / stamp / f"{name}.bin.gz"
                if path.is_file():
                    blob = path.read_bytes()
            if blob is None:
                blob = gzip.compress(build(), compresslevel=6, mtime=0)
                if path is not None:
                    _write_atomically(path, blob)
            with self._lock:
                self._blobs[key] = blob
            return blob

    def volume_blob(self, key: str) -> bytes:
        """Gzipped packed ``uint8`` volume ``key`` (see :meth:`volume_arrays`)."""
        return self._cached(f"volume-{key}", lambda: pack_arrays(*self.volume_arrays(key)))

    def mesh_blob(self, name: str) -> bytes:
        """Gzipped packed mesh ``name`` (``ncr``, ``ed``, ``et``, ``head`` or :data:`PRIOR_MESH`)."""
        if name == PRIOR_MESH:
            return self._cached(f"mesh-{name}", lambda: pack_arrays(*self.prior_mesh_arrays()))
        return self._cached(f"mesh-{name}", lambda: pack_arrays(*self.mesh_arrays(name)))

    # --- volumes ---------------------------------------------------------------------------------

    def grid(self) -> dict[str, Any]:
        """The viewer grid: canonical shape, strides and LPS affines of the strided volumes."""
        seg = self.load("seg")
        steps = _strides(seg.data.shape, MAX_VOLUME_DIM)
        affine_lps = _strided_affine(ras_to_lps(seg.affine_ras), steps)
        shape = [len(range(0, size, step)) for size, step in zip(seg.data.shape, steps)]
        return {
            "shape": shape,
            "full_shape": list(seg.data.shape),
            "steps": list(steps),
            "spacing_mm": [float(v) for v in np.linalg.norm(affine_lps[:3, :3], axis=0)],
            "affine_lps": affine_lps.tolist(),
            "inverse_affine_lps": np.linalg.inv(affine_lps).tolist(),
        }

    def volume_arrays(self, key: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Header and ``uint8`` data of volume ``key`` on the viewer grid.

        The data array has shape (z, y, x) = (superior, anterior, right) canonical
        axes reversed, so an axial slice is contiguous. ``value_range`` maps 0..255
        (or the labels, for ``seg``) back to the stored quantity.
        """
        loaded = self.load(key)
        seg = self.load("seg")
        if loaded.data.shape != seg.data.shape or not np.allclose(loaded.affine_ras, seg.affine_ras, atol=1e-3):
            raise ValueError(
                f"{VOLUME_FILES[key]} is not on the grid of seg.nii.gz "
                f"(shape {loaded.data.shape} vs {seg.data.shape})"
            )
        grid = self.grid()
        sx, sy, sz = grid["steps"]
        data = loaded.data[::sx, ::sy, ::sz]
        if key == "seg":
            quantised = data.astype(np.uint8)
            value_range = [0.0, 255.0]
            kind = "labels"
        else:
            values = data.astype(np.float32)
            if key.startswith("image_"):
                # MR magnitude: black at zero (or the minimum), white at the 99.5th percentile inside the head
                inside = values[values > 0] if np.any(values > 0) else values.ravel()
                low = min(0.0, float(values.min()))
                high = float(np.percentile(inside, 99.5))
                kind = "image"
            else:
                low = 0.0
                high = float(values.max()) if kind_of(key) == "uncertainty" else 1.0
                kind = OVERLAYS[key][1]
            if not high > low:
                high = low + 1.0
            quantised = np.clip(np.rint((values - low) / (high - low) * 255.0), 0, 255).astype(np.uint8)
            value_range = [low, high]
        header = {"kind": kind, "key": key, "value_range": value_range, **grid}
        return header, {"data": np.ascontiguousarray(quantised.transpose(2, 1, 0))}

    # --- meshes -------------------------------------------------------------------------------

    def mesh_arrays(self, name: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Header, vertices (N, 3) float32 LPS mm, faces (M, 3) uint32 and per-vertex fields."""
        from neuroseg.dicom_out.mesh import surface_mesh

        if name not in MESH_NAMES:
            raise ResultNotFound(f"unknown mesh {name!r}; known: {', '.join(MESH_NAMES)}")
        seg = self.load("seg")
        if name == "head":
            mask, affine_lps = self._head_mask()
        else:
            mask = seg.data == CLASSES[name]
            affine_lps = ras_to_lps(seg.affine_ras)
        # smooth over about one voxel, so thick slices do not show as terraces
        smoothing = max(1.0, 0.6 * float(np.linalg.norm(affine_lps[:3, :3], axis=0).max()))
        header: dict[str, Any] = {"kind": "mesh", "name": name, "fields": {}}
        if not mask.any():
            empty = {"vertices": np.zeros((0, 3), np.float32), "faces": np.zeros((0, 3), np.uint32)}
            return header, empty
        mesh = surface_mesh(mask, affine_lps, smoothing=smoothing,
                            target_faces=HEAD_TARGET_FACES if name == "head" else REGION_TARGET_FACES)
        vertices = np.asarray(mesh.vertices, dtype=np.float32)
        faces = np.asarray(mesh.faces, dtype=np.uint32)
        arrays = {"vertices": vertices, "faces": faces}
        if name != "head" and len(vertices):
            seg_lps = ras_to_lps(seg.affine_ras)
            voxels = (np.linalg.inv(seg_lps) @ np.c_[vertices, np.ones(len(vertices))].T).T[:, :3]
            available = self.available()
            fields = (("entropy", "entropy"), ("variance", f"variance_{name}"), ("gradcam", f"gradcam_{name}"))
            for field_name, key in fields:
                if key in available:
                    values = _sample(self.load(key).data, voxels)
                    arrays[field_name] = values
                    header["fields"][field_name] = [float(values.min()), float(values.max())]
        return header, arrays

    def prior_mesh_arrays(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The prior's whole-tumour surface: header, vertices (N, 3) float32 LPS mm, faces (M, 3) uint32.

        Raises :class:`ResultNotFound` when the job was not compared with a prior.
        """
        import nibabel as nib

        from neuroseg.dicom_out.mesh import surface_mesh

        path = self.prior_labels_path()
        if not path.is_file():
            raise ResultNotFound("this job was not compared with a prior study (no prior labels on its grid)")
        image = nib.as_closest_canonical(nib.load(str(path)))
        labels = np.rint(np.asanyarray(image.dataobj)).astype(np.uint8)
        mask = np.isin(labels, (1, 2, 4))
        affine_lps = ras_to_lps(np.asarray(image.affine, dtype=float))
        header: dict[str, Any] = {"kind": "mesh", "name": PRIOR_MESH, "fields": {},
                                  "volume_ml": round(float(mask.sum()) * abs(float(np.linalg.det(affine_lps[:3, :3])))
                                                     / 1000.0, 2)}
        if not mask.any():
            return header, {"vertices": np.zeros((0, 3), np.float32), "faces": np.zeros((0, 3), np.uint32)}
        smoothing = max(1.0, 0.6 * float(np.linalg.norm(affine_lps[:3, :3], axis=0).max()))
        mesh = surface_mesh(mask, affine_lps, smoothing=smoothing, target_faces=REGION_TARGET_FACES)
        return header, {"vertices": np.asarray(mesh.vertices, dtype=np.float32),
                        "faces": np.asarray(mesh.faces, dtype=np.uint32)}

    def _head_mask(self) -> tuple[np.ndarray, np.ndarray]:
        """A head (or, for skull-stripped images, brain) mask on a coarse grid, and its LPS affine."""
        from scipy import ndimage
        from skimage.filters import threshold_otsu

        available = self.available()
        for key in ("image_t1", "image_t1ce", "image_flair", "image_t2"):
            if key in available:
                image = self.load(key)
                break
        else:
            seg = self.load("seg")
            steps = _strides(seg.data.shape, HEAD_MESH_MAX_DIM)
            return np.zeros([1, 1, 1], bool), _strided_affine(ras_to_lps(seg.affine_ras), steps)
        steps = _strides(image.data.shape, HEAD_MESH_MAX_DIM)
        coarse = image.data[:: steps[0], :: steps[1], :: steps[2]].astype(np.float32)
        smooth = ndimage.gaussian_filter(coarse, 1.0)
        positive = smooth[smooth > 0]
        if positive.size < 10:
            return np.zeros_like(coarse, bool), _strided_affine(ras_to_lps(image.affine_ras), steps)
        mask = smooth > 0.5 * threshold_otsu(positive)
        mask = ndimage.binary_closing(mask, iterations=2)
        mask = ndimage.binary_fill_holes(mask)
        labels, count = ndimage.label(mask)
        if count > 1:
            sizes = ndimage.sum_labels(mask, labels, range(1, count + 1))
            mask = labels == (int(np.argmax(sizes)) + 1)
        return mask, _strided_affine(ras_to_lps(image.affine_ras), steps)

    # --- manifest --------------------------------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        """Everything the viewer page needs before it fetches volumes and meshes."""
        seg = self.load("seg")
        grid = self.grid()
        report = self.report()
        voxel_ml = abs(float(np.linalg.det(seg.affine_ras[:3, :3]))) / 1000.0
        reported = {str(k).lower(): v for k, v in (report.get("volumes_ml") or {}).items()}
        regions = []
        for key, info in REGIONS.items():
            volume = reported.get(key)
            if not isinstance(volume, (int, float)):
                volume = float(np.count_nonzero(seg.data == info["label_value"])) * voxel_ml
            regions.append({"key": key, **info, "volume_ml": round(float(volume), 2)})
        totals = {}
        for key, labels in (("wt", (1, 2, 4)), ("tc", (1, 4))):
            volume = reported.get(key)
            if not isinstance(volume, (int, float)):
                volume = float(np.count_nonzero(np.isin(seg.data, labels))) * voxel_ml
            totals[key] = round(float(volume), 2)
        tumour = np.argwhere(seg.data > 0)
        centre = tumour.mean(axis=0) if len(tumour) else (np.asarray(seg.data.shape) - 1) / 2
        steps = np.asarray(grid["steps"], dtype=float)
        available = self.available()
        return {
            **grid,
            "start_voxel": [int(v) for v in np.clip(np.rint(centre / steps), 0, np.asarray(grid["shape"]) - 1)],
            "sequences": [
                {"key": f"image_{key}", "label": label}
                for key, label in SEQUENCES.items()
                if f"image_{key}" in available
            ],
            "overlays": [
                {"key": key, "label": description, "kind": kind}
                for key, (_, kind, description) in OVERLAYS.items()
                if key in available
            ],
            "regions": regions,
            "head": HEAD_REGION,
            "totals_ml": totals,
            "model_version": (report.get("model") or {}).get("version") or report.get("model_version"),
            "model": _model_summary(report),
            "statement": report.get("statement"),
            "sequences_used": report.get("sequences_used"),
        }


def job_result_folder(results_dir: Path, job_id: str) -> Path:
    """The viewer data folder of a job, after checking that ``job_id`` cannot escape ``results_dir``.

    The worker writes it to ``results_dir/<job id>/viewer``; a folder with the
    files directly in ``results_dir/<job id>`` (``neuroseg predict --out``
    copied there) is accepted too.
    """
    if not _JOB_ID.match(str(job_id)) or str(job_id) in {".", ".."}:
        raise ResultNotFound(f"{job_id!r} is not a job id")
    job_folder = Path(results_dir) / str(job_id)
    viewer = job_folder / "viewer"
    return viewer if (viewer / "seg.nii.gz").is_file() else job_folder


def _model_summary(report: dict[str, Any]) -> dict[str, Any]:
    """Name, version and the model card's plain-language fields, from ``report.json``."""
    model = report.get("model") if isinstance(report.get("model"), dict) else {}
    card = model.get("model_card") if isinstance(model.get("model_card"), dict) else {}
    summary = {"name": model.get("name"), "version": model.get("version") or report.get("model_version")}
    for key in ("status", "intended_use", "training_data", "limitations", "architecture"):
        if key in card:
            summary[key] = card[key]
    provenance = card.get("provenance") if isinstance(card.get("provenance"), dict) else {}
    for key in ("authors", "license", "source"):  # who made a model the hospital brought (bundle, nnU-Net)
        if provenance.get(key):
            summary[key] = str(provenance[key])
    return summary


def kind_of(key: str) -> str:
    """``image``, ``labels``, ``probability``, ``uncertainty`` or ``gradcam`` for a volume key."""
    return "image" if key.startswith("image_") else OVERLAYS[key][1]


def preferred_sequence(available: set[str]) -> str | None:
    """The image the viewer shows first: T1ce, else FLAIR, T1, T2."""
    for key in ("image_t1ce", "image_flair", "image_t1", "image_t2"):
        if key in available:
            return key
    return None


def has_viewer_data(results_dir: Path, job_id: str) -> bool:
    """Whether the job's segmentation is on disk for the viewer."""
    try:
        return (job_result_folder(results_dir, job_id) / "seg.nii.gz").is_file()
    except ResultNotFound:
        return False
