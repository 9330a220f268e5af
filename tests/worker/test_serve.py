"""``neuroseg serve`` as one process: receives by C-STORE, queues, processes, stops cleanly."""

from __future__ import annotations

import pytest

from neuroseg.worker.jobstore import JobStore
from tests.services import wait_for
from tests.worker.helpers import build_study, wait_for_state
from tests.worker.serve_helpers import ServeProcess, storescu

pytestmark = pytest.mark.integration


def test_serve_takes_a_study_and_stops_on_sigterm(tmp_path, make_settings):
    data_dir = tmp_path / "data"
    serve = ServeProcess(data_dir, tmp_path / "serve.log").start()
    try:
        study = build_study(tmp_path / "send", "serve-bad", roles=("T2", "FLAIR"),
                            damage=lambda label, datasets: datasets[:2])
        storescu(tmp_path / "send", serve.port)
        store = JobStore.from_settings(make_settings(data_dir=data_dir))

        def job_exists() -> bool:
            return bool(store.list_jobs(study_instance_uid=study.study_instance_uid))

        wait_for(job_exists, 60, "the listener to hand the study to the queue")
        job = store.list_jobs(study_instance_uid=study.study_instance_uid)[0]
        assert wait_for_state(store, job.id, 60) == "failed"
        assert "2 slice(s)" in store.get_job(job.id).error
    finally:
        status = serve.stop()
    assert status == 0, serve.log()[-3000:]
