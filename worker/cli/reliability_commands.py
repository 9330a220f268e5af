"""``neuroseg bench reliability``: push studies through a listener while injecting
faults, fuzz the C-STORE handler, and report what was lost (must be 0).

Two modes:

- run the scenario (default): a ``neuroseg listen`` child process with the real
  queue (job store + broker from the settings' data folder, a temporary one by
  default) receives ``--studies`` small synthetic studies from ``--senders``
  concurrent associations; halfway through it is killed with SIGKILL and
  restarted, and the peers resend what was not acknowledged (as a PACS does).
  Meanwhile a probe times C-ECHO; its idle latency, measured first in the same
  run, is the baseline. Then ``--fuzz-cases`` mutated instances (bit flips,
  truncation, cut-out bytes of real or synthetic files) go through the real
  C-STORE handler in-process.
- ``--summary FILE``: print the summary the reliability test suite writes
  (``test-artifacts/reliability-summary.json``) as the same table.

The exit status is 1 if any acknowledged instance was lost or any study was
enqueued twice, else 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

log = logging.getLogger(__name__)

FIELDS = (
    ("studies", "studies sent"),
    ("instances", "instances acknowledged"),
    ("faults_injected", "faults injected"),
    ("instances_lost", "instances lost (must be 0)"),
    ("duplicates_delivered", "duplicate jobs/deliveries (must be 0)"),
    ("instances_never_stored", "instances never stored after 20 tries"),
    ("studies_not_enqueued", "studies not enqueued"),
    ("fuzz_cases", "fuzz cases"),
    ("fuzz_crashes", "fuzz crashes (must be 0)"),
    ("echo_idle_median_s", "C-ECHO idle median, s (baseline)"),
    ("echo_max_seconds", "C-ECHO worst under load, s"),
    ("echo_ratio", "worst under load / idle median"),
)


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add ``bench reliability``."""
    parser = bench.add_parser(
        "reliability", help="push studies through a listener killed mid-push, fuzz C-STORE; report losses",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--studies", type=int, default=12, help="synthetic studies to push (default 12)")
    parser.add_argument("--senders", type=int, default=4, help="concurrent associations (default 4)")
    parser.add_argument("--fuzz-cases", type=int, default=2000, help="mutated instances for the handler")
    parser.add_argument("--dicom-dir", type=Path, help="real DICOM files to mutate (default: the synthetic ones)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the fuzzer")
    parser.add_argument("--summary", type=Path, metavar="FILE",
                        help="print a reliability test-suite summary instead of running the scenario")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the figures as JSON")
    parser.set_defaults(handler=run_bench_reliability)


def run_bench_reliability(args: argparse.Namespace) -> int:
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # one line per PDU otherwise
    if args.summary is not None:
        totals = json.loads(args.summary.read_text())["totals"]
    else:
        totals = run_scenario(args)
    print_table(totals)
    if args.json is not None:
        args.json.write_text(json.dumps(totals, indent=2, sort_keys=True))
    failed = ("instances_lost", "duplicates_delivered", "fuzz_crashes", "instances_never_stored",
              "studies_not_enqueued")
    return 1 if any(totals.get(key, 0) for key in failed) else 0


def print_table(totals: dict[str, object]) -> None:
    width = max(len(label) for _, label in FIELDS)
    for key, label in FIELDS:
        if key in totals:
            value = totals[key]
            text = f"{value:.3f}" if isinstance(value, float) else str(value)
            print(f"{label:<{width}}  {text}")


# --- the scenario -------------------------------------------------------------------------------
def run_scenario(args: argparse.Namespace) -> dict[str, object]:
    from tqdm import tqdm

    from neuroseg.worker.settings import get_settings

    base = get_settings()
    work = Path(tempfile.mkdtemp(prefix="neuroseg-bench-reliability-"))
    data_dir = work / "data"
    studies = build_studies(work / "send", args.studies)
    files = {uid: paths for uid, paths in studies.items()}
    port = _free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("NEUROSEG_")}
    env.update(NEUROSEG_DATA_DIR=str(data_dir), NEUROSEG_PORT=str(port), NEUROSEG_BIND_ADDRESS="127.0.0.1",
               NEUROSEG_STABLE_SECONDS="2", NEUROSEG_MAX_WAIT_SECONDS="120",
               NEUROSEG_ALLOWED_CALLING_AES="", NEUROSEG_AE_TITLE=base.ae_title)
    if base.broker_url:
        env["NEUROSEG_BROKER_URL"] = base.broker_url
    listener = _start_listener(env, port, work / "listen-1.log")
    idle = [echo_seconds(port, base.ae_title) for _ in range(10)]
    idle = [value for value in idle if value is not None]
    probe = _Probe(port, base.ae_title).start()
    acknowledged: dict[Path, bool] = {}
    lock = threading.Lock()
    half = sum(len(paths) for paths in files.values()) // 2
    faults = 0
    progress = tqdm(total=sum(len(paths) for paths in files.values()), desc="pushing", unit="instance")

    def on_ack(path: Path) -> None:
        nonlocal listener, faults
        with lock:
            acknowledged[path] = True
            progress.update(1)
            if len(acknowledged) == half and faults == 0:
                faults += 1
                listener.send_signal(signal.SIGKILL)  # kill -9 mid-push
                listener.wait(30)
                listener = _start_listener(env, port, work / "listen-2.log")

    def push(paths: list[Path]) -> None:
        remaining = list(paths)
        for _ in range(20):  # a PACS retries what was not acknowledged
            remaining = [path for path in remaining if not send_one_association(port, base.ae_title, [path], on_ack)]
            if not remaining:
                return
            time.sleep(0.5)

    with ThreadPoolExecutor(args.senders) as pool:
        list(pool.map(push, files.values()))
    progress.close()
    spool = data_dir / "spool"
    _wait(lambda: len(list(spool.glob("*/.handed-over.json"))) >= len(files), 120)
    probe.stop()
    listener.send_signal(signal.SIGTERM)
    listener.wait(60)

    sent = {path.name for paths in files.values() for path in paths}
    stored = {path.name for path in spool.rglob("*.dcm")}
    acked_names = {path.name for path in acknowledged}
    jobs = _job_counts(data_dir, env)
    duplicates = sum(count - 1 for count in jobs.values() if count > 1)
    fuzz = fuzz_store_handler(args, [path for paths in files.values() for path in paths])
    worst = max(probe.latencies, default=float("nan"))
    idle_median = statistics.median(idle) if idle else float("nan")
    return {
        "studies": len(files),
        "instances": len(acked_names),
        "faults_injected": faults,
        "instances_lost": len(acked_names - stored),
        "instances_never_stored": len(sent - stored),
        "duplicates_delivered": duplicates,
        "studies_not_enqueued": sum(1 for uid in files if jobs.get(uid, 0) == 0),
        "fuzz_cases": fuzz["cases"],
        "fuzz_crashes": fuzz["crashes"],
        "fuzz_accepted": fuzz["accepted"],
        "echo_idle_median_s": round(idle_median, 3),
        "echo_max_seconds": round(worst, 3),
        "echo_ratio": round(worst / idle_median, 1) if idle else float("nan"),
        "echo_failures": probe.failures,
    }


