"""Login, signed session cookies and CSRF protection for the admin app.

There is one secret, ``NEUROSEG_ADMIN_TOKEN``. A browser logs in by typing it
once; the app then sets a session cookie signed with HMAC-SHA256 under a key
derived from the token (so changing the token logs everybody out). Scripts send
the token itself as ``Authorization: Bearer <token>``.

CSRF: the cookie is ``SameSite=Strict`` and ``HttpOnly``; every state-changing
request made with the cookie must also carry the session's CSRF token in the
``X-CSRF-Token`` header (pages read it from a ``<meta>`` tag), compared in
constant time, and an ``Origin`` header, when present, must be our own origin.
Requests authenticated with the bearer token carry no ambient credentials and
need no CSRF token. The login form itself uses a double-submit cookie.

Without a configured token nobody can log in and no patient data is shown:
the login page says how to set the token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

log = logging.getLogger(__name__)

SESSION_COOKIE = "neuroseg_session"
LOGIN_CSRF_COOKIE = "neuroseg_login_csrf"
CSRF_HEADER = "X-CSRF-Token"
SESSION_MAX_AGE_SECONDS = 12 * 3600
TOKEN_NOT_SET_MESSAGE = (
    "The admin login is disabled because no admin token is configured. Set the environment "
    "variable NEUROSEG_ADMIN_TOKEN (for example to the output of "
    "`python -c \"import secrets; print(secrets.token_urlsafe(32))\"`) and restart `neuroseg admin`."
)
_KEY_LABEL = b"neuroseg admin session v1"


@dataclass(frozen=True)
class Session:
    """A logged-in browser session, as carried by the signed cookie."""

    user: str
    csrf_token: str
    issued_at: float


@dataclass(frozen=True)
class Principal:
    """Who made a request: a browser ``session`` or a script with the ``bearer`` token."""

    user: str
    method: str
    session: Session | None = None


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Authenticator:
    """Checks the admin token and signs/verifies session cookies.

    Parameters
    ----------
    admin_token: str or None
        The configured secret; ``None`` (or empty) disables login entirely.
    max_age_seconds: float
        Lifetime of a session cookie.
    """

    def __init__(self, admin_token: str | None, max_age_seconds: float = SESSION_MAX_AGE_SECONDS) -> None:
        self._token = (admin_token or "").encode("utf-8")
        self.max_age_seconds = max_age_seconds
        self._key = hmac.new(self._token, _KEY_LABEL, hashlib.sha256).digest() if self._token else b""
        if self._token and len(self._token) < 16:
            log.warning("NEUROSEG_ADMIN_TOKEN is shorter than 16 characters; use a long random token")

    @property
    def enabled(self) -> bool:
        """Whether a token is configured (otherwise nobody can log in)."""
        return bool(self._token)

    def check_token(self, candidate: str) -> bool:
        """Constant-time comparison of ``candidate`` with the configured token."""
        if not self.enabled:
            return False
        return hmac.compare_digest(candidate.encode("utf-8"), self._token)

    def new_session(self, user: str = "admin") -> Session:
        return Session(user=user, csrf_token=secrets.token_urlsafe(32), issued_at=time.time())

    def dumps(self, session: Session) -> str:
        """The cookie value for ``session``: base64 payload, a dot, base64 HMAC."""
        if not self.enabled:
            raise RuntimeError("cannot sign a session without an admin token")
        payload = json.dumps(
            {"u": session.user, "c": session.csrf_token, "t": session.issued_at}, separators=(",", ":")
        ).encode("utf-8")
        signature = hmac.new(self._key, payload, hashlib.sha256).digest()
        return f"{_b64encode(payload)}.{_b64encode(signature)}"

    def loads(self, value: str | None, now: float | None = None) -> Session | None:
        """The session in a cookie value, or ``None`` if it is missing, forged or expired."""
        if not value or not self.enabled or "." not in value:
            return None
        payload_text, _, signature_text = value.partition(".")
        try:
            payload = _b64decode(payload_text)
            signature = _b64decode(signature_text)
        except (ValueError, TypeError):
            return None
        expected = hmac.new(self._key, payload, hashlib.sha256).digest()
        if not hmac.compare_digest(signature, expected):
            return None
        try:
            data = json.loads(payload)
            session = Session(user=str(data["u"]), csrf_token=str(data["c"]), issued_at=float(data["t"]))
        except (ValueError, KeyError, TypeError):
            return None
        now = time.time() if now is None else now
        if not (0 <= now - session.issued_at <= self.max_age_seconds):
            return None
        return session


def get_authenticator(request: Request) -> Authenticator:
    return request.app.state.authenticator


def session_from_request(request: Request) -> Session | None:
    """The valid session of this request's cookie, if any."""
    return get_authenticator(request).loads(request.cookies.get(SESSION_COOKIE))


def _bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


class LoginRequired(Exception):
    """Raised by page dependencies; the app answers with a redirect to the login page."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


def _principal(request: Request) -> Principal | None:
    authenticator = get_authenticator(request)
    token = _bearer_token(request)
    if token is not None:
        if authenticator.check_token(token):
            return Principal(user="token", method="bearer")
        log.warning("rejected bearer token from %s", request.client.host if request.client else "?")
        return None
    session = session_from_request(request)
    if session is not None:
        return Principal(user=session.user, method="session", session=session)
    return None


def require_api_user(request: Request) -> Principal:
    """FastAPI dependency for the JSON API: 403 without a configured token, 401 when not logged in."""
    if not get_authenticator(request).enabled:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=TOKEN_NOT_SET_MESSAGE)
    principal = _principal(request)
    if principal is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="log in at /login or send 'Authorization: Bearer <NEUROSEG_ADMIN_TOKEN>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return principal


def require_page_user(request: Request) -> Principal:
    """FastAPI dependency for HTML pages: redirects to the login page when not logged in."""
    principal = _principal(request) if get_authenticator(request).enabled else None
    if principal is None:
        next_path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(next_path)
    return principal


def same_origin(request: Request) -> bool:
    """False when the request names a foreign ``Origin`` (or, lacking one, ``Referer``)."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        return origin != "null"
    own = f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}"
    return origin == own or origin.startswith(own + "/")


def require_csrf(request: Request, principal: Annotated[Principal, Depends(require_api_user)]) -> Principal:
    """FastAPI dependency for state-changing API calls (CSRF-safe, see module docstring)."""
    if principal.method == "bearer":
        return principal
    sent = request.headers.get(CSRF_HEADER, "")
    expected = principal.session.csrf_token if principal.session is not None else ""
    if not sent or not expected or not hmac.compare_digest(sent.encode("utf-8"), expected.encode("utf-8")):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"missing or wrong {CSRF_HEADER} header")
    if not same_origin(request):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="cross-origin request refused")
    return principal


ApiUser = Annotated[Principal, Depends(require_api_user)]
PageUser = Annotated[Principal, Depends(require_page_user)]
CsrfUser = Annotated[Principal, Depends(require_csrf)]
