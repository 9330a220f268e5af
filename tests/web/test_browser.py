"""A real browser (headless Debian Chromium driven by Playwright) against ``neuroseg admin``.

The test logs in, finds the finished job on the dashboard, opens its 3D viewer,
toggles a region, moves a slice slider, clicks a tumour surface, and checks that
the WebGL canvas drew something and that no page logged a JavaScript error.
Screenshots go to ``test-artifacts/web/``.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

from neuroseg.worker.web.viewer_data import ras_to_lps
from tests.services import REPO_ROOT
from tests.web import synthetic
from tests.web.browser import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.integration]

ARTIFACTS = REPO_ROOT / "test-artifacts" / "web"
PLOT_BACKGROUND = np.array([0x0F, 0x17, 0x20])


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def _drawn_fraction(pixels: np.ndarray, background: np.ndarray) -> float:
    """Share of pixels that differ clearly from ``background``."""
    return float(np.mean(np.abs(pixels - background).sum(axis=2) > 40))


def _login_page_shows_no_patient_data(page) -> None:
    assert "Doe^Jane" not in page.content()
    page.screenshot(path=str(ARTIFACTS / "01-login.png"))


def test_login_dashboard_and_3d_viewer_in_headless_chromium(admin_server, jobs, logged_in_page, page_problems):
    base_url = admin_server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # anonymous: the login page, no patient data; then the login leads back to the dashboard
    page = logged_in_page("/", before_login=_login_page_shows_no_patient_data)

    # the dashboard with the finished job, refreshed by the page script
    page.wait_for_selector(f'tr[data-job-id="{jobs.done}"]')
    row = page.locator(f'tr[data-job-id="{jobs.done}"]')
    assert "Doe^Jane" in row.inner_text() and "done" in row.inner_text()
    assert page.locator(f'tr[data-job-id="{jobs.failed}"] .error-cell').inner_text().startswith("series")
    wait_until(page, "document.getElementById('tile-workers').textContent === '1'")
    page.screenshot(path=str(ARTIFACTS / "02-dashboard.png"), full_page=True)

    # the job page: series with roles and reasons, deliveries
    row.locator("text=Details").click()
    page.wait_for_url(f"**/jobs/{jobs.done}")
    page.wait_for_selector("#series-table tbody tr")
    assert "matches the FLAIR rule" in page.locator("#series-table").inner_text()
    assert "PACS@10.0.0.5:104" in page.locator("#deliveries-table").inner_text()
    page.screenshot(path=str(ARTIFACTS / "03-job.png"), full_page=True)

    # an action from the browser (fetch with the CSRF header, same-origin): retry the failed job
    page.goto(f"{base_url}/jobs/{jobs.failed}")
    page.wait_for_selector("#action-retry:visible")
    assert "missing slice" in page.locator("#job-error").inner_text()
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#action-retry")
    wait_until(page, "document.getElementById('job-state').textContent === 'queued'")
    assert "queued again" in page.locator("#action-message").inner_text()
    page.screenshot(path=str(ARTIFACTS / "03b-job-retried.png"), full_page=True)

    # the 3D viewer
    page.goto(f"{base_url}/jobs/{jobs.done}")
    page.wait_for_selector("#open-viewer:visible")
    page.click("#open-viewer")
    page.wait_for_selector("body[data-viewer-ready='1']", timeout=120_000)
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / "04-viewer.png"), full_page=True)
    plot = page.locator("#plot3d")
    before = _pixels(plot.screenshot())
    assert _drawn_fraction(before, PLOT_BACKGROUND) > 0.02, "the WebGL canvas drew nothing"
    assert page.locator("#legend").inner_text().count("mL") == 3
    assert "NOT a clinical model" in page.locator("#model-card").inner_text()

    # toggle a region off: its trace is hidden and the picture changes
    page.uncheck("#toggle-ed")
    wait_until(page, "document.getElementById('plot3d').data"
                     ".some(t => t.name.startsWith('Edema') && t.visible === false)")
    page.wait_for_timeout(300)
    after_toggle = _pixels(plot.screenshot())
    assert np.abs(after_toggle - before).sum(axis=2).astype(bool).mean() > 0.002
    page.screenshot(path=str(ARTIFACTS / "05-viewer-edema-hidden.png"), full_page=True)

    # move the axial slider: the slice label and the picture change
    label_before = page.locator("#label-axial").inner_text()
    canvas_before = _pixels(page.locator("#canvas-axial").screenshot())
    page.locator("#slider-axial").fill("3")
    wait_until(page, "document.getElementById('label-axial').textContent.startsWith('slice 4 ')")
    assert page.locator("#label-axial").inner_text() != label_before
    canvas_after = _pixels(page.locator("#canvas-axial").screenshot())
    assert np.abs(canvas_after - canvas_before).sum() > 0

    # colour the surfaces by Grad-CAM: a colour bar appears
    page.check("input[name='colour'][value='gradcam']")
    wait_until(page, "document.getElementById('plot3d').data.some(t => t.intensity)")
    page.select_option("#overlay-select", "gradcam_et")
    page.wait_for_timeout(400)
    page.screenshot(path=str(ARTIFACTS / "06-viewer-gradcam.png"), full_page=True)

    # click a tumour surface in 3D: the slices move there
    readout_before = page.locator("#cursor-readout").inner_text()
    box = plot.bounding_box()
    moved = False
    for dx, dy in ((0, 0), (-12, 0), (12, 0), (0, -12), (0, 12), (-25, -10), (25, 10)):
        x = box["x"] + box["width"] / 2 + dx
        y = box["y"] + box["height"] / 2 + dy
        page.mouse.move(x, y)
        page.wait_for_timeout(200)
        page.mouse.click(x, y)
        page.wait_for_timeout(300)
        if page.locator("#cursor-readout").inner_text() != readout_before:
            moved = True
            break
    assert moved, "clicking the tumour surface did not move the slices"
    # the slices moved onto the tumour (the edema's outer surface is 7.5 voxels from its centre)
    readout = page.locator("#cursor-readout").inner_text()
    position = np.array([float(v) for v in readout.split("(", 1)[1].split(")", 1)[0].split(",")])
    centre = (ras_to_lps(synthetic.AFFINE_RAS) @ np.r_[synthetic.TUMOUR_CENTRE, 1.0])[:3]
    assert np.linalg.norm(position - centre) < 7.5 * 2.5 + 3, (readout, centre)
    page.screenshot(path=str(ARTIFACTS / "07-viewer-after-click.png"), full_page=True)
    assert page_problems == [], "\n".join(page_problems)
