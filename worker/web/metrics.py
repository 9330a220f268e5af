"""``/metrics`` (Prometheus) and ``/health``, both open without a login and free of patient data.

The metrics are computed from the job store and the broker at scrape time by
a custom collector, so every admin process reports the same counts whatever
process did the work (a counter kept in memory would only count this
process). Metric names:

========================================== ========= =============================================
``neuroseg_studies_received_total``        counter   distinct studies handed to the queue
``neuroseg_jobs``                          gauge     jobs per ``state``
``neuroseg_jobs_review_recommended``       gauge     jobs whose quality estimate recommends review
``neuroseg_stage_duration_seconds``        histogram finished stage runs per ``stage``
``neuroseg_delivery_failures_total``       counter   delivery attempts that did not deliver all
``neuroseg_queue_depth``                   gauge     task messages waiting in the broker
``neuroseg_workers_online``                gauge     workers that answered or hold a running job
``neuroseg_disk_free_bytes``               gauge     free bytes where ``path`` is (data, spool)
``neuroseg_up``                            gauge     1 when ``component`` (job_store, broker) answers
========================================== ========= =============================================
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


#: Histogram buckets for stage durations, in seconds (a stage takes from under a second to an hour).
STAGE_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600)
#: /health calls the spool disk low below this many free bytes.
LOW_DISK_BYTES = 2 * 1024**3


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent (the spool may not exist yet)."""
    path = Path(path).resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_usage(path: Path) -> dict[str, Any]:
    usage = shutil.disk_usage(_existing(path))
    return {"path": str(path), "free_bytes": usage.free, "total_bytes": usage.total}


class NeurosegCollector(Collector):
    """Reads the job store and the broker on every scrape (see the module docstring)."""

    def __init__(self, app_state: Any) -> None:
        self.state = app_state

    def collect(self) -> Iterator[Metric]:
        settings = self.state.settings
        store_up = GaugeMetricFamily("neuroseg_up", "1 when the component answers", labels=["component"])
        try:
            store = self.state.jobstore.get()
            counts = store.counts_by_state()
            studies = store.study_count()
            durations = store.stage_duration_histogram(STAGE_BUCKETS)
            delivery_failures = store.delivery_failure_count()
            flagged = store.review_count()
        except Exception as exc:  # noqa: BLE001 - a scrape reports the outage instead of failing
            log.warning("metrics: job store unavailable: %s", exc)
            store_up.add_metric(["job_store"], 0)
        else:
            store_up.add_metric(["job_store"], 1)
            yield CounterMetricFamily(
                "neuroseg_studies_received", "Distinct studies handed to the queue", value=studies
            )
            jobs = GaugeMetricFamily("neuroseg_jobs", "Jobs in each state", labels=["state"])
            for state, count in sorted(counts.items()):
                jobs.add_metric([state], count)
            yield jobs
            yield GaugeMetricFamily("neuroseg_jobs_review_recommended",
                                    "Jobs whose quality estimate recommends review (delivered all the same)",
                                    value=flagged)
            histogram = HistogramMetricFamily(
                "neuroseg_stage_duration_seconds", "Duration of finished stage runs", labels=["stage"]
            )
            for stage, (under, count, total) in sorted(durations.items()):
                buckets = [(str(float(bound)), float(value)) for bound, value in zip(STAGE_BUCKETS, under)]
                histogram.add_metric([stage], [*buckets, ("+Inf", float(count))], sum_value=total)
            yield histogram
            yield CounterMetricFamily(
                "neuroseg_delivery_failures", "Delivery attempts that did not deliver every object",
                value=delivery_failures,
            )
        snapshot = self.state.monitor.snapshot()
        store_up.add_metric(["broker"], 1 if snapshot.broker_ok else 0)
        yield store_up
        if snapshot.queue_depth is not None:
            yield GaugeMetricFamily("neuroseg_queue_depth", "Task messages waiting in the broker",
                                    value=snapshot.queue_depth)
        running_workers = 0
        try:
            running_workers = len(_workers(self.state, snapshot))
        except Exception as exc:  # noqa: BLE001
            log.debug("metrics: cannot list workers: %s", exc)
        yield GaugeMetricFamily("neuroseg_workers_online", "Workers that answered or hold a running job",
                                value=running_workers)
        disk = GaugeMetricFamily("neuroseg_disk_free_bytes", "Free bytes on the disk of a folder", labels=["path"])
        for name, path in (("data", settings.data_dir), ("spool", settings.spool_dir)):
            disk.add_metric([name], disk_usage(path)["free_bytes"])
        yield disk


