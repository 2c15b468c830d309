"""The coordinator's tables, as SQLAlchemy Core metadata (portable: PostgreSQL and SQLite).

This file describes the schema the code expects; the migrations in coordinator/migrations create
it (a test checks that both agree). Change the schema only with a new migration (expand, then
contract), never with create_all.

    nodes           name PK, address, labels, state, drain_requested, last_heartbeat, agent_version,
                    runtime, gpus (latest snapshot), registered_at, row_version
    models          uuid PK, model_no, version, train_type, memo, params_json, spec, gpus, priority,
                    constraints, max_retries, status, step1_state, step2_state, step{1,2}_started_at,
                    step{1,2}_finished_at, step{1,2}_metric_saved, current_attempt_id, best_epoch,
                    test_epoch, last_error, created_at, updated_at, row_version
    jobs            id PK, root_id + attempt UNIQUE (attempts of one job share root_id), model_uuid ->
                    models, job_type, status, desired_state, observed_state, observed_at, exit_code,
                    error_message, node, gpu_indices, gpus, priority, spec, constraints, max_retries,
                    retries_used, resume_on_retry, name, superseded_by, acked, created_at,
                    assigned_at, started_at, finished_at, row_version
    metrics_train / metrics_validation / metrics_test
                    id PK, model_uuid, job_id, epoch, key, value; UNIQUE (job_id, epoch, key) so
                    ingestion is idempotent (no foreign keys: see _metrics_table)
    job_progress    job_id PK -> jobs, current_epoch, total_epoch, metrics, updated_at
    events          id PK, at, entity (job|model|node), entity_id, from_state, to_state, reason,
                    actor, detail
    dataset_stages  (uuid, split_part) PK, count, node, staged_at

Status columns hold the names of the enums in coordinator/states.py, with CHECK constraints so
that even a hand-written UPDATE cannot store a state the code does not know. Every timestamp is an
aware UTC datetime (`UtcDateTime`): SQLite would otherwise hand back naive values.
`row_version` increments on every update of a row; guarded updates compare it.
"""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from gpufleet.coordinator.states import DesiredState, JobStatus, JobType, ModelStatus, NodeState
from sqlalchemy.dialects import postgresql

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

# JSONB on PostgreSQL (indexable, compact), JSON text on SQLite.
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
# SQLite's INTEGER PRIMARY KEY is the rowid alias (autoincrement); BIGINT would not be.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class UtcDateTime(sa.TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on both databases; naive datetimes are refused on write."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware UTC datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:  # SQLite stores the UTC wall time without an offset
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _one_of(column: str, values: Any, name: str) -> sa.CheckConstraint:
    listed = ", ".join(f"'{v.value}'" for v in values)
    return sa.CheckConstraint(f"{column} IN ({listed})", name=name)


STATE_LEN = 16
ID_LEN = 64
UUID_LEN = 36
NODE_LEN = 128
METRIC_KEY_LEN = 64

nodes = sa.Table(
    "nodes",
    metadata,
    sa.Column("name", sa.String(NODE_LEN), primary_key=True),
    sa.Column("address", sa.String(256), nullable=False),
    sa.Column("labels", JSONType, nullable=False),
    sa.Column("state", sa.String(STATE_LEN), nullable=False),
    # The operator's wish (desired), kept apart from `state`: a drained node that is lost and
    # comes back must come back drained.
    sa.Column("drain_requested", sa.Boolean(), nullable=False),
    sa.Column("last_heartbeat", UtcDateTime(), nullable=True),
    sa.Column("agent_version", sa.String(64), nullable=False),
    sa.Column("runtime", sa.String(32), nullable=False),
    sa.Column("gpus", JSONType, nullable=False),
    sa.Column("registered_at", UtcDateTime(), nullable=False),
    sa.Column("row_version", sa.Integer(), nullable=False),
    # Set while the node has been silent past --node-timeout (shown UNREACHABLE; migration 0005).
    sa.Column("unreachable_since", UtcDateTime(), nullable=True),
    # UNREACHABLE is shown from unreachable_since, never stored in `state`.
    _one_of("state", [s for s in NodeState if s is not NodeState.UNREACHABLE], "state"),
)

