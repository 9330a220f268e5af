"""Study assembly: stability timer, required roles, max_wait, restarts and exactly-once hand-off."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, _config
from pynetdicom.sop_class import MRImageStorage
from pydicom.uid import ExplicitVRLittleEndian

from neuroseg.listener import assembly as assembly_module
from neuroseg.listener.assembly import StudyAssembler
from neuroseg.listener.classify import RuleSet
from neuroseg.listener.header_check import inspect_instance
from neuroseg.listener.spool import HANDED_OVER_FILE, STUDY_STATE_FILE, Spool
from neuroseg.worker.contracts import SequenceRole, StudyManifest
from tests.listener.conftest import CALLING_AE, RecordingQueue, copy_series, series_files, split_file

SIEMENS = "siemens-prisma-t1-sagittal-prone"
FLAIR_HEADER = dict(RepetitionTime=9000, EchoTime=90, InversionTime=2500, ScanningSequence=["SE", "IR"])


class Clock:
    """A hand-driven monotonic clock and wall clock (seconds)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1.7e9 + self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def settings(make_settings):
    return make_settings(stable_seconds=1.0, max_wait_seconds=30.0)


@pytest.fixture
def spool(settings) -> Spool:
    return Spool(settings.spool_dir)


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    return RuleSet.load()


@pytest.fixture
def make_assembler(settings, spool, rules, clock, queue):
    def factory(enqueue=None) -> StudyAssembler:
        return StudyAssembler(settings, spool, rules, enqueue or queue, clock=clock, wall_clock=clock.wall)

    return factory


def store(spool: Spool, assembler: StudyAssembler, paths: list[Path]) -> str:
    """Store files as the SCP does and tell the assembler; return the study UID."""
    for path in paths:
        meta, data = split_file(path)
        header = inspect_instance(data, meta.TransferSyntaxUID)
        stored = spool.store(header, [path.read_bytes()])
        assembler.note_instance(header.study_instance_uid, CALLING_AE, created=stored.created)
    return header.study_instance_uid


@pytest.fixture(scope="module")
def study_files(tmp_path_factory, shared_data) -> dict[str, list[Path]]:
    """A small real study: 6 Siemens T1 slices, plus 6 copies relabelled as a 2D FLAIR in the same study."""
    t1 = series_files(shared_data, SIEMENS)[:6]
    study_uid = pydicom.dcmread(t1[0], stop_before_pixels=True).StudyInstanceUID
    folder = tmp_path_factory.mktemp("flair")
    flair = copy_series(t1, folder / "flair", "t2_tirm_tra_dark-fluid", study_uid=study_uid, series_number=7,
                        **FLAIR_HEADER)
    flair_3d = copy_series(t1[:4], folder / "flair3d", "t2_space_dark-fluid_sag_p2_iso", study_uid=study_uid,
                           series_number=3, MRAcquisitionType="3D", **FLAIR_HEADER)
    return {"t1": t1, "flair": flair, "flair_3d": flair_3d}


def test_complete_study_waits_for_stable_seconds(make_assembler, spool, clock, queue, study_files):
    assembler = make_assembler()
    study_uid = store(spool, assembler, study_files["t1"] + study_files["flair"])
    clock.advance(0.9)
    assert assembler.poll() == []
    clock.advance(0.2)
    handed = assembler.poll()
    assert [item.study_instance_uid for item in handed] == [study_uid]
    assert queue.calls[0].completion_reason == "stable"
    assert assembler.open_studies == []


def test_new_instance_in_any_series_restarts_the_timer(make_assembler, spool, clock, queue, study_files):
    assembler = make_assembler()
    store(spool, assembler, study_files["t1"] + study_files["flair"][:3])
    clock.advance(0.8)
    store(spool, assembler, study_files["flair"][3:4])
    clock.advance(0.8)
    assert assembler.poll() == []
    clock.advance(0.3)
    assert len(assembler.poll()) == 1
    assert queue.calls[0].roles()[SequenceRole.FLAIR].instance_count == 4


