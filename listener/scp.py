"""The DICOM side of the listener: the AE, its association checks, TLS and thin handlers.

This is the only module of neuroseg that imports pynetdicom. It accepts:

- C-ECHO (Verification);
- C-STORE for every storage SOP class pynetdicom knows (MR Image Storage,
  Enhanced MR Image Storage and the rest, so that a whole study push never fails
  on a localizer, a secondary capture or an SR), in every transfer syntax it
  knows, compressed ones included (JPEG baseline/extended/lossless, JPEG-LS,
  JPEG 2000, HTJ2K, RLE, deflate, ...). Instances are stored exactly as
  received: the file meta plus the encoded dataset, never decoded and re-encoded.

Association checks (PS3.8 A-ASSOCIATE-RJ, all logged with the peer address):

- calling AE title not in ``settings.allowed_calling_aes`` (when it is not
  empty): rejected, permanent, "calling AE title not recognized";
- called AE title other than ``settings.ae_title``: rejected, permanent,
  "called AE title not recognized".

C-STORE statuses answered by :func:`handle_store` (see :class:`StoreStatus`):

=======  ====================================================================
0x0000   Success: the instance is on disk (fsynced), or was already there
0xA700   Refused, out of resources: the spool could not be written (disk
         full, permissions); nothing was stored
0xA900   Data set does not match SOP class: its SOP Class UID differs from
         the negotiated presentation context, or its SOP Instance UID from
         the request's Affected SOP Instance UID
0xC000   Cannot understand: the bytes are not a dataset in the negotiated
         transfer syntax (not DICOM, truncated, broken sequence)
0xC001   Cannot understand: a Study/Series/SOP Instance/SOP Class UID is
         missing or is not a valid UID (which also keeps "../" out of paths)
0xC002   Cannot understand: the pixel data is truncated or does not match
         Rows x Columns x Samples x Bits Allocated x Frames
0x0110   Processing failure: an unexpected error, logged with its traceback
=======  ====================================================================
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from enum import IntEnum
from typing import Any, cast

from pynetdicom import (
    ALL_TRANSFER_SYNTAXES,
    _config as pynetdicom_config,
    AE,
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    AllStoragePresentationContexts,
    evt,
)
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from neuroseg.listener.assembly import EventSink, emit
from neuroseg.listener.file_meta import encode_file_meta
from neuroseg.listener.header_check import (
    InstanceHeader,
    InvalidUIDError,
    PixelDataError,
    SOPClassMismatchError,
    UnreadableInstanceError,
    inspect_instance,
)
from neuroseg.listener.spool import Spool, StoredInstance
from neuroseg.worker.settings import Settings

log = logging.getLogger(__name__)

# Video and audio transfer syntaxes make no sense for a brain MRI study.
TRANSFER_SYNTAXES = [uid for uid in ALL_TRANSFER_SYNTAXES if not uid.startswith("1.2.840.10008.1.2.7.")]

OnStored = Callable[[InstanceHeader, StoredInstance, str], None]
"""Called after each instance is stored: ``(header, stored, calling_ae_title)``."""


class StoreStatus(IntEnum):
    """C-STORE response statuses of the listener (see the module docstring)."""

    SUCCESS = 0x0000
    PROCESSING_FAILURE = 0x0110
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    INVALID_UID = 0xC001
    INVALID_PIXEL_DATA = 0xC002


def build_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The server TLS context from ``tls_cert``/``tls_key`` (and ``tls_ca``), or None when TLS is off.

    With ``tls_ca`` set, peers must present a certificate signed by that CA.

    Raises
    ------
    ValueError
        If a file is missing or the certificate and key do not load; the
        message names the setting and the file.
    """
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    for name, path in (("NEUROSEG_TLS_CERT", settings.tls_cert), ("NEUROSEG_TLS_KEY", settings.tls_key),
                       ("NEUROSEG_TLS_CA", settings.tls_ca)):
        if path is not None and not path.is_file():
            raise ValueError(f"{name}={path}: the file does not exist")
    try:
        context.load_cert_chain(certfile=str(settings.tls_cert), keyfile=str(settings.tls_key))
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(
            f"NEUROSEG_TLS_CERT={settings.tls_cert} / NEUROSEG_TLS_KEY={settings.tls_key}: cannot load: {exc}"
        ) from None
    if settings.tls_ca is not None:
        try:
            context.load_verify_locations(cafile=str(settings.tls_ca))
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"NEUROSEG_TLS_CA={settings.tls_ca}: cannot load: {exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def build_ae(settings: Settings) -> AE:
    """Our Application Entity: its title, the accepted contexts and the association checks."""
    # pynetdicom's own event logging formats every PDU and DIMSE message, and copies each
    # received data set, even when its logger drops the lines: off unless they would be shown
    shown = logging.getLogger("pynetdicom").isEnabledFor(logging.INFO)
    pynetdicom_config.LOG_HANDLER_LEVEL = "standard" if shown else "none"
    ae = AE(ae_title=settings.ae_title)
    ae.require_called_aet = True
    ae.require_calling_aet = list(settings.allowed_calling_aes)
    ae.maximum_pdu_size = settings.max_pdu_size
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
    return ae


