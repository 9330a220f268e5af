"""The 3D viewer's prior surface: the compared prior's whole tumour, on the current job's grid.

Two studies of one patient: the prior is the synthetic result folder; the
current one is the same head lying ``SHIFT_MM`` elsewhere in the scanner
(its affine moved), with the oedema grown from 7.5 to 9.5 voxels. The real
comparison (:func:`neuroseg.model.longitudinal.compare`) registers the pair
and :func:`neuroseg.worker.followup.keep_prior_labels` leaves the prior's
labels on the current grid, as the follow-up step does; the viewer API must
then give a prior surface that sits on the current tumour (not where the
prior lay in its own scanner frame) and is smaller than the current one.
"""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest

from neuroseg.model.longitudinal import compare
from neuroseg.worker.followup import PRIOR_LABELS_FILE, keep_prior_labels
from neuroseg.worker.jobstore import JobState, PatientIdentity
from neuroseg.worker.web.viewer_data import ras_to_lps, unpack_arrays
from tests.web.synthetic import AFFINE_RAS, RADII, SPACING, TUMOUR_CENTRE, _distance, labels, manifest, run_to_done

SHIFT_MM = np.array([10.0, -6.0, 4.0])  # LPS
PATIENT = PatientIdentity("PAT-FU-9", "HOSP-A", "19700101", "F")


def _centre_lps(affine_lps: np.ndarray) -> np.ndarray:
    return (affine_lps @ np.array([*TUMOUR_CENTRE, 1.0]))[:3]


@pytest.fixture
def compared(store, web_settings, result_template):
    """(prior job, current job): the current one compared with the prior, as the follow-up step leaves it."""
    results = web_settings.results_dir
    prior, _ = store.create_job(manifest("1.2.826.0.1.901", patient_id=PATIENT.patient_id))
    run_to_done(store, prior, results, result_template)
    current, _ = store.create_job(manifest("1.2.826.0.1.902", patient_id=PATIENT.patient_id))
    run_to_done(store, current, results, result_template)

    prior_lps = ras_to_lps(AFFINE_RAS)
    moved_lps = prior_lps.copy()
    moved_lps[:3, 3] += SHIFT_MM
    moved_ras = ras_to_lps(moved_lps)  # the same sign flip goes both ways
    grown = labels()
    grown[(grown == 0) & (_distance(TUMOUR_CENTRE) <= RADII["ed"] + 2.0)] = 2
    folder = results / current / "viewer"
    for path in folder.glob("*.nii.gz"):  # the current study: the same voxels, placed elsewhere
        data = grown if path.name == "seg.nii.gz" else np.asanyarray(nib.load(str(path)).dataobj)
        nib.save(nib.Nifti1Image(data, moved_ras), str(path))
    image = np.asanyarray(nib.load(str(folder / "image_t1ce.nii.gz")).dataobj).astype(np.float32)
    comparison = compare(labels(), image, prior_lps, grown, image, moved_lps)
    keep_prior_labels(results / current, comparison, moved_lps)
    for job_id, study, date in ((prior, "1.2.826.0.1.901", "20260101"), (current, "1.2.826.0.1.902", "20260401")):
        store.record_time_point(job_id, study, PATIENT, date, "")
    store.set_comparison(current, "compared", "compared", prior_job_id=prior,
                         summary={**comparison.summary(), "prior": {"job_id": prior, "study_date": "20260101"}})
    return prior, current, comparison


def test_the_viewer_gives_the_compared_priors_surface_on_the_current_grid(client, compared, web_settings):
    prior, current, comparison = compared
    manifest_json = client.get(f"/api/jobs/{current}/viewer/manifest").json()
    info = manifest_json["prior"]
    assert info["key"] == "prior" and info["job_id"] == prior and info["study_date"] == "20260101"
    assert info["volume_ml"] == pytest.approx(comparison.regions["wt"].prior_ml, abs=1e-3)
    assert manifest_json["meshes"] == ["ncr", "ed", "et", "head"]  # the prior comes on top, by name

    response = client.get(f"/api/jobs/{current}/viewer/meshes/prior")
    assert response.status_code == 200 and response.headers["content-encoding"] == "gzip"
    header, arrays = unpack_arrays(response.content)
    vertices = arrays["vertices"]
    assert header["name"] == "prior" and len(arrays["faces"]) > 100
    centre_now = _centre_lps(ras_to_lps(AFFINE_RAS)) + SHIFT_MM
    # on the current tumour (within a voxel), not where the prior lay in its own frame (12.3 mm away)
    assert np.linalg.norm(vertices.mean(axis=0) - centre_now) < 2.0
    assert np.linalg.norm(vertices.mean(axis=0) - _centre_lps(ras_to_lps(AFFINE_RAS))) > 10.0
    # the prior's oedema sphere (7.5 voxels of 2-2.5 mm) inside the current, grown one
    prior_radius = np.linalg.norm(vertices - centre_now, axis=1).mean()
    assert prior_radius == pytest.approx(RADII["ed"] * np.mean(SPACING), rel=0.15)
    ed_now = unpack_arrays(client.get(f"/api/jobs/{current}/viewer/meshes/ed").content)[1]["vertices"]
    assert np.linalg.norm(ed_now - centre_now, axis=1).mean() > prior_radius + 2.0
    assert (web_settings.results_dir / current / PRIOR_LABELS_FILE).is_file()


def test_no_prior_surface_without_a_comparison(client, compared, store, web_settings):
    prior, current, _ = compared
    # the prior itself was compared with nothing
    assert client.get(f"/api/jobs/{prior}/viewer/manifest").json()["prior"] is None
    assert client.get(f"/api/jobs/{prior}/viewer/meshes/prior").status_code == 404
    # a later run that did not compare: labels an earlier run left are not shown
    store.set_comparison(current, "not_comparable", "the studies do not line up", prior_job_id=prior)
    assert (web_settings.results_dir / current / PRIOR_LABELS_FILE).is_file()
    assert client.get(f"/api/jobs/{current}/viewer/manifest").json()["prior"] is None
    response = client.get(f"/api/jobs/{current}/viewer/meshes/prior")
    assert response.status_code == 404 and "not compared" in response.json()["detail"]
