"""Fixtures shared by every test folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from neuroseg.worker.settings import Settings, get_settings, load_settings
from tests.services import SHARED_DATA, OrthancServer, RedisServer


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder (``../shared/data``); never copied into the repository."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Each test starts from default settings with its own data dir."""
    import os

    for name in list(os.environ):
        if name.startswith("NEUROSEG_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NEUROSEG_DATA_DIR", str(tmp_path / "neuroseg-data"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def make_settings(tmp_path: Path):
    """Build settings for a test: ``make_settings(port=..., stable_seconds=1)``."""

    def factory(**overrides) -> Settings:
        overrides.setdefault("data_dir", tmp_path / "neuroseg-data")
        return load_settings(**overrides)

    return factory


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private real Redis on a free port (AOF on, so restarts keep queued tasks)."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    """A private real Orthanc PACS on free loopback ports."""
    server = OrthancServer(tmp_path / "orthanc").start()
    yield server
    server.stop()
