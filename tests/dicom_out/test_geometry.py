"""Geometry: the SEG decodes to the label map on the source grid; meshes overlay it."""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pydicom
import pytest

from neuroseg.dicom_out import EncodeOptions, encode_study
from neuroseg.dicom_out.mesh import reference_affine, stl_bytes, surface_mesh
from tests.dicom_out.synthetic import synthetic_study


def decode(dataset: pydicom.Dataset):
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    buffer.seek(0)
    return hd.seg.segread(buffer)


@pytest.mark.parametrize("segmentation_type", ["BINARY", "LABELMAP"])
@pytest.mark.parametrize("tilt_degrees", [0.0, 17.0])
def test_seg_decodes_to_the_label_map_frame_by_frame(segmentation_type: str, tilt_degrees: float) -> None:
    study = synthetic_study((12, 40, 48), tilt_degrees=tilt_degrees)
    request = study.request(EncodeOptions(segmentation_type=segmentation_type, maps=(), mesh_formats=()))
    seg = decode(encode_study(request)[0].dataset)
    uids = [str(ds.SOPInstanceUID) for ds in request.reference_series]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1, 2, 3])
    for k in range(len(uids)):
        for index, value in enumerate((1, 2, 4)):
            np.testing.assert_array_equal(pixels[k, :, :, index], request.labels[k] == value,
                                          err_msg=f"slice {k}, label {value}")


def test_stl_vertices_lie_inside_the_seg_bounding_box() -> None:
    study = synthetic_study((16, 48, 48), tilt_degrees=11.0)
    request = study.request(EncodeOptions(maps=(), mesh_formats={"stl"}, mesh_smoothing=0.5))
    objects = encode_study(request)
    np.testing.assert_allclose(reference_affine(request), study.affine, atol=1e-5)
    seg = decode(objects[0].dataset)
    regions = {"wt": [1, 2, 3], "tc": [1, 3], "et": [3], "ncr": [1], "ed": [2]}  # segment numbers
    stls = [item for item in objects if item.kind.startswith("mesh-stl-")]
    assert [item.kind for item in stls] == [f"mesh-stl-{region}" for region in regions]
    for obj in stls:
        region = obj.kind.rsplit("-", 1)[-1]
        # the SEG's own geometry: its volume, affine and the corners of every segmented voxel
        volume = seg.get_volume(segment_numbers=regions[region], combine_segments=True)
        index = np.argwhere(volume.array > 0).astype(float)
        corners = (index[:, None, :] + np.array(np.meshgrid(*[[-0.5, 0.5]] * 3)).T.reshape(1, -1, 3)).reshape(-1, 3)
        patient = np.c_[corners, np.ones(len(corners))] @ volume.affine.T
        low, high = patient[:, :3].min(axis=0), patient[:, :3].max(axis=0)
        payload = bytes(obj.dataset.EncapsulatedDocument)[: int(obj.dataset.EncapsulatedDocumentLength)]
        vertices = read_stl_vertices(payload)
        tolerance = 0.6  # mm: smoothing may push a vertex slightly past the voxel corners
        assert np.all(vertices >= low - tolerance) and np.all(vertices <= high + tolerance), region
        # and the mesh is not a tiny blob in one corner: it spans most of the box
        assert np.all(vertices.max(axis=0) - vertices.min(axis=0) > 0.6 * (high - low) - 2.0), region


def test_brain_surface_is_written_when_configured() -> None:
    from tests.dicom_out.dciodvfy import assert_dciodvfy_clean

    study = synthetic_study((12, 40, 40))
    brain = np.zeros(study.labels.shape, bool)
    brain[1:-1, 4:-4, 4:-4] = True
    request = study.request(EncodeOptions(maps=(), mesh_formats={"stl"}, include_brain_surface=True,
                                          brain_mask=brain))
    stl = [item for item in encode_study(request) if item.kind == "mesh-stl-brain"]
    assert len(stl) == 1 and "brain surface" in stl[0].dataset.DocumentTitle
    assert_dciodvfy_clean(stl[0].dataset)


def read_stl_vertices(payload: bytes) -> np.ndarray:
    count = int(np.frombuffer(payload[80:84], "<u4")[0])
    record = np.dtype([("normal", "<f4", (3,)), ("vertices", "<f4", (3, 3)), ("attribute", "<u2")])
    data = np.frombuffer(payload[84:], dtype=record, count=count)
    assert len(payload) == 84 + 50 * count
    return data["vertices"].reshape(-1, 3)


def ball(shape: tuple[int, int, int], radius_voxels: float) -> np.ndarray:
    k, r, c = np.indices(shape)
    centre = (np.asarray(shape) - 1) / 2
    return (k - centre[0]) ** 2 + (r - centre[1]) ** 2 + (c - centre[2]) ** 2 <= radius_voxels ** 2


def test_surface_mesh_of_a_ball_has_its_volume_and_outward_normals() -> None:
    affine = np.diag([1.5, 1.0, 1.0, 1.0])
    affine[:3, 3] = [10.0, -20.0, 5.0]
    mask = ball((40, 40, 40), 12.0)
    mesh = surface_mesh(mask, affine, smoothing=1.0, target_faces=5000)
    assert 0 < len(mesh.faces) <= 5000
    expected = mask.sum() * 1.5
    assert mesh.volume_mm3() == pytest.approx(expected, rel=0.08)
    centre = mesh.vertices.mean(axis=0)
    outward = np.einsum("ij,ij->i", mesh.face_normals(), mesh.vertices[mesh.faces].mean(axis=1) - centre)
    assert np.mean(outward > 0) > 0.99


def test_surface_mesh_is_decimated_to_the_target() -> None:
    mask = ball((64, 64, 64), 28.0)
    mesh = surface_mesh(mask, np.eye(4), smoothing=0.0, target_faces=800, taubin_iterations=0)
    assert 100 < len(mesh.faces) <= 800
    assert mesh.faces.max() < len(mesh.vertices)


def test_surface_mesh_of_an_empty_mask_is_empty() -> None:
    mesh = surface_mesh(np.zeros((4, 5, 6), bool), np.eye(4))
    assert mesh.is_empty and mesh.vertices.shape == (0, 3)


def test_surface_mesh_handles_a_mask_touching_the_border() -> None:
    mask = np.ones((6, 8, 8), bool)
    mesh = surface_mesh(mask, np.eye(4), smoothing=0.0, taubin_iterations=0)
    low, high = mesh.bounds
    assert np.all(low >= -0.5 - 1e-6) and np.all(high <= np.array([5.5, 7.5, 7.5]) + 1e-6)
    assert mesh.volume_mm3() > 0


def test_surface_mesh_rejects_a_2d_mask() -> None:
    with pytest.raises(ValueError, match="mask must be 3D"):
        surface_mesh(np.ones((4, 4), bool), np.eye(4))


def test_binary_stl_header_never_starts_with_solid() -> None:
    mesh = surface_mesh(ball((12, 12, 12), 4.0), np.eye(4), smoothing=0.0)
    payload = stl_bytes(mesh, "solid thing")
    assert not payload.startswith(b"solid")
    assert len(read_stl_vertices(payload)) == 3 * len(mesh.faces)