def _workers(state: Any, snapshot) -> list[dict[str, Any]]:
    from neuroseg.worker.jobstore import RUNNING_STATES
    from neuroseg.worker.web.monitor import workers_view

    running = [job.to_dict() for job in
               state.jobstore.get().list_jobs(state=[item.value for item in RUNNING_STATES], limit=200)]
    return workers_view(snapshot, running)


def build_registry(app_state: Any) -> CollectorRegistry:
    """A registry of its own per app (tests build several apps in one process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NeurosegCollector(app_state))
    return registry


def metrics(request: Request) -> Response:
    state = request.app.state
    registry = getattr(state, "metrics_registry", None)
    if registry is None:
        registry = state.metrics_registry = build_registry(state)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def liveness() -> dict[str, str]:
    """For a liveness probe: a broker or database outage must not restart the admin app."""
    return {"status": "alive"}


def health(request: Request) -> JSONResponse:
    """200 when the job store and the broker answer (``status`` ok or degraded), else 503.

    ``degraded`` means the service runs but needs attention: no worker is
    online, or the spool disk has less than 2 GiB free.
    """
    state = request.app.state
    settings = state.settings
    checks: dict[str, dict[str, Any]] = {}
    try:
        store = state.jobstore.get()
        store.counts_by_state()
        checks["database"] = {"ok": True, "detail": _database_description(settings)}
    except Exception as exc:  # noqa: BLE001
        checks["database"] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}
    snapshot = state.monitor.snapshot()
    checks["broker"] = {"ok": snapshot.broker_ok, "detail": snapshot.broker_error or "reachable",
                        "queue_depth": snapshot.queue_depth}
    disk = disk_usage(settings.spool_dir)
    checks["spool_disk"] = {"ok": disk["free_bytes"] >= LOW_DISK_BYTES, **disk}
    try:
        workers = _workers(state, snapshot) if checks["database"]["ok"] else list(snapshot.workers)
    except Exception:  # noqa: BLE001
        workers = []
    checks["workers"] = {"ok": bool(workers), "count": len(workers),
                         "names": [item["name"] if isinstance(item, dict) else item.name for item in workers]}
    essential = checks["database"]["ok"] and checks["broker"]["ok"]
    overall = "down" if not essential else ("ok" if all(item["ok"] for item in checks.values()) else "degraded")
    body = {"status": overall, "checked_at": datetime.now(UTC).isoformat(), "checks": checks}
    return JSONResponse(body, status_code=200 if essential else 503)


def register_operations(app: FastAPI) -> None:
    """Add ``/metrics``, ``/health`` and ``/health/live`` to ``app`` (open to anonymous callers)."""
    tags = ["operations"]
    app.add_api_route("/metrics", metrics, methods=["GET"], tags=tags, summary="Prometheus metrics (text format)")
    app.add_api_route("/health", health, methods=["GET"], tags=tags,
                      summary="Broker, job store, spool disk space and workers")
    app.add_api_route("/health/live", liveness, methods=["GET"], tags=tags,
                      summary="Liveness: the process answers (checks nothing else)")


def _database_description(settings) -> str:
    if settings.database_url:
        from sqlalchemy.engine import make_url

        return make_url(settings.database_url).render_as_string(hide_password=True)
    return "SQLite in the data folder"
