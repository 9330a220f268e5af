"""``neuroseg listen`` as a real process: kill -9 mid-push loses nothing acknowledged, restart resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import MRImageStorage

from tests.listener.conftest import CALLING_AE, series_files
from tests.services import REPO_ROOT, free_port, wait_for, wait_for_port

pytestmark = pytest.mark.integration

RUN_LISTEN = (
    "import sys, tests.listener.fake_queue as queue; sys.modules['neuroseg.worker.queue'] = queue; "
    "from neuroseg.worker.cli import main; sys.exit(main(['listen', '--drain-seconds', '5']))"
)


class ListenProcess:
    """``neuroseg listen`` in a child process, with the queue replaced by fake_queue."""

    def __init__(self, data_dir: Path, port: int, allowed: str = CALLING_AE, stable_seconds: float = 1) -> None:
        env = {key: value for key, value in os.environ.items() if not key.startswith("NEUROSEG_")}
        env.update(NEUROSEG_DATA_DIR=str(data_dir), NEUROSEG_PORT=str(port), NEUROSEG_BIND_ADDRESS="127.0.0.1",
                   NEUROSEG_ALLOWED_CALLING_AES=allowed, NEUROSEG_STABLE_SECONDS=str(stable_seconds),
                   NEUROSEG_MAX_WAIT_SECONDS="4")
        self.log_path = data_dir.parent / f"listen-{time.monotonic_ns()}.log"
        self.log_file = open(self.log_path, "wb")
        self.process = subprocess.Popen([sys.executable, "-c", RUN_LISTEN], cwd=REPO_ROOT, env=env,
                                        stdout=self.log_file, stderr=subprocess.STDOUT)
        self.port = port
        wait_for_port(port, 60)

    @property
    def output(self) -> str:
        return self.log_path.read_text()

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.process.send_signal(signum)
        code = self.process.wait(60)
        self.log_file.close()
        return code


def handoffs(data_dir: Path) -> list[dict]:
    path = data_dir / "handoffs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def push(port: int, files: list[Path], on_success=None) -> dict[Path, int | None]:
    """Send files one by one; the status each got, None when the association died first."""
    ae = AE(ae_title=CALLING_AE)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
    ae.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="NEUROSEG")
    statuses: dict[Path, int | None] = {}
    for path in files:
        if not assoc.is_established:
            statuses[path] = None
            continue
        try:
            response = assoc.send_c_store(path)
        except (RuntimeError, OSError):
            statuses[path] = None
            continue
        statuses[path] = int(response.Status) if "Status" in response else None
        if statuses[path] == 0 and on_success is not None:
            on_success(sum(1 for status in statuses.values() if status == 0))
    if assoc.is_established:
        assoc.release()
    return statuses


def test_kill_9_mid_push_loses_no_acknowledged_instance_and_restart_hands_over_once(
    shared_data, tmp_path, monkeypatch
):
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    files = series_files(shared_data, "siemens-prisma-t1-sagittal-prone")
    data_dir, port = tmp_path / "data", free_port()
    first = ListenProcess(data_dir, port)

    killed = threading.Event()

    def kill_after_12(acknowledged: int) -> None:
        if acknowledged >= 12 and not killed.is_set():
            killed.set()
            # from another thread, so the kill lands while the next C-STORE is on the wire
            threading.Thread(target=first.process.send_signal, args=(signal.SIGKILL,)).start()

    statuses = push(port, files, on_success=kill_after_12)
    assert first.process.wait(30) == -signal.SIGKILL
    first.log_file.close()
    acknowledged = [path for path, status in statuses.items() if status == 0]
    assert 12 <= len(acknowledged) < len(files)
    assert set(statuses.values()) <= {0, None}
    spool = data_dir / "spool"
    for path in acknowledged:
        source = pydicom.dcmread(path)
        stored = spool / source.StudyInstanceUID / source.SeriesInstanceUID / f"{source.SOPInstanceUID}.dcm"
        assert pydicom.dcmread(stored).PixelData == source.PixelData
    assert handoffs(data_dir) == []

    # quiet for 3 s after the restart before it counts as stable: time for the sender to come back
    second = ListenProcess(data_dir, port, stable_seconds=3)
    study_uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    wait_for(lambda: f"resumed open study study_uid={study_uid}" in second.output, 30, "the resumed study")
    assert set(push(port, files).values()) == {0}  # the sender retries everything; duplicates are Success
    wait_for(lambda: len(handoffs(data_dir)) == 1, 60, "the hand-off")
    assert second.stop(signal.SIGTERM) == 0
    assert "SIGTERM received" in second.output
    manifest = handoffs(data_dir)[0]["manifest"]
    assert manifest["study_instance_uid"] == study_uid
    assert [item["instance_count"] for item in manifest["series"]] == [len(files)]
    assert len(list(spool.rglob("*.dcm"))) == len(files)

    third = ListenProcess(data_dir, port, allowed="", stable_seconds=1)
    time.sleep(2.5)  # longer than stable_seconds: a second hand-off would have happened by now
    assert third.stop(signal.SIGINT) == 0
    assert len(handoffs(data_dir)) == 1
    output = third.output
    assert "neuroseg " in output and "listener starting" in output
    assert "NEUROSEG_ALLOWED_CALLING_AES is empty" in output
