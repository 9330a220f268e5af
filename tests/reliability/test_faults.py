"""Faults at the listener's edges: a disk that fills up under it, and wall-clock jumps.

Disk nearly full: the spool lives on a 1 MiB tmpfs mounted for the test (root
only; skipped where mounting is not allowed). Clock jumps: ``time.time`` is
replaced by a clock that jumps hours forward and back between associations and
across a restart; the stability timer runs on ``time.monotonic`` and must
neither fire early nor never.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest

from neuroseg.listener.service import ListenerService
from neuroseg.worker.contracts import StudyManifest
from tests.reliability.peers import send_files
from tests.services import free_port, wait_for
from tests.worker.helpers import build_study

pytestmark = pytest.mark.integration

CALLING_AE = "FAULTS"
OUT_OF_RESOURCES = 0xA700


class RecordingQueue:
    """Stands in for ``enqueue_study``: records each hand-off with its monotonic time."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, StudyManifest]] = []
        self.lock = threading.Lock()

    def __call__(self, settings, manifest: StudyManifest) -> str:
        with self.lock:
            self.calls.append((time.monotonic(), manifest))
            return f"job-{len(self.calls)}"

    def studies(self) -> list[str]:
        with self.lock:
            return [manifest.study_instance_uid for _, manifest in self.calls]


def start(make_settings, data_dir: Path, queue: RecordingQueue, **overrides) -> ListenerService:
    overrides.setdefault("port", free_port())
    settings = make_settings(data_dir=data_dir, bind_address="127.0.0.1", allowed_calling_aes=[CALLING_AE],
                             **overrides)
    return ListenerService(settings, enqueue=queue).start()


