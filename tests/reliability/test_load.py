"""Load: 20 small studies pushed at once from five associations at a time.

Default run: every instance is acknowledged and in the spool, and every study
is handed to the real queue (SQLite job store, embedded broker) exactly once,
while a probe's C-ECHO (a fresh association each time) is answered within 2 s
throughout. Processing all 20 with a worker on a 2-core machine takes minutes,
so that part is the slow test ``test_twenty_studies_are_all_processed``.
"""

from __future__ import annotations

import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from neuroseg.worker.jobstore import JobStore
from tests.reliability.peers import EchoProbe, ListenerProcess, echoscu_seconds, storescu
from tests.services import wait_for
from tests.worker.helpers import WorkerProcess, build_study, wait_for_state, worker_env

pytestmark = pytest.mark.integration

STUDIES = 20
SENDERS = 5
#: slowest C-ECHO while five associations store: 0.7-1.2 s measured on a quiet 2-core machine
ECHO_LIMIT_S = 2.0
#: while a worker also processes on the same two cores (neuroseg serve on one machine): 1.39 s measured
WORKER_ECHO_LIMIT_S = 2.0
SHAPE = (8, 16, 16)  # slices, rows, columns: 16 instances per two-series study
ALLOWED = ",".join([f"LOAD{number}" for number in range(SENDERS)] + ["PROBE"])


def build_studies(root: Path, count: int) -> list:
    return [build_study(root, f"load-{number}", roles=("T1ce", "FLAIR"), shape=SHAPE) for number in range(count)]


def study_files(study) -> list[Path]:
    return sorted(path for folder in study.folders.values() for path in folder.glob("*.dcm"))


def push_concurrently(port: int, studies: list) -> dict[str, int]:
    """Each study by its own storescu process, ``SENDERS`` at a time, five calling AEs; exit status per study."""
    with ThreadPoolExecutor(SENDERS) as pool:
        futures = {study.study_instance_uid: pool.submit(storescu, port, study_files(study), f"LOAD{number % SENDERS}")
                   for number, study in enumerate(studies)}
        return {uid: future.result() for uid, future in futures.items()}


def check_echo_latency(probe: EchoProbe, limit_s: float = ECHO_LIMIT_S) -> None:
    """Every C-ECHO answered, the slowest within ``limit_s``.

    The limit is judged only when the machine was not oversubscribed (1-minute
    load average at most twice the cores): on a shared 2-core machine running
    other test suites, scheduling alone adds seconds. Then it is reported, not failed.
    """
    assert probe.failures == 0 and probe.latencies, "the listener must answer every C-ECHO"
    latencies = sorted(probe.latencies)
    summary = (f"slowest C-ECHO under load {probe.worst:.2f} s, median {latencies[len(latencies) // 2]:.2f} s "
               f"of {len(latencies)}")
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > 2 * cores:
        warnings.warn(f"{summary}; not judged: load average {load:.1f} on {cores} cores", stacklevel=2)
        return
    assert probe.worst < limit_s, summary


def handed_over_jobs(spool_root: Path) -> dict[str, str]:
    """study UID -> job id, from the listener's hand-off markers."""
    markers = {}
    for marker in spool_root.glob("*/.handed-over.json"):
        markers[marker.parent.name] = json.loads(marker.read_text())["job_id"]
    return markers


def test_twenty_concurrent_studies_are_stored_and_enqueued_exactly_once(make_settings, tmp_path, ledger):
    data_dir = tmp_path / "data"
    settings = make_settings(data_dir=data_dir)
    studies = build_studies(tmp_path / "send", STUDIES)
    instances = sum(len(study_files(study)) for study in studies)
    # the real queue: SQLite job store and the embedded broker, in a listener process of its own
    listener = ListenerProcess(data_dir, tmp_path / "listen.log", NEUROSEG_STABLE_SECONDS="2",
                               NEUROSEG_MAX_WAIT_SECONDS="120", NEUROSEG_ALLOWED_CALLING_AES=ALLOWED).start()
    wait_for(lambda: echoscu_seconds(listener.port) is not None, 30, "the listener's first C-ECHO")
    probe = EchoProbe(listener.port).start()
    try:
        senders = push_concurrently(listener.port, studies)
        wait_for(lambda: len(handed_over_jobs(settings.spool_dir)) == STUDIES, 120,
                 f"{STUDIES} studies handed over", interval=0.2)
    finally:
        probe.stop()
        assert listener.stop() == 0, listener.log()[-3000:]

    assert set(senders.values()) == {0}, senders
    stored = {path.name for path in settings.spool_dir.rglob("*.dcm")}
    assert stored == {path.name for study in studies for path in study_files(study)}
    store = JobStore.from_settings(settings)
    jobs = store.list_jobs(limit=1000)
    assert len(jobs) == STUDIES
    assert {job.study_instance_uid for job in jobs} == {study.study_instance_uid for study in studies}
    assert handed_over_jobs(settings.spool_dir) == {job.study_instance_uid: job.id for job in jobs}
    for job in jobs:
        manifest = store.get_job(job.id).study_manifest()
        assert sum(item.instance_count for item in manifest.series) == SHAPE[0] * 2
        assert {item.role.value for item in manifest.series} == {"T1ce", "FLAIR"}
    published = list((settings.broker_dir / "queue").glob("*"))
    assert len(published) == STUDIES, "each job is published to the broker once"
    assert probe.failures == 0 and probe.latencies, "the listener must answer every C-ECHO"
    check_echo_latency(probe)
    ledger.add(studies=STUDIES, instances=instances, instances_lost=instances - len(stored),
               duplicates_delivered=len(jobs) - STUDIES, echo_max_seconds=probe.worst)


@pytest.mark.slow
def test_twenty_studies_are_all_processed(make_settings, tmp_path, tiny_checkpoint, ledger):
    """The same load end to end: a worker (tiny network, 2 MC samples) processes all 20 to done."""
    data_dir = tmp_path / "data"
    settings = make_settings(data_dir=data_dir)
    studies = build_studies(tmp_path / "send", STUDIES)
    listener = ListenerProcess(data_dir, tmp_path / "listen.log", NEUROSEG_STABLE_SECONDS="2",
                               NEUROSEG_MAX_WAIT_SECONDS="120", NEUROSEG_ALLOWED_CALLING_AES=ALLOWED).start()
    worker = WorkerProcess(worker_env(data_dir, None, NEUROSEG_MODEL_PATH=str(tiny_checkpoint),
                                      NEUROSEG_MC_SAMPLES="2"), tmp_path / "worker.log").start()
    wait_for(lambda: echoscu_seconds(listener.port) is not None, 30, "the listener's first C-ECHO")
    probe = EchoProbe(listener.port).start()
    try:
        senders = push_concurrently(listener.port, studies)
        wait_for(lambda: len(handed_over_jobs(settings.spool_dir)) == STUDIES, 120, "all studies handed over")
        store = JobStore.from_settings(settings)
        for job_id in handed_over_jobs(settings.spool_dir).values():
            assert wait_for_state(store, job_id, 900, worker=worker) == "done"
    finally:
        probe.stop()
        worker.stop()
        listener.stop()
    assert set(senders.values()) == {0}
    jobs = store.list_jobs(limit=1000)
    assert len(jobs) == STUDIES and all(job.state == "done" for job in jobs)
    check_echo_latency(probe, limit_s=WORKER_ECHO_LIMIT_S)
    for study in studies:
        assert (settings.outbox_dir / study.study_instance_uid / "seg.dcm").is_file()
    ledger.add(studies=STUDIES, instances=sum(len(study_files(study)) for study in studies),
               echo_max_seconds=probe.worst)
