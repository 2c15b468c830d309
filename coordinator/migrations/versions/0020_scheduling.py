"""Scheduling options: dependencies, pipelines, arrays, time limits, auto-test

Revision ID: 0020
Revises: 0005
Create Date: 2026-12-05

Expand only: three new tables; older coordinators never read them.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0020"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "job_options",
        sa.Column("root_id", sa.String(64), nullable=False),
        sa.Column("depends_on", JSON, nullable=False),
        sa.Column("dependency_mode", sa.String(8), nullable=False),
        sa.Column("time_limit_s", sa.Integer(), nullable=True),
        sa.Column("array_id", sa.String(64), nullable=True),
        sa.Column("array_index", sa.Integer(), nullable=True),
        sa.Column("array_max_running", sa.Integer(), nullable=False),
        sa.Column("pipeline_id", sa.String(64), nullable=True),
        sa.Column("step", sa.String(64), nullable=True),
        sa.Column("shadow", sa.Boolean(), nullable=False),
        sa.CheckConstraint("dependency_mode IN ('afterok', 'afterany')", name="ck_job_options_dependency_mode"),
        sa.PrimaryKeyConstraint("root_id", name="pk_job_options"),
    )
    op.create_index("ix_job_options_array", "job_options", ["array_id"])
    op.create_index("ix_job_options_pipeline", "job_options", ["pipeline_id"])
    op.create_table(
        "pipelines",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_pipelines"),
    )
    op.create_table(
        "model_options",
        sa.Column("uuid", sa.String(36), nullable=False),
        sa.Column("auto_test", sa.String(16), nullable=False),
        sa.Column("time_limit_s", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("uuid", name="pk_model_options"),
        sa.ForeignKeyConstraint(["uuid"], ["models.uuid"], name="fk_model_options_uuid_models"),
    )


def downgrade() -> None:
    op.drop_table("model_options")
    op.drop_table("pipelines")
    op.drop_index("ix_job_options_pipeline", "job_options")
    op.drop_index("ix_job_options_array", "job_options")
    op.drop_table("job_options")
