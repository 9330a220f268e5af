"""Delivery: C-STORE to a PACS, STOW-RS to a DICOMweb server, or an outbox folder.

:func:`deliver` opens one association (or ``associations`` of them, each
with a share of the objects) with a presentation context for every SOP class
among its objects (the pynetdicom defaults omit Parametric Map, Label Map SEG
and Encapsulated STL, so they are named explicitly), sends each object and
records its status:

- ``0x0000`` -> SUCCESS;
- ``0xB000``, ``0xB006``, ``0xB007`` (coercion, elements discarded, data set
  does not match SOP class) -> WARNING, the object is stored;
- any failure status (``0xA7xx`` out of resources, ``0xA9xx`` data set does
  not match, ``0xCxxx`` cannot understand, ...) or a SOP class the PACS did
  not accept at association time -> FAILURE for that object; the others are
  still sent.

When the PACS cannot be reached, refuses or aborts the association, or stops
answering, :class:`DeliveryUnavailable` is raised (a transient error: the
caller retries later with backoff; it carries the results recorded so far).
Because every UID is deterministic, sending again replaces rather than
duplicates.

:func:`deliver_stow` sends the same objects to a DICOMweb server with
STOW-RS and gives the same results (the DICOM status of each object from the
response's Referenced/Failed SOP Sequence); an unreachable or overloaded server
raises :class:`DeliveryUnavailable` too. :func:`echo` and :func:`association`
are the one C-ECHO and association of every command; a :class:`Peer` says
whom they talk to and how, once for all three.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from neuroseg.common.files import atomic_write
from neuroseg.common.parallel import map_in_threads
from neuroseg.dicom_out.common import EncodedObject
from neuroseg.dicom_out.enum import DeliveryStatus

if TYPE_CHECKING:
    from pynetdicom.association import Association

log = logging.getLogger(__name__)

#: C-STORE statuses that mean "stored, with a warning" (PS3.4 B.2.3).
WARNING_STATUSES = frozenset({0xB000, 0xB006, 0xB007})
#: pynetdicom proposes at most 128 presentation contexts in one association.
MAX_CONTEXTS = 128


class DeliveryUnavailable(ConnectionError):
    """The destination cannot take objects now (down, refusing, or aborting).

    Transient: retry later. ``results`` holds what was recorded before the
    failure (objects already stored stay stored).
    """

    def __init__(self, message: str, results: Sequence["DeliveryResult"] = ()) -> None:
        super().__init__(message)
        self.results = list(results)


@dataclass(frozen=True)
class DeliveryResult:
    """What happened to one object at one destination."""

    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    destination: str
    outcome: DeliveryStatus
    status: int | None  # the C-STORE status; None when no C-STORE was attempted
    message: str = ""

    @property
    def ok(self) -> bool:
        """True when the PACS stored the object (success or warning)."""
        return self.outcome is not DeliveryStatus.FAILURE

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind, "sop_class_uid": self.sop_class_uid, "sop_instance_uid": self.sop_instance_uid,
            "destination": self.destination, "outcome": self.outcome.value,
            "status": None if self.status is None else f"0x{self.status:04X}", "message": self.message,
        }


@dataclass(frozen=True)
class Peer:
    """A DICOM peer and how we talk to it: the options of :func:`association`, :func:`echo` and :func:`deliver`.

    ``ae_title``, ``host`` and ``port`` are the called AE; ``timeout`` is the
    seconds for connecting, association negotiation and each response; ``tls``
    (a client :class:`ssl.SSLContext`, see :func:`client_tls_context`) turns on
    DICOM TLS, and the server's certificate must name ``tls_server_name``
    (default ``host``).
    """

    ae_title: str
    host: str
    port: int
    calling_ae_title: str = "NEUROSEG"
    timeout: float = 60.0
    tls: ssl.SSLContext | None = None
    tls_server_name: str | None = None

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


#: pynetdicom's Verification SOP class (C-ECHO).
VERIFICATION = "1.2.840.10008.1.1"
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def _own_transfer_syntax(obj: EncodedObject) -> str:
    meta = getattr(obj.dataset, "file_meta", None)
    return str(getattr(meta, "TransferSyntaxUID", "") or ExplicitVRLittleEndian)


def _contexts(objects: Sequence[EncodedObject]) -> dict[tuple[str, str], list[str]]:
    """One presentation context per (SOP class, transfer syntax) among the objects.

    Each proposes the object's own transfer syntax (so compressed objects go
    as they are); a compressed one also gets an uncompressed context, used
    when the peer does not take its compression.
    """
    contexts: dict[tuple[str, str], list[str]] = {}
    for obj in objects:
        own = _own_transfer_syntax(obj)
        if own in UNCOMPRESSED:
            contexts.setdefault((obj.sop_class_uid, own), [own, *(ts for ts in UNCOMPRESSED if ts != own)])
        else:
            contexts.setdefault((obj.sop_class_uid, own), [own])
            contexts.setdefault((obj.sop_class_uid, ExplicitVRLittleEndian), list(UNCOMPRESSED))
    return contexts


def _as_accepted(obj: EncodedObject, accepted: set[tuple[str, str]]) -> pydicom.Dataset | None:
    """The object's data set in a transfer syntax the peer accepted for its SOP class (decompressed if need be)."""
    own = _own_transfer_syntax(obj)
    if (obj.sop_class_uid, own) in accepted:
        return obj.dataset
    if not any((obj.sop_class_uid, ts) in accepted for ts in UNCOMPRESSED):
        return None
    if own in UNCOMPRESSED:
        return obj.dataset  # pynetdicom re-encodes between the little-endian syntaxes
    # a plain data set with copies of the elements: deepcopy of a highdicom object would also copy its
    # SQLite frame index, which may only be used from the thread that built it
    dataset = pydicom.Dataset()
    for element in obj.dataset:
        dataset.add(copy.deepcopy(element))
    dataset.file_meta = copy.deepcopy(obj.dataset.file_meta)
    if own == DeflatedExplicitVRLittleEndian:  # the pixels are not compressed: only the encoding changes
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        return dataset
    dataset.decompress(generate_instance_uid=False)  # lossless: the same object, so the same UID
    return dataset


