"""Per-owner GPU quotas; each job's owner on its row

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-05

Expand only: a new table and a nullable column (older coordinators neither read nor write them;
jobs they make have no owner, which means no quota). Existing jobs get their owner from the owners
table: the model's owner, else the first attempt's.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | Sequence[str] | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "quotas",
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("gpus", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(128), nullable=False),
        sa.CheckConstraint("gpus >= 0", name="ck_quotas_gpus"),
        sa.PrimaryKeyConstraint("owner", name="pk_quotas"),
    )
    op.add_column("jobs", sa.Column("owner", sa.String(128), nullable=True))
    op.create_index("ix_jobs_owner_queue", "jobs", ["status", "owner", sa.text("priority DESC"), "created_at"])
    op.execute(
        "UPDATE jobs SET owner = coalesce("
        "(SELECT o.owner FROM owners o WHERE o.entity = 'model' AND o.entity_id = jobs.model_uuid), "
        "(SELECT o.owner FROM owners o WHERE o.entity = 'job' AND o.entity_id = jobs.root_id))"
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_owner_queue", "jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("owner")
    op.drop_table("quotas")
