"""Headless Debian Chromium for the browser tests (the admin app's pages here, OHIF in tests/viewer)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
    "--disable-dev-shm-usage",
]
VIEWPORT = {"width": 1500, "height": 1000}


def chromium_binary() -> str:
    """The Debian chromium binary (the real one, not the shell wrapper, when it is there)."""
    real = Path("/usr/lib/chromium/chromium")
    if real.is_file():
        return str(real)
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium is not installed; .ci/run installs it (Debian package 'chromium')")
    return found


def wait_until(page: Any, expression: str, timeout_s: float = 60.0) -> None:
    """Poll a JavaScript expression with page.evaluate (wait_for_function needs eval, which our CSP forbids)."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(f"() => Boolean({expression})"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {expression}")
        page.wait_for_timeout(100)
