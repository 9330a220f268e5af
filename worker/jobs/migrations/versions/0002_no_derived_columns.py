"""Drop ``jobs.stage`` (it mirrored ``state``), count failed delivery attempts, retire ``schema_version``.

``deliveries.failed_attempts`` is filled from the delivery lines of the
timeline, which is where the failures were counted before.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ALTER TABLE (SQLite >= 3.35 drops a column in place; a batch copy would trip the foreign keys)
    op.drop_column("jobs", "stage")
    op.add_column("deliveries", sa.Column("failed_attempts", sa.Integer, nullable=False, server_default="0"))
    op.execute(
        "UPDATE deliveries SET failed_attempts = (SELECT count(*) FROM events"
        " WHERE events.job_id = deliveries.job_id AND events.kind = 'delivery'"
        " AND events.message LIKE deliveries.destination || ': %'"
        " AND events.message NOT LIKE deliveries.destination || ': delivered,%')"
    )
    op.drop_table("schema_version")


def downgrade() -> None:
    op.create_table("schema_version", sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("version", sa.Integer, nullable=False))
    op.bulk_insert(sa.table("schema_version", sa.column("id", sa.Integer), sa.column("version", sa.Integer)),
                   [{"id": 1, "version": 1}])
    op.drop_column("deliveries", "failed_attempts")
    op.add_column("jobs", sa.Column("stage", sa.String(16), nullable=False, server_default="queued"))
    op.execute("UPDATE jobs SET stage = state")