def build_studies(root: Path, count: int) -> dict[str, list[Path]]:
    """``count`` small two-series studies (T1ce, FLAIR; 8 slices of 16x16) written as files."""
    import numpy as np

    from neuroseg.dicom_out.mr_series import StudyIdentity, build_mr_series

    studies = {}
    affine = np.eye(4)  # axial: 4 mm between slices, 2 mm pixels
    affine[:3, 0], affine[:3, 1], affine[:3, 2], affine[:3, 3] = [0, 0, 4.0], [0, 2.0, 0], [2.0, 0, 0], [-16, -16, -16]
    rng = np.random.default_rng(0)
    for number in range(count):
        identity = StudyIdentity(uid_seed=f"bench-reliability-{number}", patient_id=f"BENCH{number}")
        paths = []
        for series_number, role in enumerate(("T1ce", "FLAIR"), start=1):
            volume = rng.integers(0, 400, size=(8, 16, 16)).astype(np.int16)
            for ds in build_mr_series(volume, affine, study=identity, series_number=series_number, role=role):
                folder = root / identity.resolved_study_instance_uid
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / f"{ds.SOPInstanceUID}.dcm"
                ds.save_as(path, enforce_file_format=True)
                paths.append(path)
        studies[identity.resolved_study_instance_uid] = paths
    return studies


def send_one_association(port: int, called_ae: str, paths: list[Path], on_ack) -> bool:  # noqa: ANN001
    """Send ``paths`` in one association; True when every one got Success."""
    from neuroseg.dicom_out.send import DeliveryUnavailable, Peer, deliver, load_objects

    objects = load_objects(paths)
    by_uid = dict(zip((obj.sop_instance_uid for obj in objects), paths, strict=True))

    def acknowledge(result) -> None:  # noqa: ANN001
        if result.status == 0x0000:
            on_ack(by_uid[result.sop_instance_uid])

    try:
        results = deliver(objects, Peer(called_ae, "127.0.0.1", port, calling_ae_title="BENCHSCU", timeout=20),
                          on_result=acknowledge)
    except (DeliveryUnavailable, RuntimeError, OSError):
        return False
    return all(result.status == 0x0000 for result in results)


