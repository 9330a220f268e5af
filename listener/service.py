"""Run the listener in-process: the DICOM server plus the study assembly thread.

``neuroseg listen`` runs a :class:`ListenerService` in the foreground;
``neuroseg serve`` and the integration tests run one next to other services::

    service = ListenerService(settings, enqueue=my_enqueue).start()
    ...
    service.stop()   # finishes the open associations, then stops
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from neuroseg.listener.assembly import Enqueue, EventSink, HandOff, StudyAssembler, default_enqueue
from neuroseg.listener.classify import RuleSet
from neuroseg.listener.scp import DicomServer, start_server
from neuroseg.listener.header_check import InstanceHeader
from neuroseg.listener.spool import Spool, StoredInstance
from neuroseg.worker.settings import Settings

log = logging.getLogger(__name__)


def _warm_up_queue(settings: Settings) -> None:
    """Import the queue and open the job store and the Celery app before accepting associations.

    Done lazily, the first hand-off held the GIL for about a second (SQLAlchemy and
    Celery imports) and stalled every open association; the reliability load test
    saw C-ECHO answers of 1.3 s. A job store that cannot be opened yet is not fatal
    here: the hand-off retries it.
    """
    try:
        from neuroseg.worker.queue import warm_up

        warm_up(settings)
    except Exception as exc:  # noqa: BLE001 - the hand-off reports and retries it
        log.warning("queue warm-up failed (%s); the first hand-off will try again", exc)


class ListenerService:
    """The DICOM listener with its spool and study assembly, in background threads.

    Parameters
    ----------
    settings: Settings
        Our AE title, port, allow-list, TLS, spool folder and assembly timings.
    enqueue: callable, optional
        ``enqueue(settings, manifest) -> job id`` for complete studies; default
        ``neuroseg.worker.queue.enqueue_study`` (imported when first needed).
        It must be idempotent for the same manifest.
    rules: RuleSet, optional
        Classification rules; default: ``settings.classification_rules`` or the
        shipped rules. They are validated here, before anything starts.
    on_event: callable, optional
        ``on_event(kind, message, study_instance_uid)`` receives every decision
        (association accepted/rejected, instance refused, study opened/complete
        with its roles, hand-off failed), e.g. ``JobStore.record_event``-like
        sinks for the admin timeline. Its errors are logged and ignored.

    Raises
    ------
    RulesError
        If the classification rules are invalid.
    """

    def __init__(self, settings: Settings, enqueue: Enqueue | None = None, rules: RuleSet | None = None,
                 on_event: EventSink | None = None) -> None:
        self.settings = settings
        self.rules = rules if rules is not None else RuleSet.load(settings.classification_rules)
        self.spool = Spool(settings.spool_dir, journal_bytes=settings.intake_journal_mb * 1024 * 1024)
        self.on_event = on_event
        self.assembler = StudyAssembler(settings, self.spool, self.rules, enqueue, on_event=on_event)
        self._server: DicomServer | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        """The bound TCP port (valid once started)."""
        if self._server is None:
            raise RuntimeError("the listener is not running; call start() first")
        return self._server.address[1]

    def start(self) -> "ListenerService":
        """Recover the spool, resume open studies, then start accepting associations.

        Raises
        ------
        OSError
            If the spool cannot be created or the port cannot be bound.
        ValueError
            If the TLS files cannot be loaded.
        """
        if self._server is not None:
            raise RuntimeError("the listener is already running")
        self.spool.root.mkdir(parents=True, exist_ok=True)
        self.spool.recover()
        self.spool.open_journal()  # zero-filled now rather than on the first instance
        if self.assembler.enqueue is default_enqueue:
            _warm_up_queue(self.settings)
        resumed = self.assembler.resume()
        if resumed:
            log.info("resumed %d open study(ies) from the spool", len(resumed))
        self._server = start_server(self.settings, self.spool, self._on_stored, self.on_event)
        self._stop.clear()
        self._thread = threading.Thread(target=self.assembler.run, args=(self._stop,),
                                        name="neuroseg-assembly", daemon=True)
        self._thread.start()
        host, port = self._server.address
        log.info("listening as AE %s on %s:%d, spool %s", self.settings.ae_title, host, port, self.spool.root)
        return self

    def _on_stored(self, header: InstanceHeader, stored: StoredInstance, calling_ae_title: str) -> None:
        self.assembler.note_instance(header.study_instance_uid, calling_ae_title, created=stored.created)

    def stop(self, drain_seconds: float = 30.0) -> list[HandOff]:
        """Stop accepting, let open associations finish (up to ``drain_seconds``), stop assembly.

        Every stored instance is already durable and every open study resumes at
        the next start, so nothing is lost. A last assembly pass hands over
        studies that are complete by now; they are returned.
        """
        if self._server is None:
            return []
        self._server.stop(drain_seconds)
        self._server = None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
        handed = self.assembler.poll()
        self.spool.close()
        log.info("listener stopped; %d study(ies) still open in the spool", len(self.assembler.open_studies))
        return handed

    def __enter__(self) -> "ListenerService":
        return self.start() if self._server is None else self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