@contextmanager
def _files_sent_as_written() -> Iterator[None]:
    """pynetdicom's documented switch, for this delivery only: a path is sent as the file's bytes, in chunks.

    It is process-wide, so it is put back afterwards: other senders in the process keep decoding files.
    """
    from pynetdicom import _config

    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = before


@contextmanager
def association(peer: Peer, contexts: Iterable[tuple[str, Sequence[str]]], *, scp_roles: Sequence[str] = (),
                handlers: Sequence[Any] = (), purpose: str = "deliver to") -> Iterator[Association]:
    """An established association to ``peer`` proposing ``contexts``, released on exit.

    ``contexts`` pairs an abstract syntax (SOP class UID) with its transfer
    syntaxes. ``scp_roles`` are storage SOP classes we take the SCP role for
    (C-GET brings its instances back on this association, in any transfer
    syntax), with ``handlers`` for the events they raise. ``purpose`` words the
    refusal ("deliver to", "query").

    Raises
    ------
    DeliveryUnavailable
        When the peer cannot be reached, rejects or aborts the association.
    """
    from pydicom.uid import AllTransferSyntaxes
    from pynetdicom import AE, build_role

    destination = str(peer)
    ae = AE(ae_title=peer.calling_ae_title)
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = peer.timeout
    for abstract_syntax, syntaxes in contexts:
        ae.add_requested_context(abstract_syntax, list(syntaxes))
    for sop_class in scp_roles:
        ae.add_requested_context(sop_class, AllTransferSyntaxes[:])
    roles = [build_role(sop_class, scp_role=True) for sop_class in scp_roles]
    tls_args = (peer.tls, peer.tls_server_name or peer.host) if peer.tls is not None else None
    try:
        assoc = ae.associate(peer.host, int(peer.port), ae_title=peer.ae_title, tls_args=tls_args,
                             ext_neg=roles or None, evt_handlers=list(handlers) or None)
    except (OSError, RuntimeError, ssl.SSLError) as exc:
        raise DeliveryUnavailable(f"cannot reach {destination}: {exc}") from exc
    if not assoc.is_established:
        why = "association rejected" if assoc.is_rejected else "association aborted" if assoc.is_aborted \
            else "no association (connection refused or timed out)"
        raise DeliveryUnavailable(f"cannot {purpose} {destination}: {why}")
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def echo(peer: Peer) -> float | None:
    """C-ECHO ``peer``: the seconds from connecting to the answer, or None when it did not succeed."""
    started = time.monotonic()
    try:
        with association(peer, [(VERIFICATION, UNCOMPRESSED)]) as assoc:
            status = assoc.send_c_echo()
            elapsed = time.monotonic() - started  # to the answer, not counting the release
    except DeliveryUnavailable as exc:
        log.debug("C-ECHO: %s", exc)
        return None
    if getattr(status, "Status", None) != 0x0000:
        return None
    return elapsed


