"""Helpers for the fuzz tests: a per-case hang guard, a stand-in C-STORE event
that drives the listener's real handler in-process, and the invariants."""

from __future__ import annotations

import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from neuroseg.listener.journal import JOURNAL_DIR

TMPFS = Path("/dev/shm")


class Hang(Exception):
    """A fuzz case ran past its time limit."""


@contextmanager
def hang_guard(seconds: float, what: str) -> Iterator[None]:
    """Raise :class:`Hang` naming ``what`` if the block runs longer than ``seconds``.

    Uses SIGALRM (main thread only) and gives back any alarm set before it
    (pytest-timeout's), minus the time spent here.
    """
    def alarm(signum, frame):  # noqa: ANN001
        raise Hang(f"{what} still running after {seconds:.0f} s")

    previous_handler = signal.signal(signal.SIGALRM, alarm)
    previous_remaining, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    started = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if previous_remaining > 0:
            signal.setitimer(signal.ITIMER_REAL, max(0.001, previous_remaining - (time.monotonic() - started)))


def scratch_root() -> Path:
    """A parent folder for per-case spools: tmpfs where there is one (fsync is free there)."""
    return TMPFS if TMPFS.is_dir() and TMPFS.stat().st_mode & 0o002 else Path(tempfile.gettempdir())


def store_event(dataset: bytes, transfer_syntax_uid: str, sop_class_uid: str, sop_instance_uid: str,
                calling_ae_title: str = "FUZZER") -> SimpleNamespace:
    """The parts of a pynetdicom C-STORE event that the listener's handler reads."""
    requestor = SimpleNamespace(ae_title=calling_ae_title, address="127.0.0.1", port=40000)
    return SimpleNamespace(
        assoc=SimpleNamespace(requestor=requestor),
        context=SimpleNamespace(transfer_syntax=transfer_syntax_uid, abstract_syntax=sop_class_uid),
        request=SimpleNamespace(AffectedSOPInstanceUID=sop_instance_uid),
        encoded_dataset=lambda include_meta=False: dataset,
    )


@dataclass
class FuzzTally:
    """What a fuzz run did, for the reliability summary."""

    cases: int = 0
    accepted: int = 0
    refused: int = 0
    loaded: int = 0
    input_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def files_under(root: Path) -> dict[str, Path]:
    """Every file under ``root`` by its path relative to it, except the intake journal."""
    return {str(path.relative_to(root)): path for path in root.rglob("*")
            if path.is_file() and JOURNAL_DIR not in path.relative_to(root).parts}