def echo_seconds(port: int, called_ae: str) -> float | None:
    from neuroseg.dicom_out.send import Peer, echo

    return echo(Peer(called_ae, "127.0.0.1", port, calling_ae_title="BENCHPROBE", timeout=10))


class _Probe:
    """C-ECHO every 0.25 s; a failed echo while the listener restarts is counted, not timed."""

    def __init__(self, port: int, called_ae: str) -> None:
        self.port, self.called_ae = port, called_ae
        self.latencies: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "_Probe":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            elapsed = echo_seconds(self.port, self.called_ae)
            if elapsed is None:
                self.failures += 1
            else:
                self.latencies.append(elapsed)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def fuzz_store_handler(args: argparse.Namespace, fallback: list[Path]) -> dict[str, int]:
    """Mutated instances through the real C-STORE handler; a 0x0110 answer counts as a crash."""
    from types import SimpleNamespace

    import pydicom
    from tqdm import tqdm

    from neuroseg.listener.scp import StoreStatus, handle_store
    from neuroseg.listener.spool import Spool

    paths = sorted(path for path in args.dicom_dir.rglob("*") if path.is_file()) if args.dicom_dir else fallback
    rng = random.Random(args.seed)
    seeds = []
    for path in rng.sample(paths, min(len(paths), 40)):
        raw = path.read_bytes()
        try:
            meta = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - not a usable seed
            continue
        offset = raw.find(b"DICM") + 4
        group_length = int.from_bytes(raw[offset + 8:offset + 12], "little")
        start = offset + 12 + group_length
        seeds.append((raw[start:], str(meta.file_meta.TransferSyntaxUID), str(meta.SOPClassUID),
                      str(meta.SOPInstanceUID)))
    counts = {"cases": 0, "crashes": 0, "accepted": 0}
    root = Path(tempfile.mkdtemp(prefix="neuroseg-fuzz-"))
    logging.getLogger("neuroseg.listener.scp").setLevel(logging.ERROR)
    for _ in tqdm(range(args.fuzz_cases), desc="fuzzing C-STORE", unit="case"):
        dataset, syntax, sop_class, sop_instance = rng.choice(seeds)
        data = bytearray(dataset)
        for _ in range(rng.randint(1, 4)):
            if not data:
                break
            kind = rng.randrange(3)
            if kind == 0:
                position = rng.randrange(min(len(data), 4096) if rng.random() < 0.9 else len(data))
                data[position] ^= 1 << rng.randrange(8)
            elif kind == 1:
                del data[rng.randrange(len(data)):]
            else:
                start = rng.randrange(len(data))
                del data[start:start + rng.randint(1, 64)]
        spool = Spool(root / str(counts["cases"]), durable=False)
        event = SimpleNamespace(
            assoc=SimpleNamespace(requestor=SimpleNamespace(ae_title="FUZZ", address="127.0.0.1", port=0)),
            context=SimpleNamespace(transfer_syntax=syntax, abstract_syntax=sop_class),
            request=SimpleNamespace(AffectedSOPInstanceUID=sop_instance),
            encoded_dataset=lambda include_meta=False, data=bytes(data): data)
        status = handle_store(event, spool)
        counts["cases"] += 1
        if status == StoreStatus.PROCESSING_FAILURE:
            counts["crashes"] += 1
        elif status == StoreStatus.SUCCESS:
            counts["accepted"] += 1
            stored = list(spool.instance_files())
            if len(stored) != 1 or not stored[0].read_bytes().endswith(bytes(data)):
                counts["crashes"] += 1
    return counts


# --- helpers ----------------------------------------------------------------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_listener(env: dict[str, str], port: int, log_path: Path) -> subprocess.Popen:
    import socket

    process = subprocess.Popen([sys.executable, "-m", "neuroseg.worker", "listen", "--drain-seconds", "5"],
                               env=env, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)

    def listening() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False

    if not _wait(listening, 60):
        raise RuntimeError(f"the listener did not start; see {log_path}")
    return process


def _wait(predicate, timeout: float) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _job_counts(data_dir: Path, env: dict[str, str]) -> dict[str, int]:
    """Jobs per study in the job store the listener wrote to."""
    from neuroseg.worker.jobstore import JobStore
    from neuroseg.worker.settings import load_settings

    settings = load_settings(data_dir=data_dir, broker_url=env.get("NEUROSEG_BROKER_URL"))
    counts: dict[str, int] = {}
    for job in JobStore.from_settings(settings).list_jobs(limit=100_000):
        counts[job.study_instance_uid] = counts.get(job.study_instance_uid, 0) + 1
    return counts
