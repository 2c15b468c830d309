"""Per-owner GPU quotas

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-05

Expand only: one new table; older coordinators never read it.
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


def downgrade() -> None:
    op.drop_table("quotas")
