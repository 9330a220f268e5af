"""The task body without Celery: claims, and errors mapped to job states."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from neuroseg.worker import pipeline, tasks
from neuroseg.worker.errors import InputError, TransientError
from neuroseg.worker.jobstore import JobState, JobStore
from tests.worker.test_jobstore import make_manifest


class Retry(Exception):
    pass


class FakeTask:
    """Just what ``process_study`` uses of a bound Celery task."""

    def __init__(self, retries: int = 0) -> None:
        self.request = SimpleNamespace(retries=retries)
        self.retried: list[dict] = []

    def retry(self, **kwargs):
        self.retried.append(kwargs)
        return Retry()


@pytest.fixture
def setup(make_settings, monkeypatch):
    settings = make_settings(delivery_max_retries=2)
    monkeypatch.setattr(tasks, "get_settings", lambda: settings)
    store = JobStore.from_settings(settings)
    job_id, _ = store.create_job(make_manifest())
    return settings, store, job_id


def run_with(monkeypatch, outcome):
    def fake_run_job(store, job_id, settings):
        if isinstance(outcome, Exception):
            raise outcome
        store.finish(job_id, outcome)
        return outcome.value

    monkeypatch.setattr(pipeline, "run_job", fake_run_job)


def test_input_error_fails_the_job_without_retry(setup, monkeypatch):
    _, store, job_id = setup
    run_with(monkeypatch, InputError("series 1.2: missing slice"))
    task = FakeTask()
    assert tasks.process_study(task, job_id) == "failed"
    assert store.get_job(job_id).error == "series 1.2: missing slice" and task.retried == []


def test_transient_error_records_retrying_and_retries_with_backoff(setup, monkeypatch):
    _, store, job_id = setup
    run_with(monkeypatch, TransientError("PACS down"))
    task = FakeTask(retries=1)
    with pytest.raises(Retry):
        tasks.process_study(task, job_id)
    assert task.retried[0]["countdown"] == 60
    detail = store.get_job(job_id)
    assert detail.state == "retrying" and "PACS down" in detail.error


def test_transient_error_gives_up_after_the_last_retry(setup, monkeypatch):
    _, store, job_id = setup
    run_with(monkeypatch, TransientError("PACS down"))
    assert tasks.process_study(FakeTask(retries=2), job_id) == "failed"
    assert store.get_job(job_id).error == "gave up after 3 attempts: PACS down"


def test_unexpected_error_fails_the_job_naming_the_stage(setup, monkeypatch):
    _, store, job_id = setup
    run_with(monkeypatch, ZeroDivisionError("boom"))
    assert tasks.process_study(FakeTask(), job_id) == "failed"
    assert store.get_job(job_id).error == "unexpected error during loading: ZeroDivisionError: boom"


def test_a_job_running_elsewhere_is_retried_later(setup, monkeypatch):
    settings, store, job_id = setup
    store.claim(job_id, worker="other-host:1")
    task = FakeTask()
    with pytest.raises(Retry):
        tasks.process_study(task, job_id)
    assert task.retried[0]["countdown"] == settings.job_stale_seconds


def test_a_finished_job_is_not_run_again(setup, monkeypatch):
    _, store, job_id = setup
    run_with(monkeypatch, JobState.DONE)
    assert tasks.process_study(FakeTask(), job_id) == "done"
    monkeypatch.setattr(pipeline, "run_job", lambda *a: pytest.fail("ran a finished job"))
    assert tasks.process_study(FakeTask(), job_id) == "done"


def test_hard_time_limit_fails_the_job_instead_of_looping(setup):
    _, store, job_id = setup
    store.claim(job_id, worker="w:1")
    store.enter_stage(job_id, "preprocessing")
    store.enter_stage(job_id, "inference")
    tasks.record_hard_time_limit(job_id)
    detail = store.get_job(job_id)
    assert detail.state == "failed" and "hard time limit of 3900 s" in detail.error
