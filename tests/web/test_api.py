"""The admin app's JSON API, pages, login, CSRF and security headers, on a real SQLite job store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from neuroseg.worker.jobstore import JobState
from neuroseg.worker.web.auth import SESSION_COOKIE, Authenticator
from tests.web.conftest import ADMIN_TOKEN, _test_client, log_in, make_app
from tests.web.synthetic import fill_store

API_GETS = ("/api/overview", "/api/jobs", "/api/jobs/{job}", "/api/studies/1.2.826.0.1.100",
            "/api/jobs/{job}/viewer/manifest", "/api/jobs/{job}/viewer/volumes/seg",
            "/api/jobs/{job}/viewer/meshes/et")
API_POSTS = ("/api/jobs/{job}/retry", "/api/jobs/{job}/redeliver", "/api/jobs/{job}/cancel",
             "/api/jobs/{job}/reprocess")
PAGES = ("/", "/jobs/{job}", "/jobs/{job}/viewer", "/studies/1.2.826.0.1.100")
PATIENT_DATA = ("Doe^Jane", "PAT-001", "Roe^Richard")


# --- access control -----------------------------------------------------------------------------


def test_api_answers_401_without_login(anonymous, jobs):
    for path in API_GETS:
        response = anonymous.get(path.format(job=jobs.done))
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"] == "Bearer"
        assert not any(item in response.text for item in PATIENT_DATA)
    for path in API_POSTS:
        assert anonymous.post(path.format(job=jobs.failed), json={}).status_code == 401, path


def test_pages_redirect_anonymous_users_to_the_login(anonymous, jobs):
    for path in PAGES:
        response = anonymous.get(path.format(job=jobs.done), follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/login?next=%2F")
        assert not any(item in response.text for item in PATIENT_DATA)


def test_api_accepts_the_token_as_bearer_and_rejects_a_wrong_one(anonymous, jobs):
    good = anonymous.get("/api/jobs", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert good.status_code == 200 and len(good.json()["jobs"]) == 4
    bad = anonymous.get("/api/jobs", headers={"Authorization": "Bearer not-the-token"})
    assert bad.status_code == 401


def test_without_a_configured_token_nobody_sees_patient_data(make_settings, store, web_settings):
    fill_store(store, web_settings.results_dir)
    app = make_app(make_settings())  # same data dir, no admin token
    with _test_client(app) as client:
        page = client.get("/login")
        assert page.status_code == 503
        assert "NEUROSEG_ADMIN_TOKEN" in page.text and "<form" not in page.text
        api = client.get("/api/jobs", headers={"Authorization": "Bearer anything"})
        assert api.status_code == 403 and "NEUROSEG_ADMIN_TOKEN" in api.json()["detail"]
        dashboard = client.get("/", follow_redirects=True)
        assert "NEUROSEG_ADMIN_TOKEN" in dashboard.text
        assert not any(item in dashboard.text + api.text for item in PATIENT_DATA)
        assert client.get("/health").status_code == 200
        assert client.get("/metrics").status_code == 200


# --- login ---------------------------------------------------------------------------------------


def test_login_sets_a_strict_httponly_session_cookie_and_redirects_to_next(anonymous):
    response = log_in(anonymous, next_path="/jobs/abc")
    assert response.status_code == 303 and response.headers["location"] == "/jobs/abc"
    cookie = next(value for key, value in response.headers.multi_items()
                  if key == "set-cookie" and value.startswith(SESSION_COOKIE))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie


def test_login_with_a_wrong_token_is_refused(anonymous):
    response = log_in(anonymous, token="guess")
    assert response.status_code == 401
    assert "not correct" in response.text
    assert SESSION_COOKIE not in response.headers.get("set-cookie", "")


def test_login_without_the_form_token_is_refused(anonymous):
    anonymous.get("/login")
    response = anonymous.post("/login", data={"csrf": "forged", "token": ADMIN_TOKEN, "next": "/"},
                              follow_redirects=False)
    assert response.status_code == 400
    assert SESSION_COOKIE not in response.headers.get("set-cookie", "")


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "\\\\evil", "javascript:alert(1)",
                                    "/\t/evil.example", "/\\evil.example", " //evil.example"])
def test_login_never_redirects_off_site(anonymous, target):
    response = log_in(anonymous, next_path=target)
    assert response.status_code == 303 and response.headers["location"] == "/"


def test_logout_clears_the_session(client):
    response = client.post("/logout", data={"csrf": client.csrf}, headers={"Origin": "http://testserver"},
                           follow_redirects=False)
    assert response.status_code == 303
    client.cookies.delete(SESSION_COOKIE)
    assert client.get("/api/jobs").status_code == 401


def test_session_cookies_are_signed_and_expire():
    authenticator = Authenticator(ADMIN_TOKEN, max_age_seconds=60)
    session = authenticator.new_session()
    value = authenticator.dumps(session)
    loaded = authenticator.loads(value)
    assert (loaded.user, loaded.csrf_token) == (session.user, session.csrf_token)
    payload, stamp, signature = value.split(".")  # itsdangerous: payload.timestamp.signature
    assert authenticator.loads(f"{payload}.{stamp}.{signature[::-1]}") is None
    assert authenticator.loads(f"{payload[:-2]}xx.{stamp}.{signature}") is None
    assert authenticator.loads(value, now=loaded.issued_at + 61) is None
    assert Authenticator("another-token-123456789").loads(value) is None
    assert Authenticator(None).loads(value) is None and not Authenticator("").enabled


# --- CSRF ----------------------------------------------------------------------------------------


def test_actions_with_the_session_cookie_need_the_csrf_header(client, jobs):
    missing = client.post(f"/api/jobs/{jobs.failed}/retry")
    assert missing.status_code == 403 and "X-CSRF-Token" in missing.json()["detail"]
    wrong = client.post(f"/api/jobs/{jobs.failed}/retry", headers={"X-CSRF-Token": "nope"})
    assert wrong.status_code == 403
    foreign = client.post(f"/api/jobs/{jobs.failed}/retry",
                          headers={"X-CSRF-Token": client.csrf, "Origin": "https://evil.example"})
    assert foreign.status_code == 403 and "cross-origin" in foreign.json()["detail"]


def test_actions_with_the_bearer_token_need_no_csrf_header(anonymous, jobs, store):
    response = anonymous.post(f"/api/jobs/{jobs.queued}/cancel", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert response.status_code == 200
    assert store.job_state(jobs.queued) == "cancelled"


# --- security headers ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/login", "/health", "/static/app.css", "/api/jobs", "/vendor/plotly.min.js",
                                  "/jobs/{job}/viewer"])
def test_every_response_has_the_security_headers(client, jobs, path):
    headers = client.get(path.format(job=jobs.done)).headers
    script_src = headers["content-security-policy"].split("script-src", 1)[1].split(";")[0]
    assert script_src.strip() == "'self'"  # no inline script, no eval, no CDN
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "same-origin"


def test_pages_carry_no_inline_script(client, jobs):
    for path in ("/", f"/jobs/{jobs.done}", f"/jobs/{jobs.done}/viewer", "/login"):
        html = client.get(path).text
        for chunk in html.split("<script")[1:]:
            assert chunk.lstrip().startswith("src="), f"inline script on {path}"
        assert "onclick=" not in html and "javascript:" not in html


# --- pages ----------------------------------------------------------------------------------------------


def test_logged_in_pages_render(client, jobs):
    dashboard = client.get("/")
    assert dashboard.status_code == 200 and "Workers online" in dashboard.text
    job_page = client.get(f"/jobs/{jobs.done}")
    assert job_page.status_code == 200 and f'data-job-id="{jobs.done}"' in job_page.text
    viewer = client.get(f"/jobs/{jobs.done}/viewer")
    assert viewer.status_code == 200 and "Doe^Jane" in viewer.text
    assert "/vendor/plotly.min.js" in viewer.text
    study = client.get("/studies/1.2.826.0.1.100", follow_redirects=False)
    assert study.status_code == 303 and study.headers["location"] == f"/jobs/{jobs.done}"


def test_flower_link_is_shown_when_configured(make_settings, jobs):
    app = make_app(make_settings(admin_token=ADMIN_TOKEN, flower_url="http://flower.local:5555"))
    with _test_client(app) as client:
        log_in(client)
        assert 'href="http://flower.local:5555"' in client.get("/").text
        assert client.get("/api/overview").json()["flower_url"] == "http://flower.local:5555"


BAD_IDS = ("0" * 32, "nope", "..%2F..%2Fetc", "%00", "a" * 300, "1.2.3%3Cscript%3E")


def test_pages_answer_404_for_unknown_ids(client, jobs):
    for path in ("/jobs/{bad}", "/jobs/{bad}/viewer", "/studies/{bad}"):
        for bad in BAD_IDS:
            response = client.get(path.format(bad=bad), follow_redirects=False, headers={"Accept": "text/html"})
            assert response.status_code == 404, (path, bad)
            assert "Not found" in response.text and "<script>" not in response.text


def test_viewer_page_of_a_job_without_results_is_404(client, jobs):
    response = client.get(f"/jobs/{jobs.failed}/viewer")
    assert response.status_code == 404 and "has not finished" in response.text


# --- reads ----------------------------------------------------------------------------------------------


def test_overview_shows_queue_depth_counts_and_the_running_worker(client, jobs):
    data = client.get("/api/overview").json()
    assert data["broker_ok"] is True and data["queue_depth"] == 0
    assert data["jobs_by_state"]["done"] == 1 and data["jobs_by_state"]["failed"] == 1
    assert data["waiting_jobs"] == 1 and data["running_jobs"] == 1
    worker = next(item for item in data["workers"] if item["current_jobs"])
    assert worker["name"] == "gpu-node-2:777" and worker["source"] == "job store"
    assert worker["current_jobs"][0]["id"] == jobs.running and worker["current_jobs"][0]["percent"] == 40.0


def test_jobs_are_listed_newest_first_with_stage_durations(client, jobs):
    listed = client.get("/api/jobs").json()["jobs"]
    assert [item["id"] for item in listed] == [jobs.running, jobs.queued, jobs.failed, jobs.done]
    done = listed[-1]
    assert done["patient_name"] == "Doe^Jane" and done["state"] == "done" and done["has_results"] is True
    assert set(done["stage_durations"]) == {"queued", "loading", "preprocessing", "inference", "explaining",
                                            "encoding", "delivering"}
    running = listed[0]
    assert running["stage"] == "inference" and running["percent"] == 40.0 and running["attempts"] == 1
    assert "inference" in running["stage_durations"]
    failed = listed[2]
    assert "missing slice" in failed["error"] and failed["has_results"] is False


def test_jobs_filter_by_state_and_date(client, jobs):
    failed = client.get("/api/jobs", params={"state": "failed"}).json()["jobs"]
    assert [item["id"] for item in failed] == [jobs.failed]
    several = client.get("/api/jobs", params=[("state", "done"), ("state", "queued")]).json()["jobs"]
    assert {item["id"] for item in several} == {jobs.done, jobs.queued}
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    assert client.get("/api/jobs", params={"since": tomorrow}).json()["jobs"] == []
    assert len(client.get("/api/jobs", params={"until": tomorrow}).json()["jobs"]) == 4
    assert len(client.get("/api/jobs", params={"limit": 2, "offset": 1}).json()["jobs"]) == 2


@pytest.mark.parametrize("params", [{"state": "exploded"}, {"since": "yesterday"}, {"limit": 0}])
def test_bad_list_filters_answer_422(client, jobs, params):
    assert client.get("/api/jobs", params=params).status_code == 422


def test_job_detail_has_series_roles_reasons_timeline_outputs_and_deliveries(client, jobs):
    job = client.get(f"/api/jobs/{jobs.done}").json()
    assert job["patient_id"] == "PAT-001" and job["model_version"] == "0.1.0-test"
    roles = {item["series_description"]: item["role"] for item in job["series"]}
    assert roles["Ax T2 FLAIR"] == "FLAIR" and roles["Localizer"] == "other"
    assert "matches the FLAIR rule" in job["series"][3]["reasons"][0]
    assert [stage["name"] for stage in job["stages"]] == [
        "queued", "loading", "preprocessing", "inference", "explaining", "encoding", "delivering"]
    assert all(stage["outcome"] == "ok" and stage["duration_s"] >= 0 for stage in job["stages"])
    assert {item["kind"] for item in job["outputs"]} == {"seg", "sr"}
    deliveries = {item["destination"]: item for item in job["deliveries"]}
    assert deliveries["PACS@10.0.0.5:104"]["status"] == "delivered"
    assert deliveries["PACS@10.0.0.5:104"]["attempts"] == 2
    assert any("association rejected" in event["message"] for event in job["events"])
    assert job["actions"] == {"retry": False, "redeliver": True, "cancel": False, "reprocess": True}
    assert job["study_jobs"][0]["id"] == jobs.done


def test_study_lists_its_jobs(client, jobs):
    study = client.get("/api/studies/1.2.826.0.1.200").json()
    assert study["patient_name"] == "Roe^Richard" and [item["id"] for item in study["jobs"]] == [jobs.failed]


def test_unknown_ids_answer_404(client, jobs):
    for path in ("/api/jobs/{bad}", "/api/studies/{bad}", "/api/jobs/{bad}/viewer/manifest",
                 "/api/jobs/{bad}/viewer/volumes/seg", "/api/jobs/{bad}/viewer/meshes/et"):
        for bad in BAD_IDS:
            response = client.get(path.format(bad=bad))
            assert response.status_code == 404, (path, bad)
            assert "detail" in response.json()
    for action in ("retry", "redeliver", "cancel", "reprocess"):
        response = client.post(f"/api/jobs/{'f' * 32}/{action}", headers={"X-CSRF-Token": client.csrf}, json={})
        assert response.status_code == 404, action


def test_openapi_documents_the_api(client):
    paths = client.get("/api/openapi.json").json()["paths"]
    assert {"/api/jobs", "/api/jobs/{job_id}", "/api/jobs/{job_id}/retry", "/api/overview", "/health",
            "/metrics"} <= set(paths)
    assert client.get("/docs").status_code == 404  # Swagger UI would load JavaScript from a CDN


# --- actions ------------------------------------------------------------------------------------------


def _broker_messages(settings) -> int:
    folder = settings.broker_dir / "queue"
    return sum(1 for _ in folder.glob("*.msg")) if folder.is_dir() else 0


def test_retry_a_failed_job_queues_it_again(client, jobs, store, web_settings):
    before = _broker_messages(web_settings)
    response = client.post(f"/api/jobs/{jobs.failed}/retry", headers={"X-CSRF-Token": client.csrf})
    assert response.status_code == 200 and response.json()["state"] == "queued"
    assert store.job_state(jobs.failed) == "queued"
    assert _broker_messages(web_settings) == before + 1


@pytest.mark.parametrize(("job", "action"), [("running", "retry"), ("queued", "retry"), ("done", "retry"),
                                              ("failed", "redeliver"), ("done", "cancel"), ("running", "reprocess")])
def test_actions_that_do_not_fit_the_state_answer_409(client, jobs, job, action):
    response = client.post(f"/api/jobs/{getattr(jobs, job)}/{action}", headers={"X-CSRF-Token": client.csrf},
                           json={})
    assert response.status_code == 409, response.text
    assert "cannot" in response.json()["detail"] or "no outputs" in response.json()["detail"]


def test_redeliver_a_done_job_resumes_at_delivery(client, jobs, store):
    response = client.post(f"/api/jobs/{jobs.done}/redeliver", headers={"X-CSRF-Token": client.csrf})
    assert response.status_code == 200
    assert store.job_state(jobs.done) == "queued"
    assert store.get_job(jobs.done).resume_stage == "delivering"


def test_cancel_a_queued_job_now_and_a_running_job_at_its_next_step(client, jobs, store):
    queued = client.post(f"/api/jobs/{jobs.queued}/cancel", headers={"X-CSRF-Token": client.csrf}).json()
    assert queued["state"] == "cancelled" and store.job_state(jobs.queued) == "cancelled"
    running = client.post(f"/api/jobs/{jobs.running}/cancel", headers={"X-CSRF-Token": client.csrf}).json()
    assert running["state"] == "inference" and "next step" in running["message"]
    assert store.get_job(jobs.running).cancel_requested


def test_override_a_series_role_and_reprocess_creates_a_new_job(client, jobs, store):
    series_uid = "1.2.826.0.1.200.5"  # the localizer, classified as other
    response = client.post(f"/api/jobs/{jobs.failed}/reprocess", headers={"X-CSRF-Token": client.csrf},
                           json={"roles": {series_uid: "FLAIR", "1.2.826.0.1.200.4": "other"}})
    assert response.status_code == 200, response.text
    new_id = response.json()["job_id"]
    assert new_id != jobs.failed
    detail = store.get_job(new_id)
    assert detail.state == JobState.QUEUED.value and detail.replaces_job_id == jobs.failed
    assert detail.reason == "role override"
    roles = {item.series_instance_uid: item for item in detail.series}
    assert roles[series_uid].role == "FLAIR" and "by an admin" in roles[series_uid].reasons[-1]


def test_reprocess_with_an_unknown_series_or_role_is_refused(client, jobs):
    unknown = client.post(f"/api/jobs/{jobs.failed}/reprocess", headers={"X-CSRF-Token": client.csrf},
                          json={"roles": {"9.9.9": "T1"}})
    assert unknown.status_code == 404 and "9.9.9" in unknown.json()["detail"]
    bad_role = client.post(f"/api/jobs/{jobs.failed}/reprocess", headers={"X-CSRF-Token": client.csrf},
                           json={"roles": {"1.2.826.0.1.200.1": "PD"}})
    assert bad_role.status_code == 422
