"""SubmitJob idempotency keys

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23

Expand only: one new table; older coordinators never read it (they ignore request_id).
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "submit_keys",
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("request_id", name="pk_submit_keys"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_submit_keys_job_id_jobs"),
    )


def downgrade() -> None:
    op.drop_table("submit_keys")
