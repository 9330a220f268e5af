"""The per-patient page: the time line plot with one line per region, links to both jobs, no anonymous access."""

from __future__ import annotations

from neuroseg.worker.jobstore import JobState, PatientIdentity
from tests.worker.test_jobstore import make_manifest

PATIENT = PatientIdentity("P7", "HOSP-A", "19600202", "M")


def _two_studies(store) -> tuple[str, str]:
    ids = []
    for study, date, wt in (("7.1", "20260101", 10.0), ("7.2", "20260401", 16.0)):
        job_id, _ = store.create_job(make_manifest(study))
        store.claim(job_id, worker="w:1")
        store.record_time_point(job_id, study, PATIENT, date, "")
        store.set_model(job_id, model_name="m", model_version="1", device="cpu", sequences_used=["t1ce"],
                        volumes_ml={"ncr": 1.0, "ed": wt - 4.0, "et": 3.0, "tc": 4.0, "wt": wt})
        store.finish(job_id, JobState.DONE)
        ids.append(job_id)
    store.set_comparison(ids[1], "compared", "ET stable", prior_job_id=ids[0],
                         summary={"et_class": {"category": "stable"}})
    return ids[0], ids[1]


def test_patient_page_plots_each_region_and_links_both_jobs(client, store):
    first, second = _two_studies(store)
    response = client.get(f"/jobs/{second}/followup", follow_redirects=True)
    assert response.status_code == 200
    html = response.text
    assert html.count('class="region-line"') == 5
    for region in ("ncr", "ed", "et", "tc", "wt"):
        assert f'data-region="{region}"' in html
    assert f'href="/jobs/{first}"' in html and f'href="/jobs/{second}"' in html
    assert "research use, not a response assessment" in html and "P7" not in html
    api = client.get(f"/api/patients/{PATIENT.key}/timeline").json()
    assert [point["volumes_ml"]["wt"] for point in api["time_points"]] == [10.0, 16.0]
    assert api["time_points"][1]["prior_job_id"] == first


def test_patient_api_and_page_refuse_anonymous_callers(anonymous, store):
    _two_studies(store)
    assert anonymous.get(f"/api/patients/{PATIENT.key}/timeline").status_code == 401
    page = anonymous.get(f"/patients/{PATIENT.key}", follow_redirects=False)
    assert page.status_code in (302, 303, 307) and "/login" in page.headers["location"]
