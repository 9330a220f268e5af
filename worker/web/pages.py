"""HTML pages: login, dashboard, job (study) page and the 3D viewer page.

Pages are thin shells rendered by Jinja2 (autoescaped); the data comes from
the JSON API and is refreshed by the page scripts in ``static/`` without a
full reload. No page carries inline script, so the CSP can forbid it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse

from neuroseg.worker.jobstore import STAGE_ORDER, TIMED_STEPS
from neuroseg.worker.web.auth import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    TOKEN_NOT_SET_MESSAGE,
    PageUser,
    get_authenticator,
    same_origin,
    session_from_request,
)

log = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)

MAX_FORM_BYTES = 4096


def render(request: Request, template: str, *, status_code: int = 200, **context: Any) -> HTMLResponse:
    session = session_from_request(request)
    settings = request.app.state.settings
    html = request.app.state.templates.get_template(template).render(
        request=request, csrf_token=session.csrf_token if session else "", logged_in=session is not None,
        flower_url=settings.flower_url, stages=[stage.value for stage in STAGE_ORDER],
        timed_steps=[step.value for step in TIMED_STEPS], **context,
    )
    return HTMLResponse(html, status_code=status_code)


def _safe_next(value: str | None) -> str:
    """Only local absolute paths may be a redirect target: no ``//host``, no backslash, no space or
    control character (browsers drop a tab, turning ``/<tab>/host`` into ``//host``)."""
    if (not value or not value.startswith("/") or value.startswith("//") or "\\" in value
            or any(ord(character) < 0x21 or ord(character) == 0x7F for character in value)):
        return "/"
    return value


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/") -> HTMLResponse:
    authenticator = get_authenticator(request)
    login_csrf = secrets.token_urlsafe(24)
    response = render(
        request, "login.html", next_path=_safe_next(next), login_csrf=login_csrf,
        enabled=authenticator.enabled, setup_message=TOKEN_NOT_SET_MESSAGE, error="",
        status_code=200 if authenticator.enabled else 503,
    )
    response.set_cookie(LOGIN_CSRF_COOKIE, login_csrf, httponly=True, samesite="strict", secure=_secure(request),
                        max_age=3600, path="/login")
    return response


@router.post("/login", response_model=None)
async def login(request: Request) -> HTMLResponse | RedirectResponse:
    authenticator = get_authenticator(request)
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, detail="login form too large")
    form = {key: values[0] for key, values in parse_qs(body.decode("utf-8", "replace")).items()}
    next_path = _safe_next(form.get("next"))
    cookie_csrf = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    form_csrf = form.get("csrf", "")
    client = request.client.host if request.client else "?"

    def again(error: str, code: int) -> HTMLResponse:
        login_csrf = secrets.token_urlsafe(24)
        response = render(request, "login.html", next_path=next_path, login_csrf=login_csrf,
                          enabled=authenticator.enabled, setup_message=TOKEN_NOT_SET_MESSAGE, error=error,
                          status_code=code)
        response.set_cookie(LOGIN_CSRF_COOKIE, login_csrf, httponly=True, samesite="strict",
                            secure=_secure(request), max_age=3600, path="/login")
        return response

    if not authenticator.enabled:
        return again("", status.HTTP_503_SERVICE_UNAVAILABLE)
    if (not cookie_csrf or not hmac.compare_digest(cookie_csrf.encode(), form_csrf.encode())
            or not same_origin(request)):
        log.warning("login from %s refused: missing or wrong form token", client)
        return again("Your login form expired. Please try again.", status.HTTP_400_BAD_REQUEST)
    if not authenticator.check_token(form.get("token", "")):
        log.warning("failed admin login from %s", client)
        await asyncio.sleep(0.5)  # slows down guessing
        return again("That token is not correct.", status.HTTP_401_UNAUTHORIZED)
    log.info("admin login from %s", client)
    response = RedirectResponse(next_path, status_code=status.HTTP_303_SEE_OTHER)
    response.set_cookie(SESSION_COOKIE, authenticator.dumps(authenticator.new_session()), httponly=True,
                        samesite="strict", secure=_secure(request), max_age=int(authenticator.max_age_seconds),
                        path="/")
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout")
async def logout(request: Request) -> RedirectResponse:
    session = session_from_request(request)
    body = await request.body()
    form = {key: values[0] for key, values in parse_qs(body[:MAX_FORM_BYTES].decode("utf-8", "replace")).items()}
    if session is not None and (not hmac.compare_digest(form.get("csrf", "").encode(), session.csrf_token.encode())
                                or not same_origin(request)):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="missing or wrong form token")
    response = RedirectResponse("/login", status_code=status.HTTP_303_SEE_OTHER)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/", response_class=HTMLResponse)
def dashboard(request: Request, user: PageUser) -> HTMLResponse:
    return render(request, "dashboard.html", page="dashboard")


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str, user: PageUser) -> HTMLResponse:
    from neuroseg.worker.web.viewer_data import has_viewer_data

    store = request.app.state.jobstore.get()
    if store.job_state(job_id) is None:
        return render(request, "not_found.html", status_code=404, what=f"job {job_id}")
    if has_viewer_data(request.app.state.settings.results_dir, job_id):
        request.app.state.results.warm(job_id)  # so the 3D viewer opens fast
    return render(request, "job.html", page="job", job_id=job_id)


@router.get("/studies/{study_instance_uid}", response_model=None)
def study_page(request: Request, study_instance_uid: str, user: PageUser) -> HTMLResponse | RedirectResponse:
    store = request.app.state.jobstore.get()
    jobs = store.list_jobs(study_instance_uid=study_instance_uid, limit=1)
    if not jobs:
        return render(request, "not_found.html", status_code=404, what=f"study {study_instance_uid}")
    return RedirectResponse(f"/jobs/{jobs[0].id}", status_code=status.HTTP_303_SEE_OTHER)


@router.get("/jobs/{job_id}/viewer", response_class=HTMLResponse)
def viewer_page(request: Request, job_id: str, user: PageUser) -> HTMLResponse:
    from neuroseg.worker.web.viewer_data import has_viewer_data

    store = request.app.state.jobstore.get()
    detail = store.get_job(job_id)
    if detail is None:
        return render(request, "not_found.html", status_code=404, what=f"job {job_id}")
    if not has_viewer_data(request.app.state.settings.results_dir, job_id):
        return render(request, "not_found.html", status_code=404,
                      what=f"results of job {job_id} (the job has not finished, or its results were pruned)")
    request.app.state.results.warm(job_id)  # builds meshes while the browser loads the page's scripts
    return render(request, "viewer.html", page="viewer", job=detail)
