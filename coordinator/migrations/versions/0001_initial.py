"""initial schema: nodes, models, jobs, metrics, progress, events, dataset stages

Revision ID: 0001
Revises:
Create Date: 2025-11-23

Written out in full rather than imported from coordinator.db.schema: a migration is frozen in
time, while schema.py follows the code. tests/unit/coordinator/test_repo.py checks that the two
agree after `upgrade head`.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JOB_STATUSES = "'QUEUED', 'RUNNING', 'SUCCESS', 'FAILED', 'STOPPED', 'CANCELED'"
MODEL_STATUSES = "'READY', 'IN_PROGRESS', 'COMPLETED', 'STOPPED', 'ERROR'"
NODE_STATES = "'READY', 'DRAINING', 'DRAINED', 'LOST'"


def _ts(name: str, nullable: bool) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("address", sa.String(256), nullable=False),
        sa.Column("labels", JSON, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("drain_requested", sa.Boolean(), nullable=False),
        _ts("last_heartbeat", True),
        sa.Column("agent_version", sa.String(64), nullable=False),
        sa.Column("runtime", sa.String(32), nullable=False),
        sa.Column("gpus", JSON, nullable=False),
        _ts("registered_at", False),
        sa.Column("row_version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_nodes"),
        sa.CheckConstraint(f"state IN ({NODE_STATES})", name="ck_nodes_state"),
    )
    op.create_table(
        "models",
        sa.Column("uuid", sa.String(36), nullable=False),
        sa.Column("model_no", sa.String(32), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("train_type", sa.String(64), nullable=False),
        sa.Column("memo", sa.Text(), nullable=False),
        sa.Column("params_json", sa.Text(), nullable=False),
        sa.Column("spec", JSON, nullable=False),
        sa.Column("gpus", sa.Integer(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("constraints", JSON, nullable=False),
        sa.Column("max_retries", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("step1_state", sa.String(16), nullable=False),
        sa.Column("step2_state", sa.String(16), nullable=False),
        _ts("step1_started_at", True),
        _ts("step1_finished_at", True),
        _ts("step2_started_at", True),
        _ts("step2_finished_at", True),
        sa.Column("step1_metric_saved", sa.Boolean(), nullable=False),
        sa.Column("step2_metric_saved", sa.Boolean(), nullable=False),
        sa.Column("current_attempt_id", sa.String(64), nullable=True),
        sa.Column("best_epoch", sa.Integer(), nullable=True),
        sa.Column("test_epoch", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=False),
        _ts("created_at", False),
        _ts("updated_at", False),
        sa.Column("row_version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("uuid", name="pk_models"),
        sa.CheckConstraint(f"status IN ({MODEL_STATUSES})", name="ck_models_status"),
        sa.CheckConstraint(f"step1_state IN ({MODEL_STATUSES})", name="ck_models_step1_state"),
        sa.CheckConstraint(f"step2_state IN ({MODEL_STATUSES})", name="ck_models_step2_state"),
    )
    op.create_index("ix_models_status_created", "models", ["status", "created_at"])
    op.create_index("ix_models_model_no_created", "models", ["model_no", "created_at"])
    op.create_index("ix_models_created", "models", ["created_at"])

    op.create_table(
        "jobs",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("root_id", sa.String(64), nullable=False),
        sa.Column("model_uuid", sa.String(36), nullable=True),
        sa.Column("job_type", sa.String(8), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("desired_state", sa.String(8), nullable=False),
        sa.Column("observed_state", sa.String(16), nullable=True),
        _ts("observed_at", True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=False),
        sa.Column("node", sa.String(128), nullable=True),
        sa.Column("gpu_indices", JSON, nullable=False),
        sa.Column("gpus", sa.Integer(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("spec", JSON, nullable=False),
        sa.Column("constraints", JSON, nullable=False),
        sa.Column("max_retries", sa.Integer(), nullable=False),
        sa.Column("retries_used", sa.Integer(), nullable=False),
        sa.Column("resume_on_retry", sa.Boolean(), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("superseded_by", sa.String(64), nullable=True),
        sa.Column("acked", sa.Boolean(), nullable=False),
        _ts("created_at", False),
        _ts("assigned_at", True),
        _ts("started_at", True),
        _ts("finished_at", True),
        sa.Column("row_version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
        sa.ForeignKeyConstraint(["model_uuid"], ["models.uuid"], name="fk_jobs_model_uuid_models"),
        sa.UniqueConstraint("root_id", "attempt", name="uq_jobs_root_id_attempt"),
        sa.CheckConstraint(f"status IN ({JOB_STATUSES})", name="ck_jobs_status"),
        sa.CheckConstraint("job_type IN ('TRAIN', 'EVAL')", name="ck_jobs_job_type"),
        sa.CheckConstraint("desired_state IN ('RUN', 'STOP')", name="ck_jobs_desired_state"),
    )
    # The scheduler's queue order: priority first (highest), then age.
    op.create_index("ix_jobs_queue", "jobs", ["status", sa.text("priority DESC"), "created_at"])
    op.create_index("ix_jobs_node_status", "jobs", ["node", "status"])
    op.create_index("ix_jobs_model_created", "jobs", ["model_uuid", "created_at"])
    op.create_index("ix_jobs_created", "jobs", ["created_at"])

    for table in ("metrics_train", "metrics_validation", "metrics_test"):
        op.create_table(
            table,
            sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
            sa.Column("model_uuid", sa.String(36), nullable=True),
            sa.Column("job_id", sa.String(64), nullable=False),
            sa.Column("epoch", sa.Integer(), nullable=False),
            sa.Column("key", sa.String(64), nullable=False),
            sa.Column("value", sa.Double(), nullable=False),
            sa.PrimaryKeyConstraint("id", name=f"pk_{table}"),
            # No foreign keys: a per-row trigger check halves bulk ingestion (see schema.py).
            sa.UniqueConstraint("job_id", "epoch", "key", name=f"uq_{table}_job_epoch_key"),
        )

    op.create_table(
        "job_progress",
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("current_epoch", sa.Integer(), nullable=False),
        sa.Column("total_epoch", sa.Integer(), nullable=False),
        sa.Column("metrics", JSON, nullable=False),
        _ts("updated_at", False),
        sa.PrimaryKeyConstraint("job_id", name="pk_job_progress"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_job_progress_job_id_jobs"),
    )
    op.create_table(
        "events",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        _ts("at", False),
        sa.Column("entity", sa.String(8), nullable=False),
        sa.Column("entity_id", sa.String(128), nullable=False),
        sa.Column("from_state", sa.String(16), nullable=True),
        sa.Column("to_state", sa.String(16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("detail", JSON, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
        sa.CheckConstraint("entity IN ('job', 'model', 'node')", name="ck_events_entity"),
    )
    op.create_index("ix_events_entity", "events", ["entity", "entity_id", "id"])
    op.create_table(
        "dataset_stages",
        sa.Column("uuid", sa.String(36), nullable=False),
        sa.Column("split_part", sa.String(64), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("node", sa.String(128), nullable=False),
        _ts("staged_at", False),
        sa.PrimaryKeyConstraint("uuid", "split_part", name="pk_dataset_stages"),
    )


def downgrade() -> None:
    for table in (
        "dataset_stages",
        "events",
        "job_progress",
        "metrics_test",
        "metrics_validation",
        "metrics_train",
        "jobs",
        "models",
        "nodes",
    ):
        op.drop_table(table)
