"""``neuroseg serve`` and storescu for the end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.services import REPO_ROOT, free_port, require_binary, wait_for_port


class ServeProcess:
    """``neuroseg serve`` as a subprocess on free ports."""

    def __init__(self, data_dir: Path, log_path: Path, broker_url: str | None = None, **env: str) -> None:
        self.port = free_port()
        self.admin_port = free_port()
        self.log_path = log_path
        self.env = {key: value for key, value in os.environ.items() if not key.startswith("NEUROSEG_")}
        self.env.update({
            "NEUROSEG_DATA_DIR": str(data_dir), "NEUROSEG_PORT": str(self.port),
            "NEUROSEG_ADMIN_PORT": str(self.admin_port), "NEUROSEG_STABLE_SECONDS": "2",
            "NEUROSEG_MAX_WAIT_SECONDS": "60", "NEUROSEG_MC_SAMPLES": "2", "NEUROSEG_JOB_STALE_SECONDS": "6",
        })
        if broker_url:
            self.env["NEUROSEG_BROKER_URL"] = broker_url
        self.env.update(env)
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> "ServeProcess":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "neuroseg.worker", "serve"], env=self.env,
                                        stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True)
        wait_for_port(self.port, timeout)
        return self

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM and wait; returns the exit status (None if it had to be killed)."""
        if self.process is None:
            return None
        process, self.process = self.process, None
        if process.poll() is not None:
            return process.returncode
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
            return None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def storescu(folder: Path, port: int, called: str = "NEUROSEG", calling: str = "STORESCU") -> None:
    """Send every file under ``folder`` with DCMTK storescu; raise with its output on failure."""
    result = subprocess.run(
        [require_binary("storescu"), "-aet", calling, "-aec", called, "+sd", "+r", "-nh",
         "127.0.0.1", str(port), str(folder)],
        capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise AssertionError(f"storescu failed ({result.returncode}): {result.stdout}\n{result.stderr}")
