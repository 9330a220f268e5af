"""The admin web app: dashboard, job pages, 3D viewer, JSON API, /health and /metrics."""

from neuroseg.worker.web.app import create_app

__all__ = ["create_app"]
