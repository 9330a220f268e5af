"""The 3D viewer in headless Chromium draws the compared prior's surface translucent, and its toggle hides it."""

from __future__ import annotations

import numpy as np
import pytest

from tests.web.browser import wait_until
from tests.web.test_browser import PLOT_BACKGROUND, _drawn_fraction, _pixels
from tests.web.test_viewer_prior import compared  # noqa: F401 - the fixture of the two compared studies

pytestmark = [pytest.mark.browser, pytest.mark.integration]

PRIOR_TRACE = "document.getElementById('plot3d').data.find(t => t.name.startsWith('Prior whole tumour'))"


@pytest.fixture
def served_jobs(compared):  # noqa: F811 - the admin server serves the compared pair
    return compared


def test_the_viewer_draws_the_prior_surface_translucent_with_a_toggle(served_jobs, logged_in_page, page_problems):
    prior, current, comparison = served_jobs
    page = logged_in_page(f"/jobs/{current}/viewer")
    page.wait_for_selector("body[data-viewer-ready='1']", timeout=120_000)
    wait_until(page, PRIOR_TRACE)
    trace = page.evaluate(f"() => {{ const t = {PRIOR_TRACE}; return {{name: t.name, opacity: t.opacity, "
                          "visible: t.visible, vertices: t.x.length}; }")
    assert trace["name"] == "Prior whole tumour (20260101)" and trace["visible"] is True
    assert trace["opacity"] == pytest.approx(0.3) and trace["vertices"] > 100
    legend = page.locator("#legend").inner_text()
    assert "Prior whole tumour (20260101)" in legend
    assert f"{comparison.regions['wt'].prior_ml:.1f} mL" in legend
    plot = page.locator("#plot3d")
    page.wait_for_timeout(500)
    before = _pixels(plot.screenshot())
    assert _drawn_fraction(before, PLOT_BACKGROUND) > 0.02, "the WebGL canvas drew nothing"

    page.uncheck("#toggle-prior")
    wait_until(page, f"{PRIOR_TRACE}.visible === false")
    page.wait_for_timeout(300)
    after = _pixels(plot.screenshot())
    assert np.abs(after - before).sum(axis=2).astype(bool).mean() > 0.002  # the picture lost the prior
    assert page_problems == []
