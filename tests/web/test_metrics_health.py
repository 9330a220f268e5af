"""/metrics (Prometheus text, computed from the job store on scrape) and /health."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.services import free_port
from tests.web.conftest import ADMIN_TOKEN, _test_client, make_app
from tests.web.synthetic import fill_store


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_parse_and_show_the_counts_of_a_run(anonymous, jobs):
    response = anonymous.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = _samples(response.text)
    assert samples[("neuroseg_studies_received_total", ())] == 4
    for state, count in {"done": 1, "failed": 1, "queued": 1, "inference": 1, "partial": 0}.items():
        assert samples[("neuroseg_jobs", (("state", state),))] == count, state
    # loading ran for the done, failed and running jobs; inference finished only for the done job
    assert samples[("neuroseg_stage_duration_seconds_count", (("stage", "loading"),))] == 3
    assert samples[("neuroseg_stage_duration_seconds_count", (("stage", "inference"),))] == 1
    assert samples[("neuroseg_stage_duration_seconds_bucket", (("le", "+Inf"), ("stage", "delivering")))] == 1
    assert samples[("neuroseg_delivery_failures_total", ())] == 1
    assert samples[("neuroseg_queue_depth", ())] == 0
    assert samples[("neuroseg_workers_online", ())] == 1  # the worker holding the running job
    assert samples[("neuroseg_up", (("component", "job_store"),))] == 1
    assert samples[("neuroseg_up", (("component", "broker"),))] == 1
    assert samples[("neuroseg_disk_free_bytes", (("path", "spool"),))] > 0
    assert "Doe^Jane" not in response.text and "PAT-001" not in response.text


def test_metrics_count_work_done_by_other_processes(anonymous, jobs, store):
    """Counts come from the job store at scrape time, not from this process's memory."""
    from tests.web.synthetic import manifest, run_to_done

    before = _samples(anonymous.get("/metrics").text)
    job_id, _ = store.create_job(manifest("1.2.826.0.1.900"))
    run_to_done(store, job_id, None)
    after = _samples(anonymous.get("/metrics").text)
    assert after[("neuroseg_studies_received_total", ())] == before[("neuroseg_studies_received_total", ())] + 1
    assert after[("neuroseg_jobs", (("state", "done"),))] == 2


def test_health_reports_database_broker_disk_and_workers(anonymous, jobs):
    response = anonymous.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] in ("ok", "degraded")
    checks = body["checks"]
    assert checks["database"]["ok"] and checks["broker"]["ok"] and checks["broker"]["queue_depth"] == 0
    assert checks["spool_disk"]["free_bytes"] > 0 and checks["spool_disk"]["total_bytes"] > 0
    assert checks["workers"] == {"ok": True, "count": 1, "names": ["gpu-node-2:777"]}
    assert anonymous.get("/health/live").json() == {"status": "alive"}


def test_health_without_workers_is_degraded(anonymous, store):
    body = anonymous.get("/health").json()
    assert body["status"] == "degraded" and body["checks"]["workers"]["ok"] is False


def test_health_is_503_when_the_broker_is_down(make_settings):
    settings = make_settings(admin_token="x" * 20, broker_url=f"redis://127.0.0.1:{free_port()}/0")
    app = make_app(settings)
    app.state.monitor.answer_within_s = 1.0
    with _test_client(app) as client:
        response = client.get("/health")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "down" and body["checks"]["broker"]["ok"] is False
        assert "127.0.0.1" in body["checks"]["broker"]["detail"]
        samples = _samples(client.get("/metrics").text)
        assert samples[("neuroseg_up", (("component", "broker"),))] == 0


def test_health_and_metrics_survive_an_unreachable_database(make_settings, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the database folder should be")
    settings = make_settings(admin_token="x" * 20, database_url=f"sqlite:///{blocker}/jobs.db")
    with _test_client(make_app(settings)) as client:
        response = client.get("/health")
        assert response.status_code == 503 and response.json()["checks"]["database"]["ok"] is False
        samples = _samples(client.get("/metrics").text)
        assert samples[("neuroseg_up", (("component", "job_store"),))] == 0
        api = client.get("/api/jobs", headers={"Authorization": "Bearer " + "x" * 20})
        assert api.status_code == 503 and "job store unavailable" in api.json()["detail"]
        page = client.get("/jobs/" + "0" * 32, headers={"Authorization": "Bearer " + "x" * 20})
        assert page.status_code == 503 and "job store unavailable" in page.text


@pytest.mark.parametrize("path", ["/health", "/metrics"])
def test_health_and_metrics_need_no_login_and_show_no_patient_data(anonymous, store, web_settings, path,
                                                                      result_template):
    fill_store(store, web_settings.results_dir, result_template)
    text = anonymous.get(path).text
    assert "Doe^Jane" not in text and "1.2.826.0.1.100" not in text


@pytest.mark.integration
def test_a_real_worker_on_the_embedded_broker_is_listed_with_its_device(anonymous, web_settings, tmp_path):
    import os
    import subprocess
    import sys

    from tests.services import wait_for

    env = {key: value for key, value in os.environ.items() if not key.startswith("NEUROSEG_")}
    env.update(NEUROSEG_DATA_DIR=str(web_settings.data_dir), NEUROSEG_JOB_STALE_SECONDS="3600")
    with open(tmp_path / "worker.log", "wb") as log_file:
        worker = subprocess.Popen(
            [sys.executable, "-m", "neuroseg.worker", "worker", "--device", "cpu", "--pool", "solo"],
            env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=tmp_path)
    anonymous.app.state.monitor.ttl_s = 0.0
    anonymous.app.state.monitor.inspect_timeout_s = 1.0

    def listed() -> bool:
        overview = anonymous.get("/api/overview", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()
        workers = overview["workers"]
        return any(item["source"] == "broker" and item["device"] == "cpu" for item in workers)

    try:
        wait_for(listed, timeout=90, what="the worker to answer the inspect broadcast", interval=0.5)
        samples = _samples(anonymous.get("/metrics").text)
        assert samples[("neuroseg_workers_online", ())] == 1
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
