"""The admin web app: dashboard, job pages, the 3D viewer, JSON API, /health and /metrics.

Build it with :func:`create_app` and serve it with any ASGI server
(``neuroseg admin`` runs uvicorn on ``admin_host:admin_port``). Everything
except ``/health``, ``/metrics``, ``/login`` and the static assets requires a
login (see :mod:`neuroseg.worker.web.auth`), so no patient data reaches an
anonymous user. The JSON API is described by the OpenAPI document at
``/api/openapi.json``; the Swagger/ReDoc pages are off because they load their
JavaScript from a CDN, which a closed hospital network cannot reach.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.responses import Response

from neuroseg.worker.settings import Settings
from neuroseg.worker.web.auth import (
    Authenticator,
    FailedAttemptThrottle,
    LoginRequired,
    client_address,
    credentials_rejected,
    is_credential_attempt,
)
from neuroseg.worker.web.monitor import QueueMonitor
from neuroseg.worker.web.viewer_data import ResultFolder, ResultNotFound, job_result_folder

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent
STATIC_DIR = WEB_DIR / "static"
TEMPLATE_DIR = WEB_DIR / "templates"

# No inline script and no eval anywhere. Styles may be inline: Plotly sets them from JavaScript.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


class SecurityHeaders(BaseHTTPMiddleware):
    """Adds CSP, anti-framing, nosniff and referrer headers to every response."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        headers = response.headers
        headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        headers["X-Frame-Options"] = "DENY"
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Referrer-Policy"] = "same-origin"
        headers["Cross-Origin-Opener-Policy"] = "same-origin"
        headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
        if not request.url.path.startswith("/static/"):
            headers.setdefault("Cache-Control", "no-store")
        return response


class ThrottleFailedAuthentication(BaseHTTPMiddleware):
    """Logs and counts wrong tokens per client address; answers 429 while an address has too many."""

    def __init__(self, app, throttle: FailedAttemptThrottle) -> None:  # noqa: ANN001 - any ASGI app
        super().__init__(app)
        self.throttle = throttle

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if not is_credential_attempt(request):
            return await call_next(request)
        client = client_address(request)
        wait = self.throttle.retry_after(client)
        if wait:
            log.warning("admin authentication from %s refused for %d s: too many failures", client, wait)
            from fastapi.responses import JSONResponse

            return JSONResponse(
                {"detail": f"too many failed logins from {client}; try again in {wait} s"},
                status_code=429, headers={"Retry-After": str(wait)},
            )
        response = await call_next(request)
        if credentials_rejected(request, response.status_code):
            failures = self.throttle.record_failure(client)
            log.warning("failed admin authentication from %s on %s (%d within %.0f s)", client,
                        request.url.path, failures, self.throttle.window_seconds)
        return response


class JobStoreProvider:
    """Opens the job store on first use, so the app starts (and /health answers) when the DB is down."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store = None
        self._lock = threading.Lock()

    def get(self):  # -> neuroseg.worker.jobstore.JobStore
        with self._lock:
            if self._store is None:
                from neuroseg.worker.jobstore import JobStore

                self._store = JobStore.from_settings(self.settings)
            return self._store


class ResultCache:
    """The last few jobs' :class:`ResultFolder` objects, so their arrays load once per viewer session."""

    def __init__(self, results_dir: Path, size: int = 3) -> None:
        self.results_dir = results_dir
        self.size = size
        self._items: OrderedDict[str, ResultFolder] = OrderedDict()
        self._lock = threading.Lock()
        self._warming: set[str] = set()

    def get(self, job_id: str) -> ResultFolder:
        """The result folder of ``job_id``; raises :class:`ResultNotFound` when there is none."""
        folder = job_result_folder(self.results_dir, job_id)
        with self._lock:
            item = self._items.get(job_id)
            if item is not None and item.folder == folder and item.created_stamp == item.stamp():
                self._items.move_to_end(job_id)
                return item
        item = ResultFolder(folder, cache_dir=self.results_dir / job_id / "viewer-cache")
        with self._lock:
            self._items[job_id] = item
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return item

    def warm(self, job_id: str) -> None:
        """Build the job's viewer data in a background thread (the job page calls this), once per job."""
        with self._lock:
            if job_id in self._warming:
                return
            self._warming.add(job_id)
        threading.Thread(target=self._warm, args=(job_id,), name=f"viewer-warm-{job_id[:8]}", daemon=True).start()

    def _warm(self, job_id: str) -> None:
        from neuroseg.worker.web.viewer_data import MESH_NAMES, preferred_sequence

        try:
            result = self.get(job_id)
            result.manifest()
            for key in ("seg", preferred_sequence(result.available())):
                if key:
                    result.volume_blob(key)
            for name in MESH_NAMES:
                result.mesh_blob(name)
        except Exception as exc:  # noqa: BLE001 - the viewer builds what is missing on request
            log.info("could not prepare the viewer data of job %s: %s", job_id, exc)
        finally:
            with self._lock:
                self._warming.discard(job_id)


