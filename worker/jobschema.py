"""The job store's tables, schema versions and database engines.

:mod:`neuroseg.worker.jobstore` is the public API; this module holds the SQL
side: one ORM class per table, :func:`migrate` with its list of
:data:`MIGRATIONS`, and one cached engine per database URL (SQLite gets WAL
mode and a busy timeout, so the listener, workers and admin app can share the
file).

Schema versions: ``schema_version`` holds one row; ``MIGRATIONS[i]`` upgrades
a schema at version ``i`` to ``i + 1``. Add a migration, never edit an old one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    event,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# --- tables -------------------------------------------------------------------------------------


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class SchemaVersionRow(Base):
    __tablename__ = "schema_version"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer)


class StudyRow(Base):
    __tablename__ = "studies"
    study_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(330), default="")
    accession_number: Mapped[str] = mapped_column(String(64), default="")
    study_description: Mapped[str] = mapped_column(String(256), default="")
    first_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class JobRow(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(ForeignKey("studies.study_instance_uid"), index=True)
    # unique for jobs created from a manifest; NULL for admin reprocesses
    dedup_key: Mapped[str | None] = mapped_column(String(128), unique=True, nullable=True)
    fingerprint: Mapped[str] = mapped_column(String(32))
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), index=True)
    stage: Mapped[str] = mapped_column(String(16))
    percent: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str] = mapped_column(String(128), default="")
    device: Mapped[str] = mapped_column(String(32), default="")
    model_name: Mapped[str] = mapped_column(String(128), default="")
    model_version: Mapped[str] = mapped_column(String(64), default="")
    sequences_used: Mapped[list[Any]] = mapped_column(JSON, default=list)
    volumes_ml: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    resume_stage: Mapped[str] = mapped_column(String(16), default="")
    cancel_requested: Mapped[int] = mapped_column(Integer, default=0)
    replaces_job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    reason: Mapped[str] = mapped_column(String(64), default="received")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    retry_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class SeriesRow(Base):
    __tablename__ = "series"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    folder: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(String(16))
    classified_role: Mapped[str] = mapped_column(String(16))
    confidence: Mapped[float] = mapped_column(Float)
    reasons: Mapped[list[Any]] = mapped_column(JSON, default=list)
    modality: Mapped[str] = mapped_column(String(16), default="")
    series_description: Mapped[str] = mapped_column(String(256), default="")
    series_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64), default="")
    instance_count: Mapped[int] = mapped_column(Integer, default=0)


class StageRow(Base):
    __tablename__ = "stages"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    name: Mapped[str] = mapped_column(String(16))
    attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    duration_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    outcome: Mapped[str] = mapped_column(String(16), default="running")


class EventRow(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), default="", index=True)
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")


class OutputRow(Base):
    __tablename__ = "outputs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    series_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    sop_class_uid: Mapped[str] = mapped_column(String(64), default="")
    path: Mapped[str] = mapped_column(Text, default="")


class DeliveryRow(Base):
    __tablename__ = "deliveries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    destination: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    sent: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


# --- schema versions --------------------------------------------------------------------------


def _migration_1(connection: Connection) -> None:
    """Version 1: every table above."""
    tables = [model.__table__ for model in (StudyRow, JobRow, SeriesRow, StageRow, EventRow, OutputRow, DeliveryRow)]
    Base.metadata.create_all(connection, tables=tables)


#: MIGRATIONS[i] upgrades a schema at version i to version i + 1.
MIGRATIONS: tuple[Callable[[Connection], None], ...] = (_migration_1,)
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(engine: Engine) -> int:
    """The schema version of the database (0 when it is empty)."""
    SchemaVersionRow.__table__.create(engine, checkfirst=True)
    with engine.connect() as connection:
        value = connection.execute(select(SchemaVersionRow.version).where(SchemaVersionRow.id == 1)).scalar()
    return int(value or 0)


def migrate(engine: Engine) -> int:
    """Bring the schema up to :data:`SCHEMA_VERSION`; return the version it had before.

    Safe to run from several processes at once: each step runs in one
    transaction that also bumps the version, and a step that another process
    finished first is skipped.
    """
    before = schema_version(engine)
    if before > SCHEMA_VERSION:
        raise RuntimeError(
            f"the job store has schema version {before}, newer than this neuroseg ({SCHEMA_VERSION}); "
            "upgrade neuroseg"
        )
    for version in range(before, SCHEMA_VERSION):
        with engine.begin() as connection:
            current = connection.execute(
                select(SchemaVersionRow.version).where(SchemaVersionRow.id == 1)
            ).scalar() or 0
            if current > version:
                continue
            MIGRATIONS[version](connection)
            if current == 0 and version == 0:
                try:
                    with connection.begin_nested():
                        connection.execute(SchemaVersionRow.__table__.insert().values(id=1, version=1))
                except IntegrityError:
                    continue
            else:
                connection.execute(
                    update(SchemaVersionRow).where(SchemaVersionRow.id == 1).values(version=version + 1)
                )
        log.info("job store schema upgraded to version %d", version + 1)
    return before


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
