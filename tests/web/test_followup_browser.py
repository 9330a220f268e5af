"""The per-patient page in headless Chromium: the volume plot is drawn, links both jobs; anonymous callers get nothing."""

from __future__ import annotations

import numpy as np
import pytest

from tests.services import REPO_ROOT
from tests.web.test_browser import _drawn_fraction, _pixels
from tests.web.test_followup_pages import PATIENT, _two_studies

pytestmark = [pytest.mark.browser, pytest.mark.integration]

ARTIFACTS = REPO_ROOT / "test-artifacts" / "web"
REGIONS = ("ncr", "ed", "et", "tc", "wt")


@pytest.fixture
def served_jobs(store) -> tuple[str, str]:
    """Two finished studies of one patient, the second compared with the first (WT 10 -> 16 ml)."""
    return _two_studies(store)


def _points(page, region: str) -> list[tuple[float, float]]:
    text = page.locator(f'#volume-plot polyline[data-region="{region}"]').get_attribute("points")
    return [tuple(float(value) for value in pair.split(",")) for pair in text.split()]


def test_patient_page_draws_the_plot_in_chromium(admin_server, served_jobs, chromium, logged_in_page,
                                                 page_problems):
    first, second = served_jobs
    path = f"/patients/{PATIENT.key}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    # anonymous: the API answers 401 and the page sends the browser to the login form, with no patient data
    stranger = chromium.new_context()
    try:
        response = stranger.request.get(f"{admin_server}/api/patients/{PATIENT.key}/timeline")
        assert response.status == 401
        assert "time_points" not in response.text()
        anonymous_page = stranger.new_page()
        anonymous_page.goto(admin_server + path)
        assert "/login" in anonymous_page.url and "volume-plot" not in anonymous_page.content()
    finally:
        stranger.close()

    page = logged_in_page(path)
    assert page.url.endswith(path)
    page.wait_for_selector("#volume-plot", state="visible")  # a flat line has no height: Playwright calls it hidden
    assert sorted(page.locator("#volume-plot polyline.region-line").evaluate_all(
        "lines => lines.map(line => line.dataset.region)")) == sorted(REGIONS)
    for region in REGIONS:
        assert len(_points(page, region)) == 2  # one point per study
    (x_first, y_first), (x_second, y_second) = _points(page, "wt")
    assert x_second > x_first and y_second < y_first  # later, and higher: WT grew from 10 to 16 ml
    assert _points(page, "ncr")[0][1] == _points(page, "ncr")[1][1]  # NCR stayed at 1 ml
    # the browser laid the plot out and painted it: a real box with coloured lines on it
    box = page.locator("#volume-plot").bounding_box()
    assert box["width"] > 200 and box["height"] > 100
    shot = page.locator("#volume-plot").screenshot(path=str(ARTIFACTS / "06-patient-plot.png"))
    pixels = _pixels(shot)
    background = np.median(pixels.reshape(-1, 3), axis=0)
    assert 0.002 < _drawn_fraction(pixels, background) < 0.5
    page.screenshot(path=str(ARTIFACTS / "06-patient.png"), full_page=True)
    table = page.locator("#time-points").inner_text()
    assert "20260101" in table and "20260401" in table and PATIENT.patient_id not in page.content()
    assert "research use, not a response assessment" in page.content()

    # logged in, the API gives the same time line to the browser's session
    api = page.request.get(f"{admin_server}/api/patients/{PATIENT.key}/timeline")
    assert api.status == 200
    assert [point["job_id"] for point in api.json()["time_points"]] == [first, second]

    # the prior's link in the table opens the prior job
    page.locator(f'#time-points a[href="/jobs/{first}"]').first.click()
    page.wait_for_url(f"**/jobs/{first}")
    assert page_problems == []
