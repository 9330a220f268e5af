"""``neuroseg bench ingest``: our listener against DCMTK ``storescp``, in the same run.

Both receivers get the same N instances from DCMTK ``storescu`` over loopback:

- ``storescp`` writes each file without fsync (its default), one child
  process per association (``--fork``) when there are several;
- our listener checks each instance and makes it durable with one flush of
  its intake journal (:mod:`neuroseg.listener.journal`) before it answers
  Success;
- the same listener with the journal off (``NEUROSEG_INTAKE_JOURNAL_MB=0``):
  temp file, fsync, rename, fsync of the folder, two flushes per instance;
- pynetdicom alone: our AE with a C-STORE handler that answers Success at
  once, checking and storing nothing. No handler of ours can be faster, so
  its ratio to ``storescp`` is the ceiling of the listener's.

The instances are copies of real MR files with fresh SOP Instance UIDs (one new
study and series per bench run). The rounds alternate between the receivers and
the median of each is reported, with the ratio neuroseg / storescp. With
``--associations K`` K storescu processes send a share each, at once, as a PACS
that opens several associations does; ``--profile FILE`` writes a cProfile
report of the listener's threads.

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

import cProfile
import io
import json
import logging
import os
import pstats
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
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


def split_into_folders(folder: Path, count: int) -> list[Path]:
    """Deal the files of ``folder`` round-robin into ``count`` sub-folders (one per association)."""
    if count == 1:
        return [folder]
    parts = [folder / f"association-{index + 1}" for index in range(count)]
    for part in parts:
        part.mkdir()
    for index, path in enumerate(sorted(path for path in folder.iterdir() if path.is_file())):
        path.rename(parts[index % count] / path.name)
    return parts


class ThreadProfiles:
    """cProfile of every thread started while it is active (the association threads included).

    ``cProfile`` profiles one thread; pynetdicom runs each association in two
    threads of its own, so a profiler is started in each new thread through
    :func:`threading.setprofile` and the results are merged at the end.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._profiles: list[cProfile.Profile] = []

    def _start_in_thread(self, *args: object) -> None:
        profile = cProfile.Profile()
        with self._lock:
            self._profiles.append(profile)
        profile.enable()  # replaces this hook in the new thread

    def __enter__(self) -> "ThreadProfiles":
        threading.setprofile(self._start_in_thread)
        return self

    def __exit__(self, *exc: object) -> None:
        threading.setprofile(None)  # type: ignore[arg-type]

    def write(self, path: Path, title: str) -> None:
        """Write a text report (by own time and by cumulative time) to ``path`` and the raw stats beside it."""
        with self._lock:
            profiles = list(self._profiles)
        if not profiles:
            path.write_text(f"{title}\nno thread was profiled\n")
            return
        for profile in profiles:
            profile.create_stats()
        stream = io.StringIO()
        stats = pstats.Stats(*profiles, stream=stream)
        stats.dump_stats(str(path.with_suffix(".pstats")))
        stream.write(f"{title}\n{len(profiles)} thread(s) profiled; raw stats in {path.with_suffix('.pstats').name}\n")
        stats.sort_stats("tottime").print_stats(40)
        stats.sort_stats("cumulative").print_stats(40)
        path.write_text(stream.getvalue())


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


def _storescu(folders: list[Path], port: int, called_ae: str) -> float:
    """Send every file in ``folders`` with one storescu (one association) per folder, all at once.

    Returns the seconds from the first start to the last exit.
    """
    command = [_require("storescu"), "-aet", BENCH_AE_TITLE, "-aec", called_ae, "127.0.0.1", str(port), "+sd"]
    logs = [tempfile.TemporaryFile(mode="w+") for _ in folders]  # a pipe could fill and stall a sender
    started = time.perf_counter()
    processes = [subprocess.Popen([*command, str(folder)], stdout=subprocess.DEVNULL, stderr=log_file,
                                  env=_dcmtk_env()) for folder, log_file in zip(folders, logs)]
    codes = [process.wait() for process in processes]
    elapsed = time.perf_counter() - started
    for code, log_file in zip(codes, logs):
        log_file.seek(0)
        stderr = log_file.read()
        log_file.close()
        if code != 0:
            raise RuntimeError(f"storescu failed with exit status {code}: {stderr[-2000:]}")
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