def create_app(settings: Settings) -> FastAPI:
    """Build the admin app for ``settings``.

    Parameters
    ----------
    settings: Settings
        Read for the admin token, the job store URL, the broker, the data
        folders and the Flower link; never read from the environment here.

    Returns
    -------
    FastAPI
        The ASGI app. ``app.state`` holds ``settings``, ``authenticator``,
        ``throttle``, ``jobstore`` (a lazy provider), ``monitor``, ``results`` and ``templates``.

    Raises
    ------
    SettingsError
        When the admin token is set but shorter than 16 characters.
    """
    from neuroseg.worker.web import api, followup_pages, pages, viewer
    from neuroseg.worker.web.metrics import register_operations

    app = FastAPI(
        title="neuroseg admin",
        summary="Queue, jobs, deliveries and the 3D tumour viewer of neuroseg",
        version=_package_version(),
        openapi_url="/api/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    token = settings.admin_token.get_secret_value() if settings.admin_token is not None else None
    app.state.settings = settings
    app.state.authenticator = Authenticator(token)  # raises SettingsError for a short token
    app.state.throttle = FailedAttemptThrottle()
    if not app.state.authenticator.enabled:
        log.warning("NEUROSEG_ADMIN_TOKEN is not set: the admin app shows no patient data until it is")
    app.state.jobstore = JobStoreProvider(settings)
    app.state.monitor = QueueMonitor(settings)
    app.state.results = ResultCache(settings.results_dir)
    templates = Environment(
        loader=FileSystemLoader(str(TEMPLATE_DIR)), autoescape=select_autoescape(["html"]), auto_reload=False
    )
    templates.globals["version"] = app.version
    app.state.templates = templates

    app.add_middleware(ThrottleFailedAuthentication, throttle=app.state.throttle)
    app.add_middleware(SecurityHeaders)  # added last: outermost, so 429 answers carry the headers too

    @app.exception_handler(LoginRequired)
    async def _to_login(request: Request, exc: LoginRequired) -> RedirectResponse:
        from urllib.parse import quote

        return RedirectResponse(f"/login?next={quote(exc.next_path, safe='')}", status_code=303)

    @app.exception_handler(ResultNotFound)
    async def _no_result(request: Request, exc: ResultNotFound) -> Response:
        from fastapi.responses import JSONResponse

        return JSONResponse({"detail": str(exc)}, status_code=404)

    register_operations(app)
    from sqlalchemy.exc import SQLAlchemyError

    @app.exception_handler(SQLAlchemyError)
    async def _store_down(request: Request, exc: SQLAlchemyError) -> Response:
        from fastapi.responses import JSONResponse

        log.warning("job store unavailable: %s", exc)
        return JSONResponse({"detail": f"job store unavailable: {type(exc).__name__}"}, status_code=503)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        wants_html = "text/html" in request.headers.get("accept", "") and not request.url.path.startswith("/api/")
        if exc.status_code == 404 and wants_html:
            return pages.render(request, "not_found.html", status_code=404, what="page at this address")
        return await http_exception_handler(request, exc)

    app.include_router(pages.router)
    app.include_router(api.router)
    app.include_router(viewer.router)
    app.include_router(followup_pages.router)  # per-patient time line (follow-up)
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    return app


def _package_version() -> str:
    from neuroseg.worker.cli import package_version

    return package_version()