def test_manifest_carries_roles_reasons_and_folders(make_assembler, spool, clock, queue, study_files):
    events = []
    assembler = make_assembler()
    assembler.on_event = lambda *event: events.append(event)
    study_uid = store(spool, assembler, study_files["t1"] + study_files["flair"])
    clock.advance(2)
    assembler.poll()
    manifest = queue.calls[0]
    roles = manifest.roles()
    assert set(roles) == {SequenceRole.T1, SequenceRole.FLAIR}
    assert roles[SequenceRole.FLAIR].series_description == "t2_tirm_tra_dark-fluid"
    assert roles[SequenceRole.FLAIR].confidence == 1.0
    assert any(reason.startswith("flair-name") for reason in roles[SequenceRole.FLAIR].reasons)
    assert Path(roles[SequenceRole.T1].folder) == spool.study_dir(study_uid) / roles[SequenceRole.T1].series_instance_uid
    assert roles[SequenceRole.T1].instance_count == 6
    assert manifest.calling_ae_titles == (CALLING_AE,)
    assert manifest.patient_id == pydicom.dcmread(study_files["t1"][0], stop_before_pixels=True).PatientID
    assert StudyManifest.from_dict(json.loads(json.dumps(manifest.to_dict()))) == manifest
    assert [kind for kind, _, _ in events] == ["study-opened", "study-complete"]
    assert "'t2_tirm_tra_dark-fluid' -> FLAIR (1)" in events[1][1]
    assert events[1][2] == study_uid


def test_two_flairs_hand_over_the_preferred_one_and_say_why(make_assembler, spool, clock, queue, study_files):
    assembler = make_assembler()
    store(spool, assembler, study_files["t1"] + study_files["flair"] + study_files["flair_3d"])
    clock.advance(2)
    assembler.poll()
    manifest = queue.calls[0]
    flair = manifest.roles()[SequenceRole.FLAIR]
    assert flair.series_description == "t2_space_dark-fluid_sag_p2_iso"
    assert "3D over 2D" in flair.reasons[-1]
    loser = next(item for item in manifest.series if item.series_description == "t2_tirm_tra_dark-fluid")
    assert loser.role is SequenceRole.OTHER
    assert "this series becomes other" in loser.reasons[-1]


def test_study_without_required_roles_waits_for_max_wait(make_assembler, spool, clock, queue, study_files, caplog):
    caplog.set_level(logging.INFO, logger="neuroseg.listener.assembly")
    assembler = make_assembler()
    store(spool, assembler, study_files["t1"])
    clock.advance(2)
    assert assembler.poll() == []
    assert any("missing=FLAIR" in record.getMessage() for record in caplog.records)
    clock.advance(20)
    assert assembler.poll() == []
    clock.advance(10)
    handed = assembler.poll()
    assert len(handed) == 1
    manifest = queue.calls[0]
    assert manifest.completion_reason == "max_wait"
    assert manifest.notes == ("handed over after max_wait (30 s) without: FLAIR",)


def test_restart_resumes_the_open_study_and_hands_it_over_once(make_assembler, spool, clock, queue, study_files):
    first = make_assembler()
    study_uid = store(spool, first, study_files["t1"] + study_files["flair"][:2])
    # the process dies here; a new one starts on the same spool
    second = make_assembler()
    assert second.resume() == [study_uid]
    store(spool, second, study_files["flair"][2:])
    clock.advance(2)
    assert len(second.poll()) == 1
    third = make_assembler()
    assert third.resume() == []
    clock.advance(100)
    assert third.poll() == []
    assert len(queue.calls) == 1
    marker = json.loads((spool.study_dir(study_uid) / HANDED_OVER_FILE).read_text())
    assert marker["job_id"] == f"job-{study_uid[-8:]}"
    assert StudyManifest.from_dict(marker["manifest"]) == queue.calls[0]


def test_max_wait_counts_from_the_first_instance_across_restarts(make_assembler, spool, clock, queue, study_files):
    first = make_assembler()
    study_uid = store(spool, first, study_files["t1"])
    state = json.loads((spool.study_dir(study_uid) / STUDY_STATE_FILE).read_text())
    assert state["calling_ae_titles"] == [CALLING_AE]
    clock.advance(25)
    second = make_assembler()
    second.resume()
    clock.advance(4)  # stable again, but only 29 s since the first instance
    assert second.poll() == []
    clock.advance(2)
    assert len(second.poll()) == 1
    assert queue.calls[0].completion_reason == "max_wait"