# --- disk nearly full -------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path):
    """A 1 MiB tmpfs; remount(size) grows it. Skips where mounting is not permitted."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("mount is not available")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {result.stderr.strip()}")

    def remount(size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mount_point)], check=True)

    try:
        yield mount_point, remount
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_disk_refuses_with_a700_and_corrupts_nothing(small_disk, shared_data, make_settings, ledger):
    mount_point, remount = small_disk
    files = sorted((shared_data / "real-dicom" / "ge-mr750-t1-mprage-axial").iterdir())[:24]  # ~3.5 MB
    queue = RecordingQueue()
    service = start(make_settings, mount_point / "data", queue, stable_seconds=3600, max_wait_seconds=7200)
    try:
        first = send_files(service.port, files, CALLING_AE)
        ledger.fault("spool filesystem filled up during a push")
        acknowledged = [path for path, status in first.items() if status == 0]
        refused = [path for path, status in first.items() if status == OUT_OF_RESOURCES]
        assert acknowledged and refused, f"expected both outcomes on a 1 MiB disk: {sorted(set(first.values()))}"
        assert set(first.values()) <= {0, OUT_OF_RESOURCES}, first
        check_spool(service, acknowledged, files)

        remount("64m")  # space freed: the PACS resends the whole series
        second = send_files(service.port, files, CALLING_AE)
        assert set(second.values()) == {0}
        check_spool(service, files, files)
    finally:
        service.stop(drain_seconds=5)
    ledger.add(instances=len(files), instances_lost=len(files) - len(list(service.spool.instance_files())))


def check_spool(service: ListenerService, expected: list[Path], sent: list[Path]) -> None:
    """Exactly ``expected`` is stored, each byte-identical in pixel data; no temporary files remain."""
    stored = {path.stem: path for path in service.spool.instance_files()}
    wanted = {str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID): path for path in expected}
    assert set(stored) == set(wanted)
    for uid, source in wanted.items():
        assert pydicom.dcmread(stored[uid]).PixelData == pydicom.dcmread(source).PixelData, uid
    leftovers = [path for path in service.spool.root.rglob(".*.tmp")]
    assert not leftovers, leftovers


# --- clock jumps ------------------------------------------------------------------------------
class JumpingClock:
    """``time.time`` with an offset that tests move by hours."""

    def __init__(self, real=time.time) -> None:
        self.real = real
        self.offset = 0.0

    def __call__(self) -> float:
        return self.real() + self.offset

    def jump(self, seconds: float) -> None:
        self.offset += seconds


HOUR = 3600.0


@pytest.fixture
def clock(monkeypatch) -> JumpingClock:
    jumping = JumpingClock()
    monkeypatch.setattr(time, "time", jumping)
    return jumping


def series_paths(study) -> dict[str, list[Path]]:
    return {role: sorted(folder.glob("*.dcm")) for role, folder in study.folders.items()}


def test_wall_clock_jumps_between_series_neither_hurry_nor_stall_the_study(clock, make_settings, tmp_path, ledger):
    study = build_study(tmp_path / "send", "clock-jumps", roles=("T1ce", "FLAIR", "T2"), shape=(6, 16, 16))
    queue = RecordingQueue()
    stable = 2.0
    service = start(make_settings, tmp_path / "data", queue, stable_seconds=stable, max_wait_seconds=60)
    service.assembler.wall_clock = clock
    try:
        paths = series_paths(study)
        assert set(send_files(service.port, paths["T1ce"], CALLING_AE).values()) == {0}
        clock.jump(+6 * HOUR)
        ledger.fault("wall clock stepped forward 6 h mid-study")
        assert set(send_files(service.port, paths["FLAIR"], CALLING_AE).values()) == {0}
        clock.jump(-12 * HOUR)
        ledger.fault("wall clock stepped back 12 h mid-study")
        assert set(send_files(service.port, paths["T2"], CALLING_AE).values()) == {0}
        last_arrival = time.monotonic()
        wait_for(lambda: queue.studies(), 30, "the hand-off")
        with pytest.raises(TimeoutError):
            wait_for(lambda: len(queue.studies()) > 1, 3, "a second hand-off")
    finally:
        service.stop(drain_seconds=5)
    ((handed_at, manifest),) = queue.calls
    assert handed_at >= last_arrival + stable - 0.5, "handed over before the study was quiet for stable_seconds"
    assert handed_at <= last_arrival + stable + 15, "the stability timer stalled"
    assert {item.role.value for item in manifest.series} == {"T1ce", "FLAIR", "T2"}
    assert manifest.completion_reason == "stable"
    ledger.add(studies=1, instances=sum(len(files) for files in paths.values()))


@pytest.mark.parametrize("jump", [+24 * HOUR, -24 * HOUR], ids=["forward", "backward"])
def test_wall_clock_jump_across_a_restart_keeps_max_wait_bounded(jump, clock, make_settings, tmp_path, ledger):
    """An incomplete study (no FLAIR) is open when the listener stops; the clock jumps a day;
    after the restart the study is still handed over (after max_wait at most), exactly once."""
    study = build_study(tmp_path / "send", f"clock-restart-{jump > 0}", roles=("T2",), shape=(6, 16, 16))
    data_dir, port = tmp_path / "data", free_port()
    max_wait, stable = 6.0, 1.0
    queue = RecordingQueue()
    service = start(make_settings, data_dir, queue, port=port, stable_seconds=stable, max_wait_seconds=max_wait)
    service.assembler.wall_clock = clock
    assert set(send_files(service.port, series_paths(study)["T2"], CALLING_AE).values()) == {0}
    service.stop(drain_seconds=5)
    assert queue.studies() == []
    clock.jump(jump)
    ledger.fault(f"wall clock stepped {jump / HOUR:+.0f} h while the listener was down")
    restarted = time.monotonic()
    service = start(make_settings, data_dir, queue, port=port, stable_seconds=stable, max_wait_seconds=max_wait)
    service.assembler.wall_clock = clock
    try:
        wait_for(lambda: queue.studies(), max_wait + stable + 20, "the hand-off after the restart")
        with pytest.raises(TimeoutError):
            wait_for(lambda: len(queue.studies()) > 1, 2, "a second hand-off")
    finally:
        service.stop(drain_seconds=5)
    ((handed_at, manifest),) = queue.calls
    assert manifest.completion_reason == "max_wait"
    assert handed_at - restarted <= max_wait + stable + 15
    ledger.add(studies=1, instances=len(series_paths(study)["T2"]))
