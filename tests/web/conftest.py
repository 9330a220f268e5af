"""Fixtures of the admin app tests: settings with a token, a filled job store, a logged-in client,
and for the browser tests ``neuroseg admin`` in a subprocess with a logged-in Chromium page."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from neuroseg.worker.jobstore import JobStore
from tests.services import free_port, wait_for_port
from tests.web.browser import CHROMIUM_ARGS, VIEWPORT, chromium_binary
from tests.web.synthetic import Jobs, fill_store, write_result_folder

ADMIN_TOKEN = "test-admin-token-5f1c2a9e7d"


@pytest.fixture
def web_settings(make_settings):
    return make_settings(admin_token=ADMIN_TOKEN, job_stale_seconds=3600)


@pytest.fixture
def store(web_settings) -> JobStore:
    return JobStore.from_settings(web_settings)


@pytest.fixture(scope="session")
def result_template(tmp_path_factory):
    """One synthetic result folder per test session, copied for each done job."""
    return write_result_folder(tmp_path_factory.mktemp("result-template") / "results")


@pytest.fixture
def jobs(store, web_settings, result_template) -> Jobs:
    return fill_store(store, web_settings.results_dir, result_template)


def make_app(settings):
    from neuroseg.worker.web import create_app

    app = create_app(settings)
    app.state.monitor.inspect_timeout_s = 0.2  # no worker runs in these tests: do not wait long for one
    return app


@pytest.fixture
def app(web_settings):
    return make_app(web_settings)


def _test_client(app):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    return TestClient(app, base_url="http://testserver")


@pytest.fixture
def anonymous(app):
    with _test_client(app) as client:
        yield client


def log_in(client, token: str = ADMIN_TOKEN, next_path: str = "/"):
    """Log in through the form like a browser; returns the final response."""
    page = client.get("/login")
    csrf = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    return client.post("/login", data={"csrf": csrf, "next": next_path, "token": token},
                       headers={"Origin": "http://testserver"}, follow_redirects=False)


def csrf_of(client) -> str:
    page = client.get("/")
    return page.text.split('<meta name="csrf-token" content="', 1)[1].split('"', 1)[0]


@pytest.fixture
def client(app):
    """A TestClient logged in through the login form; ``client.csrf`` is its CSRF token."""
    with _test_client(app) as test_client:
        response = log_in(test_client)
        assert response.status_code == 303, response.text
        test_client.csrf = csrf_of(test_client)
        yield test_client


# --- the browser tests: headless Debian Chromium driven by Playwright ------------------------------------------------


@pytest.fixture
def served_jobs(jobs):
    """What the job store holds when ``admin_server`` starts: the jobs of ``fill_store``.

    A test module that needs other jobs overrides this fixture; whatever it
    returns, the store is filled before the server starts.
    """
    return jobs


@pytest.fixture
def admin_server(tmp_path, web_settings, served_jobs) -> Iterator[str]:
    """``neuroseg admin`` in a subprocess on a free port over the filled job store; yields its base URL."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("NEUROSEG_")}
    env.update(NEUROSEG_DATA_DIR=str(web_settings.data_dir), NEUROSEG_ADMIN_TOKEN=ADMIN_TOKEN,
               NEUROSEG_ADMIN_PORT=str(port), NEUROSEG_JOB_STALE_SECONDS="3600")
    log_path = tmp_path / "admin.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "neuroseg.worker", "admin"], env=env,
                                   stdout=log_file, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        wait_for_port(port, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        print(log_path.read_text(errors="replace")[-3000:])


@pytest.fixture
def page_problems() -> list[str]:
    """Console errors and uncaught JavaScript errors of the pages ``logged_in_page`` opened; tests assert none."""
    return []


@pytest.fixture
def chromium() -> Iterator[Any]:
    """A headless Chromium (Playwright ``Browser``), closed after the test."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_binary(), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def logged_in_page(chromium, admin_server, page_problems) -> Callable[..., Any]:
    """Open a page of ``admin_server`` at a path, logged in through the login form like a person would.

    Call it as ``logged_in_page("/jobs/<id>")``; it returns the Playwright
    ``Page`` once the login has led back to that path. Each call opens a new
    browser context, so it starts logged out. ``before_login`` is called with
    the page while it shows the login form (to check or photograph it).
    """

    def open_page(path: str = "/", before_login: Callable[[Any], None] | None = None) -> Any:
        page = chromium.new_page(viewport=VIEWPORT)
        page.on("console", lambda message: page_problems.append(f"console {message.type}: {message.text}")
                if message.type == "error" else None)
        page.on("pageerror", lambda error: page_problems.append(f"page error: {error}"))
        page.set_default_timeout(60_000)
        page.goto(admin_server + path)
        assert "/login" in page.url, f"{path} did not ask for a login (at {page.url})"
        if before_login is not None:
            before_login(page)
        page.fill("#token", ADMIN_TOKEN)
        page.click("#login-button")
        page.wait_for_url(lambda url: "/login" not in url)
        return page

    return open_page
