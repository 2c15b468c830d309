"""API tokens (stored hashed) and owners of models and plain jobs

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-23

Expand only: two new tables, nothing existing changes, so a 0001 coordinator keeps working on a
0002 database (it simply never reads them). Written out in full, like 0001; coordinator.db.tokens
describes the same tables and tests/unit/coordinator/test_repo.py checks that they agree.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tokens",
        sa.Column("id", sa.String(16), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("salt", sa.String(32), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_tokens"),
        sa.CheckConstraint("role IN ('admin', 'user', 'viewer')", name="ck_tokens_role"),
    )
    op.create_index("ix_tokens_name", "tokens", ["name"])
    op.create_table(
        "owners",
        sa.Column("entity", sa.String(8), nullable=False),
        sa.Column("entity_id", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("entity", "entity_id", name="pk_owners"),
        sa.CheckConstraint("entity IN ('model', 'job')", name="ck_owners_entity"),
    )
    op.create_index("ix_owners_owner", "owners", ["owner"])


def downgrade() -> None:
    op.drop_index("ix_owners_owner", table_name="owners")
    op.drop_table("owners")
    op.drop_index("ix_tokens_name", table_name="tokens")
    op.drop_table("tokens")
