"""Serve the OHIF viewer (the built ``dist/`` of the ``@ohif/app`` npm package) in front of a DICOMweb PACS.

One small HTTP server on loopback serves OHIF's files, answers unknown paths
with ``index.html`` (OHIF routes in the browser), serves an ``app-config.js``
that points OHIF's DICOMweb data source at ``/dicom-web`` on the same origin,
and proxies ``/dicom-web/...`` to the PACS, so the browser never makes a
cross-origin request. ``.ci/run`` puts the package in ``OHIF_APP_DIR``.
"""

from __future__ import annotations

import json
import mimetypes
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.services import REPO_ROOT

OHIF_VERSION = "3.13.2"
DEFAULT_OHIF_DIR = REPO_ROOT / ".cache" / "ohif" / f"app-{OHIF_VERSION}"
DICOMWEB_PREFIX = "/dicom-web"
# hop-by-hop and length headers that the proxy must not copy through
SKIPPED_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host"}


def ohif_dist() -> Path | None:
    """The built viewer: ``$OHIF_APP_DIR/dist`` (``.ci/run`` sets it), else the default cache folder."""
    folder = Path(os.environ.get("OHIF_APP_DIR") or DEFAULT_OHIF_DIR) / "dist"
    return folder if (folder / "index.html").is_file() else None


def app_config(name: str, **options: object) -> str:
    """OHIF's ``window.config`` with one DICOMweb data source at ``/dicom-web`` of this origin."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "dicomweb",
        "configuration": {
            "friendlyName": name, "name": "orthanc",
            "wadoUriRoot": DICOMWEB_PREFIX, "qidoRoot": DICOMWEB_PREFIX, "wadoRoot": DICOMWEB_PREFIX,
            "qidoSupportsIncludeField": False, "supportsReject": False, "imageRendering": "wadors",
            "thumbnailRendering": "wadors", "enableStudyLazyLoad": True, "supportsFuzzyMatching": False,
            "supportsWildcard": True, "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True},
        },
    }
    config = {
        "routerBasename": "/", "extensions": [], "modes": [], "showStudyList": True,
        "maxNumberOfWebWorkers": 2, "showWarningMessageForCrossOrigin": False, "showCPUFallbackMessage": False,
        "showLoadingIndicator": True, "strictZSpacingForVolumeViewport": True, "showErrorDetails": "always",
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": "dicomweb", "dataSources": [source], **options,
    }
    return f"window.config = {json.dumps(config, indent=1)};\n"


class OhifServer:
    """OHIF plus a same-origin DICOMweb proxy on ``http://127.0.0.1:<port>``."""

    def __init__(self, dist: Path, dicomweb_url: str, port: int = 0, **config_options: object) -> None:
        self.dist = dist.resolve()
        self.dicomweb_url = dicomweb_url.rstrip("/")
        self.config = app_config("neuroseg test PACS", **config_options).encode()
        self.client = httpx.Client(timeout=120)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="ohif-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def viewer_url(self, study_instance_uid: str, series_instance_uid: str | None = None) -> str:
        """The viewer of one study; ``series_instance_uid`` makes OHIF open that series first."""
        url = f"{self.url}/viewer?StudyInstanceUIDs={study_instance_uid}"
        return url + (f"&SeriesInstanceUIDs={series_instance_uid}" if series_instance_uid else "")

    def start(self) -> "OhifServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.client.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = urlsplit(self.path).path
                if path.startswith(DICOMWEB_PREFIX + "/") or path == DICOMWEB_PREFIX:
                    self._proxy()
                elif path == "/app-config.js":
                    self._send(200, server.config, "application/javascript")
                else:
                    self._file(path)

            def _file(self, path: str) -> None:
                target = (server.dist / path.lstrip("/")).resolve()
                if not target.is_relative_to(server.dist) or not target.is_file():
                    target = server.dist / "index.html"  # a browser route of the single-page app
                kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
                self._send(200, target.read_bytes(), kind)

            def _proxy(self) -> None:
                url = server.dicomweb_url + self.path[len(DICOMWEB_PREFIX):]
                headers = {key: value for key, value in self.headers.items() if key.lower() not in SKIPPED_HEADERS}
                # Orthanc writes the URLs in its answers (BulkDataURI, RetrieveURL) for this origin then
                headers["Forwarded"] = f"host={self.headers.get('Host', '')};proto=http"
                try:
                    response = server.client.get(url, headers=headers)
                except httpx.HTTPError as exc:
                    self._send(502, f"PACS unreachable: {exc}".encode(), "text/plain")
                    return
                self.send_response(response.status_code)
                for key, value in response.headers.items():
                    if key.lower() not in SKIPPED_HEADERS:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(response.content)))
                self.end_headers()
                self.wfile.write(response.content)

            def _send(self, status: int, body: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler
