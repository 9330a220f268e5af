"""Admin token rules and the per-address throttle of failed logins and bearer tokens."""

from __future__ import annotations

import logging
import warnings

import pytest

from neuroseg.worker.cli import main
from neuroseg.worker.settings import SettingsError
from neuroseg.worker.web.auth import MIN_TOKEN_LENGTH, FailedAttemptThrottle
from tests.web.conftest import ADMIN_TOKEN, log_in, make_app

ATTACKER = ("203.0.113.7", 40000)
COLLEAGUE = ("198.51.100.20", 40001)


def _client_from(app, address: tuple[str, int]):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    return TestClient(app, base_url="http://testserver", client=address)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- the token -----------------------------------------------------------------------------------


def test_a_short_admin_token_is_refused_and_the_message_says_how_to_make_one(make_settings):
    with pytest.raises(SettingsError) as raised:
        make_app(make_settings(admin_token="six-ch"))
    message = str(raised.value)
    assert "NEUROSEG_ADMIN_TOKEN has 6 characters" in message and f"at least {MIN_TOKEN_LENGTH}" in message
    assert 'python -c "import secrets; print(secrets.token_urlsafe(32))"' in message
    assert "six-ch" not in message, "the refusal must not echo the secret"


def test_a_token_of_the_minimum_length_is_accepted(make_settings):
    app = make_app(make_settings(admin_token="x" * MIN_TOKEN_LENGTH))
    assert app.state.authenticator.enabled


def test_neuroseg_admin_refuses_to_start_with_a_short_token_in_one_line(monkeypatch, capsys):
    monkeypatch.setenv("NEUROSEG_ADMIN_TOKEN", "s3cret")
    assert main(["admin"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error
    assert error.startswith("neuroseg: configuration error: NEUROSEG_ADMIN_TOKEN has 6 characters")
    assert "secrets.token_urlsafe(32)" in error and "s3cret" not in error


# --- throttling ----------------------------------------------------------------------------------


def test_wrong_bearer_tokens_from_one_address_are_throttled(app, caplog):
    limit = app.state.throttle.max_failures
    caplog.set_level(logging.WARNING, logger="neuroseg.worker.web")
    with _client_from(app, ATTACKER) as attacker:
        codes = [attacker.get("/api/jobs", headers=_bearer(f"guess-{n:02d}")).status_code for n in range(20)]
        assert codes == [401] * limit + [429] * (20 - limit)
        blocked = attacker.get("/api/jobs", headers=_bearer(ADMIN_TOKEN))
        assert blocked.status_code == 429, "while throttled, even the right token waits"
        assert 0 < int(blocked.headers["retry-after"]) <= app.state.throttle.window_seconds
        assert "too many failed logins" in blocked.json()["detail"]
        # what load balancers and Prometheus poll stays open, with or without a header
        assert attacker.get("/health").status_code == 200
        assert attacker.get("/metrics", headers=_bearer("guess")).status_code == 200
    failures = [record.getMessage() for record in caplog.records if "failed admin authentication" in record.getMessage()]
    assert len(failures) == limit and all(ATTACKER[0] in message for message in failures)


def test_another_address_is_not_affected_by_an_attackers_failures(app):
    with _client_from(app, ATTACKER) as attacker:
        for n in range(app.state.throttle.max_failures + 5):
            attacker.get("/api/jobs", headers=_bearer(f"guess-{n}"))
        assert attacker.get("/api/jobs", headers=_bearer("guess")).status_code == 429
    with _client_from(app, COLLEAGUE) as colleague:
        good = colleague.get("/api/jobs", headers=_bearer(ADMIN_TOKEN))
        assert good.status_code == 200 and "jobs" in good.json()
        assert colleague.get("/api/jobs", headers=_bearer("typo")).status_code == 401


def test_failed_form_logins_are_throttled(app):
    app.state.throttle.max_failures = 3  # each wrong login also sleeps; keep the test short
    with _client_from(app, ATTACKER) as attacker:
        codes = [log_in(attacker, token=f"guess-{n}").status_code for n in range(5)]
        assert codes == [401, 401, 401, 429, 429]
        assert log_in(attacker).status_code == 429
    with _client_from(app, COLLEAGUE) as colleague:
        assert log_in(colleague).status_code == 303


def test_requests_without_credentials_are_not_counted(app):
    with _client_from(app, ATTACKER) as anonymous:
        codes = {anonymous.get("/api/jobs").status_code for _ in range(app.state.throttle.max_failures + 3)}
        assert codes == {401}
        assert anonymous.get("/api/jobs", headers=_bearer(ADMIN_TOKEN)).status_code == 200


def test_the_throttle_forgets_failures_older_than_its_window():
    now = [1000.0]
    throttle = FailedAttemptThrottle(max_failures=3, window_seconds=60, clock=lambda: now[0])
    for _ in range(3):
        throttle.record_failure("10.0.0.1")
        now[0] += 10
    assert throttle.retry_after("10.0.0.1") == 30  # now 1030; the first failure leaves the window at 1060
    assert throttle.retry_after("10.0.0.2") == 0
    now[0] = 1060.0
    assert throttle.retry_after("10.0.0.1") == 0


def test_neuroseg_serve_refuses_a_short_token_before_starting_anything(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("NEUROSEG_ADMIN_TOKEN", "s3cret")
    assert main(["serve"]) == 2
    assert capsys.readouterr().err.strip().startswith(
        "neuroseg: configuration error: NEUROSEG_ADMIN_TOKEN has 6 characters")
    assert not (tmp_path / "neuroseg-data" / "spool").exists(), "nothing was started"