def run_storescp(folders: list[Path], work: Path) -> tuple[float, int]:
    """One round against DCMTK storescp; returns (seconds, files received)."""
    output = work / "storescp"
    output.mkdir()
    port = _free_port()
    # without --fork storescp serves one association at a time and the others queue
    fork = ["--fork"] if len(folders) > 1 else []
    process = subprocess.Popen(
        [_require("storescp"), *fork, "-aet", "STORESCP", "-od", str(output), str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_dcmtk_env(),
    )
    try:
        _wait_for_port(port)
        seconds = _storescu(folders, port, "STORESCP")
    finally:
        process.terminate()
        process.wait(30)
    received = _count_files(output)
    shutil.rmtree(output, ignore_errors=True)
    return seconds, received


def run_neuroseg(folders: list[Path], work: Path, journal: bool = True) -> tuple[float, int]:
    """One round against our listener (durability on, hand-off off); returns (seconds, instances stored)."""
    from neuroseg.listener.service import ListenerService

    data_dir = work / "neuroseg"
    overrides = {} if journal else {"intake_journal_mb": 0}
    settings = load_settings(
        data_dir=data_dir, port=_free_port(), bind_address="127.0.0.1", ae_title="NEUROSEG",
        allowed_calling_aes=[BENCH_AE_TITLE], stable_seconds=3600, max_wait_seconds=3600, **overrides,
    )
    service = ListenerService(settings, enqueue=_no_hand_off).start()
    try:
        seconds = _storescu(folders, service.port, settings.ae_title)
    finally:
        service.stop(drain_seconds=10)
    received = sum(1 for _ in service.spool.instance_files())
    shutil.rmtree(data_dir, ignore_errors=True)
    return seconds, received


def run_pynetdicom_alone(folders: list[Path], work: Path) -> tuple[float, int]:
    """One round against our AE answering Success without storing; returns (seconds, instances acknowledged)."""
    from neuroseg.listener.scp import start_acknowledging_server

    settings = load_settings(data_dir=work / "pynetdicom", port=_free_port(), bind_address="127.0.0.1",
                             ae_title="NEUROSEG", allowed_calling_aes=[BENCH_AE_TITLE])
    acknowledged = 0
    lock = threading.Lock()

    def count() -> None:
        nonlocal acknowledged
        with lock:
            acknowledged += 1

    server = start_acknowledging_server(settings, count)
    try:
        seconds = _storescu(folders, settings.port, settings.ae_title)
    finally:
        server.stop(drain_seconds=10)
    return seconds, acknowledged


def measure_durable_write(folder: Path, size: int, count: int = 50) -> float:
    """Milliseconds per durable write (temp file, fsync, rename, fsync folder) of ``size`` bytes in ``folder``.

    This is the floor the spool's disk sets for one instance, whatever the
    DICOM stack; it is reported next to the throughputs.
    """
    from neuroseg.common.files import atomic_write

    target = folder / "fsync-probe"
    target.mkdir(parents=True, exist_ok=True)
    payload = os.urandom(size)
    started = time.perf_counter()
    for index in range(count):
        atomic_write(target / f"{index}.bin", payload)
    elapsed = time.perf_counter() - started
    shutil.rmtree(target, ignore_errors=True)
    return 1000.0 * elapsed / count


def _no_hand_off(settings: Any, manifest: Any) -> str:
    raise RuntimeError("the ingest bench never hands a study over")


def run_ingest_bench(source: Path, count: int, rounds: int, work_dir: Path | None = None,
                     progress: Callable[[int], None] | None = None, associations: int = 1,
                     profile: Path | None = None) -> dict[str, Any]:
    """Build the instances, run the rounds, return the report (see the module docstring).

    ``associations`` storescu processes send a share of the instances each, at
    the same time, to either receiver. With ``profile``, the listener's threads
    are profiled with cProfile during its rounds and the report is written there
    (profiling slows the listener: its rate in that run is not the figure to quote).
    """
    if count < 1:
        raise ValueError(f"-n {count}: send at least 1 instance")
    if rounds < 1:
        raise ValueError(f"--rounds {rounds}: run at least 1 round")
    if not 1 <= associations <= count:
        raise ValueError(f"--associations {associations}: use 1 to the number of instances ({count})")
    profiles = ThreadProfiles() if profile is not None else None
    with tempfile.TemporaryDirectory(prefix="neuroseg-bench-", dir=work_dir) as temp:
        work = Path(temp)
        folder = work / "instances"
        total_bytes = build_instances(source, count, folder, progress)
        folders = split_into_folders(folder, associations)
        durable_write_ms = measure_durable_write(work, max(1, total_bytes // count))
        runners: dict[str, Callable[[list[Path], Path], tuple[float, int]]] = {
            "storescp": run_storescp,
            "neuroseg": run_neuroseg,
            "neuroseg_two_flushes": lambda folders, work: run_neuroseg(folders, work, journal=False),
            "pynetdicom_alone": run_pynetdicom_alone,
        }
        results = {name: ReceiverResult(name) for name in runners}
        for round_index in range(rounds):
            order = list(runners) if round_index % 2 == 0 else list(reversed(runners))
            for name in order:
                if name == "neuroseg" and profiles is not None:
                    with profiles:
                        seconds, received = runners[name](folders, work)
                else:
                    seconds, received = runners[name](folders, work)
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
        "associations": associations,
        "profiled": profile is not None,
        "cpus": os.cpu_count(),
    }
    for name, result in results.items():
        report[name] = {
            "instances_per_s": round(result.rate(count), 1),
            "seconds": [round(value, 3) for value in result.seconds],
            "received": result.received,
            "all_received": all(value == count for value in result.received),
        }
    report["neuroseg"]["durable"] = report["neuroseg_two_flushes"]["durable"] = True
    report["storescp"]["durable"] = report["pynetdicom_alone"]["durable"] = False
    report["ratio"] = round(report["neuroseg"]["instances_per_s"] / report["storescp"]["instances_per_s"], 3)
    report["ratio_two_flushes"] = round(
        report["neuroseg_two_flushes"]["instances_per_s"] / report["storescp"]["instances_per_s"], 3)
    report["ratio_pynetdicom_alone"] = round(
        report["pynetdicom_alone"]["instances_per_s"] / report["storescp"]["instances_per_s"], 3)
    report["durable_write_ms"] = round(durable_write_ms, 2)
    report["durable_write_ceiling_per_s"] = round(1000.0 / durable_write_ms, 1)
    report["target_ratio"] = TARGET_RATIO
    report["meets_target"] = report["ratio"] >= TARGET_RATIO
    if profiles is not None and profile is not None:
        profiles.write(profile, f"neuroseg listener threads over {rounds} round(s) of {count} instances, "
                                f"{associations} association(s)")
        report["profile"] = str(profile)
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report as a small text table."""
    lines = [
        f"ingest: {report['instances']} instances ({report['megabytes']} MB) from {report['source']}, "
        f"{report['rounds']} round(s), {report.get('associations', 1)} association(s) at once, median"
        + (" (listener profiled: slower than unprofiled)" if report.get("profiled") else ""),
        f"{'receiver':<34}{'instances/s':>12}{'all received':>14}",
    ]
    for name, label in (("storescp", "DCMTK storescp (no fsync)"), ("neuroseg", "neuroseg listen (journal)"),
                        ("neuroseg_two_flushes", "neuroseg listen (journal off)"),
                        ("pynetdicom_alone", "pynetdicom alone (stores nothing)")):
        item = report[name]
        lines.append(f"{label:<34}{item['instances_per_s']:>12.1f}{str(item['all_received']):>14}")
    lines.append(f"ratio neuroseg/storescp: {report['ratio']:.2f} (target >= {report['target_ratio']}); "
                 f"journal off: {report['ratio_two_flushes']:.2f}; "
                 f"pynetdicom alone (the listener's ceiling): {report['ratio_pynetdicom_alone']:.2f}")
    lines.append(f"one durable write (temp, fsync, rename, fsync folder) on this disk: "
                 f"{report['durable_write_ms']:.2f} ms, at most {report['durable_write_ceiling_per_s']:.0f} instances/s")
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: Path) -> None:
    """Write the report as JSON."""
    path.write_text(json.dumps(report, indent=2) + "\n")