def client_tls_context(ca_file: str | os.PathLike[str] | None = None,
                       cert_file: str | os.PathLike[str] | None = None,
                       key_file: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """A client TLS context that trusts ``ca_file`` (default: the system's) and presents ``cert_file`` if given."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file else None)
    if cert_file is not None:
        context.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file) if key_file else None)
    return context


def deliver(
    objects: Sequence[EncodedObject],
    peer: Peer,
    *,
    on_result: Callable[[DeliveryResult], object] | None = None,
    associations: int = 1,
) -> list[DeliveryResult]:
    """Send ``objects`` to one DICOM destination with C-STORE.

    Parameters
    ----------
    objects: Sequence[EncodedObject]
        What to send, in order (:func:`load_objects` makes them from files).
    peer: Peer
        The destination, our AE title, the timeout and TLS.
    on_result: callable, optional
        Called with each result as it comes (progress bars, acknowledgements);
        with several associations, from their threads, one call at a time.
    associations: int
        How many associations send at once, each a share of the objects
        balanced by their decoded size. An archive built on DCMTK (Orthanc,
        DCMTK's own SCP) decodes and re-encodes every received object on the
        thread of its association, so two of them store a study's deflated
        Parametric Maps side by side (on loopback to Orthanc, 15 objects in
        1.5 s instead of 2.8 s).

    Returns
    -------
    list of DeliveryResult
        One per object, in the order of ``objects``. A refused object is a
        FAILURE result; it does not stop the others.

    Raises
    ------
    DeliveryUnavailable
        When no association can be established, or one is lost mid-way and
        the objects it had left cannot be sent over one association after the
        others have finished either (it carries every result).
    """
    if not objects:
        return []
    contexts = len(_contexts(objects))
    if contexts > MAX_CONTEXTS:
        raise ValueError(f"{contexts} SOP class/transfer syntax pairs in one delivery; at most {MAX_CONTEXTS} "
                         "fit one association (send fewer kinds of objects at once)")
    shares = _shares(objects, associations)
    lock = threading.Lock()
    results: dict[int, DeliveryResult] = {}

    def record(index: int, result: DeliveryResult) -> None:
        with lock:
            results[index] = result
            if on_result is not None:
                on_result(result)

    def in_order() -> list[DeliveryResult]:
        return [results[index] for index in sorted(results)]

    with _files_sent_as_written():
        if len(shares) == 1:
            failures = [_send_share(shares[0], peer, record)]
        else:
            with ThreadPoolExecutor(max_workers=len(shares), thread_name_prefix="neuroseg-deliver") as pool:
                failures = list(pool.map(lambda share: _send_share(share, peer, record), shares))
            failures = _send_rest_over_one(objects, results, failures, peer, record)
    failures = [failure for failure in failures if failure is not None]
    if failures:
        raise DeliveryUnavailable(str(failures[0]), in_order()) from failures[0]
    log.info("delivered %d of %d objects to %s%s", sum(result.ok for result in results.values()), len(results),
             peer, f" over {len(shares)} associations" if len(shares) > 1 else "")
    return in_order()


#: Pauses before each try of :func:`_send_rest_over_one`: a PACS may count an association as open for a
#: moment after its release.
ONE_ASSOCIATION_PAUSES_S = (0.0, 0.5, 1.5)


def _send_rest_over_one(objects: Sequence[EncodedObject], results: dict[int, DeliveryResult],
                        failures: list[DeliveryUnavailable | None], peer: Peer,
                        record: Callable[[int, DeliveryResult], None]) -> list[DeliveryUnavailable | None]:
    """After a share failed: the objects it left, over one association (a PACS that allows one per AE title)."""
    for pause in ONE_ASSOCIATION_PAUSES_S:
        unsent = [(index, obj) for index, obj in enumerate(objects) if index not in results]
        failure = next((failure for failure in failures if failure is not None), None)
        if not unsent or failure is None:
            break
        log.warning("%s: %s; sending the %d objects left over one association", peer, failure, len(unsent))
        time.sleep(pause)
        failures = [_send_share(unsent, peer, record)]
    return failures


def _decoded_bytes(obj: EncodedObject) -> int:
    """About what the receiver has to decode and store of ``obj``: its pixels, else its file."""
    dataset = obj.dataset
    frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
    pixels = int(getattr(dataset, "Rows", 0) or 0) * int(getattr(dataset, "Columns", 0) or 0) * frames \
        * max(1, int(getattr(dataset, "BitsAllocated", 8) or 8) // 8)
    if pixels:
        return pixels
    return obj.path.stat().st_size if obj.path is not None and obj.path.is_file() else 1


def _shares(objects: Sequence[EncodedObject], associations: int) -> list[list[tuple[int, EncodedObject]]]:
    """``objects`` with their indices, in at most ``associations`` shares of about equal decoded size, each in order."""
    count = max(1, min(int(associations), len(objects)))
    shares: list[list[tuple[int, EncodedObject]]] = [[] for _ in range(count)]
    loads = [0] * count
    sizes = [_decoded_bytes(obj) for obj in objects]
    for index in sorted(range(len(objects)), key=lambda i: -sizes[i]):
        lightest = loads.index(min(loads))
        shares[lightest].append((index, objects[index]))
        loads[lightest] += sizes[index]
    return [sorted(share, key=lambda item: item[0]) for share in shares if share]


def _send_share(share: Sequence[tuple[int, EncodedObject]], peer: Peer,
                record: Callable[[int, DeliveryResult], None]) -> DeliveryUnavailable | None:
    """Send one share over its own association; the failure that ended it early, or None."""
    destination = str(peer)
    contexts = _contexts([obj for _, obj in share])
    sent = 0
    try:
        with association(peer, [(sop, syntaxes) for (sop, _), syntaxes in contexts.items()]) as assoc:
            accepted = {(context.abstract_syntax, context.transfer_syntax[0]) for context in assoc.accepted_contexts}
            for index, obj in share:
                if not assoc.is_established:
                    return DeliveryUnavailable(f"association with {destination} was lost after "
                                               f"{sent} of {len(share)} objects")
                result = _store(assoc, obj, accepted, destination)
                if result is None:
                    return DeliveryUnavailable(f"no C-STORE response from {destination} for {obj.kind} "
                                               "(timeout or connection lost)")
                record(index, result)
                sent += 1
    except DeliveryUnavailable as exc:
        return exc
    return None


def _store(assoc: Association, obj: EncodedObject, accepted: set[tuple[str, str]],
           destination: str) -> DeliveryResult | None:
    """C-STORE one object on ``assoc``: its result, or None when no response came."""
    try:
        dataset = _as_accepted(obj, accepted)
    except (ValueError, RuntimeError, NotImplementedError) as exc:  # no decoder for its compression
        return DeliveryResult(obj.kind, obj.sop_class_uid, obj.sop_instance_uid, destination,
                              DeliveryStatus.FAILURE, None, f"the peer does not take "
                              f"{_own_transfer_syntax(obj)} and it cannot be decompressed: {exc}")
    if dataset is None:
        message = f"{destination} did not accept SOP class {obj.sop_class_uid} at association time"
        log.warning("not sent %s (%s): %s", obj.kind, obj.sop_instance_uid, message)
        return DeliveryResult(obj.kind, obj.sop_class_uid, obj.sop_instance_uid, destination,
                              DeliveryStatus.FAILURE, None, message)
    # the file as written, when the peer takes its transfer syntax: no second encoding and deflate
    payload = obj.path if dataset is obj.dataset and obj.path is not None else dataset
    try:
        response = assoc.send_c_store(payload)
    except (ValueError, AttributeError) as exc:  # the dataset cannot be encoded in the context
        return DeliveryResult(obj.kind, obj.sop_class_uid, obj.sop_instance_uid, destination,
                              DeliveryStatus.FAILURE, None, f"could not send: {exc}")
    if "Status" not in response:
        return None
    return _result(obj, destination, int(response.Status), response)


#: HTTP statuses after which the same STOW-RS request may succeed later (PS3.18 10.5.3; overload, gateways).
STOW_TRANSIENT_HTTP = frozenset({408, 429, 500, 502, 503, 504})
#: PS3.18 Table 10.5.3-1's DICOM status for a refused instance when the server names none.
STOW_PROCESSING_FAILURE = 0x0110


def deliver_stow(
    objects: Sequence[EncodedObject],
    *,
    url: str,
    username: str | None = None,
    password: str | None = None,
    token: str | None = None,
    ca_bundle: str | os.PathLike[str] | None = None,
    timeout: float = 60.0,
    on_result: Callable[[DeliveryResult], object] | None = None,
) -> list[DeliveryResult]:
    """Send ``objects`` to a DICOMweb server with STOW-RS (``dicomweb-client``), one request per object.

    One object per request keeps the per-object status exact and, like an
    association lost mid-way, an outage after ``k`` objects leaves ``k``
    results. ``username``/``password`` give HTTP basic auth, ``token`` a
    bearer token; ``ca_bundle`` verifies an https server with a private CA.
    The client's own HTTP retries are off: the job's retries are the task's.

    Returns
    -------
    list of DeliveryResult
        One per object: SUCCESS (in the response's ReferencedSOPSequence),
        WARNING (with a WarningReason), FAILURE (in FailedSOPSequence, with its
        FailureReason as the status, or refused with an HTTP 4xx).

    Raises
    ------
    DeliveryUnavailable
        When the server cannot be reached, times out or answers 408, 429 or
        5xx (overloaded or down).
    """
    import requests
    from dicomweb_client import DICOMwebClient
    from dicomweb_client.session_utils import add_certs_to_session, create_session, create_session_from_user_pass

    if not objects:
        return []
    session = create_session_from_user_pass(username, password) if username else create_session()
    if ca_bundle is not None:
        session = add_certs_to_session(session, ca_bundle=str(ca_bundle))
    headers = {"Authorization": f"Bearer {token}"} if token else None
    client = DICOMwebClient(url, session=session, headers=headers, timeout=timeout)
    client.set_http_retry_params(retry=False)
    results: list[DeliveryResult] = []
    for obj in objects:
        try:
            response = client.store_instances([_part10(obj.dataset)])
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise DeliveryUnavailable(f"cannot reach {url}: {type(exc).__name__}: {exc}", results) from exc
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            if code in STOW_TRANSIENT_HTTP:
                raise DeliveryUnavailable(f"{url} answered HTTP {code} to STOW-RS "
                                          f"after {len(results)} of {len(objects)} objects", results) from exc
            result = _stow_result(obj, url, _stow_response(exc.response), f"HTTP {code}")
        else:
            result = _stow_result(obj, url, response, "")
        results.append(result)
        if on_result is not None:
            on_result(result)
    stored = sum(result.ok for result in results)
    log.info("delivered %d of %d objects to %s by STOW-RS", stored, len(results), url)
    return results


def _part10(dataset: pydicom.Dataset) -> pydicom.Dataset:
    """``dataset`` as read from a complete PS3.10 file (preamble, full file meta), which is what
    dicomweb-client then writes as it is: STOW-RS bodies must be PS3.10 files."""
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def _stow_response(response) -> pydicom.Dataset:  # noqa: ANN001 - a requests.Response
    """The STOW-RS response data set of an error answer (empty when the server sent none)."""
    try:
        return pydicom.Dataset.from_json(response.json())
    except (ValueError, TypeError, AttributeError):
        return pydicom.Dataset()


def _stow_result(obj: EncodedObject, url: str, response: pydicom.Dataset, http: str) -> DeliveryResult:
    def matching(keyword: str) -> pydicom.Dataset | None:
        return next((item for item in response.get(keyword, [])
                     if str(item.get("ReferencedSOPInstanceUID", "")) == obj.sop_instance_uid), None)

    failed, stored = matching("FailedSOPSequence"), matching("ReferencedSOPSequence")
    if failed is not None:
        status = int(failed.get("FailureReason", STOW_PROCESSING_FAILURE))
        outcome, message = DeliveryStatus.FAILURE, f"refused with status 0x{status:04X}"
    elif stored is not None and "WarningReason" in stored:
        status = int(stored.WarningReason)
        outcome, message = DeliveryStatus.WARNING, f"stored with warning 0x{status:04X}"
    elif stored is not None or not http:
        status, outcome, message = 0x0000, DeliveryStatus.SUCCESS, "stored"
    else:
        status, outcome, message = None, DeliveryStatus.FAILURE, "refused"
    if http and outcome is DeliveryStatus.FAILURE:
        message += f" ({http})"
    if outcome is DeliveryStatus.FAILURE:
        log.warning("%s refused %s (%s): %s", url, obj.kind, obj.sop_instance_uid, message)
    return DeliveryResult(obj.kind, obj.sop_class_uid, obj.sop_instance_uid, url, outcome, status, message)


def _result(obj: EncodedObject, destination: str, status: int, response) -> DeliveryResult:
    comment = str(getattr(response, "ErrorComment", "") or "")
    if status == 0x0000:
        outcome, message = DeliveryStatus.SUCCESS, "stored"
    elif status in WARNING_STATUSES:
        outcome, message = DeliveryStatus.WARNING, f"stored with warning 0x{status:04X}"
    else:
        outcome, message = DeliveryStatus.FAILURE, f"refused with status 0x{status:04X}"
        log.warning("%s refused %s (%s): status 0x%04X %s", destination, obj.kind, obj.sop_instance_uid,
                    status, comment)
    if comment:
        message += f": {comment}"
    return DeliveryResult(obj.kind, obj.sop_class_uid, obj.sop_instance_uid, destination, outcome, status, message)


def write_outbox(objects: Iterable[EncodedObject], folder: str | os.PathLike[str]) -> list[EncodedObject]:
    """Write each object as ``<folder>/<kind>.dcm`` atomically; the folder then holds this set and no other.

    Each file is written to a temporary name in the same folder, flushed
    to disk, then renamed over the final name, so a reader never sees a
    partial file and writing the same study again replaces the files. A
    ``<kind>.dcm`` left from an earlier run that this set no longer has (a
    kind switched off since) is removed after the new files are in place, so
    whoever picks the folder up never takes a stale result for a current one.
    The files are written in threads: their deflate compression releases the GIL. An object that
    was written before (``path`` set, as :func:`write_outbox` returns it) is copied from its file
    instead of being encoded and deflated again.

    Returns
    -------
    list of EncodedObject
        The objects, in the order of ``objects``, each with ``path`` set to its file.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def write(obj: EncodedObject) -> EncodedObject:
        path = folder / f"{obj.kind}.dcm"
        if obj.path is not None and obj.path.is_file():
            if obj.path.resolve() != path.resolve():
                with open(obj.path, "rb") as source:
                    atomic_write(path, lambda stream: shutil.copyfileobj(source, stream, 1 << 20))
        else:
            atomic_write(path, lambda stream: pydicom.dcmwrite(stream, obj.dataset, enforce_file_format=True))
        return replace(obj, path=path)

    written = map_in_threads(write, list(objects), name="outbox")
    paths = [obj.path for obj in written]
    stale = sorted(set(folder.glob("*.dcm")) - set(paths))
    for path in stale:
        path.unlink(missing_ok=True)
    log.info("wrote %d objects to %s%s", len(paths), folder,
             f"; removed {len(stale)} no longer made ({', '.join(p.stem for p in stale)})" if stale else "")
    return written


def load_objects(paths: Iterable[str | os.PathLike[str]]) -> list[EncodedObject]:
    """Read DICOM files (or every file under folders) as objects to send.

    Files that are not DICOM are skipped with a warning; the kind of each
    object is its file name without the extension.
    """
    objects = []
    for root in paths:
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"{root} does not exist")
        files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")) \
            if root.is_dir() else [root]
        for path in files:
            try:
                ds = pydicom.dcmread(path)
            except (pydicom.errors.InvalidDicomError, OSError) as exc:
                log.warning("skipping %s: not a DICOM file (%s)", path, exc)
                continue
            if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
                log.warning("skipping %s: no SOPClassUID/SOPInstanceUID", path)
                continue
            # no ``path``: a file from elsewhere may not match its own file meta; it is sent from its data set
            objects.append(EncodedObject(path.stem, str(ds.SOPClassUID), str(ds.SOPInstanceUID), ds))
    return objects
