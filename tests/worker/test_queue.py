"""The queue contract the listener relies on, checked without torch and without a worker."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from neuroseg.worker import queue
from neuroseg.worker.jobstore import JobStore
from tests.worker.test_jobstore import make_manifest


def test_queue_and_enqueue_never_import_torch(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from neuroseg.worker.settings import load_settings
        from neuroseg.worker import queue
        from neuroseg.worker.contracts import SequenceRole, SeriesManifest, StudyManifest
        settings = load_settings(data_dir={str(tmp_path / 'data')!r})
        manifest = StudyManifest("1.2.3", (SeriesManifest("1.2.3.1", "/x", SequenceRole.FLAIR, 1.0, ("r",)),))
        job_id = queue.enqueue_study(settings, manifest)
        assert len(job_id) == 32
        heavy = sorted(name for name in sys.modules if name.split(".")[0] in ("torch", "monai", "SimpleITK")
                       or name.startswith(("neuroseg.model", "neuroseg.worker.pipeline", "neuroseg.dicom_out")))
        print("HEAVY", heavy)
        assert not heavy, heavy
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_enqueue_writes_a_job_and_one_message_on_the_embedded_broker(make_settings):
    settings = make_settings()
    job_id = queue.enqueue_study(settings, make_manifest())
    assert queue.queue_depth(settings) == 1
    assert JobStore.from_settings(settings).job_state(job_id) == "queued"


def test_enqueue_is_idempotent_for_the_same_manifest(make_settings):
    settings = make_settings()
    first = queue.enqueue_study(settings, make_manifest())
    again = queue.enqueue_study(settings, make_manifest())
    assert again == first
    assert queue.queue_depth(settings) == 1


def test_a_new_manifest_for_the_same_study_is_a_reprocess(make_settings):
    settings = make_settings()
    first = queue.enqueue_study(settings, make_manifest(counts=(20, 20)))
    second = queue.enqueue_study(settings, make_manifest(counts=(20, 21)))
    assert second != first
    assert JobStore.from_settings(settings).get_job(second).replaces_job_id == first


def test_enqueue_keeps_the_job_when_the_broker_is_down(make_settings):
    settings = make_settings(broker_url="redis://127.0.0.1:9/0")
    job_id = queue.enqueue_study(settings, make_manifest())
    store = JobStore.from_settings(settings)
    assert store.job_state(job_id) == "queued"
    assert store.jobs_needing_publish(queued_grace_s=600) == [job_id]


def test_celery_app_has_the_reliability_settings(make_settings):
    app = queue.create_celery_app(make_settings(broker_url="redis://127.0.0.1:9/0", task_time_limit=4000,
                                                task_soft_time_limit=3000))
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert conf.task_time_limit == 4000 and conf.task_soft_time_limit == 3000
    assert conf.broker_transport_options["visibility_timeout"] > 4000
    assert queue.TASK_NAME in app.tasks


def test_retry_backoff_grows_to_an_hour():
    delays = [queue.retry_countdown(n) for n in range(12)]
    assert delays[0] == 30 and delays[1] == 60 and max(delays) == 3600
    assert sum(delays) > 5 * 3600


def test_worker_refuses_a_gpu_that_is_not_there(tmp_path):
    import os

    env = {key: value for key, value in os.environ.items() if not key.startswith("NEUROSEG_")}
    env.update(NEUROSEG_DATA_DIR=str(tmp_path / "data"), CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "-m", "neuroseg.worker", "worker", "--device", "cuda:0"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "device cuda:0 is not available (0 CUDA device(s) visible)" in result.stderr
