"""Silence is not death: lost_after per job and model, unreachable stamps, job warnings

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05

Expand only: nullable columns; older coordinators never read them.
- nodes.unreachable_since: set while a node has been silent for longer than --node-timeout (the
  node is shown UNREACHABLE; its jobs keep running).
- jobs.node_unreachable_since: the same stamp on each RUNNING attempt of that node ("node
  unreachable since T"), cleared when the node is heard again.
- jobs.lost_after_seconds, models.lost_after_seconds: how long an attempt may stay unheard before
  it is requeued (NULL: the coordinator's --lost-after).
- jobs.warnings: what was dropped from the job's reports (e.g. a metric name over 64 characters).
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("nodes", sa.Column("unreachable_since", sa.DateTime(timezone=True), nullable=True))
    op.add_column("jobs", sa.Column("node_unreachable_since", sa.DateTime(timezone=True), nullable=True))
    op.add_column("jobs", sa.Column("lost_after_seconds", sa.Integer(), nullable=True))
    op.add_column("jobs", sa.Column("warnings", sa.Text(), nullable=True))
    op.add_column("models", sa.Column("lost_after_seconds", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("models") as b:
        b.drop_column("lost_after_seconds")
    with op.batch_alter_table("jobs") as b:
        b.drop_column("warnings")
        b.drop_column("lost_after_seconds")
        b.drop_column("node_unreachable_since")
    with op.batch_alter_table("nodes") as b:
        b.drop_column("unreachable_since")
