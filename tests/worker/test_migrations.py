"""Job store migrations (Alembic): fresh schema, upgrade of a pre-Alembic database with rows, concurrent start-up."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from neuroseg.worker.jobstore import SCHEMA_VERSION, Base, JobState, JobStore, engine_for, migrate, schema_version
from tests.worker.test_jobstore import make_manifest

LEGACY_SCHEMA = Path(__file__).parent / "data"
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
def url(database_url, tmp_path) -> str:
    return database_url or f"sqlite:///{tmp_path / 'jobs.sqlite'}"


def _legacy_database(url: str) -> None:
    """A job store as the hand-written version table made it (version 1), with one finished job in it."""
    engine = sa.create_engine(url)
    script = (LEGACY_SCHEMA / f"jobstore_v1_{engine.dialect.name}.sql").read_text()
    statements = [part.strip() for part in script.split(";\n")]
    with engine.begin() as connection:
        for statement in statements:
            lines = [line for line in statement.splitlines() if not line.startswith("--")]
            if "".join(lines).strip():
                connection.exec_driver_sql("\n".join(lines))
    tables = sa.MetaData()
    tables.reflect(engine)
    t = tables.tables
    with engine.begin() as connection:
        connection.execute(t["studies"].insert(), [dict(
            study_instance_uid="1.2.3", patient_id="P1", patient_name="Doe^Jane", accession_number="A1",
            study_description="MRI BRAIN", first_seen_at=T0, last_seen_at=T0)])
        connection.execute(t["jobs"].insert(), [dict(
            id="a" * 32, study_instance_uid="1.2.3", dedup_key="1.2.3:fp", fingerprint="fp",
            manifest=make_manifest().to_dict(), state="partial", stage="delivering", percent=80.0,
            message="1 destination failed", error="PACS refused", attempts=1, worker="w:1", device="cpu",
            model_name="m", model_version="1", sequences_used=["flair"], volumes_ml={"wt": 1.5},
            resume_stage="delivering", cancel_requested=0, replaces_job_id=None, reason="received",
            created_at=T0, updated_at=T0 + timedelta(minutes=5), published_at=T0, started_at=T0,
            finished_at=T0 + timedelta(minutes=5), heartbeat_at=T0, retry_at=None)])
        connection.execute(t["stages"].insert(), [
            dict(job_id="a" * 32, name=name, attempt=1, started_at=T0 + timedelta(minutes=i),
                 finished_at=T0 + timedelta(minutes=i + 1), duration_s=60.0, outcome="ok")
            for i, name in enumerate(("queued", "loading", "inference", "delivering"))])
        connection.execute(t["events"].insert(), [
            dict(at=T0, study_instance_uid="1.2.3", job_id="a" * 32, kind="delivery",
                 message="PACS@h:104: retrying, 0 sent, 2 failed: refused"),
            dict(at=T0, study_instance_uid="1.2.3", job_id="a" * 32, kind="delivery",
                 message="PACS@h:104: failed, 0 sent, 2 failed: refused"),
            dict(at=T0, study_instance_uid="1.2.3", job_id="a" * 32, kind="delivery",
                 message="outbox:/out: delivered, 2 sent, 0 failed"),
        ])
        connection.execute(t["deliveries"].insert(), [
            dict(job_id="a" * 32, destination="PACS@h:104", status="failed", attempts=2, sent=0, failed=2,
                 last_error="refused", last_attempt_at=T0, delivered_at=None),
            dict(job_id="a" * 32, destination="outbox:/out", status="delivered", attempts=1, sent=2, failed=0,
                 last_error="", last_attempt_at=T0, delivered_at=T0)])
        connection.execute(t["outputs"].insert(), [dict(
            job_id="a" * 32, kind="seg", sop_instance_uid="2.25.1", series_instance_uid="2.25.2",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4", path="seg.dcm")])
        connection.execute(t["series"].insert(), [dict(
            job_id="a" * 32, series_instance_uid="1.2.3.1", folder="/spool/1.2.3/1.2.3.1", role="FLAIR",
            classified_role="FLAIR", confidence=0.9, reasons=["rule FLAIR"], modality="MR",
            series_description="FLAIR", series_number=1, sop_class_uid="", instance_count=20)])
    engine.dispose()


def test_fresh_database_gets_the_tables_of_the_code(url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = engine_for(url)
    assert schema_version(engine) == SCHEMA_VERSION
    assert migrate(engine) == SCHEMA_VERSION  # a second run changes nothing
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_upgrade_from_the_version_table_keeps_every_row(url):
    _legacy_database(url)
    store = JobStore(url)
    assert schema_version(store.engine) == SCHEMA_VERSION
    inspector = sa.inspect(store.engine)
    assert not inspector.has_table("schema_version")
    assert "stage" not in {column["name"] for column in inspector.get_columns("jobs")}
    job = store.get_job("a" * 32)
    assert (job.state, job.stage, job.patient_name, job.error) == ("partial", "delivering", "Doe^Jane", "PACS refused")
    assert job.created_at == T0 and job.volumes_ml == {"wt": 1.5} and job.resume_stage == "delivering"
    assert [stage.name for stage in job.stages] == ["queued", "loading", "inference", "delivering"]
    assert [(item.destination, item.status) for item in job.deliveries] == [("PACS@h:104", "failed"),
                                                                            ("outbox:/out", "delivered")]
    assert job.outputs[0].path == "seg.dcm" and job.series[0].reasons == ["rule FLAIR"]
    assert store.delivery_failure_count() == 2  # the two failed attempts in the old timeline
    # the upgraded store works as a new one: the unique de-duplication key, a new job, a claim
    new_id, created = store.create_job(make_manifest("4.5.6"))
    assert created and store.claim(new_id, worker="w:2").state == JobState.LOADING.value
    assert store.requeue("a" * 32, resume_stage="delivering")


def test_a_newer_database_is_refused(url):
    engine = engine_for(url)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = 'f00d'"))
    with pytest.raises(RuntimeError, match="schema revision f00d, unknown to this neuroseg"):
        migrate(engine)


@pytest.mark.slow
def test_processes_starting_at_once_migrate_once(url):
    """Four processes open a pre-Alembic store at the same moment; all start, the schema is right.

    Without the migration lock this fails (two processes stamp or alter the same tables).
    """
    _legacy_database(url)
    code = ("import sys; from neuroseg.worker.jobstore import JobStore; "
            "print(len(JobStore(sys.argv[1]).list_jobs()))")
    processes = [subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(4)]
    results = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0] * 4, [err[-2000:] for _, err in results]
    assert [out.strip() for out, _ in results] == ["1"] * 4
    assert schema_version(engine_for(url)) == SCHEMA_VERSION


def _schema(url: str) -> dict[str, object]:
    engine = sa.create_engine(url)
    inspector = sa.inspect(engine)
    schema = {
        table: {
            "columns": [(column["name"], str(column["type"]), column["nullable"])
                        for column in inspector.get_columns(table)],
            "indexes": sorted((index["name"], tuple(index["column_names"])) for index in inspector.get_indexes(table)),
            "unique": sorted(tuple(item["column_names"]) for item in inspector.get_unique_constraints(table)),
            "foreign_keys": sorted((tuple(item["constrained_columns"]), item["referred_table"])
                                   for item in inspector.get_foreign_keys(table)),
        }
        for table in inspector.get_table_names() if table != "alembic_version"
    }
    engine.dispose()
    return schema


def test_baseline_revision_is_the_schema_the_version_table_made(url, tmp_path, request):
    from alembic import command

    from neuroseg.worker.jobs.database import BASELINE_REVISION, alembic_config

    _legacy_database(url)
    legacy = _schema(url)
    baseline_url = (request.getfixturevalue("postgres").new_database() if url.startswith("postgresql")
                    else f"sqlite:///{tmp_path / 'baseline.sqlite'}")
    engine = sa.create_engine(baseline_url)
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), BASELINE_REVISION)
    engine.dispose()
    assert _schema(baseline_url) == legacy
