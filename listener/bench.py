"""``neuroseg bench ingest``: our listener against DCMTK ``storescp``, in the same run.

Both receivers get the same N instances from DCMTK ``storescu`` over loopback:

- ``storescp`` writes each file without fsync (its default);
- our listener checks each instance and writes it durably (temp file, fsync,
  rename, fsync of the folder) before it answers Success.

The instances are copies of real MR files with fresh SOP Instance UIDs (one new
study and series per bench run). The rounds alternate between the receivers and
the median of each is reported, with the ratio neuroseg / storescp.

The bench also times one durable write of an instance-sized file on the same
disk: two flushes (file, then folder) per instance set a ceiling on any
receiver that keeps the durability promise, and on a busy disk that ceiling,
not the DICOM stack, decides the ratio.

DCMTK leaves Nagle's algorithm on unless the environment variable
``TCP_NODELAY`` is set; on loopback that costs it about 40 ms per instance, so
the bench sets ``TCP_NODELAY=1`` for every DCMTK process to measure the fastest
baseline.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import generate_uid

from neuroseg.worker.settings import load_settings

log = logging.getLogger(__name__)

BENCH_AE_TITLE = "NSBENCH"
TARGET_RATIO = 0.5


@dataclass
class ReceiverResult:
    """Timings of one receiver over the rounds."""

    name: str
    seconds: list[float] = field(default_factory=list)
    received: list[int] = field(default_factory=list)

    def rate(self, count: int) -> float:
        """Median instances per second."""
        return count / statistics.median(self.seconds)


def source_files(source: Path) -> list[Path]:
    """Readable DICOM files with pixel data under ``source`` (a file or a folder)."""
    candidates = [source] if source.is_file() else sorted(path for path in source.rglob("*") if path.is_file())
    files = []
    for path in candidates:
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError):
            continue
        if "SOPInstanceUID" in dataset and "Rows" in dataset:
            files.append(path)
    if not files:
        raise ValueError(f"--source {source}: no DICOM image files found")
    return files


def _same_length_uid(old: str) -> str:
    """A fresh random UID (2.25.<digits>) exactly as long as ``old``, or a plain fresh UID if it is too short."""
    digits = len(old) - len("2.25.")
    if digits < 30:
        return generate_uid()
    number = str(secrets.randbelow(9 * 10 ** (digits - 1)) + 10 ** (digits - 1))
    return f"2.25.{number}"


def build_instances(source: Path, count: int, folder: Path, progress: Callable[[int], None] | None = None) -> int:
    """Write ``count`` copies of the files in ``source`` with fresh SOP Instance UIDs into ``folder``.

    All copies belong to one new study and series. The UIDs are swapped in the
    encoded bytes for fresh ones of the same length, so nothing else in the
    files changes (when a UID is too short for that, the file is re-encoded
    with pydicom instead). Returns the total bytes written.
    """
    templates = []
    for path in source_files(source):
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        templates.append((path, path.read_bytes(), str(dataset.SOPInstanceUID), str(dataset.StudyInstanceUID),
                          str(dataset.SeriesInstanceUID)))
    new_study = {study: _same_length_uid(study) for _, _, _, study, _ in templates}
    new_series = {series: _same_length_uid(series) for _, _, _, _, series in templates}
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for index in range(count):
        path, raw, sop, study, series = templates[index % len(templates)]
        target = folder / f"{index:06d}.dcm"
        fresh = _same_length_uid(sop)
        swaps = ((sop, fresh), (study, new_study[study]), (series, new_series[series]))
        if all(len(old) == len(new) for old, new in swaps):
            data = raw
            for old, new in swaps:
                data = data.replace(old.encode(), new.encode())
            target.write_bytes(data)
        else:
            dataset = pydicom.dcmread(path)
            dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = fresh
            dataset.StudyInstanceUID, dataset.SeriesInstanceUID = new_study[study], new_series[series]
            dataset.save_as(target, enforce_file_format=True)
        total += target.stat().st_size
        if progress is not None:
            progress(1)
    return total


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout:.0f} s")


def _dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def _storescu(folder: Path, port: int, called_ae: str) -> float:
    """Send every file in ``folder`` with storescu; return the seconds it took."""
    command = [_require("storescu"), "-aet", BENCH_AE_TITLE, "-aec", called_ae, "127.0.0.1", str(port),
               "+sd", str(folder)]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=_dcmtk_env(), check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"storescu failed with exit status {result.returncode}: {result.stderr[-2000:]}")
    return elapsed


def find_dcmtk_tool(name: str) -> str | None:
    """The DCMTK program ``name`` on PATH, skipping this Python environment's own bin folder.

    pynetdicom installs console scripts with the same names as DCMTK's
    (``storescu``, ``echoscu``, ...) whose options differ, so a plain PATH
    lookup inside an activated virtual environment finds the wrong program.
    """
    own_bins = {Path(sys.prefix, "bin").resolve(), Path(sys.executable).parent.resolve()}
    folders = [folder for folder in os.environ.get("PATH", os.defpath).split(os.pathsep)
               if folder and Path(folder).resolve() not in own_bins]
    return shutil.which(name, path=os.pathsep.join(folders))


def _require(name: str) -> str:
    path = find_dcmtk_tool(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed; install DCMTK (Debian package dcmtk)")
    return path


def _count_files(folder: Path) -> int:
    return sum(1 for path in folder.rglob("*") if path.is_file() and not path.name.startswith("."))


def run_storescp(folder: Path, work: Path) -> tuple[float, int]:
    """One round against DCMTK storescp; returns (seconds, files received)."""
    output = work / "storescp"
    output.mkdir()
    port = _free_port()
    process = subprocess.Popen(
        [_require("storescp"), "-aet", "STORESCP", "-od", str(output), str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_dcmtk_env(),
    )
    try:
        _wait_for_port(port)
        seconds = _storescu(folder, port, "STORESCP")
    finally:
        process.terminate()
        process.wait(30)
    received = _count_files(output)
    shutil.rmtree(output, ignore_errors=True)
    return seconds, received


def run_neuroseg(folder: Path, work: Path) -> tuple[float, int]:
    """One round against our listener (durability on, hand-off off); returns (seconds, instances stored)."""
    from neuroseg.listener.service import ListenerService

    data_dir = work / "neuroseg"
    settings = load_settings(
        data_dir=data_dir, port=_free_port(), bind_address="127.0.0.1", ae_title="NEUROSEG",
        allowed_calling_aes=[BENCH_AE_TITLE], stable_seconds=3600, max_wait_seconds=3600,
    )
    service = ListenerService(settings, enqueue=_no_hand_off).start()
    try:
        seconds = _storescu(folder, service.port, settings.ae_title)
    finally:
        service.stop(drain_seconds=10)
    received = sum(1 for _ in service.spool.instance_files())
    shutil.rmtree(data_dir, ignore_errors=True)
    return seconds, received


def measure_durable_write(folder: Path, size: int, count: int = 50) -> float:
    """Milliseconds per durable write (temp file, fsync, rename, fsync folder) of ``size`` bytes in ``folder``.

    This is the floor the spool's disk sets for one instance, whatever the
    DICOM stack; it is reported next to the throughputs.
    """
    from neuroseg.listener.spool import write_atomic

    target = folder / "fsync-probe"
    target.mkdir(parents=True, exist_ok=True)
    payload = os.urandom(size)
    started = time.perf_counter()
    for index in range(count):
        write_atomic(target / f"{index}.bin", [payload], durable=True)
    elapsed = time.perf_counter() - started
    shutil.rmtree(target, ignore_errors=True)
    return 1000.0 * elapsed / count


def _no_hand_off(settings: Any, manifest: Any) -> str:
    raise RuntimeError("the ingest bench never hands a study over")


def run_ingest_bench(source: Path, count: int, rounds: int, work_dir: Path | None = None,
                     progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Build the instances, run the rounds, return the report (see the module docstring)."""
    if count < 1:
        raise ValueError(f"-n {count}: send at least 1 instance")
    if rounds < 1:
        raise ValueError(f"--rounds {rounds}: run at least 1 round")
    with tempfile.TemporaryDirectory(prefix="neuroseg-bench-", dir=work_dir) as temp:
        work = Path(temp)
        folder = work / "instances"
        total_bytes = build_instances(source, count, folder, progress)
        durable_write_ms = measure_durable_write(work, max(1, total_bytes // count))
        results = {"storescp": ReceiverResult("storescp"), "neuroseg": ReceiverResult("neuroseg")}
        runners = {"storescp": run_storescp, "neuroseg": run_neuroseg}
        for round_index in range(rounds):
            order = ("storescp", "neuroseg") if round_index % 2 == 0 else ("neuroseg", "storescp")
            for name in order:
                seconds, received = runners[name](folder, work)
                log.info("round %d %s: %d instances in %.2f s", round_index + 1, name, received, seconds)
                results[name].seconds.append(seconds)
                results[name].received.append(received)
    report: dict[str, Any] = {
        "benchmark": "ingest",
        "instances": count,
        "megabytes": round(total_bytes / 1e6, 1),
        "source": str(source),
        "rounds": rounds,
        "sender": "DCMTK storescu over loopback, TCP_NODELAY=1",
        "cpus": os.cpu_count(),
    }
    for name, result in results.items():
        report[name] = {
            "instances_per_s": round(result.rate(count), 1),
            "seconds": [round(value, 3) for value in result.seconds],
            "received": result.received,
            "all_received": all(value == count for value in result.received),
        }
    report["neuroseg"]["durable"] = True
    report["storescp"]["durable"] = False
    report["ratio"] = round(report["neuroseg"]["instances_per_s"] / report["storescp"]["instances_per_s"], 3)
    report["durable_write_ms"] = round(durable_write_ms, 2)
    report["durable_write_ceiling_per_s"] = round(1000.0 / durable_write_ms, 1)
    report["target_ratio"] = TARGET_RATIO
    report["meets_target"] = report["ratio"] >= TARGET_RATIO
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report as a small text table."""
    lines = [
        f"ingest: {report['instances']} instances ({report['megabytes']} MB) from {report['source']}, "
        f"{report['rounds']} round(s), median",
        f"{'receiver':<34}{'instances/s':>12}{'all received':>14}",
    ]
    for name, label in (("storescp", "DCMTK storescp (no fsync)"), ("neuroseg", "neuroseg listen (fsync per file)")):
        item = report[name]
        lines.append(f"{label:<34}{item['instances_per_s']:>12.1f}{str(item['all_received']):>14}")
    lines.append(f"ratio neuroseg/storescp: {report['ratio']:.2f} (target >= {report['target_ratio']})")
    lines.append(f"one durable write (temp, fsync, rename, fsync folder) on this disk: "
                 f"{report['durable_write_ms']:.2f} ms, at most {report['durable_write_ceiling_per_s']:.0f} instances/s")
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: Path) -> None:
    """Write the report as JSON."""
    path.write_text(json.dumps(report, indent=2) + "\n")
