"""Login, signed session cookies and CSRF protection for the admin app.

There is one secret, ``NEUROSEG_ADMIN_TOKEN``, at least
:data:`MIN_TOKEN_LENGTH` characters long (the app refuses to start with a
shorter one). A browser logs in by typing it once; the app then sets a session
cookie signed by ``itsdangerous`` (HMAC-SHA256, key derived from the token, so
changing the token logs everybody out). Scripts send the token itself as
``Authorization: Bearer <token>``.

Failed logins and failed bearer tokens are logged and counted per client
address by :class:`FailedAttemptThrottle`; an address with too many recent
failures gets ``429 Too Many Requests`` for its credentialed requests until the
window has passed. The count lives in the process (each admin process keeps its
own). ``/health`` and ``/metrics`` are never throttled.

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

import hashlib
import hmac
import logging
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from itsdangerous import BadData, URLSafeTimedSerializer

from neuroseg.worker.settings import SettingsError

log = logging.getLogger(__name__)

SESSION_COOKIE = "neuroseg_session"
LOGIN_CSRF_COOKIE = "neuroseg_login_csrf"
CSRF_HEADER = "X-CSRF-Token"
SESSION_MAX_AGE_SECONDS = 12 * 3600
MIN_TOKEN_LENGTH = 16
GENERATE_TOKEN_COMMAND = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'
TOKEN_NOT_SET_MESSAGE = (
    "The admin login is disabled because no admin token is configured. Set the environment "
    f"variable NEUROSEG_ADMIN_TOKEN (for example to the output of `{GENERATE_TOKEN_COMMAND}`) "
    "and restart `neuroseg admin`."
)
_SESSION_SALT = "neuroseg admin session v1"
# Paths that answer without credentials and are never throttled (load balancers, Prometheus).
OPEN_PATHS = frozenset({"/health", "/metrics"})


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


def check_admin_token(admin_token: str | None) -> None:
    """Raise :class:`SettingsError` for a token shorter than :data:`MIN_TOKEN_LENGTH` (none is allowed).

    The message says how to generate a good one and never repeats the token.
    """
    if admin_token and len(admin_token) < MIN_TOKEN_LENGTH:
        raise SettingsError(
            f"NEUROSEG_ADMIN_TOKEN has {len(admin_token)} characters; the admin app needs at least "
            f"{MIN_TOKEN_LENGTH}: generate one with {GENERATE_TOKEN_COMMAND}"
        )


class Authenticator:
    """Checks the admin token and signs/verifies session cookies.

    Parameters
    ----------
    admin_token: str or None
        The configured secret; ``None`` (or empty) disables login entirely.
        A shorter one than :data:`MIN_TOKEN_LENGTH` raises :class:`SettingsError`.
    max_age_seconds: float
        Lifetime of a session cookie.
    """

    def __init__(self, admin_token: str | None, max_age_seconds: float = SESSION_MAX_AGE_SECONDS) -> None:
        check_admin_token(admin_token)
        self._token = (admin_token or "").encode("utf-8")
        self.max_age_seconds = max_age_seconds
        self._serializer = (
            URLSafeTimedSerializer(
                self._token, salt=_SESSION_SALT, signer_kwargs={"digest_method": hashlib.sha256}
            )
            if self._token
            else None
        )

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
        """The signed, timestamped cookie value for ``session``."""
        if self._serializer is None:
            raise RuntimeError("cannot sign a session without an admin token")
        return self._serializer.dumps({"u": session.user, "c": session.csrf_token})

    def loads(self, value: str | None, now: float | None = None) -> Session | None:
        """The session in a cookie value, or ``None`` if it is missing, forged or expired.

        ``issued_at`` is the signing time the cookie carries (whole seconds).
        """
        if not value or self._serializer is None:
            return None
        try:
            data, signed_at = self._serializer.loads(value, return_timestamp=True)
            session = Session(user=str(data["u"]), csrf_token=str(data["c"]), issued_at=signed_at.timestamp())
        except (BadData, KeyError, TypeError):
            return None
        now = time.time() if now is None else now
        if not (-1 <= now - session.issued_at <= self.max_age_seconds):  # -1: the stamp is whole seconds
            return None
        return session


class FailedAttemptThrottle:
    """Failed logins and bearer tokens per client address, in this process.

    After ``max_failures`` failures within ``window_seconds`` an address must
    wait until its oldest counted failure leaves the window. The count is kept
    in memory, so each admin process counts on its own and a restart forgets.
    """

    def __init__(
        self, max_failures: int = 10, window_seconds: float = 300.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_failures = max_failures
        self.window_seconds = window_seconds
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float]:
        failures = self._failures.get(client, deque())
        while failures and now - failures[0] >= self.window_seconds:
            failures.popleft()
        if not failures:
            self._failures.pop(client, None)
        return failures

    def retry_after(self, client: str) -> int:
        """Whole seconds ``client`` must wait before its next attempt; 0 when it may try now."""
        with self._lock:
            now = self._clock()
            failures = self._recent(client, now)
            if len(failures) < self.max_failures:
                return 0
            return max(1, math.ceil(failures[-self.max_failures] + self.window_seconds - now))

    def record_failure(self, client: str) -> int:
        """Count a failure of ``client``; returns its failures within the window."""
        with self._lock:
            now = self._clock()
            failures = self._recent(client, now)
            failures.append(now)
            self._failures[client] = failures
            if len(self._failures) > 10_000:  # forget addresses whose failures are all old
                for address in list(self._failures):
                    self._recent(address, now)
            return len(failures)


def client_address(request: Request) -> str:
    """The peer's address (the proxy's ``X-Forwarded-For`` when uvicorn runs with ``--proxy-headers``)."""
    return request.client.host if request.client else "unknown"


def is_credential_attempt(request: Request) -> bool:
    """Whether ``request`` tries credentials: the login form or an ``Authorization`` header."""
    if request.url.path in OPEN_PATHS:
        return False
    if request.method == "POST" and request.url.path == "/login":
        return True
    return "authorization" in request.headers


def credentials_rejected(request: Request, status_code: int) -> bool:
    """Whether the answer to ``request`` refused its credentials (a wrong token in the form or header)."""
    if request.method == "POST" and request.url.path == "/login":
        return status_code == status.HTTP_401_UNAUTHORIZED
    return bool(getattr(request.state, "credentials_rejected", False))


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
        request.state.credentials_rejected = True  # counted by the throttle (see app.py)
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
