"""Engines for the job store, and its schema migrations (Alembic), run on start-up under a lock.

One engine per database URL and process; SQLite gets WAL mode and a busy
timeout so the listener, workers and admin app can share the file. The first
:func:`engine_for` of a URL brings the schema to the newest revision:

- the revisions ship inside the package (``migrations/versions``) and run
  without an ``alembic.ini`` (:func:`alembic_config` builds the configuration);
- several processes may start at once: the upgrade runs under a PostgreSQL
  advisory lock, or a lock file next to the SQLite file, and each process
  checks the revision again once it holds the lock;
- a database made before Alembic (with the hand-written ``schema_version``
  table at version 1) is stamped at the baseline revision and then upgraded,
  its rows kept.

Add a revision (``alembic revision`` with this folder as script location),
never edit an old one.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
#: The revision the hand-written version table's version 1 corresponds to.
BASELINE_REVISION = "0001"
#: Key of the PostgreSQL advisory lock held while migrating (any constant unique to neuroseg).
ADVISORY_LOCK_KEY = 0x6E657572  # "neur"


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration in code: the packaged revisions, and the connection to run them on."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision this neuroseg knows."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


SCHEMA_VERSION = head_revision()


def schema_version(engine: Engine) -> str | None:
    """The database's revision (None when it has no Alembic revision yet)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """One process at a time migrates the database of ``engine``."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
            connection.commit()
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY})
                connection.commit()
        return
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield  # an in-memory database belongs to this process only
        return
    with open(f"{database}.migrate-lock", "a+b") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def migrate(engine: Engine) -> str | None:
    """Bring the schema up to :data:`SCHEMA_VERSION`; return the revision it had before."""
    before = schema_version(engine)
    if before == SCHEMA_VERSION:
        return before
    with _migration_lock(engine):
        with engine.begin() as connection:
            before = MigrationContext.configure(connection).get_current_revision()
            if before is not None and before != SCHEMA_VERSION and before not in _known_revisions():
                raise RuntimeError(
                    f"the job store has schema revision {before}, unknown to this neuroseg "
                    f"(newest {SCHEMA_VERSION}); upgrade neuroseg"
                )
            config = alembic_config(connection)
            if before is None and _has_version_table(connection):
                command.stamp(config, BASELINE_REVISION)
                log.info("job store made before Alembic: stamped at revision %s", BASELINE_REVISION)
            command.upgrade(config, "head")
    log.info("job store schema upgraded from %s to %s", before or "nothing", SCHEMA_VERSION)
    return before


def _known_revisions() -> set[str]:
    return {script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def _has_version_table(connection: Connection) -> bool:
    if not inspect(connection).has_table("schema_version"):
        return False
    version = connection.execute(text("SELECT version FROM schema_version WHERE id = 1")).scalar()
    if version != 1:
        raise RuntimeError(f"the job store has hand-written schema version {version}; this neuroseg upgrades "
                           "only version 1 (run the neuroseg release that made it first)")
    return True


_ENGINES: dict[str, Engine] = {}
_ENGINES_LOCK = threading.Lock()


def engine_for(url: str) -> Engine:
    """The engine for ``url``, created once per process, with the schema migrated."""
    with _ENGINES_LOCK:
        engine = _ENGINES.get(url)
        if engine is None:
            if url.startswith("sqlite"):
                engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

                @event.listens_for(engine, "connect")
                def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001
                    cursor = dbapi_connection.cursor()
                    cursor.execute("PRAGMA journal_mode=WAL")
                    cursor.execute("PRAGMA busy_timeout=60000")
                    cursor.execute("PRAGMA foreign_keys=ON")
                    cursor.close()
            else:
                engine = create_engine(url, pool_pre_ping=True)
            migrate(engine)
            _ENGINES[url] = engine
        return engine
