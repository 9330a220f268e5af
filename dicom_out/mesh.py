"""Surface meshes of the tumour regions, as Encapsulated STL and Surface Segmentation.

:func:`surface_mesh` turns a mask plus its affine into a triangle mesh whose
vertices are patient coordinates (LPS millimetres), so it overlays the images
in any viewer; the admin 3D viewer imports it too. Steps:

1. crop the mask to its bounding box (plus a margin) and pad it with zeros
   so that every surface is closed;
2. Gaussian-smooth the mask (``smoothing`` mm, converted to voxels per axis);
3. marching cubes (scikit-image) at level 0.5, with a step size picked so
   the mesh lands near ``target_faces``;
4. map vertices through the affine; Taubin smoothing (no shrinkage);
5. vertex-clustering decimation while the mesh still has more than
   ``target_faces`` faces; faces are wound so normals point outwards.

Objects: one Encapsulated STL (modality M3D, SOP Class 1.2.840.10008.5.1.4.1.1.104.3)
per non-empty region (WT, TC, ET, NCR, ED, and the brain if configured), and,
behind an option, one Surface Segmentation (1.2.840.10008.5.1.4.1.1.66.5)
holding a surface per non-empty class (NCR, ED, ET). The not-for-diagnostic
statement is in DocumentTitle (STL) and ContentDescription (Surface SEG).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import struct
from dataclasses import dataclass

import numpy as np
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

from neuroseg.dicom_out.common import (
    CLASS_COLOURS,
    MANUFACTURER,
    MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
    NOT_FOR_DIAGNOSTIC_USE,
    SEGMENT_NUMBERS,
    SERIES_NUMBERS,
    EncodedObject,
    EncodeRequest,
    class_code,
    content_description,
    copy_identity,
    series_description,
    software_versions,
)
from neuroseg.dicom_out.enum import MeshFormat, TumorClass, TumorRegion
from neuroseg.dicom_out.uids import output_uid

log = logging.getLogger(__name__)

ENCAPSULATED_STL_STORAGE = "1.2.840.10008.5.1.4.1.1.104.3"
SURFACE_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.5"

#: Regions written as STL, in order, with display names and colours (sRGB).
STL_REGIONS: dict[str, tuple[str, tuple[int, int, int]]] = {
    "wt": ("whole tumour", (255, 160, 40)),
    "tc": ("tumour core", (200, 60, 200)),
    "et": ("enhancing tumour", CLASS_COLOURS[TumorClass.ET]),
    "ncr": ("necrotic core", CLASS_COLOURS[TumorClass.NCR]),
    "ed": ("edema", CLASS_COLOURS[TumorClass.ED]),
    "brain": ("brain surface", (200, 200, 200)),
}


@dataclass(frozen=True)
class Mesh:
    """A triangle mesh.

    Attributes
    ----------
    vertices: numpy.ndarray
        (N, 3) float64 patient coordinates in LPS millimetres.
    faces: numpy.ndarray
        (M, 3) int64 indices into ``vertices`` (0-based), wound
        counter-clockwise seen from outside (normals point outwards).
    """

    vertices: np.ndarray
    faces: np.ndarray

    @property
    def is_empty(self) -> bool:
        return len(self.faces) == 0

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(minimum, maximum) corner of the vertices' bounding box, LPS mm."""
        if len(self.vertices) == 0:
            raise ValueError("an empty mesh has no bounds")
        return self.vertices.min(axis=0), self.vertices.max(axis=0)

    def face_normals(self) -> np.ndarray:
        """Unit normal of each face (zero for degenerate faces)."""
        v = self.vertices[self.faces]
        normals = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
        length = np.linalg.norm(normals, axis=1, keepdims=True)
        return np.divide(normals, length, out=np.zeros_like(normals), where=length > 0)

    def volume_mm3(self) -> float:
        """Enclosed volume (divergence theorem); positive when normals point outwards."""
        if self.is_empty:
            return 0.0
        v = self.vertices[self.faces]
        return float(np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2])).sum() / 6.0)


def _empty_mesh() -> Mesh:
    return Mesh(np.zeros((0, 3), dtype=np.float64), np.zeros((0, 3), dtype=np.int64))


