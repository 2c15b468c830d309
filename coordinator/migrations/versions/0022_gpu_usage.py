"""Per-attempt GPU use (issue 15): job_gpu_usage

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-05

Expand only: one new table; older coordinators never read it.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022"
down_revision: str | Sequence[str] | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_gpu_usage",
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("node", sa.String(128), nullable=False),
        sa.Column("gpus", sa.Integer(), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("gpu_seconds", sa.Double(), nullable=False),
        sa.Column("energy_joules", sa.Double(), nullable=False),
        sa.Column("peak_memory_bytes", sa.BigInteger(), nullable=False),
        sa.Column("mean_utilization", sa.Double(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_job_gpu_usage_job_id_jobs"),
        sa.PrimaryKeyConstraint("job_id", name="pk_job_gpu_usage"),
    )
    op.create_index("ix_job_gpu_usage_finished", "job_gpu_usage", ["finished_at"])
    op.create_index("ix_job_gpu_usage_owner", "job_gpu_usage", ["owner"])


def downgrade() -> None:
    op.drop_index("ix_job_gpu_usage_owner", "job_gpu_usage")
    op.drop_index("ix_job_gpu_usage_finished", "job_gpu_usage")
    op.drop_table("job_gpu_usage")
