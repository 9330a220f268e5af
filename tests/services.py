"""Real peers for the tests, started on loopback on free ports.

Each helper starts a private server (its own port and folder) so tests can
stop and restart it without touching anything else on the machine. They need
the Debian packages that ``.ci/run`` installs: ``redis-server``, ``orthanc``,
``dcmtk`` (and ``orthanc-dicomweb`` for DICOMweb).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def free_port() -> int:
    """A TCP port that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``predicate`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_for_port(port: int, timeout: float = 30.0, host: str = "127.0.0.1") -> None:
    wait_for(lambda: port_open(port, host), timeout, f"port {host}:{port}")


def require_binary(name: str) -> str:
    """A system program (DCMTK, Redis, Orthanc, ...), never a same-named script of this venv."""
    from neuroseg.listener.bench import find_dcmtk_tool

    path = find_dcmtk_tool(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed; .ci/run installs it (see README)")
    return path


@dataclass
class RedisServer:
    """A private redis-server on a free loopback port, with optional AOF persistence."""

    folder: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [require_binary("redis-server"), "--bind", "127.0.0.1", "--port", str(self.port),
             "--dir", str(self.folder), "--appendonly", "yes", "--save", "", "--daemonize", "no",
             "--logfile", str(self.folder / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, 20)
        return self

    def stop(self, kill: bool = False) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill() if kill else self.process.terminate()
            self.process.wait(20)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


DICOMWEB_PLUGIN_FOLDERS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))


def dicomweb_plugin() -> str:
    """Orthanc's DICOMweb plugin library (Debian package ``orthanc-dicomweb``)."""
    for folder in DICOMWEB_PLUGIN_FOLDERS:
        found = sorted(folder.glob("libOrthancDicomWeb.so*"))
        if found:
            return str(found[0])
    raise RuntimeError("Orthanc's DICOMweb plugin is not installed; .ci/run installs orthanc-dicomweb")


@dataclass
class OrthancServer:
    """A private Orthanc PACS on free loopback ports with its own storage folder.

    ``modalities`` maps a name to ``(ae_title, host, port)`` so Orthanc can send
    to (and accept from) our listener.
    """

    folder: Path
    ae_title: str = "ORTHANC"
    dicom_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    modalities: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    dicomweb: bool = False
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb (QIDO/WADO/STOW-RS) base URL; needs ``dicomweb=True``."""
        if not self.dicomweb:
            raise RuntimeError("this Orthanc was started without its DICOMweb plugin (dicomweb=True)")
        return f"{self.url}/dicom-web"

    @property
    def destination(self) -> str:
        """This PACS as a neuroseg destination string."""
        return f"{self.ae_title}@127.0.0.1:{self.dicom_port}"

    def write_config(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "neuroseg-test",
            "StorageDirectory": str(self.folder / "db"),
            "IndexDirectory": str(self.folder / "db"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.ae_title,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpServerEnabled": True,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "UnknownSopClassAccepted": True,
            "StorageCompression": False,
            "Plugins": [dicomweb_plugin()] if self.dicomweb else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "DicomModalities": {name: list(value) for name, value in self.modalities.items()},
        }
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        return path

    def start(self) -> "OrthancServer":
        config = self.write_config()
        log = open(self.folder / "orthanc.log", "ab")
        self.process = subprocess.Popen(
            [require_binary("Orthanc"), "--logdir=" + str(self.folder), str(config)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        wait_for(self._ready, 60, f"Orthanc on port {self.http_port}")
        wait_for_port(self.dicom_port, 30)
        return self

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/system", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        self.process = None

    def get(self, path: str) -> object:
        response = httpx.get(f"{self.url}{path}", timeout=30)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: object) -> object:
        content = body if isinstance(body, (bytes, str)) else json.dumps(body)
        response = httpx.post(f"{self.url}{path}", content=content, timeout=120)
        response.raise_for_status()
        return response.json()

    def instances(self) -> list[dict]:
        """Every instance Orthanc holds, with its main DICOM tags."""
        return [self.get(f"/instances/{iid}") for iid in self.get("/instances")]
