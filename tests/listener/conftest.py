"""Fixtures for the listener tests: a running listener, real series, raw senders."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from pydicom.filereader import read_preamble
from pydicom.uid import generate_uid

from neuroseg.listener.service import ListenerService
from neuroseg.worker.contracts import StudyManifest
from tests.services import free_port

REAL_SERIES = ("ge-mr750-t1-mprage-axial", "ge-signa-pd-axial-20", "siemens-prisma-t1-sagittal-prone")
CALLING_AE = "TESTSCU"


@dataclass
class RecordingQueue:
    """A stand-in for ``enqueue_study``: records each manifest, returns a job id per study."""

    calls: list[StudyManifest] = field(default_factory=list)
    fail_times: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    handed: threading.Event = field(default_factory=threading.Event)

    def __call__(self, settings, manifest: StudyManifest) -> str:
        with self.lock:
            if self.fail_times > 0:
                self.fail_times -= 1
                raise ConnectionError("broker unavailable (test)")
            self.calls.append(manifest)
            self.handed.set()
            return f"job-{manifest.study_instance_uid[-8:]}"


@pytest.fixture
def queue() -> RecordingQueue:
    return RecordingQueue()


@pytest.fixture
def start_listener(make_settings, queue) -> Iterator[Callable[..., ListenerService]]:
    """Start a listener on a free loopback port: ``start_listener(stable_seconds=1, ...)``."""
    started: list[ListenerService] = []

    def factory(enqueue=None, on_event=None, **overrides) -> ListenerService:
        overrides.setdefault("port", free_port())
        overrides.setdefault("bind_address", "127.0.0.1")
        overrides.setdefault("allowed_calling_aes", [CALLING_AE])
        overrides.setdefault("stable_seconds", 3600)
        overrides.setdefault("max_wait_seconds", 7200)
        service = ListenerService(make_settings(**overrides), enqueue=enqueue or queue, on_event=on_event).start()
        started.append(service)
        return service

    yield factory
    for service in started:
        service.stop(drain_seconds=5)


@pytest.fixture
def listener(start_listener) -> ListenerService:
    """A running listener that accepts TESTSCU and never hands over (stable_seconds is an hour)."""
    return start_listener()


def series_files(shared_data: Path, name: str) -> list[Path]:
    return sorted(path for path in (shared_data / "real-dicom" / name).iterdir() if path.is_file())


def split_file(path: Path | bytes) -> tuple[pydicom.Dataset, bytes]:
    """The file meta and the encoded dataset bytes (as sent on the wire) of a Part 10 file."""
    raw = path if isinstance(path, bytes) else Path(path).read_bytes()
    fp = io.BytesIO(raw)
    read_preamble(fp, False)
    meta = pydicom.filereader._read_file_meta_info(fp)
    return meta, raw[fp.tell():]


def spool_path(service: ListenerService, dataset: pydicom.Dataset) -> Path:
    service.spool.wait_for_files()  # acknowledged instances' files are written behind
    return (service.spool.root / dataset.StudyInstanceUID / dataset.SeriesInstanceUID
            / f"{dataset.SOPInstanceUID}.dcm")


def write_raw_file(folder: Path, dataset_bytes: bytes, sop_class_uid: str, sop_instance_uid: str,
                   transfer_syntax_uid: str = "1.2.840.10008.1.2.1") -> Path:
    """A Part 10 file with a valid file meta and arbitrary dataset bytes (for chunked sending)."""
    from neuroseg.listener.file_meta import encode_file_meta

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{generate_uid()}.dcm"
    path.write_bytes(encode_file_meta(sop_class_uid, sop_instance_uid, transfer_syntax_uid, "1.2.3.4")
                     + dataset_bytes)
    return path


def copy_series(files: list[Path], folder: Path, description: str, study_uid: str | None = None,
                series_number: int = 90, **attributes) -> list[Path]:
    """Copies of ``files`` as a new series (fresh UIDs) with another SeriesDescription."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    out = []
    for path in files:
        dataset = pydicom.dcmread(path)
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        dataset.SeriesInstanceUID = series_uid
        if study_uid is not None:
            dataset.StudyInstanceUID = study_uid
        dataset.SeriesDescription = description
        dataset.SeriesNumber = series_number
        for keyword, value in attributes.items():
            setattr(dataset, keyword, value)
        target = folder / f"{dataset.SOPInstanceUID}.dcm"
        dataset.save_as(target, enforce_file_format=True)
        out.append(target)
    return out
