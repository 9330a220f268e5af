"""``neuroseg bench study``: one real study through ``neuroseg serve`` to a real Orthanc, timed per stage.

The study is the shared BraTS case (four series, 155 slices of 240x240 at
1 mm, 620 instances), written as MR series by the project's own series
builder; ``--size small`` takes every fourth voxel (39 slices of 60x60 at
4 mm) for tests. DCMTK ``storescu`` pushes it into a ``neuroseg serve``
subprocess (temporary data folder, a short ``NEUROSEG_STABLE_SECONDS``,
free ports) whose destination is an Orthanc started by the bench.

Stages come from the job store: receive (the storescu push), assemble (last
instance to job created, of which ``stable_seconds`` is the quiet time the
listener waits by design), queue wait, then the job's stage runs (loading,
with its read / co-registration / resampling split from the ``timing``
event of the job, preprocessing, inference, explaining, encoding,
delivering). Peak resident memory is each process's ``VmHWM``.

Baselines of the same run: the time Orthanc itself takes to receive the same
study from storescu, and one plain network pass over the study's
working-resolution grid (``sliding_window`` without dropout or Grad-CAM).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

REAL_CASE = Path("../shared/data/real-mri/brats-gli-00001-000")
NIFTI_ROLES = {"T1": "t1n", "T1ce": "t1c", "T2": "t2w", "FLAIR": "t2f"}
SIZES = {"full": 1, "small": 4}
"""--size -> voxel stride taken from the 1 mm case."""
JOB_STAGES = ("loading", "preprocessing", "inference", "explaining", "encoding", "delivering")
LOAD_PARTS = ("read", "register", "resample")


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add ``bench study``."""
    parser = bench.add_parser(
        "study", help="one real study: storescu -> serve -> Orthanc, per stage, against Orthanc and one network pass",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="full",
                        help="full: 4 x 155 slices of 240x240; small: every fourth voxel (default full)")
    parser.add_argument("--case", type=Path, default=REAL_CASE,
                        help="folder with the BraTS NIfTI files (t1n, t1c, t2w, t2f)")
    parser.add_argument("--mc-samples", type=int, help="NEUROSEG_MC_SAMPLES for serve (default: the settings')")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the job (default 900)")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="work in DIR and keep it (logs, data folder)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the figures as JSON")
    parser.set_defaults(handler=run_bench_study)


def run_bench_study(args: argparse.Namespace) -> int:
    """Handler of ``neuroseg bench study``."""
    if not args.case.is_dir():
        print(f"neuroseg bench study: --case {args.case} does not exist (the BraTS NIfTI folder)", file=sys.stderr)
        return 2
    work = args.keep or Path(tempfile.mkdtemp(prefix="neuroseg-bench-study-"))
    try:
        report = run_study_bench(args.case, work, size=args.size, mc_samples=args.mc_samples, timeout=args.timeout)
    except BenchError as exc:
        print(f"neuroseg bench study: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(format_report(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, sort_keys=True))
    return 0 if report["job"]["state"] == "done" else 1


class BenchError(RuntimeError):
    """The bench could not run (a tool missing, a process that did not start, a job that never ended)."""


# --- processes ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.1)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def dcmtk(name: str) -> str:
    from neuroseg.listener.bench import find_dcmtk_tool

    path = find_dcmtk_tool(name)
    if path is None:
        raise BenchError(f"{name} is not installed; install DCMTK (Debian package dcmtk)")
    return path


@dataclass
class Orthanc:
    """A private Orthanc on free loopback ports (its own storage folder, no authentication)."""

    folder: Path
    ae_title: str = "ORTHANC"
    dicom_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    def start(self) -> "Orthanc":
        binary = shutil.which("Orthanc")
        if binary is None:
            raise BenchError("Orthanc is not installed (Debian package orthanc)")
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {"Name": "neuroseg-bench", "StorageDirectory": str(self.folder / "db"),
                  "IndexDirectory": str(self.folder / "db"), "HttpPort": self.http_port,
                  "DicomPort": self.dicom_port, "DicomAet": self.ae_title, "RemoteAccessAllowed": False,
                  "AuthenticationEnabled": False, "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True,
                  "DicomAlwaysAllowEcho": True, "UnknownSopClassAccepted": True, "StorageCompression": False,
                  "Plugins": []}
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(config))
        log = open(self.folder / "orthanc.log", "ab")  # noqa: SIM115 - the child keeps it
        self.process = subprocess.Popen([binary, f"--logdir={self.folder}", str(path)], stdout=log,
                                        stderr=subprocess.STDOUT)
        wait_until(lambda: port_open(self.dicom_port) and port_open(self.http_port), 60, "Orthanc start")
        return self

    def instance_count(self) -> int:
        import httpx

        return int(httpx.get(f"http://127.0.0.1:{self.http_port}/statistics", timeout=10).json()["CountInstances"])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


