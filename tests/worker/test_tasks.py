"""The task: claims, errors classified by type, and Celery's retries recorded by the task's hooks.

The retry tests run the registered task through a real Celery app with
``apply`` (Celery runs each retry at once, in this process, without waiting
for the countdown), so what is tested is Celery's own ``autoretry_for`` /
``self.retry`` and our ``on_retry`` / ``on_failure`` hooks.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from neuroseg.worker import pipeline, queue, tasks
from neuroseg.worker.errors import GpuOutOfMemory, InputError, TransientError
from neuroseg.worker.jobstore import JobState, JobStore
from tests.worker.test_jobstore import make_manifest


class Retry(Exception):
    pass


class FakeTask:
    """Just what ``process_study`` uses of a bound Celery task, for the paths that do not retry."""

    def __init__(self, retries: int = 0) -> None:
        self.request = SimpleNamespace(retries=retries)
        self.retried: list[dict] = []

    def retry(self, **kwargs):
        self.retried.append(kwargs)
        return Retry()


@pytest.fixture
def setup(make_settings, monkeypatch):
    def factory(**overrides):
        settings = make_settings(**overrides)
        monkeypatch.setattr(tasks, "get_settings", lambda: settings)
        store = JobStore.from_settings(settings)
        job_id, _ = store.create_job(make_manifest())
        return settings, store, job_id
    return factory


def run_with(monkeypatch, *outcomes):
    """``pipeline.run_job`` raises (or ends the job with) each outcome in turn, the last one for ever after."""
    calls = []

    def fake_run_job(store, job_id, settings):
        outcome = outcomes[min(len(calls), len(outcomes) - 1)]
        calls.append(outcome)
        if isinstance(outcome, BaseException):
            raise outcome
        store.finish(job_id, outcome)
        return outcome.value

    monkeypatch.setattr(pipeline, "run_job", fake_run_job)
    return calls


def celery_task(settings):
    """The registered task of a real Celery app for these settings (no broker is contacted by ``apply``)."""
    return queue.create_celery_app(settings).tasks[queue.TASK_NAME]


def test_input_error_fails_the_job_without_retry(setup, monkeypatch):
    _, store, job_id = setup()
    run_with(monkeypatch, InputError("series 1.2: missing slice"))
    task = FakeTask()
    assert tasks.process_study(task, job_id) == "failed"
    assert store.get_job(job_id).error == "series 1.2: missing slice" and task.retried == []


def test_transient_errors_are_retried_by_celery_and_recorded_until_it_gives_up(setup, monkeypatch):
    settings, store, job_id = setup(delivery_max_retries=2)
    calls = run_with(monkeypatch, TransientError("PACS down"))
    recorded = []
    real_mark_retrying = JobStore.mark_retrying
    monkeypatch.setattr(JobStore, "mark_retrying",
                        lambda self, job, error, retry_in_s: recorded.append(retry_in_s)
                        or real_mark_retrying(self, job, error, retry_in_s))
    celery_task(settings).apply(args=[job_id])
    assert len(calls) == 3, "the first attempt and NEUROSEG_DELIVERY_MAX_RETRIES=2 retries"
    assert len(recorded) == 2 and 0 <= recorded[0] <= 30 and 0 <= recorded[1] <= 60, "backoff with full jitter"
    detail = store.get_job(job_id)
    assert detail.state == "failed" and detail.error == "gave up after 3 attempts: PACS down"
    assert [stage.name for stage in detail.stages].count("retrying") == 2


def test_a_transient_error_that_passes_lets_the_job_finish(setup, monkeypatch):
    settings, store, job_id = setup()
    calls = run_with(monkeypatch, TransientError("PACS down"), JobState.DONE)
    celery_task(settings).apply(args=[job_id])
    assert len(calls) == 2 and store.job_state(job_id) == "done"


def test_out_of_memory_has_its_own_limit(setup, monkeypatch):
    settings, store, job_id = setup(delivery_max_retries=0, oom_max_retries=2, retry_on_cpu=False)
    calls = run_with(monkeypatch, GpuOutOfMemory("CUDA out of memory on cuda:0"))
    celery_task(settings).apply(args=[job_id])
    assert len(calls) == 3, "NEUROSEG_OOM_MAX_RETRIES=2 retries although NEUROSEG_DELIVERY_MAX_RETRIES=0"
    assert store.get_job(job_id).error == "gave up after 3 attempts: CUDA out of memory on cuda:0"


def test_a_bug_is_recorded_with_its_traceback_and_retried_once(setup, monkeypatch):
    settings, store, job_id = setup()
    calls = run_with(monkeypatch, ZeroDivisionError("boom"))
    celery_task(settings).apply(args=[job_id])
    assert len(calls) == 2
    detail = store.get_job(job_id)
    assert detail.state == "failed"
    assert detail.error == "gave up after 2 attempts: unexpected error during loading: ZeroDivisionError: boom"
    retrying = [stage for stage in detail.stages if stage.name == "retrying"]
    assert len(retrying) == 1
    tracebacks = [event.message for event in detail.events if event.kind == "error"]
    assert len(tracebacks) == 2 and "Traceback (most recent call last)" in tracebacks[0]
    assert "ZeroDivisionError: boom" in tracebacks[0]


def test_a_bug_that_does_not_come_back_lets_the_job_finish(setup, monkeypatch):
    settings, store, job_id = setup()
    calls = run_with(monkeypatch, KeyError("flaky"), JobState.DONE)
    celery_task(settings).apply(args=[job_id])
    assert len(calls) == 2 and store.job_state(job_id) == "done"


def test_cuda_out_of_memory_is_recognised_by_its_type_not_its_message(make_settings, monkeypatch):
    import torch

    from neuroseg.model import inference, runtime

    monkeypatch.setattr(runtime, "resolve_device", lambda wanted: "cuda:0")
    monkeypatch.setattr(pipeline, "get_model", lambda settings, device: SimpleNamespace(metadata={}))
    ctx = SimpleNamespace(settings=make_settings(retry_on_cpu=False), loaded=SimpleNamespace(images={}, affine=None),
                          job_id="job", enter=lambda *a: None, progress=lambda *a: None)

    def segment_raising(error):
        def segment(*args, **kwargs):
            raise error
        return segment

    monkeypatch.setattr(inference, "segment", segment_raising(torch.cuda.OutOfMemoryError("CUDA out of memory.")))
    with pytest.raises(GpuOutOfMemory, match="NEUROSEG_RETRY_ON_CPU is off"):
        pipeline.run_model(ctx)
    monkeypatch.setattr(inference, "segment", segment_raising(RuntimeError("a message that says out of memory")))
    with pytest.raises(RuntimeError) as raised:
        pipeline.run_model(ctx)
    assert not isinstance(raised.value, TransientError), "a RuntimeError is a bug, whatever its message"


def test_bad_volumes_raise_the_input_error_family():
    import numpy as np

    from neuroseg.model.preprocess import check_inputs

    with pytest.raises(InputError, match="sequence 'flair' is all zero"):
        check_inputs({"flair": np.zeros((4, 4, 4), np.float32)}, np.eye(4))


def test_a_job_running_elsewhere_is_retried_later_without_recording_a_retry(setup, monkeypatch):
    settings, store, job_id = setup()
    store.claim(job_id, worker="other-host:1")
    task = FakeTask()
    with pytest.raises(Retry):
        tasks.process_study(task, job_id)
    assert task.retried[0]["countdown"] == settings.job_stale_seconds and "exc" not in task.retried[0]
    assert store.job_state(job_id) == "loading"


def test_a_finished_job_is_not_run_again(setup, monkeypatch):
    _, store, job_id = setup()
    run_with(monkeypatch, JobState.DONE)
    assert tasks.process_study(FakeTask(), job_id) == "done"
    monkeypatch.setattr(pipeline, "run_job", lambda *a: pytest.fail("ran a finished job"))
    assert tasks.process_study(FakeTask(), job_id) == "done"


def test_hard_time_limit_fails_the_job_instead_of_looping(setup):
    _, store, job_id = setup()
    store.claim(job_id, worker="w:1")
    store.enter_stage(job_id, "preprocessing")
    store.enter_stage(job_id, "inference")
    tasks.record_hard_time_limit(job_id)
    detail = store.get_job(job_id)
    assert detail.state == "failed" and "hard time limit of 3900 s" in detail.error
