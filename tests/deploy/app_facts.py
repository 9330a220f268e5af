"""Facts the deployment files must agree with, read from the code itself."""

from __future__ import annotations

from neuroseg.worker.settings import load_settings


def admin_route_paths() -> set[str]:
    """Every path the admin app serves (the app is built, not started)."""
    from neuroseg.worker.web.app import create_app

    app = create_app(load_settings())
    return {getattr(route, "path", "") for route in app.routes}


def celery_queue_name() -> str:
    """The queue the worker consumes; KEDA scales on its Redis list length."""
    from neuroseg.worker.queue import QUEUE_NAME

    return QUEUE_NAME