def surface_mesh(mask: np.ndarray, affine: np.ndarray, *, smoothing: float = 1.0,
                 target_faces: int = 20000, taubin_iterations: int = 10) -> Mesh:
    """Triangle mesh of the boundary of ``mask`` in patient coordinates.

    Parameters
    ----------
    mask: numpy.ndarray
        3D boolean (or 0/1) array in (slices, rows, columns) order.
    affine: numpy.ndarray
        4x4 matrix mapping array indices (in array-axis order) to LPS mm.
    smoothing: float, optional
        Standard deviation of the Gaussian applied to the mask before
        marching cubes, in millimetres (0 disables it).
    target_faces: int, optional
        Upper bound on the number of faces (decimation stops below it).
    taubin_iterations: int, optional
        Rounds of Taubin smoothing of the vertices (0 disables it).

    Returns
    -------
    Mesh
        Vertices in LPS mm; an empty mesh when ``mask`` has no voxel set.

    Raises
    ------
    ValueError
        If ``mask`` is not 3D or ``affine`` not 4x4.
    """
    from scipy import ndimage
    from skimage import measure

    mask = np.asarray(mask)
    affine = np.asarray(affine, dtype=np.float64)
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3D (slices, rows, columns); got shape {mask.shape}")
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4; got {affine.shape}")
    if target_faces < 4:
        raise ValueError(f"target_faces={target_faces}; need at least 4")
    mask = mask.astype(bool, copy=False)
    if not mask.any():
        return _empty_mesh()
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    sigma = smoothing / spacing if smoothing > 0 else np.zeros(3)
    margin = np.ceil(3 * sigma).astype(int) + 2
    nonzero = np.nonzero(mask)
    low = np.array([int(axis.min()) for axis in nonzero]) - margin
    high = np.array([int(axis.max()) for axis in nonzero]) + margin + 1
    clip_low = np.maximum(low, 0)
    crop = mask[tuple(slice(a, b) for a, b in zip(clip_low, np.minimum(high, mask.shape)))]
    pad_before = clip_low - low
    pad_after = high - np.minimum(high, mask.shape)
    volume = np.pad(crop.astype(np.float32), list(zip(pad_before, pad_after)))
    if smoothing > 0:
        volume = ndimage.gaussian_filter(volume, sigma=sigma, mode="constant")
    level = 0.5 if volume.max() > 0.5 else float(volume.max()) / 2.0
    verts, faces, _, _ = measure.marching_cubes(volume, level=level, step_size=1, allow_degenerate=False)
    if len(faces) > 2 * target_faces:
        step = max(1, int(math.floor(math.sqrt(len(faces) / target_faces))))
        if step > 1:
            verts, faces, _, _ = measure.marching_cubes(volume, level=level, step_size=step,
                                                        allow_degenerate=False)
    index = verts + (low)[None, :]  # back to indices of the full array
    vertices = np.c_[index, np.ones(len(index))] @ affine.T
    mesh = Mesh(vertices[:, :3].astype(np.float64), faces.astype(np.int64))
    if taubin_iterations > 0:
        mesh = taubin_smooth(mesh, iterations=taubin_iterations)
    if len(mesh.faces) > target_faces:
        mesh = decimate(mesh, target_faces)
    if mesh.volume_mm3() < 0:
        mesh = Mesh(mesh.vertices, mesh.faces[:, [0, 2, 1]])
    return mesh


def taubin_smooth(mesh: Mesh, *, iterations: int = 10, lam: float = 0.5, mu: float = -0.53) -> Mesh:
    """Taubin lambda/mu smoothing (smooths without shrinking the surface)."""
    from scipy import sparse

    if mesh.is_empty:
        return mesh
    n = len(mesh.vertices)
    f = mesh.faces
    rows = np.concatenate([f[:, 0], f[:, 1], f[:, 2], f[:, 1], f[:, 2], f[:, 0]])
    cols = np.concatenate([f[:, 1], f[:, 2], f[:, 0], f[:, 0], f[:, 1], f[:, 2]])
    adjacency = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    adjacency.data[:] = 1.0
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    degree[degree == 0] = 1.0
    vertices = mesh.vertices.copy()
    for _ in range(iterations):
        for factor in (lam, mu):
            vertices += factor * (adjacency @ vertices / degree[:, None] - vertices)
    return Mesh(vertices, mesh.faces)


