"""Queue depth and workers online, as the dashboard, /health and /metrics see them.

Two sources, combined:

- the broker, through :mod:`neuroseg.worker.queue`: the number of task
  messages waiting (:func:`neuroseg.worker.queue.queue_depth`) and the
  workers that answer an ``inspect().active()`` broadcast within a short
  timeout (with the job each one runs);
- the job store: jobs that are running, with the worker and device that
  claimed them and their last heartbeat.

Asking the broker takes up to about a second, so a snapshot is cached for a
few seconds and refreshed by at most one thread at a time.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from neuroseg.worker.settings import Settings

log = logging.getLogger(__name__)

INSPECT_TIMEOUT_S = 1.0


@dataclass
class WorkerInfo:
    """A worker as the dashboard shows it."""

    name: str
    online: bool
    source: str
    active_jobs: list[str] = field(default_factory=list)
    device: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "online": self.online, "source": self.source, "active_jobs": self.active_jobs,
            "device": self.device,
        }


@dataclass
class BrokerSnapshot:
    """What the broker said at ``checked_at`` (``time.time()``)."""

    checked_at: float
    broker_ok: bool
    broker_error: str = ""
    queue_depth: int | None = None
    queues: dict[str, int] = field(default_factory=dict)
    workers: list[WorkerInfo] = field(default_factory=list)


def read_broker(settings: Settings, timeout: float = INSPECT_TIMEOUT_S) -> BrokerSnapshot:
    """Ask the broker for the queue depth and the live workers; never raises."""
    from neuroseg.worker import queue

    now = time.time()
    depth = queue.queue_depth(settings)
    if depth is None:
        return BrokerSnapshot(checked_at=now, broker_ok=False,
                              broker_error=f"cannot reach {queue.broker_description(settings)}")
    workers: list[WorkerInfo] = []
    try:
        app = queue.get_celery_app(settings)
        active = app.control.inspect(timeout=timeout).active() or {}
        for name in sorted(active):
            jobs = []
            for task in active.get(name) or []:
                args = task.get("args") or []
                if isinstance(args, (list, tuple)) and args:
                    jobs.append(str(args[0]))
            workers.append(WorkerInfo(name=name, online=True, source="broker", active_jobs=jobs,
                                      device=device_from_worker_name(name)))
    except Exception as exc:  # noqa: BLE001 - the dashboard shows the job store's view instead
        log.warning("cannot inspect workers: %s", exc)
    return BrokerSnapshot(checked_at=now, broker_ok=True, queue_depth=depth,
                          queues={queue.QUEUE_NAME: depth}, workers=workers)


def device_from_worker_name(name: str) -> str:
    """The device in a node name ``neuroseg-<device>@host`` given by ``neuroseg worker`` (``cuda0`` -> ``cuda:0``)."""
    match = re.match(r"^neuroseg-(cpu|auto|cuda)(\d*)@", name)
    if match is None:
        return ""
    return match.group(1) + (f":{match.group(2)}" if match.group(2) else "")


class QueueMonitor:
    """Cached broker snapshots for one app, read in a background thread with a deadline.

    A broker that does not answer (Redis down: the client retries for many
    seconds) must not hold up a page, ``/health`` or a Prometheus scrape: a
    caller waits at most ``answer_within_s`` and then gets the previous
    snapshot, or one saying the broker did not answer in time.

    Parameters
    ----------
    settings: Settings
        Names the broker (through the Celery app).
    ttl_s: float
        How long a snapshot is reused.
    inspect_timeout_s: float
        How long to wait for workers to answer the inspect broadcast.
    answer_within_s: float
        The longest a caller waits for a fresh snapshot.
    """

    def __init__(self, settings: Settings, ttl_s: float = 5.0, inspect_timeout_s: float = INSPECT_TIMEOUT_S,
                 answer_within_s: float = 3.0) -> None:
        self.settings = settings
        self.ttl_s = ttl_s
        self.inspect_timeout_s = inspect_timeout_s
        self.answer_within_s = answer_within_s
        self._snapshot: BrokerSnapshot | None = None
        self._lock = threading.Lock()
        self._pending: threading.Event | None = None

    def _refresh(self, done: threading.Event) -> None:
        try:
            snapshot = read_broker(self.settings, timeout=self.inspect_timeout_s)
        except Exception as exc:  # noqa: BLE001 - never fail a page on the broker
            log.warning("cannot read the broker: %s", exc)
            snapshot = BrokerSnapshot(checked_at=time.time(), broker_ok=False,
                                      broker_error=f"{type(exc).__name__}: {exc}")
        with self._lock:
            self._snapshot = snapshot
            self._pending = None
        done.set()

    def snapshot(self) -> BrokerSnapshot:
        """The latest snapshot, refreshed when older than ``ttl_s`` (see the class docstring)."""
        with self._lock:
            current = self._snapshot
            if current is not None and time.time() - current.checked_at < self.ttl_s:
                return current
            pending = self._pending
            if pending is None:
                pending = self._pending = threading.Event()
                threading.Thread(target=self._refresh, args=(pending,), name="broker-monitor", daemon=True).start()
        if pending.wait(self.answer_within_s):
            return self._snapshot
        if current is not None:
            return current
        from neuroseg.worker import queue

        return BrokerSnapshot(
            checked_at=time.time(), broker_ok=False,
            broker_error=f"{queue.broker_description(self.settings)} did not answer within "
            f"{self.answer_within_s:.0f} s",
        )


def workers_view(snapshot: BrokerSnapshot, running_jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Workers online for the dashboard: broker workers plus those holding a running job.

    ``running_jobs`` are job summaries (dicts with ``id``, ``worker``, ``device``,
    ``state``, ``percent``) of jobs in a running state. A job's ``worker`` is
    ``host:pid`` while Celery names workers ``celery@host``; they are matched on
    the host name.
    """
    by_host: dict[str, dict[str, Any]] = {}
    result: list[dict[str, Any]] = []
    for worker in snapshot.workers:
        item = {**worker.to_dict(), "current_jobs": []}
        result.append(item)
        by_host.setdefault(worker.name.partition("@")[2] or worker.name, item)
    for job in running_jobs:
        host = str(job.get("worker", "")).rpartition(":")[0] or str(job.get("worker", ""))
        item = by_host.get(host)
        if item is None:
            item = {
                "name": job.get("worker") or "unknown worker", "online": True, "source": "job store",
                "active_jobs": [], "device": "", "current_jobs": [],
            }
            result.append(item)
            by_host[host] = item
        if job.get("device") and not item.get("device"):
            item["device"] = job["device"]
        item["current_jobs"].append(
            {"id": job["id"], "state": job.get("state"), "percent": job.get("percent")}
        )
    return result
