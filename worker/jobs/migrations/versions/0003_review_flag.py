"""Per-study quality: ``jobs.review_recommended`` (indexed, for the dashboard filter) and ``jobs.quality``.

Jobs made before have NULL (not assessed) and an empty quality block.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("review_recommended", sa.Boolean, nullable=True))
    op.create_index("ix_jobs_review_recommended", "jobs", ["review_recommended"])
    op.add_column("jobs", sa.Column("quality", sa.JSON, nullable=False, server_default=sa.text("'{}'")))


def downgrade() -> None:
    op.drop_column("jobs", "quality")
    op.drop_index("ix_jobs_review_recommended", table_name="jobs")
    op.drop_column("jobs", "review_recommended")