def decimate(mesh: Mesh, target_faces: int) -> Mesh:
    """Vertex-clustering decimation until the mesh has at most ``target_faces`` faces."""
    if len(mesh.faces) <= target_faces:
        return mesh
    low, high = mesh.bounds
    area = 0.5 * np.linalg.norm(np.cross(*(mesh.vertices[mesh.faces[:, i]] - mesh.vertices[mesh.faces[:, 0]]
                                           for i in (1, 2))), axis=1).sum()
    cell = math.sqrt(2.0 * area / target_faces) * 0.7
    current = mesh
    for _ in range(30):
        keys = np.floor((mesh.vertices - low) / cell).astype(np.int64)
        _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
        inverse = inverse.ravel()
        sums = np.zeros((len(counts), 3))
        np.add.at(sums, inverse, mesh.vertices)
        vertices = sums / counts[:, None]
        faces = inverse[mesh.faces]
        keep = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
        faces = faces[keep]
        _, unique_rows = np.unique(np.sort(faces, axis=1), axis=0, return_index=True)
        faces = faces[np.sort(unique_rows)]
        used = np.unique(faces)
        remap = np.full(len(vertices), -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        current = Mesh(vertices[used], remap[faces])
        if len(current.faces) <= target_faces:
            break
        cell *= 1.25
    return current


def stl_bytes(mesh: Mesh, header: str = "neuroseg surface mesh") -> bytes:
    """Binary STL of ``mesh`` (coordinates in mm, float32)."""
    record = np.dtype([("normal", "<f4", (3,)), ("vertices", "<f4", (3, 3)), ("attribute", "<u2")])
    data = np.zeros(len(mesh.faces), dtype=record)
    data["normal"] = mesh.face_normals()
    data["vertices"] = mesh.vertices[mesh.faces]
    head = header.encode("ascii", "replace")[:80].ljust(80, b" ")
    if head.lower().startswith(b"solid"):
        head = b"binary " + head[:73]  # an ASCII-STL reader would misread a header starting with "solid"
    return head + struct.pack("<I", len(mesh.faces)) + data.tobytes()


def reference_affine(request: EncodeRequest) -> np.ndarray:
    """The (slices, rows, columns) -> LPS mm affine of the reference series."""
    if request.reference_frames is not None:  # frames of a multi-frame image
        return request.reference_affine()
    first = request.reference_series[0]
    iop = np.asarray([float(v) for v in first.ImageOrientationPatient])
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    origin = np.asarray([float(v) for v in first.ImagePositionPatient])
    affine = np.eye(4)
    affine[:3, 2] = iop[:3] * column_spacing
    affine[:3, 1] = iop[3:] * row_spacing
    if len(request.reference_series) > 1:
        last = np.asarray([float(v) for v in request.reference_series[-1].ImagePositionPatient])
        affine[:3, 0] = (last - origin) / (len(request.reference_series) - 1)
    else:
        affine[:3, 0] = np.cross(iop[:3], iop[3:]) * float(getattr(first, "SliceThickness", 1.0) or 1.0)
    affine[:3, 3] = origin
    return affine


def region_masks(request: EncodeRequest) -> dict[str, np.ndarray]:
    """Masks of the STL regions on the reference grid (brain only when configured)."""
    masks = {region.value: np.isin(request.labels, region.label_values)
             for region in (TumorRegion.WT, TumorRegion.TC, TumorRegion.ET, TumorRegion.NCR, TumorRegion.ED)}
    if request.options.include_brain_surface and request.options.brain_mask is not None:
        masks["brain"] = np.asarray(request.options.brain_mask).astype(bool)
    return {key: masks[key] for key in STL_REGIONS if key in masks}


def document_header(request: EncodeRequest, kind: str, group: str, modality: str, sop_class_uid: str,
                    description: str, instance_number: int) -> Dataset:
    """Identity, series, equipment and SOP attributes of an object built by hand (STL, Surface SEG, PDF)."""
    source = request.reference_series[0]
    now = dt.datetime.now()
    study_uid = request.study_instance_uid
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    copy_identity(source, ds)
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = output_uid(study_uid, request.model_version, kind)
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    ds.Modality = modality
    ds.SeriesInstanceUID = output_uid(study_uid, request.model_version, group, "series")
    ds.SeriesNumber = SERIES_NUMBERS[group]
    ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.SeriesDescription = series_description(description, request.options)
    if modality == "SEG":
        ds.BodyPartExamined = "BRAIN"  # not part of the Encapsulated STL IOD
    ds.InstanceNumber = instance_number
    ds.FrameOfReferenceUID = source.FrameOfReferenceUID
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = request.model_name[:64]
    ds.DeviceSerialNumber = request.model_version[:64]
    ds.SoftwareVersions = software_versions(request.model_name, request.model_version)
    return ds


def with_file_meta(ds: Dataset) -> Dataset:
    """``ds`` with its File Meta Information (Explicit VR Little Endian)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "NEUROSEG"
    ds.file_meta = meta
    return ds


def _code_item(code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def _source_instance_items(request: EncodeRequest) -> DicomSequence:
    items = []
    for ds in request.reference_series:
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        items.append(item)
    return DicomSequence(items)


def _referenced_series(request: EncodeRequest) -> DicomSequence:
    """Common Instance Reference: every source series of the study."""
    by_series: dict[str, list[Dataset]] = {}
    for ds in request.source_datasets():
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    items = []
    for series_uid, datasets in by_series.items():
        item = Dataset()
        item.SeriesInstanceUID = series_uid
        instances = []
        for ds in datasets:
            ref = Dataset()
            ref.ReferencedSOPClassUID = ds.SOPClassUID
            ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID
            instances.append(ref)
        item.ReferencedInstanceSequence = DicomSequence(instances)
        items.append(item)
    return DicomSequence(items)


def build_stl_object(request: EncodeRequest, region: str, mesh: Mesh, instance_number: int) -> EncodedObject:
    """Encapsulated STL of one region's mesh (modality M3D)."""
    if mesh.is_empty:
        raise ValueError(f"mesh of region {region!r} is empty; skip it rather than writing an empty STL")
    name, _ = STL_REGIONS[region]
    kind = f"mesh-stl-{region}"
    ds = document_header(request, kind, "mesh-stl", "M3D", ENCAPSULATED_STL_STORAGE,
                        "AI tumour surfaces STL", instance_number)
    ds.AcquisitionDateTime = ds.ContentDate + ds.ContentTime
    ds.BurnedInAnnotation = "NO"
    ds.RecognizableVisualFeatures = "NO"
    ds.DocumentTitle = f"{name} surface (AI) - {NOT_FOR_DIAGNOSTIC_USE}"
    ds.ConceptNameCodeSequence = DicomSequence([])
    ds.MIMETypeOfEncapsulatedDocument = "model/stl"
    ds.SourceInstanceSequence = _source_instance_items(request)
    unit = Dataset()
    unit.CodeValue = "mm"
    unit.CodingSchemeDesignator = "UCUM"
    unit.CodeMeaning = "mm"
    ds.MeasurementUnitsCodeSequence = DicomSequence([unit])
    payload = stl_bytes(mesh, f"neuroseg {region} surface, LPS mm, {NOT_FOR_DIAGNOSTIC_USE}")
    ds.EncapsulatedDocumentLength = len(payload)
    ds.EncapsulatedDocument = payload + (b"\x00" if len(payload) % 2 else b"")
    ds.ReferencedSeriesSequence = _referenced_series(request)
    return EncodedObject(kind, ENCAPSULATED_STL_STORAGE, str(ds.SOPInstanceUID), with_file_meta(ds))


def build_surface_segmentation(request: EncodeRequest, meshes: dict[str, Mesh]) -> EncodedObject:
    """Surface Segmentation with one segment and surface per non-empty class."""
    from highdicom.color import CIELabColor

    from neuroseg.dicom_out.seg import SEGMENT_LABELS

    ds = document_header(request, "mesh-surface", "mesh-surface", "SEG", SURFACE_SEGMENTATION_STORAGE,
                        "AI tumour surfaces", 1)
    ds.ContentLabel = "SURFACES"
    ds.ContentDescription = content_description("AI tumour surfaces NCR/ED/ET")
    ds.ContentCreatorName = "neuroseg^AI"
    algorithm = Dataset()
    algorithm.AlgorithmFamilyCodeSequence = DicomSequence([_code_item(_AI)])
    algorithm.AlgorithmName = request.model_name[:64]
    algorithm.AlgorithmVersion = request.model_version[:64]
    algorithm.AlgorithmSource = MANUFACTURER
    segments, surfaces = [], []
    for tumor_class in TumorClass:
        mesh = meshes.get(tumor_class.value)
        if mesh is None or mesh.is_empty:
            continue
        number = len(surfaces) + 1
        segment = Dataset()
        segment.SegmentNumber = SEGMENT_NUMBERS[tumor_class]
        segment.SegmentLabel = SEGMENT_LABELS[tumor_class]
        segment.SegmentAlgorithmType = "AUTOMATIC"
        segment.SegmentedPropertyCategoryCodeSequence = DicomSequence(
            [_code_item(MORPHOLOGICALLY_ABNORMAL_STRUCTURE)])
        segment.SegmentedPropertyTypeCodeSequence = DicomSequence([_code_item(class_code(tumor_class))])
        segment.SurfaceCount = 1
        ref = Dataset()
        ref.ReferencedSurfaceNumber = number
        ref.SegmentSurfaceGenerationAlgorithmIdentificationSequence = DicomSequence([algorithm])
        ref.SegmentSurfaceSourceInstanceSequence = _source_instance_items(request)
        segment.ReferencedSurfaceSequence = DicomSequence([ref])
        segments.append(segment)

        surface = Dataset()
        surface.SurfaceNumber = number
        surface.SurfaceComments = f"{tumor_class.display_name}, marching cubes + Taubin smoothing"
        surface.SurfaceProcessing = "NO"
        lab = CIELabColor.from_rgb(*CLASS_COLOURS[tumor_class])
        surface.RecommendedDisplayGrayscaleValue = 0xFFFF
        surface.RecommendedDisplayCIELabValue = list(lab.value)
        surface.RecommendedPresentationOpacity = 0.6
        surface.RecommendedPresentationType = "SURFACE"
        surface.FiniteVolume = "YES"
        surface.Manifold = "UNKNOWN"
        points = Dataset()
        points.NumberOfSurfacePoints = len(mesh.vertices)
        points.PointCoordinatesData = mesh.vertices.astype("<f4").tobytes()
        low, high = mesh.bounds
        points.PointsBoundingBoxCoordinates = [float(v) for v in (*low, *high)]
        surface.SurfacePointsSequence = DicomSequence([points])
        normals = Dataset()
        normals.NumberOfVectors = len(mesh.vertices)
        normals.VectorDimensionality = 3
        normals.VectorCoordinateData = _vertex_normals(mesh).astype("<f4").tobytes()
        surface.SurfacePointsNormalsSequence = DicomSequence([normals])
        primitives = Dataset()
        primitives.LongTrianglePointIndexList = (mesh.faces + 1).astype("<u4").tobytes()  # 1-based
        # the other primitive kinds are Type 2: present and empty
        primitives.LongVertexPointIndexList = b""
        primitives.LongEdgePointIndexList = b""
        for keyword in ("TriangleStripSequence", "TriangleFanSequence", "LineSequence", "FacetSequence"):
            setattr(primitives, keyword, DicomSequence([]))
        surface.SurfaceMeshPrimitivesSequence = DicomSequence([primitives])
        surfaces.append(surface)
    if not surfaces:
        raise ValueError("no tumour class has voxels; a Surface Segmentation needs at least one surface")
    ds.SegmentSequence = DicomSequence(segments)
    ds.NumberOfSurfaces = len(surfaces)
    ds.SurfaceSequence = DicomSequence(surfaces)
    ds.ReferencedSeriesSequence = _referenced_series(request)
    return EncodedObject("mesh-surface", SURFACE_SEGMENTATION_STORAGE, str(ds.SOPInstanceUID), with_file_meta(ds))


def _vertex_normals(mesh: Mesh) -> np.ndarray:
    v = mesh.vertices[mesh.faces]
    weighted = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])  # area-weighted face normals
    normals = np.zeros_like(mesh.vertices)
    for corner in range(3):
        np.add.at(normals, mesh.faces[:, corner], weighted)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return np.divide(normals, length, out=np.zeros_like(normals), where=length > 0)


