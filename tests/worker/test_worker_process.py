"""A real worker process on a real broker: bad studies fail with a reason and the worker keeps serving."""

from __future__ import annotations

import pytest

from neuroseg.worker import queue
from neuroseg.worker.jobstore import JobStore
from tests.worker.helpers import WorkerProcess, build_study, wait_for_state, worker_env

pytestmark = pytest.mark.integration


def drop_middle_slice(label, datasets):
    return datasets[:5] + datasets[6:]


def tilt_one_slice(label, datasets):
    datasets[3].ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    return datasets


def two_slices(label, datasets):
    return datasets[:2]


def corrupt_pixels(label, datasets):
    datasets[4].PixelData = datasets[4].PixelData[:100]
    return datasets


BAD_STUDIES = [
    ("only-localizer", ("other",), None, "no usable sequence: the model needs a FLAIR or a T1ce"),
    ("two-flairs", ("FLAIR", "FLAIR"), None, "two series have the role FLAIR"),
    ("missing-slice", ("FLAIR",), drop_middle_slice, r"missing slice\(s\)"),
    ("mixed-orientations", ("FLAIR",), tilt_one_slice, "mixed orientations"),
    ("two-slices", ("FLAIR",), two_slices, r"2 slice\(s\); a volume needs at least 3"),
    ("corrupt-pixels", ("FLAIR",), corrupt_pixels, "pixel data"),
]


@pytest.mark.parametrize("broker", ["embedded", "redis"])
def test_bad_studies_fail_with_a_reason_and_the_worker_keeps_serving(broker, request, tmp_path, make_settings):
    broker_url = request.getfixturevalue("redis_server").url if broker == "redis" else None
    data_dir = tmp_path / "data"
    settings = make_settings(data_dir=data_dir, broker_url=broker_url)
    worker = WorkerProcess(worker_env(data_dir, broker_url), tmp_path / "worker.log").start()
    try:
        store = JobStore.from_settings(settings)
        jobs = {}
        for name, roles, damage, _ in BAD_STUDIES:
            study = build_study(tmp_path / "spool", f"bad-{name}", roles=roles, damage=damage)
            jobs[name] = queue.enqueue_study(settings, study.manifest())
        for name, _, _, reason in BAD_STUDIES:
            assert wait_for_state(store, jobs[name], 120, worker=worker) == "failed", name
            detail = store.get_job(jobs[name])
            assert detail.error and __import__("re").search(reason, detail.error), (name, detail.error)
            assert detail.attempts == 1
    finally:
        worker.stop()


def test_a_broken_optional_series_gives_partial_and_the_next_study_is_done(tiny_checkpoint, tmp_path,
                                                                            make_settings):
    data_dir = tmp_path / "data"
    settings = make_settings(data_dir=data_dir)
    env = worker_env(data_dir, NEUROSEG_MODEL_PATH=str(tiny_checkpoint))
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        store = JobStore.from_settings(settings)
        broken_t2 = build_study(tmp_path / "spool", "partial-t2", roles=("T1ce", "FLAIR", "T2"),
                                damage=lambda label, ds: drop_middle_slice(label, ds) if label == "T2" else ds)
        good = build_study(tmp_path / "spool", "good-after", roles=("T1ce", "FLAIR"))
        partial_id = queue.enqueue_study(settings, broken_t2.manifest())
        good_id = queue.enqueue_study(settings, good.manifest())
        assert wait_for_state(store, partial_id, 240, worker=worker) == "partial"
        detail = store.get_job(partial_id)
        assert detail.error.startswith("T2 series not used: series ") and "missing slice(s)" in detail.error
        assert sorted(detail.sequences_used) == ["flair", "t1ce"] and detail.outputs
        assert wait_for_state(store, good_id, 240, worker=worker) == "done"
    finally:
        worker.stop()


@pytest.mark.slow
def test_a_job_over_the_soft_time_limit_fails_saying_so(tiny_checkpoint, tmp_path, make_settings):
    data_dir = tmp_path / "data"
    settings = make_settings(data_dir=data_dir)
    env = worker_env(data_dir, NEUROSEG_MODEL_PATH=str(tiny_checkpoint), NEUROSEG_TASK_SOFT_TIME_LIMIT="1",
                     NEUROSEG_TASK_TIME_LIMIT="120", NEUROSEG_MC_SAMPLES="200")
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        store = JobStore.from_settings(settings)
        # big enough that loading, co-registration, inference and encoding take well over 1 s on an idle machine
        study = build_study(tmp_path / "spool", "soft-limit", roles=("T1ce", "FLAIR"), shape=(40, 96, 96))
        job_id = queue.enqueue_study(settings, study.manifest())
        assert wait_for_state(store, job_id, 120, worker=worker) == "failed"
        assert "soft time limit of 1 s (NEUROSEG_TASK_SOFT_TIME_LIMIT)" in store.get_job(job_id).error
    finally:
        worker.stop()
