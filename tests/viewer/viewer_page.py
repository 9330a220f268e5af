"""Drive OHIF in headless Chromium: open a study, load a series from the study browser, read what it drew."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path

import numpy as np
from PIL import Image

TOUR_SKIP = "Skip all"
FIRST_IMAGE_LOG = "studyToFirstImage"
# a pixel counts as coloured when its channels differ this much (grey MR has r == g == b)
CHROMA_THRESHOLD = 80
CANVAS_PNG = """() => {
  const canvas = document.querySelector('.cornerstone-canvas');
  return canvas ? canvas.toDataURL('image/png') : null;
}"""


class ViewerPage:
    """One browser page on the OHIF viewer of a study, with its console kept."""

    def __init__(self, browser, artifacts: Path, name: str) -> None:  # noqa: ANN001 - a playwright Browser
        self.page = browser.new_page(viewport={"width": 1280, "height": 860})
        self.artifacts, self.name = artifacts, name
        self.console: list[str] = []
        self.page.on("console", lambda message: self.console.append(f"{message.type}: {message.text}"))
        self.page.on("pageerror", lambda error: self.console.append(f"pageerror: {error}"))

    def open(self, url: str, timeout_s: float = 180) -> None:
        """Load the viewer, dismiss the first-visit tour, wait until the first image is displayed."""
        self.page.goto(url)
        deadline = time.monotonic() + timeout_s
        while not self.logged(FIRST_IMAGE_LOG):
            skip = self.page.get_by_text(TOUR_SKIP)
            if skip.count():
                skip.first.click()
            if time.monotonic() > deadline:
                self.screenshot("timeout")
                raise TimeoutError(f"OHIF showed no image after {timeout_s:.0f} s; console:\n{self.console_text()}")
            self.page.wait_for_timeout(500)
        skip = self.page.get_by_text(TOUR_SKIP)
        if skip.count():
            skip.first.click()

    def load_series(self, description: str, timeout_s: float = 120) -> None:
        """Double-click the series' thumbnail in the study browser, as a reader does."""
        thumbnail = self.page.locator('[data-cy^="study-browser-thumbnail"]').filter(has_text=description).first
        thumbnail.wait_for(timeout=timeout_s * 1000)
        thumbnail.dblclick()

    def confirm(self, timeout_s: float = 120) -> bool:
        """Answer OHIF's "Do you want to open this ...?" prompt with Yes; False when none came."""
        button = self.page.get_by_role("button", name="Yes")
        try:
            button.wait_for(timeout=timeout_s * 1000)
        except Exception:  # noqa: BLE001 - playwright's TimeoutError: no prompt
            return False
        button.click()
        return True

    def evaluate(self, expression: str):  # noqa: ANN201 - JSON-like values
        return self.page.evaluate(expression)

    def wait_until(self, expression: str, timeout_s: float, what: str):  # noqa: ANN201
        """Poll a JavaScript function until it returns something truthy; return that."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.page.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                self.screenshot("timeout")
                raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}; console:\n"
                                   f"{self.console_text()}")
            self.page.wait_for_timeout(500)

    def screenshot(self, step: str) -> Path:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        path = self.artifacts / f"{self.name}-{step}.png"
        self.page.screenshot(path=path)
        return path

    def viewport_pixels(self) -> np.ndarray | None:
        """The RGB pixels of the (first) viewport's canvas: what cornerstone drew, without DOM overlays.

        None while OHIF shows no canvas (a viewport being replaced or still loading).
        """
        data_url = self.page.evaluate(CANVAS_PNG)
        if not data_url:
            return None
        png = base64.b64decode(data_url.split(",", 1)[1])
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))

    def coloured_pixels(self) -> int:
        """Coloured pixels in the viewport now (0 without a canvas)."""
        pixels = self.viewport_pixels()
        return 0 if pixels is None else coloured_pixels(pixels)

    def dominant_hue_share(self) -> float:
        """Share of the viewport's coloured pixels in its most common hue (see :func:`dominant_hue_share`)."""
        pixels = self.viewport_pixels()
        return 1.0 if pixels is None else dominant_hue_share(pixels)

    def wait_coloured(self, minimum: int, timeout_s: float) -> int:
        """Coloured pixels once at least ``minimum`` show (or the last count after ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        count = self.coloured_pixels()
        while count < minimum and time.monotonic() < deadline:
            self.page.wait_for_timeout(500)
            count = self.coloured_pixels()
        if count >= minimum:
            self.page.wait_for_timeout(1000)  # let the frame finish drawing
            count = self.coloured_pixels()
        return count

    def logged(self, text: str) -> list[str]:
        return [line for line in self.console if text in line]

    def console_text(self, last: int = 60) -> str:
        return "\n".join(line[:400] for line in self.console[-last:])

    def error_page(self) -> bool:
        return self.page.get_by_text("Something went wrong").count() > 0

    def close(self) -> None:
        self.page.close()


def coloured_pixels(rgb: np.ndarray) -> int:
    """How many pixels have a strong hue (segment or colour-map colours), not grey."""
    channels = rgb.astype(np.int16)
    chroma = channels.max(axis=-1) - channels.min(axis=-1)
    return int((chroma >= CHROMA_THRESHOLD).sum())


def dominant_hue_share(rgb: np.ndarray, bins: int = 12) -> float:
    """Share of the coloured pixels that fall in the most common of ``bins`` hue bins.

    A colour-mapped quantity spreads over the map's scale; a map drawn in one
    saturated colour (close to 1.0) shows values outside the viewer's window.
    """
    from matplotlib.colors import rgb_to_hsv

    channels = rgb.astype(np.int16)
    coloured = (channels.max(axis=-1) - channels.min(axis=-1)) >= CHROMA_THRESHOLD
    if not coloured.any():
        return 1.0
    hues = rgb_to_hsv(rgb[coloured] / 255.0)[:, 0]
    counts = np.histogram(hues, bins=bins, range=(0.0, 1.0))[0]
    return float(counts.max() / counts.sum())