_AI = CodedConcept("123110", "DCM", "Artificial Intelligence")


def build_meshes(request: EncodeRequest) -> list[EncodedObject]:
    """Every mesh object that ``request.options.mesh_formats`` asks for."""
    formats = request.options.mesh_formats
    if not formats:
        return []
    affine = reference_affine(request)
    masks = region_masks(request)
    if MeshFormat.STL.value not in formats:
        masks = {key: masks[key] for key in ("ncr", "ed", "et")}
    meshes = {key: surface_mesh(mask, affine, smoothing=request.options.mesh_smoothing,
                                target_faces=request.options.mesh_target_faces)
              for key, mask in masks.items()}
    objects: list[EncodedObject] = []
    if MeshFormat.STL.value in formats:
        number = 0
        for region, mesh in meshes.items():
            if mesh.is_empty:
                log.info("region %s is empty in study %s: no STL written", region, request.study_instance_uid)
                continue
            number += 1
            objects.append(build_stl_object(request, region, mesh, number))
    if MeshFormat.SURFACE_SEGMENTATION.value in formats:
        if any(not meshes[key].is_empty for key in ("ncr", "ed", "et")):
            objects.append(build_surface_segmentation(request, meshes))
        else:
            log.info("no tumour voxels in study %s: no Surface Segmentation written", request.study_instance_uid)
    return objects