def handle_echo(event: evt.Event) -> int:
    """C-ECHO: always Success."""
    return StoreStatus.SUCCESS


def handle_store(
    event: evt.Event, spool: Spool, on_stored: OnStored | None = None, on_event: EventSink | None = None
) -> int:
    """C-STORE: check the instance, store it durably, answer a :class:`StoreStatus`. Never raises."""
    requestor = event.assoc.requestor
    calling_ae = requestor.ae_title
    try:
        context = event.context
        request = event.request
        dataset = event.encoded_dataset(include_meta=False)
        header = inspect_instance(
            dataset, context.transfer_syntax, sop_class_uid=context.abstract_syntax,
            sop_instance_uid=request.AffectedSOPInstanceUID,
        )
        file_meta = encode_file_meta(
            header.sop_class_uid, header.sop_instance_uid, context.transfer_syntax,
            PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, calling_ae,
        )
        stored = spool.store(header, (file_meta, dataset))
    except SOPClassMismatchError as exc:
        return _refuse(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, exc, event, on_event)
    except InvalidUIDError as exc:
        return _refuse(StoreStatus.INVALID_UID, exc, event, on_event)
    except PixelDataError as exc:
        return _refuse(StoreStatus.INVALID_PIXEL_DATA, exc, event, on_event)
    except UnreadableInstanceError as exc:
        return _refuse(StoreStatus.CANNOT_UNDERSTAND, exc, event, on_event)
    except OSError as exc:
        log.error("spool write failed for an instance from calling_ae=%s peer=%s:%s: %s",
                  calling_ae, requestor.address, requestor.port, exc)
        emit(on_event, "instance-refused", f"0xA700 OUT_OF_RESOURCES for an instance from {calling_ae}: {exc}")
        return StoreStatus.OUT_OF_RESOURCES
    except Exception:
        log.exception("unexpected error storing an instance from calling_ae=%s", calling_ae)
        return StoreStatus.PROCESSING_FAILURE
    if stored.created:
        log.debug("stored %s from calling_ae=%s", stored.path, calling_ae)
    else:
        log.info("duplicate sop_uid=%s from calling_ae=%s: already stored, kept the first copy",
                 header.sop_instance_uid, calling_ae)
    if on_stored is not None:
        try:
            on_stored(header, stored, calling_ae)
        except Exception:  # the instance is safely stored; assembly recovers from the spool
            log.exception("study tracking failed after storing %s", stored.path)
    return StoreStatus.SUCCESS


def _refuse(status: StoreStatus, exc: Exception, event: evt.Event, on_event: EventSink | None = None) -> int:
    requestor = event.assoc.requestor
    log.warning(
        "refused instance status=0x%04X (%s) sop_uid=%s calling_ae=%s peer=%s:%s: %s",
        status, status.name, getattr(event.request, "AffectedSOPInstanceUID", ""), requestor.ae_title,
        requestor.address, requestor.port, exc,
    )
    emit(on_event, "instance-refused",
         f"0x{status:04X} {status.name} for an instance from {requestor.ae_title} ({requestor.address}): {exc}")
    return int(status)


