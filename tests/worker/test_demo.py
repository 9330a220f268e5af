"""``neuroseg demo``: the README's "run it" command, start to finish."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.services import REPO_ROOT, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def demo_env(tmp_path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("NEUROSEG_")}
    env.update({"NEUROSEG_DATA_DIR": str(tmp_path / "data"), "NEUROSEG_PORT": str(free_port()),
                "NEUROSEG_ADMIN_PORT": str(free_port())}, **extra)
    return env


def test_demo_starts_what_it_needs_and_reports_the_result(tmp_path):
    """Exactly the README's command, with the shipped weights."""
    env = demo_env(tmp_path)
    result = subprocess.run([sys.executable, "-m", "neuroseg.worker", "--log-level", "WARNING", "demo",
                             "--mc-samples", "2"],
                            env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "starting listener + worker" in out and "2 MC dropout passes" in out
    assert "job " in out and ": done" in out
    assert f"outbox folder {tmp_path / 'data' / 'outbox'}" in out
    assert "/jobs/" in out and "model: neuroseg-demo" in out
    assert "celery@" not in out.lower() and "[queues]" not in out  # the worker's own output goes to its log
    outbox = tmp_path / "data" / "outbox"
    assert any(outbox.glob("*/seg.dcm"))