def storescu(folder: Path, port: int, called: str) -> float:
    """Push every file under ``folder`` in one association; return the wall time."""
    started = time.perf_counter()
    result = subprocess.run([dcmtk("storescu"), "-aet", "BENCH", "-aec", called, "+sd", "+r", "-nh",
                             "127.0.0.1", str(port), str(folder)], capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise BenchError(f"storescu to port {port} failed ({result.returncode}): {result.stderr[-2000:]}")
    return seconds


class PeakMemory:
    """Polls ``VmHWM`` (the kernel's peak resident set) of a process and its descendants."""

    def __init__(self, root_pid: int, interval: float = 0.25) -> None:
        self.root_pid = root_pid
        self.interval = interval
        self.peaks_mb: dict[int, float] = {}
        self.names: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-peak-rss", daemon=True)

    def start(self) -> "PeakMemory":
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        self.sample()
        self._stop.set()
        self._thread.join(5)
        return {f"{self.names[pid]} (pid {pid})": round(mb, 1) for pid, mb in sorted(self.peaks_mb.items())}

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        for pid in self._tree():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
            if match:
                self.peaks_mb[pid] = max(self.peaks_mb.get(pid, 0.0), int(match.group(1)) / 1024)
                self.names.setdefault(pid, _process_name(cmdline))

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    parent = int(entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(parent, []).append(int(entry.name))
        found, todo = [], [self.root_pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found


def _process_name(cmdline: list[bytes]) -> str:
    words = [word.decode(errors="replace") for word in cmdline if word]
    if "serve" in words:
        return "serve (listener + admin)"
    if "worker" in words or any("celery" in word for word in words):
        return "worker"
    return Path(words[0]).name if words else "?"


# --- the study ----------------------------------------------------------------------------------------


def write_study(case: Path, out_dir: Path, size: str) -> tuple[str, int]:
    """Write the case as four MR series under ``out_dir``; return (StudyInstanceUID, instance count)."""
    import numpy as np

    from neuroseg.dicom_out.mr_series import StudyIdentity, nifti_to_slices, write_mr_series

    stride = SIZES[size]
    identity = StudyIdentity(patient_name="Bench^Study", patient_id="NEUROSEG-BENCH",
                             uid_seed=f"neuroseg-bench-study-{size}-{time.time_ns()}",
                             study_description="MR BRAIN (bench study)")
    count = 0
    for number, (role, key) in enumerate(NIFTI_ROLES.items(), start=2):
        matches = sorted(case.glob(f"*-{key}.nii*"))
        if not matches:
            raise BenchError(f"{case} has no *-{key}.nii.gz file for {role}")
        array, affine = nifti_to_slices(matches[0])
        array = array[::stride, ::stride, ::stride]
        affine = affine.copy()
        affine[:3, :3] *= stride
        files = write_mr_series(np.ascontiguousarray(array), affine, out_dir / role, study=identity,
                                series_number=number, role=role)
        count += len(files)
    return identity.resolved_study_instance_uid, count


def plain_network_pass(shape_mm: tuple[float, float, float]) -> dict[str, Any]:
    """One plain pass of the network over the working-resolution grid of ``shape_mm``: the best of two."""
    import torch

    from neuroseg.model.checkpoint import SHIPPED_WEIGHTS
    from neuroseg.model.runtime import load_model, random_model, sliding_window

    model = load_model(None, "cpu") if SHIPPED_WEIGHTS.is_file() else random_model(device="cpu")
    shape = tuple(max(8, int(round(n / model.config.spacing_mm))) for n in shape_mm)
    inputs = torch.randn(1, model.config.in_channels, *shape, generator=torch.Generator().manual_seed(0))
    network = model.network.eval()
    best = float("inf")
    with torch.inference_mode():
        network(inputs[:, :, :16, :16, :16])  # kernel selection stays out of the timing
        for _ in range(2):
            started = time.perf_counter()
            sliding_window(network, inputs, model)
            best = min(best, time.perf_counter() - started)
    return {"seconds": best, "shape": list(shape), "spacing_mm": model.config.spacing_mm,
            "torch_threads": torch.get_num_threads()}


def _serve_env(data_dir: Path, orthanc: Orthanc, port: int, mc_samples: int | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("NEUROSEG_")}
    env.update(NEUROSEG_DATA_DIR=str(data_dir), NEUROSEG_PORT=str(port), NEUROSEG_BIND_ADDRESS="127.0.0.1",
               NEUROSEG_ADMIN_PORT=str(free_port()), NEUROSEG_STABLE_SECONDS="2",
               NEUROSEG_MAX_WAIT_SECONDS="120", NEUROSEG_ALLOWED_CALLING_AES="",
               NEUROSEG_DESTINATIONS=f"{orthanc.ae_title}@127.0.0.1:{orthanc.dicom_port}")
    if mc_samples is not None:
        env["NEUROSEG_MC_SAMPLES"] = str(mc_samples)
    for name in ("NEUROSEG_DEVICE", "NEUROSEG_CPU_BACKEND", "NEUROSEG_BROKER_URL"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def run_study_bench(case: Path, work: Path, *, size: str = "full", mc_samples: int | None = None,
                    timeout: float = 900.0) -> dict[str, Any]:
    """Run the bench in ``work``; return the report (see the module docstring)."""
    from neuroseg.worker.jobstore import FINAL_STATES, JobStore
    from neuroseg.worker.settings import Settings

    work.mkdir(parents=True, exist_ok=True)
    study_uid, instances = write_study(case, work / "send", size)
    orthanc = Orthanc(work / "orthanc").start()
    serve = None
    try:
        orthanc_seconds = storescu(work / "send", orthanc.dicom_port, orthanc.ae_title)
        received_by_orthanc = orthanc.instance_count()
        data_dir = work / "data"
        port = free_port()
        env = _serve_env(data_dir, orthanc, port, mc_samples)
        log = open(work / "serve.log", "ab")  # noqa: SIM115 - the child keeps it
        serve = subprocess.Popen([sys.executable, "-m", "neuroseg.worker", "serve", "--no-admin"], env=env,
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: port_open(port) or serve.poll() is not None, 120, "neuroseg serve start")
        if serve.poll() is not None:
            raise BenchError(f"neuroseg serve exited with {serve.returncode}; see {work / 'serve.log'}")
        memory = PeakMemory(serve.pid).start()
        push_started = time.time()
        receive_seconds = storescu(work / "send", port, "NEUROSEG")
        push_ended = push_started + receive_seconds
        settings = Settings(data_dir=data_dir, database_url=env.get("NEUROSEG_DATABASE_URL"))
        store = JobStore.from_settings(settings)

        def finished() -> bool:
            jobs = store.list_jobs(study_instance_uid=study_uid)
            return bool(jobs) and jobs[0].state in {state.value for state in FINAL_STATES}

        wait_until(finished, timeout, f"the job of study {study_uid}")
        peaks = memory.stop()
        job = store.get_job(store.list_jobs(study_instance_uid=study_uid)[0].id)
        delivered_instances = orthanc.instance_count() - received_by_orthanc
    finally:
        if serve is not None and serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(serve.pid, signal.SIGKILL)
                serve.wait(10)
        orthanc.stop()
    # the same head at any --size: the network's working grid does not depend on the voxel size sent
    network = plain_network_pass((155.0, 240.0, 240.0))
    return build_report(job, size=size, instances=instances, orthanc_seconds=orthanc_seconds,
                        receive_seconds=receive_seconds, push_ended=push_ended, stable_seconds=2.0,
                        peaks=peaks, network=network, delivered_instances=delivered_instances)


def build_report(job: Any, *, size: str, instances: int, orthanc_seconds: float, receive_seconds: float,
                 push_ended: float, stable_seconds: float, peaks: dict[str, float], network: dict[str, Any],
                 delivered_instances: int) -> dict[str, Any]:
    """The report: stages in seconds, the two baselines and the ratios against them."""
    created = job.created_at.replace(tzinfo=job.created_at.tzinfo or UTC).timestamp()
    started = job.started_at.replace(tzinfo=job.started_at.tzinfo or UTC).timestamp() if job.started_at else created
    finished = job.finished_at.replace(tzinfo=job.finished_at.tzinfo or UTC).timestamp() if job.finished_at \
        else started
    stages: dict[str, float] = {"receive": receive_seconds, "assemble": max(0.0, created - push_ended),
                                "queue_wait": max(0.0, started - created)}
    for record in job.stages:
        if record.name in JOB_STAGES and record.duration_s is not None:
            stages[record.name] = stages.get(record.name, 0.0) + record.duration_s
    load_parts = {}
    for event in job.events:
        if event.kind == "timing" and event.message.startswith("loading"):
            load_parts = {name: float(value) for name, value in re.findall(r"(\w+)=([\d.]+)s", event.message)}
    stages.update({f"loading.{name}": load_parts[name] for name in LOAD_PARTS if name in load_parts})
    complete_to_delivered = finished - created
    return {
        "size": size, "instances": instances, "study_instance_uid": job.study_instance_uid,
        "job": {"id": job.id, "state": job.state, "device": job.device, "model_version": job.model_version,
                "delivered_instances": delivered_instances},
        "stages_s": {name: round(value, 3) for name, value in stages.items()},
        "stable_seconds": stable_seconds,
        "complete_to_delivered_s": round(complete_to_delivered, 3),
        "processing_s": round(finished - started, 3),
        "baselines": {"orthanc_receive_s": round(orthanc_seconds, 3),
                      "network_pass_s": round(network["seconds"], 3), "network": network},
        "ratios": {"receive_vs_orthanc": round(receive_seconds / orthanc_seconds, 3),
                   "complete_to_delivered_vs_network_pass": round(complete_to_delivered / network["seconds"], 2),
                   "processing_vs_network_pass": round((finished - started) / network["seconds"], 2),
                   "inference_vs_network_pass": round(stages.get("inference", 0.0) / network["seconds"], 2)},
        "peak_rss_mb": peaks,
        "cpu_count": os.cpu_count(),
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as a table."""
    lines = [f"bench study ({report['size']}, {report['instances']} instances): job {report['job']['state']}, "
             f"{report['job']['delivered_instances']} objects delivered to Orthanc"]
    rows = [(name, seconds) for name, seconds in report["stages_s"].items()]
    rows.append(("complete -> delivered", report["complete_to_delivered_s"]))
    rows.append(("claimed -> delivered (no worker warm-up)", report["processing_s"]))
    rows.append(("baseline: Orthanc receives the study", report["baselines"]["orthanc_receive_s"]))
    rows.append(("baseline: one plain network pass", report["baselines"]["network_pass_s"]))
    width = max(len(name) for name, _ in rows)
    lines += [f"  {name:<{width}}  {seconds:8.2f} s" for name, seconds in rows]
    lines.append(f"  (assemble includes the listener's {report['stable_seconds']:.0f} s quiet time; queue_wait is "
                 "the fresh worker's warm-up before its first job)")
    lines += [f"  ratio {name}: {value}" for name, value in report["ratios"].items()]
    lines += [f"  peak RSS {name}: {mb:.0f} MB" for name, mb in report["peak_rss_mb"].items()]
    return "\n".join(lines)
