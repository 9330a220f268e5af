"""Fuzzing over real associations: 250 mutated real instances sent by a pynetdicom
peer (raw bytes, as a broken modality would send them) to a running listener.

Each case gets its own SOP Instance UID (same length, so the seed's element
offsets stay true), then the mutations of :mod:`tests.reliability.mutations`.
Every answer must be Success or a named failure status; every instance answered
Success must be in the spool byte for byte at the end; nothing refused may be
there; and the listener must still answer C-ECHO.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pynetdicom import _config

from neuroseg.listener.scp import StoreStatus
from neuroseg.listener.service import ListenerService
from tests.reliability.mutations import Seed, mutate, seeds
from tests.reliability.peers import CALLED_AE, echo_once, make_ae
from tests.services import free_port

pytestmark = pytest.mark.integration

NETWORK_CASES = 250
CALLING_AE = "FUZZPEER"
ALLOWED_STATUSES = {int(status) for status in StoreStatus} - {StoreStatus.PROCESSING_FAILURE}


def unique_copy(seed: Seed, number: int) -> Seed:
    """``seed`` with a new SOP Instance UID of the same length in its file meta and data set."""
    old = seed.sop_instance_uid
    new = old[:-7] + f"9{number:06d}"
    assert len(new) == len(old)
    return dataclasses.replace(seed, head=seed.head.replace(old.encode(), new.encode()),
                               dataset=seed.dataset.replace(old.encode(), new.encode()), sop_instance_uid=new)


class Peer:
    """One association, reopened when the listener aborts it (after a refused instance, say)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.assoc = None
        self.reconnects = 0
        self.errors: list[str] = []

    def send(self, path: Path) -> int | None:
        if self.assoc is None or not self.assoc.is_established:
            self.assoc = make_ae(CALLING_AE).associate("127.0.0.1", self.port, ae_title=CALLED_AE)
            self.reconnects += 1
            if not self.assoc.is_established:
                return None
        try:
            response = self.assoc.send_c_store(path)
        except (RuntimeError, OSError, ValueError, AttributeError, KeyError) as exc:
            self.errors.append(repr(exc)[:200])
            return None  # our own sender could not parse what it was asked to send
        return int(response.Status) if "Status" in response else None

    def close(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()


def test_listener_survives_mutated_instances_over_real_associations(make_settings, tmp_path, monkeypatch, ledger):
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send the bytes as they are
    service = ListenerService(make_settings(
        port=free_port(), bind_address="127.0.0.1", allowed_calling_aes=[CALLING_AE, "PROBE"],
        stable_seconds=3600, max_wait_seconds=7200)).start()
    peer = Peer(service.port)
    outbox = Path(tempfile.mkdtemp(dir=tmp_path))
    acknowledged: dict[str, bytes] = {}
    refused: set[str] = set()
    unanswered: list[str] = []
    counter = iter(range(1, 1_000_000))

    @settings(max_examples=NETWORK_CASES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=st.data())
    def check(data) -> None:
        all_seeds = seeds()
        seed = unique_copy(all_seeds[data.draw(st.integers(0, len(all_seeds) - 1))], next(counter))
        dataset, description = mutate(data.draw, seed)
        path = outbox / f"{seed.sop_instance_uid}.dcm"
        path.write_bytes(seed.head + dataset)
        status = peer.send(path)
        path.unlink()
        if status is None:
            unanswered.append(description)
            return  # not sent, or the association was aborted: no answer, no promise
        assert status in ALLOWED_STATUSES, f"status 0x{status:04X} for {seed.name}: {description}"
        if status == StoreStatus.SUCCESS:
            acknowledged[seed.sop_instance_uid] = dataset
        else:
            refused.add(seed.sop_instance_uid)

    try:
        check()
        assert echo_once(service.port) is not None, "the listener stopped answering C-ECHO"
    finally:
        peer.close()
        service.stop(drain_seconds=10)

    stored = {path.stem: path for path in service.spool.instance_files()}
    lost = [uid for uid in acknowledged if uid not in stored]
    assert not lost, f"{len(lost)} acknowledged instance(s) missing from the spool"
    for uid, dataset in acknowledged.items():
        assert stored[uid].read_bytes().endswith(dataset), f"{uid} differs from what was acknowledged"
    assert not refused & set(stored), "a refused instance was stored"
    assert len(acknowledged) > NETWORK_CASES * 0.05 and len(refused) > NETWORK_CASES * 0.2, \
        (len(acknowledged), len(refused), len(unanswered), unanswered[:5], peer.errors[:5], peer.reconnects)
    ledger.add(fuzz_cases=NETWORK_CASES, instances=len(acknowledged), instances_lost=len(lost))
