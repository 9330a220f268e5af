"""DICOM peers for the reliability tests: senders over several associations and a
C-ECHO probe that measures how fast the listener answers while it is loaded."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage, Verification

from neuroseg.dicom_out.send import Peer, echo

CALLED_AE = "NEUROSEG"


def make_ae(calling_ae_title: str, timeout: float = 30) -> AE:
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    # one context per transfer syntax, so files in either can be sent as they are
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(MRImageStorage, ImplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    return ae


def send_files(port: int, files: Iterable[Path], calling_ae_title: str) -> dict[Path, int | None]:
    """Send ``files`` over one association; the status each got (None: not sent, the association died)."""
    ae = make_ae(calling_ae_title)
    assoc = ae.associate("127.0.0.1", port, ae_title=CALLED_AE)
    statuses: dict[Path, int | None] = {}
    for path in files:
        if not assoc.is_established:
            statuses[path] = None
            continue
        try:
            response = assoc.send_c_store(path)
        except (RuntimeError, OSError, ValueError, AttributeError):
            statuses[path] = None
            continue
        statuses[path] = int(response.Status) if "Status" in response else None
    if assoc.is_established:
        assoc.release()
    return statuses


def echo_once(port: int, calling_ae_title: str = "PROBE", timeout: float = 10) -> float | None:
    """Seconds from opening an association to the C-ECHO answer; None if it failed (the service's own SCU)."""
    return echo(Peer(CALLED_AE, "127.0.0.1", port, calling_ae_title=calling_ae_title, timeout=timeout))


class EchoProbe:
    """C-ECHO in a fresh association every ``interval`` seconds, from a process of its own
    (:mod:`tests.reliability.echo_probe`), until stopped; ``latencies`` in seconds."""

    def __init__(self, port: int, interval: float = 0.25, calling_ae_title: str = "PROBE") -> None:
        self.port, self.interval, self.calling_ae_title = port, interval, calling_ae_title
        self.latencies: list[float] = []
        self.failures = 0
        self._process = None
        self._out: Path | None = None

    def start(self) -> "EchoProbe":
        import subprocess
        import sys
        import tempfile

        from tests.services import REPO_ROOT

        self._out = Path(tempfile.mkstemp(prefix="echo-probe-", suffix=".json")[1])
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.echo_probe", str(self.port), str(self._out), str(self.interval)],
            cwd=REPO_ROOT)
        return self

    def stop(self) -> "EchoProbe":
        import json
        import signal

        if self._process is None:
            return self
        self._process.send_signal(signal.SIGTERM)
        self._process.wait(60)
        self._process = None
        results = json.loads(self._out.read_text() or "[]")
        self._out.unlink()
        self.latencies = [value for value in results if value is not None]
        self.failures = sum(1 for value in results if value is None)
        return self

    @property
    def worst(self) -> float:
        return max(self.latencies, default=float("inf"))


class ListenerProcess:
    """``neuroseg listen`` in its own process (as in production: peers do not share its GIL)."""

    def __init__(self, data_dir: Path, log_path: Path, port: int | None = None, **env: str) -> None:
        import os

        from tests.services import free_port

        self.port = port or free_port()
        self.log_path = log_path
        self.env = {key: value for key, value in os.environ.items() if not key.startswith("NEUROSEG_")}
        self.env.update({"NEUROSEG_DATA_DIR": str(data_dir), "NEUROSEG_PORT": str(self.port),
                         "NEUROSEG_BIND_ADDRESS": "127.0.0.1"})
        self.env.update(env)
        self.process = None

    def start(self, timeout: float = 60) -> "ListenerProcess":
        import subprocess
        import sys

        from tests.services import REPO_ROOT, wait_for_port

        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "neuroseg.worker", "listen", "--drain-seconds", "10"],
                                        env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        wait_for_port(self.port, timeout)
        return self

    def stop(self, kill: bool = False, timeout: float = 60) -> int | None:
        import signal

        if self.process is None:
            return None
        process, self.process = self.process, None
        if process.poll() is None:
            process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        return process.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def storescu(port: int, paths: list[Path], calling_ae_title: str, timeout: float = 300) -> int:
    """Send files with DCMTK storescu (a separate process, like a PACS); returns its exit status."""
    import subprocess

    from tests.services import require_binary

    result = subprocess.run([require_binary("storescu"), "-aet", calling_ae_title, "-aec", CALLED_AE, "-nh",
                             "127.0.0.1", str(port), *map(str, paths)], capture_output=True, timeout=timeout)
    return result.returncode


def echoscu_seconds(port: int, calling_ae_title: str = "PROBE", timeout: float = 10) -> float | None:
    """Wall time of one DCMTK echoscu run (process start, association, C-ECHO, release); None on failure."""
    import subprocess

    from tests.services import require_binary

    started = time.monotonic()
    result = subprocess.run([require_binary("echoscu"), "-aet", calling_ae_title, "-aec", CALLED_AE,
                             "-to", str(int(timeout)), "127.0.0.1", str(port)], capture_output=True, timeout=timeout + 5)
    elapsed = time.monotonic() - started
    return elapsed if result.returncode == 0 else None