def test_crash_between_enqueue_and_marker_enqueues_the_same_manifest_again(
    make_assembler, spool, clock, queue, study_files, monkeypatch
):
    assembler = make_assembler()
    study_uid = store(spool, assembler, study_files["t1"] + study_files["flair"])
    real_write = assembly_module.write_json_atomic

    def marker_fails(path, data, durable=True):
        if path.name == HANDED_OVER_FILE:
            raise OSError(28, "No space left on device")
        real_write(path, data, durable)

    monkeypatch.setattr(assembly_module, "write_json_atomic", marker_fails)
    clock.advance(2)
    assert assembler.poll() == []
    assert assembler.open_studies == [study_uid]
    monkeypatch.setattr(assembly_module, "write_json_atomic", real_write)
    # the same happens after a kill -9 between the two steps: the next process enqueues again
    restarted = make_assembler()
    restarted.resume()
    clock.advance(2)
    assert len(restarted.poll()) == 1
    assert len(queue.calls) == 2
    assert queue.calls[0] == queue.calls[1]  # idempotent for enqueue_study: the same manifest
    assert (spool.study_dir(study_uid) / HANDED_OVER_FILE).exists()


def test_queue_failure_is_retried_with_backoff(make_assembler, spool, clock, queue, study_files):
    queue.fail_times = 1
    assembler = make_assembler()
    store(spool, assembler, study_files["t1"] + study_files["flair"])
    clock.advance(2)
    assert assembler.poll() == []
    clock.advance(0.5)
    assert assembler.poll() == []  # still backing off
    clock.advance(1)
    assert len(assembler.poll()) == 1
    assert len(queue.calls) == 1


def test_new_instance_after_hand_off_reopens_the_study(make_assembler, spool, clock, queue, study_files):
    assembler = make_assembler()
    study_uid = store(spool, assembler, study_files["t1"] + study_files["flair"][:5])
    clock.advance(2)
    assert len(assembler.poll()) == 1
    store(spool, assembler, study_files["t1"][:2])  # a resent duplicate does not reopen
    assert assembler.open_studies == []
    store(spool, assembler, study_files["flair"][5:])
    assert assembler.open_studies == [study_uid]
    assert len(list(spool.study_dir(study_uid).glob(".handed-over.*.json"))) == 1
    clock.advance(2)
    assert len(assembler.poll()) == 1
    assert [call.roles()[SequenceRole.FLAIR].instance_count for call in queue.calls] == [5, 6]


@pytest.mark.integration
def test_listener_hands_over_a_pushed_study_once_it_is_stable(start_listener, queue, study_files, monkeypatch):
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    listener = start_listener(stable_seconds=0.5, max_wait_seconds=60)
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="NEUROSEG")
    statuses = [assoc.send_c_store(path).Status for path in study_files["t1"] + study_files["flair"]]
    assoc.release()
    assert statuses == [0] * 12
    assert queue.handed.wait(20)
    listener.stop()
    assert len(queue.calls) == 1
    assert set(queue.calls[0].roles()) == {SequenceRole.T1, SequenceRole.FLAIR}


def test_study_that_was_never_noted_is_picked_up_by_the_rescan(make_assembler, spool, clock, queue, study_files,
                                                              monkeypatch):
    import threading

    monkeypatch.setattr(assembly_module, "RESCAN_SECONDS", 0.0)
    silent = make_assembler()
    silent.note_instance = lambda *args, **kwargs: None  # as if tracking failed after the write
    store(spool, silent, study_files["t1"] + study_files["flair"])
    assembler = make_assembler()
    stop = threading.Event()
    thread = threading.Thread(target=assembler.run, args=(stop, 0.01))
    thread.start()
    try:
        for _ in range(200):  # time passes until the rescan has found the study and it is stable
            clock.advance(0.5)
            if queue.handed.wait(0.05):
                break
    finally:
        stop.set()
        thread.join(10)
    assert len(queue.calls) == 1
