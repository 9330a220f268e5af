"""``neuroseg admin``: the admin web app (dashboard, 3D viewer, API, /health, /metrics) under uvicorn."""

from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger(__name__)


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add ``neuroseg admin``."""
    parser = commands.add_parser(
        "admin",
        help="run the admin web app (dashboard, 3D viewer, /health, /metrics)",
        description="Serve the admin web app on NEUROSEG_ADMIN_HOST:NEUROSEG_ADMIN_PORT "
        "(127.0.0.1:8080 by default). Set NEUROSEG_ADMIN_TOKEN (16 characters or more) to log in; "
        "without it no patient data is shown.",
    )
    parser.add_argument("--host", help="bind address (default: NEUROSEG_ADMIN_HOST)")
    parser.add_argument("--port", type=int, help="port (default: NEUROSEG_ADMIN_PORT)")
    parser.add_argument("--proxy-headers", action="store_true",
                        help="trust X-Forwarded-Proto/For from a reverse proxy that terminates TLS")
    parser.set_defaults(handler=run_admin)


def run_admin(args: argparse.Namespace) -> int:
    """Start uvicorn with :func:`neuroseg.worker.web.create_app`; returns when it stops (Ctrl-C, SIGTERM)."""
    import uvicorn

    from neuroseg.worker.cli import package_version
    from neuroseg.worker.settings import SettingsError, get_settings
    from neuroseg.worker.web import create_app

    settings = get_settings()
    try:
        app = create_app(settings)
    except SettingsError as exc:  # a short admin token: refuse to start, in one line
        print(f"neuroseg: configuration error: {exc}", file=sys.stderr)
        return 2
    host = args.host or settings.admin_host
    port = args.port or settings.admin_port
    log.info("neuroseg %s admin app on http://%s:%d (data in %s)", package_version(), host, port, settings.data_dir)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("the admin app listens on %s: put it behind TLS (a reverse proxy) outside a trusted network", host)
    config = uvicorn.Config(app, host=host, port=port, proxy_headers=args.proxy_headers,
                            forwarded_allow_ips="*" if args.proxy_headers else None,
                            log_level=logging.getLevelName(logging.getLogger().level).lower(),
                            access_log=False)
    uvicorn.Server(config).run()
    return 0
