"""Jobs flagged by the quality estimate: the API filter, /metrics, and the dashboard badge and filter in Chromium."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.web.browser import wait_until
from tests.web.synthetic import fill_store, manifest, run_to_done

FLAGGED = {"expected_dice": {"WT": 0.55, "TC": 0.4, "ET": None}, "review_recommended": True,
           "reasons": ["FLAIR looks like noise: neighbouring voxels correlate 0.02 (clean images about 0.9)"]}
CLEAR = {"expected_dice": {"WT": 0.9, "TC": 0.85, "ET": 0.8}, "review_recommended": False, "reasons": []}


def flag_jobs(store, results_dir, template):
    """The four jobs of ``fill_store`` (the done one not flagged) plus a second done job that is flagged."""
    jobs = fill_store(store, results_dir, template)
    store.set_quality(jobs.done, CLEAR)
    flagged, _ = store.create_job(manifest("1.2.826.0.1.500", patient_name="Flag^Fiona", patient_id="PAT-005"))
    run_to_done(store, flagged, None)
    store.set_quality(flagged, FLAGGED)
    return jobs, flagged


def test_api_filters_flagged_jobs_and_metrics_count_them(client, anonymous, store, web_settings, result_template):
    jobs, flagged = flag_jobs(store, web_settings.results_dir, result_template)
    only = client.get("/api/jobs", params={"review": "true"}).json()["jobs"]
    assert [job["id"] for job in only] == [flagged]
    assert only[0]["review_recommended"] is True
    others = {job["id"] for job in client.get("/api/jobs", params={"review": "false"}).json()["jobs"]}
    assert others == {jobs.done, jobs.failed, jobs.queued, jobs.running}  # not assessed counts as not flagged
    everyone = client.get("/api/jobs").json()["jobs"]
    assert len(everyone) == 5
    detail = client.get(f"/api/jobs/{flagged}").json()
    assert detail["quality"]["reasons"] == FLAGGED["reasons"] and detail["state"] == "done"  # still delivered
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(anonymous.get("/metrics").text) for s in family.samples}
    assert samples[("neuroseg_jobs_review_recommended", ())] == 1


@pytest.fixture
def served_jobs(store, web_settings, result_template):
    """The browser test's server holds the flagged job too (overrides the fixture of tests/web/conftest.py)."""
    return flag_jobs(store, web_settings.results_dir, result_template)


@pytest.mark.browser
@pytest.mark.integration
def test_dashboard_badges_and_filters_flagged_jobs_in_headless_chromium(served_jobs, logged_in_page, page_problems):
    jobs, flagged = served_jobs
    page = logged_in_page("/")
    page.wait_for_selector(f'tr[data-job-id="{flagged}"]')
    wait_until(page, "document.querySelectorAll('#jobs-table tbody tr').length === 5")
    # the badge on the flagged job only
    assert page.locator(f'tr[data-job-id="{flagged}"] .badge-review').inner_text() == "review"
    assert page.locator(f'tr[data-job-id="{jobs.done}"] .badge-review').count() == 0
    assert page.locator("#jobs-table .badge-review").count() == 1
    # the filter keeps the flagged job alone, then the others
    page.select_option("#filter-review", "true")
    wait_until(page, "document.querySelectorAll('#jobs-table tbody tr').length === 1")
    assert page.locator("#jobs-table tbody tr").get_attribute("data-job-id") == flagged
    page.select_option("#filter-review", "false")
    wait_until(page, "document.querySelectorAll('#jobs-table tbody tr').length === 4")
    assert page.locator(f'tr[data-job-id="{flagged}"]').count() == 0
    page.select_option("#filter-review", "")
    wait_until(page, "document.querySelectorAll('#jobs-table tbody tr').length === 5")
    assert not page_problems, page_problems
