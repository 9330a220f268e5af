"""Fixtures of the worker tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of a tiny random network: honest for testing the plumbing, useless as a model.

    2 mm voxels and a few channels keep inference to seconds on a small CPU.
    """
    import torch

    from neuroseg.model.checkpoint import save_checkpoint
    from neuroseg.model.network import NetworkConfig, build_network

    torch.manual_seed(0)
    config = NetworkConfig(channels=(4, 8), head_channels=4, patch_size=(32, 32, 32), spacing_mm=2.0)
    path = tmp_path_factory.mktemp("model") / "tiny-random.pt"
    save_checkpoint(path, build_network(config), config,
                    {"name": "tiny-random-test-network", "version": "0.0.test"})
    return path


def postgres_binaries() -> dict[str, str] | None:
    """``initdb`` and ``pg_ctl``: on the PATH, else in Debian's ``/usr/lib/postgresql/<version>/bin`` (newest)."""
    import shutil

    found = {name: shutil.which(name) for name in ("initdb", "pg_ctl")}
    if all(found.values()):
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                      key=lambda path: [int(part) for part in path.parent.name.split(".") if part.isdigit()])
    for folder in reversed(versions):
        if all((folder / name).is_file() for name in ("initdb", "pg_ctl")):
            return {name: str(folder / name) for name in ("initdb", "pg_ctl")}
    return None


class PostgresServer:
    """A private PostgreSQL on a free loopback port.

    Without PostgreSQL the tests that need it skip, except in CI (``CI=true``),
    where the production job store must be tested: there they fail.
    """

    def __init__(self, folder: Path) -> None:
        from tests.services import free_port

        self.folder, self.port = folder, free_port()
        self.binaries = postgres_binaries()
        self._databases = 0

    def _run(self, *command: str) -> None:
        import os
        import subprocess

        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=120)

    def start(self) -> "PostgresServer":
        import os
        import shutil

        if self.binaries is None:
            message = ("PostgreSQL (initdb, pg_ctl) is not installed: not on the PATH nor in "
                       "/usr/lib/postgresql/*/bin; install the Debian package postgresql")
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(message)
            pytest.skip(message)
        self.folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            shutil.chown(self.folder.parent, "postgres")
            shutil.chown(self.folder, "postgres")
        self._run(self.binaries["initdb"], "-D", str(self.folder / "data"), "-A", "trust", "-U", "neuroseg")
        self._run(self.binaries["pg_ctl"], "-D", str(self.folder / "data"), "-l", str(self.folder / "log"), "-w",
                  "-o", f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1", "start")
        return self

    def stop(self) -> None:
        self._run(self.binaries["pg_ctl"], "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop")

    def shared_database(self) -> str:
        """One database shared by the tests that empty it themselves; its SQLAlchemy URL."""
        if getattr(self, "_shared", None) is None:
            self._shared = self.new_database()
        return self._shared

    def new_database(self) -> str:
        """A fresh, empty database; its SQLAlchemy URL."""
        import sqlalchemy

        self._databases += 1
        name = f"neuroseg_test_{self._databases}"
        admin = sqlalchemy.create_engine(f"postgresql+psycopg://neuroseg@127.0.0.1:{self.port}/postgres",
                                         isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
        admin.dispose()
        return f"postgresql+psycopg://neuroseg@127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="session")
def postgres():
    """A private PostgreSQL for the job store tests (in a folder the postgres user can reach)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="neuroseg-postgres-"))
    server = PostgresServer(folder / "server").start()
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def database_url(request) -> str | None:
    """The job store's database, on both: None (SQLite in the data dir) or a fresh PostgreSQL database."""
    return request.getfixturevalue("postgres").new_database() if request.param == "postgresql" else None
