"""Fixtures of the admin app tests: settings with a token, a filled job store, a logged-in client."""

from __future__ import annotations

import warnings

import pytest

from neuroseg.worker.jobstore import JobStore
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
