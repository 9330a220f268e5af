"""The 3D viewer's data: packed binary volumes and meshes in patient coordinates, served compressed."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from neuroseg.worker.web.viewer_data import (
    ResultFolder,
    ResultNotFound,
    job_result_folder,
    pack_arrays,
    ras_to_lps,
    unpack_arrays,
)
from tests.web import synthetic


@pytest.fixture
def result(tmp_path, result_template):
    return ResultFolder(result_template, cache_dir=tmp_path / "cache")


def _patient(affine: np.ndarray, ijk) -> np.ndarray:
    return (affine @ np.r_[np.asarray(ijk, float), 1.0])[:3]


def test_pack_and_unpack_round_trip_every_dtype():
    arrays = {
        "a": np.arange(7, dtype=np.uint8),
        "b": np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3),
        "c": np.arange(9, dtype=np.uint32).reshape(3, 3),
    }
    blob = pack_arrays({"kind": "test"}, arrays)
    assert blob[:4] == b"NSV1"
    header, back = unpack_arrays(blob)
    assert header["kind"] == "test"
    for name, array in arrays.items():
        np.testing.assert_array_equal(back[name], array)
    offsets = [entry["offset"] for entry in header["arrays"]]
    assert all(offset % 4 == 0 for offset in offsets) and (8 + int.from_bytes(blob[4:8], "little")) % 4 == 0
    with pytest.raises(ValueError, match="not a neuroseg viewer blob"):
        unpack_arrays(b"JUNK" + blob[4:])


def test_manifest_gives_the_grid_regions_and_volumes(result):
    manifest = result.manifest()
    assert manifest["shape"] == [40, 36, 28]
    assert manifest["spacing_mm"] == pytest.approx([2.0, 2.0, 2.5])
    report = json.loads((result.folder / "report.json").read_text())
    volumes = {region["key"]: region["volume_ml"] for region in manifest["regions"]}
    assert volumes == pytest.approx({key: report["volumes_ml"][key] for key in ("ncr", "ed", "et")}, abs=0.01)
    assert manifest["totals_ml"]["wt"] == pytest.approx(report["volumes_ml"]["wt"], abs=0.01)
    assert [item["key"] for item in manifest["sequences"]] == ["image_t1", "image_t1ce", "image_t2", "image_flair"]
    assert {item["key"] for item in manifest["overlays"]} >= {
        "seg", "prob_et", "entropy", "mutual_information", "variance_ncr", "gradcam_ed"}
    inverse = np.array(manifest["inverse_affine_lps"]) @ np.array(manifest["affine_lps"])
    np.testing.assert_allclose(inverse, np.eye(4), atol=1e-9)
    # the slices start at the tumour centre, in patient space the same point as in the source grid
    tumour_lps = _patient(ras_to_lps(synthetic.AFFINE_RAS), synthetic.TUMOUR_CENTRE)
    start_lps = _patient(np.array(manifest["affine_lps"]), manifest["start_voxel"])
    assert np.linalg.norm(start_lps - tumour_lps) < 2.6


def test_volumes_are_canonical_uint8_and_keep_patient_positions(result):
    header, arrays = result.volume_arrays("seg")
    data = arrays["data"]
    assert data.dtype == np.uint8 and data.shape == (28, 36, 40)  # (k, j, i)
    affine = np.array(header["affine_lps"])
    # canonical axes: i towards patient right (LPS x decreasing), j anterior (y decreasing), k superior
    assert affine[0, 0] < 0 and affine[1, 1] < 0 and affine[2, 2] > 0
    source = synthetic.labels()
    source_affine = ras_to_lps(synthetic.AFFINE_RAS)
    for ijk in np.argwhere(source == 1)[:5]:
        voxel = np.rint(np.linalg.inv(affine) @ np.r_[_patient(source_affine, ijk), 1])[:3].astype(int)
        assert data[voxel[2], voxel[1], voxel[0]] == 1
    assert set(np.unique(data)) == {0, 1, 2, 4}


def test_scalar_volumes_map_back_to_their_values(result):
    header, arrays = result.volume_arrays("entropy")
    low, high = header["value_range"]
    assert low == 0 and high == pytest.approx(1.2, rel=1e-3)
    assert arrays["data"].max() == 255
    header, _ = result.volume_arrays("mutual_information")
    assert header["kind"] == "uncertainty" and header["value_range"][1] == pytest.approx(0.36, rel=1e-3)
    header, _ = result.volume_arrays("prob_ncr")
    assert header["kind"] == "probability" and header["value_range"] == [0.0, 1.0]
    image_header, image = result.volume_arrays("image_t1ce")
    assert image_header["kind"] == "image" and image["data"].max() == 255 and image["data"].min() == 0


def test_large_volumes_are_strided_to_at_most_256_per_axis(tmp_path):
    import nibabel as nib

    folder = tmp_path / "big"
    folder.mkdir()
    seg = np.zeros((300, 20, 10), np.uint8)
    seg[100:120, 5:10, 3:6] = 4
    nib.save(nib.Nifti1Image(seg, np.eye(4)), str(folder / "seg.nii.gz"))
    header, arrays = ResultFolder(folder).volume_arrays("seg")
    assert header["shape"] == [150, 20, 10] and header["steps"] == [2, 1, 1]
    assert header["spacing_mm"] == pytest.approx([2.0, 1.0, 1.0])
    assert arrays["data"].shape == (10, 20, 150)


def test_region_meshes_lie_on_the_tumour_in_patient_coordinates(result):
    header, arrays = result.mesh_arrays("et")
    vertices = arrays["vertices"].astype(float)
    faces = arrays["faces"]
    assert vertices.shape[1] == 3 and len(faces) > 20 and faces.max() < len(vertices)
    centre = _patient(ras_to_lps(synthetic.AFFINE_RAS), synthetic.TUMOUR_CENTRE)
    distances = np.linalg.norm(vertices - centre, axis=1)
    # the enhancing shell's outer surface, radius 4.5 voxels of 2-2.5 mm (smoothed by the mesher)
    assert 6.0 < np.median(distances) < 13.0
    assert set(header["fields"]) == {"entropy", "variance", "gradcam"}


def test_gradcam_and_uncertainty_are_sampled_at_the_vertices(result):
    _, arrays = result.mesh_arrays("ed")
    vertices = arrays["vertices"].astype(float)
    # the synthetic Grad-CAM is a ramp along source axis 0: value = i / 39, and LPS x = 2 i - 40
    expected = ((vertices[:, 0] + 40.0) / 2.0) / 39.0
    np.testing.assert_allclose(arrays["gradcam"], expected, atol=0.03)
    assert arrays["entropy"].dtype == np.float32 and len(arrays["entropy"]) == len(vertices)
    assert float(arrays["entropy"].max()) > 0.1


def test_head_surface_encloses_the_tumour(result):
    _, head = result.mesh_arrays("head")
    _, tumour = result.mesh_arrays("ed")
    assert len(head["faces"]) > 100
    low, high = head["vertices"].min(axis=0), head["vertices"].max(axis=0)
    assert np.all(tumour["vertices"].min(axis=0) >= low - 1) and np.all(tumour["vertices"].max(axis=0) <= high + 1)


def test_an_empty_region_gives_an_empty_mesh(tmp_path, result_template):
    import shutil

    import nibabel as nib

    folder = tmp_path / "no-ncr"
    shutil.copytree(result_template, folder)
    image = nib.load(str(folder / "seg.nii.gz"))
    seg = np.asarray(image.dataobj).copy()
    seg[seg == 1] = 4
    nib.save(nib.Nifti1Image(seg, image.affine), str(folder / "seg.nii.gz"))
    header, arrays = ResultFolder(folder).mesh_arrays("ncr")
    assert arrays["vertices"].shape == (0, 3) and arrays["faces"].shape == (0, 3)


def test_blobs_are_cached_on_disk_and_invalidated_by_new_results(tmp_path, result_template):
    import shutil

    folder = tmp_path / "job"
    shutil.copytree(result_template, folder)
    cache = tmp_path / "cache"
    first = ResultFolder(folder, cache_dir=cache).volume_blob("seg")
    assert len(list(cache.rglob("*.bin.gz"))) == 1
    unpack_arrays(gzip.decompress(first))
    report = json.loads((folder / "report.json").read_text())
    report["model_version"] = "0.2.0"
    (folder / "report.json").write_text(json.dumps(report) + "\n")
    ResultFolder(folder, cache_dir=cache).volume_blob("seg")
    assert len(list(cache.rglob("*.bin.gz"))) == 2


def test_a_folder_without_results_and_bad_names_are_refused(tmp_path, result):
    with pytest.raises(ResultNotFound, match="no segmentation"):
        ResultFolder(tmp_path)
    with pytest.raises(ResultNotFound, match="unknown volume"):
        result.volume_arrays("../../etc/passwd")
    with pytest.raises(ResultNotFound, match="unknown mesh"):
        result.mesh_arrays("brainstem")
    for bad in ("..", "../x", "a/b", "", ".hidden"):
        with pytest.raises(ResultNotFound, match="not a job id"):
            job_result_folder(tmp_path, bad)


def test_the_viewer_folder_of_the_worker_and_a_plain_result_folder_are_both_found(tmp_path, result_template):
    import shutil

    shutil.copytree(result_template, tmp_path / "job-a" / "viewer")
    shutil.copytree(result_template, tmp_path / "job-b")
    assert job_result_folder(tmp_path, "job-a") == tmp_path / "job-a" / "viewer"
    assert job_result_folder(tmp_path, "job-b") == tmp_path / "job-b"


# --- over HTTP ------------------------------------------------------------------------------------


def test_viewer_endpoints_serve_gzip_binary(client, jobs, web_settings):
    manifest = client.get(f"/api/jobs/{jobs.done}/viewer/manifest").json()
    assert manifest["job_id"] == jobs.done and manifest["meshes"] == ["ncr", "ed", "et", "head"]
    assert manifest["model_version"] == "0.1.0-test"
    assert "NOT a clinical model" in manifest["model"]["intended_use"]
    # a model the hospital brought names its makers and terms where the clinician looks at the result
    assert manifest["model"]["authors"] == "Test Lab, Example Hospital" and manifest["model"]["license"] == "Apache-2.0"
    volume = client.get(f"/api/jobs/{jobs.done}/viewer/volumes/prob_et")
    assert volume.status_code == 200 and volume.headers["content-encoding"] == "gzip"
    header, arrays = unpack_arrays(volume.content)
    assert header["kind"] == "probability" and arrays["data"].shape == (28, 36, 40)
    mesh = client.get(f"/api/jobs/{jobs.done}/viewer/meshes/et")
    assert mesh.status_code == 200 and mesh.headers["content-encoding"] == "gzip"
    assert len(unpack_arrays(mesh.content)[1]["faces"]) > 0
    plain = client.get(f"/api/jobs/{jobs.done}/viewer/volumes/seg", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.content[:4] == b"NSV1"
    # built once, then read from the cache next to the job's results
    assert len(list((web_settings.results_dir / jobs.done / "viewer-cache").rglob("*.bin.gz"))) == 3


def test_viewer_endpoints_404_for_unknown_names_and_unfinished_jobs(client, jobs):
    assert client.get(f"/api/jobs/{jobs.done}/viewer/volumes/passwd").status_code == 404
    assert client.get(f"/api/jobs/{jobs.done}/viewer/meshes/brainstem").status_code == 404
    unfinished = client.get(f"/api/jobs/{jobs.failed}/viewer/manifest")
    assert unfinished.status_code == 404 and "has not finished" in unfinished.json()["detail"]


def test_a_missing_sequence_is_404_not_500(client, jobs, web_settings):
    (web_settings.results_dir / jobs.done / "viewer" / "image_t2.nii.gz").unlink()
    response = client.get(f"/api/jobs/{jobs.done}/viewer/volumes/image_t2")
    assert response.status_code == 404 and "image_t2.nii.gz" in response.json()["detail"]


def test_plotly_is_served_locally_from_the_installed_package(anonymous):
    response = anonymous.get("/vendor/plotly.min.js")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/javascript")
    assert response.headers["content-encoding"] == "gzip"
    assert b"plotly.js" in response.content[:400] and len(response.content) > 1_000_000
    again = anonymous.get("/vendor/plotly.min.js", headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304


def test_a_real_brats_case_gives_meshes_inside_its_tumour_box(tmp_path, shared_data):
    """Real geometry: a BraTS 2018 FLAIR and its whole-tumour label, as a result folder."""
    import nibabel as nib

    case = shared_data / "real-gt" / "brats2018-wt" / "case_0"
    flair = nib.load(str(case / "FLAIR.nii.gz"))
    truth = np.asarray(nib.load(str(case / "GT_W.nii.gz")).dataobj) > 0
    folder = tmp_path / "viewer"
    folder.mkdir()
    nib.save(nib.Nifti1Image(np.where(truth, 2, 0).astype(np.uint8), flair.affine), str(folder / "seg.nii.gz"))
    nib.save(nib.Nifti1Image(np.asarray(flair.dataobj, np.float32), flair.affine), str(folder / "image_flair.nii.gz"))
    result = ResultFolder(folder)
    manifest = result.manifest()
    voxel_ml = abs(np.linalg.det(flair.affine[:3, :3])) / 1000
    edema = next(region for region in manifest["regions"] if region["key"] == "ed")
    assert edema["volume_ml"] == pytest.approx(truth.sum() * voxel_ml, abs=0.01)
    _, mesh = result.mesh_arrays("ed")
    tumour_lps = (ras_to_lps(flair.affine) @ np.c_[np.argwhere(truth), np.ones(truth.sum())].T).T[:, :3]
    low, high = tumour_lps.min(axis=0) - 2, tumour_lps.max(axis=0) + 2
    assert np.all(mesh["vertices"] >= low) and np.all(mesh["vertices"] <= high)
    _, head = result.mesh_arrays("head")
    assert np.all(head["vertices"].min(axis=0) < low) and np.all(head["vertices"].max(axis=0) > high)
    header, image = result.volume_arrays("image_flair")
    assert image["data"].shape == tuple(reversed(header["shape"])) and image["data"].max() == 255
