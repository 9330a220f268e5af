"""Fixtures of the reliability suite and its summary.

Every test adds what it did to the session's :class:`Ledger` (studies and
instances sent, faults injected, instances lost, duplicates delivered, fuzz
cases). At the end of the session the ledger is written to
``test-artifacts/reliability-summary.json`` and printed in the terminal
summary; ``neuroseg bench reliability --summary FILE`` prints it as a table.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import pytest

from tests.services import REPO_ROOT

SUMMARY_FILE = REPO_ROOT / "test-artifacts" / "reliability-summary.json"


class Ledger:
    """Counters shared by the reliability tests (thread-safe)."""

    FIELDS = ("studies", "instances", "faults_injected", "instances_lost", "duplicates_delivered",
              "fuzz_cases", "echo_max_seconds")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.echo_max_seconds = 0.0
        self.faults: list[str] = []
        self.tests: dict[str, dict[str, float]] = {}

    def add(self, test: str, **counts: float) -> None:
        with self._lock:
            entry = self.tests.setdefault(test, {})
            for name, value in counts.items():
                if name == "echo_max_seconds":
                    self.echo_max_seconds = max(self.echo_max_seconds, float(value))
                    entry[name] = max(entry.get(name, 0.0), float(value))
                    continue
                self.counts[name] += value
                entry[name] = entry.get(name, 0) + value

    def fault(self, test: str, description: str) -> None:
        with self._lock:
            self.faults.append(f"{test}: {description}")
        self.add(test, faults_injected=1)

    def summary(self) -> dict[str, object]:
        with self._lock:
            totals = {name: self.counts.get(name, 0) for name in self.FIELDS if name != "echo_max_seconds"}
            totals["echo_max_seconds"] = round(self.echo_max_seconds, 3)
            return {"totals": totals, "faults": list(self.faults), "tests": dict(self.tests)}


_LEDGER = Ledger()


@pytest.fixture
def ledger(request) -> "LedgerView":
    return LedgerView(_LEDGER, request.node.name)


class LedgerView:
    """The ledger as one test sees it (entries carry the test's name)."""

    def __init__(self, ledger: Ledger, test: str) -> None:
        self._ledger, self._test = ledger, test

    def add(self, **counts: float) -> None:
        self._ledger.add(self._test, **counts)

    def fault(self, description: str) -> None:
        self._ledger.fault(self._test, description)


def pytest_sessionfinish(session, exitstatus) -> None:  # noqa: ANN001
    if not _LEDGER.tests:
        return
    SUMMARY_FILE.parent.mkdir(parents=True, exist_ok=True)
    SUMMARY_FILE.write_text(json.dumps(_LEDGER.summary(), indent=2, sort_keys=True))


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001
    if not _LEDGER.tests:
        return
    totals = _LEDGER.summary()["totals"]
    terminalreporter.section("reliability summary")
    for name, value in totals.items():
        terminalreporter.write_line(f"{name:>22}: {value}")
    terminalreporter.write_line(f"(written to {Path(SUMMARY_FILE).relative_to(REPO_ROOT)})")


# the worker tests' tiny random network: honest for plumbing, useless as a model
from tests.worker.conftest import tiny_checkpoint  # noqa: E402,F401
