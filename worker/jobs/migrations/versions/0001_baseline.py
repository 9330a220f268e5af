"""Baseline: the schema as the hand-written version table left it (its version 1).

A database made before Alembic has these tables and ``schema_version``; it is
stamped at this revision instead of running it (see ``database.migrate``).

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", _TZ, nullable=False, index=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=False, index=True),
        sa.Column("job_id", sa.String(32), nullable=True, index=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
    )
    op.create_table(
        "schema_version",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
    )
    op.create_table(
        "studies",
        sa.Column("study_instance_uid", sa.String(64), primary_key=True),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("patient_name", sa.String(330), nullable=False),
        sa.Column("accession_number", sa.String(64), nullable=False),
        sa.Column("study_description", sa.String(256), nullable=False),
        sa.Column("first_seen_at", _TZ, nullable=False),
        sa.Column("last_seen_at", _TZ, nullable=False),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("study_instance_uid", sa.String(64), sa.ForeignKey("studies.study_instance_uid"),
                  nullable=False, index=True),
        sa.Column("dedup_key", sa.String(128), nullable=True, unique=True),
        sa.Column("fingerprint", sa.String(32), nullable=False),
        sa.Column("manifest", sa.JSON, nullable=False),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("percent", sa.Float, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("worker", sa.String(128), nullable=False),
        sa.Column("device", sa.String(32), nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("sequences_used", sa.JSON, nullable=False),
        sa.Column("volumes_ml", sa.JSON, nullable=False),
        sa.Column("resume_stage", sa.String(16), nullable=False),
        sa.Column("cancel_requested", sa.Integer, nullable=False),
        sa.Column("replaces_job_id", sa.String(32), nullable=True),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("created_at", _TZ, nullable=False, index=True),
        sa.Column("updated_at", _TZ, nullable=False),
        *(sa.Column(name, _TZ, nullable=True)
          for name in ("published_at", "started_at", "finished_at", "heartbeat_at", "retry_at")),
    )
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id"), nullable=False, index=True),
        sa.Column("destination", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("sent", sa.Integer, nullable=False),
        sa.Column("failed", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text, nullable=False),
        sa.Column("last_attempt_at", _TZ, nullable=True),
        sa.Column("delivered_at", _TZ, nullable=True),
    )
    op.create_table(
        "outputs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id"), nullable=False, index=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("series_instance_uid", sa.String(64), nullable=False),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
    )
    op.create_table(
        "series",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id"), nullable=False, index=True),
        sa.Column("series_instance_uid", sa.String(64), nullable=False),
        sa.Column("folder", sa.Text, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("classified_role", sa.String(16), nullable=False),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("reasons", sa.JSON, nullable=False),
        sa.Column("modality", sa.String(16), nullable=False),
        sa.Column("series_description", sa.String(256), nullable=False),
        sa.Column("series_number", sa.Integer, nullable=True),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("instance_count", sa.Integer, nullable=False),
    )
    op.create_table(
        "stages",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id"), nullable=False, index=True),
        sa.Column("name", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("started_at", _TZ, nullable=False),
        sa.Column("finished_at", _TZ, nullable=True),
        sa.Column("duration_s", sa.Float, nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
    )
    op.bulk_insert(sa.table("schema_version", sa.column("id", sa.Integer), sa.column("version", sa.Integer)),
                   [{"id": 1, "version": 1}])


def downgrade() -> None:
    for table in ("stages", "series", "outputs", "deliveries", "jobs", "studies", "schema_version", "events"):
        op.drop_table(table)