models = sa.Table(
    "models",
    metadata,
    sa.Column("uuid", sa.String(UUID_LEN), primary_key=True),
    sa.Column("model_no", sa.String(32), nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("train_type", sa.String(64), nullable=False),
    sa.Column("memo", sa.Text(), nullable=False),
    # Kept as the user's text (the trainer reads it verbatim); validated to be a JSON object.
    sa.Column("params_json", sa.Text(), nullable=False),
    sa.Column("spec", JSONType, nullable=False),
    sa.Column("gpus", sa.Integer(), nullable=False),
    sa.Column("priority", sa.Integer(), nullable=False),
    sa.Column("constraints", JSONType, nullable=False),
    sa.Column("max_retries", sa.Integer(), nullable=False),
    sa.Column("status", sa.String(STATE_LEN), nullable=False),
    sa.Column("step1_state", sa.String(STATE_LEN), nullable=False),
    sa.Column("step2_state", sa.String(STATE_LEN), nullable=False),
    sa.Column("step1_started_at", UtcDateTime(), nullable=True),
    sa.Column("step1_finished_at", UtcDateTime(), nullable=True),
    sa.Column("step2_started_at", UtcDateTime(), nullable=True),
    sa.Column("step2_finished_at", UtcDateTime(), nullable=True),
    sa.Column("step1_metric_saved", sa.Boolean(), nullable=False),
    sa.Column("step2_metric_saved", sa.Boolean(), nullable=False),
    # No foreign key: jobs already point at models, and a cycle would complicate every insert.
    sa.Column("current_attempt_id", sa.String(ID_LEN), nullable=True),
    sa.Column("best_epoch", sa.Integer(), nullable=True),
    sa.Column("test_epoch", sa.Integer(), nullable=True),
    sa.Column("last_error", sa.Text(), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.Column("row_version", sa.Integer(), nullable=False),
    # Seconds a job of this model may stay unheard before it is requeued (NULL: --lost-after).
    sa.Column("lost_after_seconds", sa.Integer(), nullable=True),
    _one_of("status", ModelStatus, "status"),
    _one_of("step1_state", ModelStatus, "step1_state"),
    _one_of("step2_state", ModelStatus, "step2_state"),
    sa.Index("ix_models_status_created", "status", "created_at"),
    sa.Index("ix_models_model_no_created", "model_no", "created_at"),
    sa.Index("ix_models_created", "created_at"),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(ID_LEN), primary_key=True),
    # The first attempt's id; every requeue/restart is a new row with attempt + 1 and this id.
    sa.Column("root_id", sa.String(ID_LEN), nullable=False),
    sa.Column("model_uuid", sa.String(UUID_LEN), sa.ForeignKey("models.uuid"), nullable=True),
    sa.Column("job_type", sa.String(8), nullable=False),
    sa.Column("attempt", sa.Integer(), nullable=False),
    sa.Column("status", sa.String(STATE_LEN), nullable=False),
    # What the coordinator wants (RUN|STOP) vs what the agent last said (proto AgentJobState name).
    sa.Column("desired_state", sa.String(8), nullable=False),
    sa.Column("observed_state", sa.String(STATE_LEN), nullable=True),
    sa.Column("observed_at", UtcDateTime(), nullable=True),
    sa.Column("exit_code", sa.Integer(), nullable=True),
    sa.Column("error_message", sa.Text(), nullable=False),
    # No foreign key to nodes: the node's row is history, and a job keeps naming it.
    sa.Column("node", sa.String(NODE_LEN), nullable=True),
    sa.Column("gpu_indices", JSONType, nullable=False),
    sa.Column("gpus", sa.Integer(), nullable=False),
    sa.Column("priority", sa.Integer(), nullable=False),
    sa.Column("spec", JSONType, nullable=False),
    sa.Column("constraints", JSONType, nullable=False),
    sa.Column("max_retries", sa.Integer(), nullable=False),
    sa.Column("retries_used", sa.Integer(), nullable=False),
    sa.Column("resume_on_retry", sa.Boolean(), nullable=False),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("superseded_by", sa.String(ID_LEN), nullable=True),
    # The agent was told the final state is stored and may forget the attempt.
    sa.Column("acked", sa.Boolean(), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("assigned_at", UtcDateTime(), nullable=True),
    sa.Column("started_at", UtcDateTime(), nullable=True),
    sa.Column("finished_at", UtcDateTime(), nullable=True),
    sa.Column("row_version", sa.Integer(), nullable=False),
    # Migration 0005: "node unreachable since T" while the attempt's node is silent; how long it may
    # stay unheard before it is requeued (NULL: --lost-after); what was dropped from its reports.
    sa.Column("node_unreachable_since", UtcDateTime(), nullable=True),
    sa.Column("lost_after_seconds", sa.Integer(), nullable=True),
    sa.Column("warnings", sa.Text(), nullable=True),
    # The job's owner (its model's owner, else its submitter's token name; NULL without auth), fixed
    # at creation so that quotas and fair share read it without joining the owners table (0021).
    sa.Column("owner", sa.String(128), nullable=True),
    _one_of("status", JobStatus, "status"),
    _one_of("job_type", JobType, "job_type"),
    _one_of("desired_state", DesiredState, "desired_state"),
    sa.UniqueConstraint("root_id", "attempt", name="uq_jobs_root_id_attempt"),
    sa.Index("ix_jobs_queue", "status", sa.text("priority DESC"), "created_at"),
    # One owner's queue, in the scheduler's order: a fair-share pass reads each owner's stream (0021).
    sa.Index("ix_jobs_owner_queue", "status", "owner", sa.text("priority DESC"), "created_at"),
    sa.Index("ix_jobs_node_status", "node", "status"),
    sa.Index("ix_jobs_model_created", "model_uuid", "created_at"),
    sa.Index("ix_jobs_created", "created_at"),
)


def _metrics_table(name: str) -> sa.Table:
    # No foreign keys and no index but the unique one, on purpose: PostgreSQL checks a foreign key
    # with a trigger per row, which halved bulk ingestion in our measurements. ingest_metrics
    # checks the job (and its model) once per batch instead; jobs and models are never deleted.
    # Metrics of a model are found through its jobs (jobs.model_uuid is indexed).
    return sa.Table(
        name,
        metadata,
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("model_uuid", sa.String(UUID_LEN), nullable=True),
        sa.Column("job_id", sa.String(ID_LEN), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(METRIC_KEY_LEN), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.UniqueConstraint("job_id", "epoch", "key", name=f"uq_{name}_job_epoch_key"),
    )


metrics_train = _metrics_table("metrics_train")
metrics_validation = _metrics_table("metrics_validation")
metrics_test = _metrics_table("metrics_test")

# Split names as the agent reports them (MetricRow.split) -> table.
METRIC_TABLES: dict[str, sa.Table] = {
    "train": metrics_train,
    "val": metrics_validation,
    "test": metrics_test,
}

job_progress = sa.Table(
    "job_progress",
    metadata,
    sa.Column("job_id", sa.String(ID_LEN), sa.ForeignKey("jobs.id"), primary_key=True),
    sa.Column("current_epoch", sa.Integer(), nullable=False),
    sa.Column("total_epoch", sa.Integer(), nullable=False),
    sa.Column("metrics", JSONType, nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("at", UtcDateTime(), nullable=False),
    sa.Column("entity", sa.String(8), nullable=False),
    sa.Column("entity_id", sa.String(NODE_LEN), nullable=False),
    sa.Column("from_state", sa.String(STATE_LEN), nullable=True),
    sa.Column("to_state", sa.String(STATE_LEN), nullable=True),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("detail", JSONType, nullable=True),
    sa.CheckConstraint("entity IN ('job', 'model', 'node')", name="entity"),
    sa.Index("ix_events_entity", "entity", "entity_id", "id"),
)

dataset_stages = sa.Table(
    "dataset_stages",
    metadata,
    sa.Column("uuid", sa.String(UUID_LEN), primary_key=True),
    sa.Column("split_part", sa.String(64), primary_key=True),
    sa.Column("count", sa.Integer(), nullable=False),
    sa.Column("node", sa.String(NODE_LEN), nullable=False),
    sa.Column("staged_at", UtcDateTime(), nullable=False),
)

# The last output of an ended attempt (agent's log tail), stored before the agent is told to
# forget the job: logs must outlive the container (migration 0003).
job_logs = sa.Table(
    "job_logs",
    metadata,
    sa.Column("job_id", sa.String(ID_LEN), sa.ForeignKey("jobs.id"), primary_key=True),
    sa.Column("data", sa.LargeBinary(), nullable=False),
    sa.Column("stored_at", UtcDateTime(), nullable=False),
)


# A client's SubmitJob request_id -> the job it created (migration 0004): a retried SubmitJob whose
# first answer was lost returns that job instead of queueing a second one.
submit_keys = sa.Table(
    "submit_keys",
    metadata,
    sa.Column("request_id", sa.String(128), primary_key=True),
    sa.Column("job_id", sa.String(ID_LEN), sa.ForeignKey("jobs.id"), nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
)


# What a job waits for and what bounds it, beside the jobs table (migration 0020): one row per job
# (its root id, so every attempt shares it), only for jobs that use any of it.
job_options = sa.Table(
    "job_options",
    metadata,
    sa.Column("root_id", sa.String(ID_LEN), primary_key=True),
    # Root ids of the jobs this one waits for, and how: afterok (all SUCCESS) or afterany (all ended).
    sa.Column("depends_on", JSONType, nullable=False),
    sa.Column("dependency_mode", sa.String(8), nullable=False),
    sa.Column("time_limit_s", sa.Integer(), nullable=True),
    sa.Column("array_id", sa.String(ID_LEN), nullable=True),
    sa.Column("array_index", sa.Integer(), nullable=True),
    # At most this many jobs of the array run at once (0: no cap).
    sa.Column("array_max_running", sa.Integer(), nullable=False),
    sa.Column("pipeline_id", sa.String(ID_LEN), nullable=True),
    sa.Column("step", sa.String(64), nullable=True),
    # A shadow step runs on the same inputs; nothing downstream consumes it.
    sa.Column("shadow", sa.Boolean(), nullable=False),
    sa.CheckConstraint("dependency_mode IN ('afterok', 'afterany')", name="dependency_mode"),
    sa.Index("ix_job_options_array", "array_id"),
    sa.Index("ix_job_options_pipeline", "pipeline_id"),
)

pipelines = sa.Table(
    "pipelines",
    metadata,
    sa.Column("id", sa.String(ID_LEN), primary_key=True),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
)

# Per-model options (migration 0020): step 2 run automatically once step 1 completes.
model_options = sa.Table(
    "model_options",
    metadata,
    sa.Column("uuid", sa.String(UUID_LEN), sa.ForeignKey("models.uuid"), primary_key=True),
    # "best" or an epoch number; empty: step 2 is started by hand.
    sa.Column("auto_test", sa.String(16), nullable=False),
    sa.Column("time_limit_s", sa.Integer(), nullable=True),
)