def _handle_rejected(event: evt.Event, settings: Settings, on_event: EventSink | None = None) -> None:
    requestor = event.assoc.requestor
    calling = requestor.ae_title.strip()
    primitive = requestor.primitive
    called = primitive.called_ae_title if primitive is not None else ""
    if settings.allowed_calling_aes and calling not in settings.allowed_calling_aes:
        why = "calling AE title not on NEUROSEG_ALLOWED_CALLING_AES"
    elif str(called).strip() != settings.ae_title:
        why = f"called AE title {str(called).strip()!r} is not ours ({settings.ae_title!r})"
    else:
        why = "too many associations or no acceptable presentation context"
    log.warning("association rejected calling_ae=%s peer=%s:%s: %s", calling, requestor.address, requestor.port, why)
    emit(on_event, "association-rejected", f"calling AE {calling!r} from {requestor.address}: {why}")


def _handle_established(event: evt.Event, on_event: EventSink | None = None) -> None:
    requestor = event.assoc.requestor
    log.info("association accepted calling_ae=%s peer=%s:%s", requestor.ae_title, requestor.address, requestor.port)
    emit(on_event, "association-accepted", f"calling AE {requestor.ae_title!r} from {requestor.address}")


def _handle_ended(event: evt.Event) -> None:
    requestor = event.assoc.requestor
    if event.event is evt.EVT_ABORTED:
        log.warning("association aborted calling_ae=%s peer=%s:%s", requestor.ae_title, requestor.address,
                    requestor.port)
    else:
        log.info("association released calling_ae=%s peer=%s:%s", requestor.ae_title, requestor.address,
                 requestor.port)


class DicomServer:
    """A running association server; stop it with :meth:`stop`."""

    def __init__(self, ae: AE, server: ThreadedAssociationServer) -> None:
        self.ae = ae
        self.server = server

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def stop(self, drain_seconds: float = 30.0) -> None:
        """Stop accepting associations, let the open ones finish, then close.

        Associations still open after ``drain_seconds`` are aborted; the peer
        did not get Success for anything that was not stored.
        """
        self.server.shutdown()
        deadline = time.monotonic() + drain_seconds
        while time.monotonic() < deadline:
            # only established associations can still deliver instances; a peer that
            # never finished negotiating is not waited for
            if not any(association.is_established for association in self.server.active_associations):
                break
            time.sleep(0.05)
        remaining = self.server.active_associations
        for association in remaining:
            log.warning("aborting association calling_ae=%s peer=%s (established: %s) on stop",
                        association.requestor.ae_title, association.requestor.address,
                        association.is_established)
            association.abort()
        stop_by = time.monotonic() + 2.0
        for association in remaining:  # daemon threads: a stuck peer cannot keep the process alive
            association.join(timeout=max(0.0, stop_by - time.monotonic()))


def start_server(
    settings: Settings, spool: Spool, on_stored: OnStored | None = None, on_event: EventSink | None = None
) -> DicomServer:
    """Start the association server in background threads on ``settings.bind_address:port``.

    Raises
    ------
    OSError
        If the port cannot be bound.
    ValueError
        If the TLS files cannot be loaded.
    """
    ae = build_ae(settings)
    handlers: list[Any] = [
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [spool, on_stored, on_event]),
        (evt.EVT_REJECTED, _handle_rejected, [settings, on_event]),
        (evt.EVT_ESTABLISHED, _handle_established, [on_event]),
        (evt.EVT_RELEASED, _handle_ended),
        (evt.EVT_ABORTED, _handle_ended),
    ]
    server = ae.start_server(
        (settings.bind_address, settings.port), block=False, ssl_context=build_ssl_context(settings),
        evt_handlers=handlers,
    )
    return DicomServer(ae, cast(ThreadedAssociationServer, server))  # block=False returns the server


def start_acknowledging_server(settings: Settings, on_store: Callable[[], None]) -> DicomServer:
    """Our AE, whose C-STORE handler calls ``on_store`` and answers Success without checking or storing.

    For ``neuroseg bench ingest`` only: the rate pynetdicom itself reaches with
    our AE and a sender, which bounds any handler we write.
    """
    def acknowledge(event: evt.Event) -> int:
        on_store()
        return StoreStatus.SUCCESS

    ae = build_ae(settings)
    server = ae.start_server((settings.bind_address, settings.port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, acknowledge)])
    return DicomServer(ae, cast(ThreadedAssociationServer, server))


__all__ = ["DicomServer", "StoreStatus", "build_ae", "build_ssl_context", "handle_echo", "handle_store",
           "start_acknowledging_server", "start_server"]
