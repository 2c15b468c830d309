"""The repository on SQLite and on a real PostgreSQL (the `db_url` fixture runs each test on both).

Times come from an injected clock (T0 + n seconds); concurrency is synchronised with barriers,
never with sleeps.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from gpufleet.coordinator import states
from gpufleet.coordinator.db import repo
from gpufleet.coordinator.db.engine import SchemaTooNew, default_sqlite_url, make_engine, migrate, schema_status
from gpufleet.coordinator.db.schema import events, jobs, metadata, metrics_train, metrics_validation, models, nodes
from gpufleet.coordinator.states import (
    DesiredState,
    InvalidTransition,
    JobStatus,
    ModelStates,
    ModelStatus,
    NodeState,
    TerminationReason,
)
from sqlalchemy import Connection, Engine

from gpufleet.errors import FailedPrecondition, InvalidArgument, NotFound
from tests.placing import assign
from tests.unit.coordinator import audit

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
M = ModelStatus


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    migrate(eng)
    yield eng
    eng.dispose()


def count(conn: Connection, table: sa.Table) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def job_events(conn: Connection, job_id: str) -> list[tuple[str | None, str | None]]:
    return [(e.from_state, e.to_state) for e in audit.list_events(conn, "job", job_id)]


def queued_job(conn: Connection, n: int = 0, **kw: object) -> str:
    return repo.create_job(conn, spec={"image": "busybox"}, now=at(n), **kw).id  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Migrations


def test_migrations_apply_on_empty_db_and_are_idempotent(db_url: str) -> None:
    eng = make_engine(db_url)
    try:
        assert schema_status(eng).current is None
        first = migrate(eng)
        assert first.up_to_date and first.current == first.head == "0022"
        assert migrate(eng) == first  # nothing to do the second time
        inspector = sa.inspect(eng)
        assert set(metadata.tables) <= set(inspector.get_table_names())
        with eng.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(ctx, metadata)
            if eng.dialect.name == "sqlite":
                # SQLite's reflection drops DESC from index columns; check the DDL instead.
                for index in ("ix_jobs_queue", "ix_jobs_owner_queue"):
                    diff = [d for d in diff if d[1].name != index]
                    ddl = conn.execute(
                        sa.text("SELECT sql FROM sqlite_master WHERE name = :n"), {"n": index}
                    ).scalar()
                    assert "priority DESC" in str(ddl)
        assert diff == [], "schema.py and the migrations disagree"
    finally:
        eng.dispose()


def test_newer_schema_is_refused(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999_future'"))
    with pytest.raises(SchemaTooNew, match="9999_future.*newer gpufleet"):
        migrate(engine)
    with pytest.raises(SchemaTooNew):
        schema_status(engine)


def test_default_sqlite_url(tmp_path: object) -> None:
    url = default_sqlite_url(f"{tmp_path}/state")
    assert url == f"sqlite:///{tmp_path}/state/coordinator.db"
    eng = make_engine(url)
    try:
        migrate(eng)
        with eng.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        eng.dispose()


def test_naive_datetimes_are_refused_and_aware_ones_round_trip(engine: Engine) -> None:
    with engine.begin() as conn:
        model = repo.create_model(conn, model_no="G1", now=at(0))
    with engine.connect() as conn:
        assert repo.get_model(conn, model.uuid).created_at == at(0)
        assert repo.get_model(conn, model.uuid).created_at.tzinfo is not None
    with pytest.raises(sa.exc.StatementError, match="naive datetime"), engine.begin() as conn:
        repo.create_model(conn, model_no="G1", now=datetime(2025, 1, 1))


# ---------------------------------------------------------------------------------------------
# Models


def test_models_create_get_list_with_paging(engine: Engine) -> None:
    with engine.begin() as conn:
        made = [
            repo.create_model(
                conn, model_no=f"G{1 + i % 2}", version=f"v{i}", params_json='{"total_epoch": 3}', now=at(i)
            )
            for i in range(25)
        ]
    with engine.connect() as conn:
        got = repo.get_model(conn, made[3].uuid)
        assert got == made[3]
        assert got.states == ModelStates(M.READY, M.READY, M.READY)
        assert got.row_version == 1 and got.params_json == '{"total_epoch": 3}'

        page0 = repo.list_models(conn, page=0, size=10)
        assert (page0.total_elements, page0.total_pages, len(page0.items)) == (25, 3, 10)
        assert [m.uuid for m in page0.items] == [m.uuid for m in reversed(made)][:10]  # newest first
        page2 = repo.list_models(conn, page=2, size=10)
        assert len(page2.items) == 5 and page2.items[-1].uuid == made[0].uuid
        assert repo.list_models(conn, page=3, size=10).items == []

        g1 = repo.list_models(conn, model_no="G1", size=500)
        assert g1.total_elements == 13 and all(m.model_no == "G1" for m in g1.items)
        assert repo.list_models(conn, status=M.IN_PROGRESS).total_elements == 0
        assert repo.list_models(conn, status=M.READY, size=1).total_pages == 25


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"model_no": "bad no"}, "model_no"),
        ({"model_no": ""}, "model_no"),
        ({"model_no": "G1", "params_json": "[1, 2]"}, "params_json"),
        ({"model_no": "G1", "params_json": "{nope"}, "params_json"),
        ({"model_no": "G1", "gpus": -1}, "gpus"),
    ],
)
def test_create_model_rejects_bad_input(engine: Engine, kwargs: dict, field: str) -> None:
    with engine.begin() as conn:
        with pytest.raises(InvalidArgument) as info:
            repo.create_model(conn, **kwargs)
        assert info.value.field == field
        assert count(conn, models) == 0 and count(conn, events) == 0


def test_not_found_and_bad_paging(engine: Engine) -> None:
    with engine.connect() as conn:
        with pytest.raises(NotFound, match="model nope"):
            repo.get_model(conn, "nope")
        with pytest.raises(NotFound, match="job nope"):
            repo.get_job(conn, "nope")
        with pytest.raises(NotFound, match="node nope"):
            repo.get_node(conn, "nope")
        with pytest.raises(InvalidArgument, match="size"):
            repo.list_models(conn, size=0)
        with pytest.raises(InvalidArgument, match="size"):
            repo.list_jobs(conn, size=501)
        with pytest.raises(InvalidArgument, match="page"):
            repo.list_models(conn, page=-1)


def test_model_state_updates_are_checked_stamped_and_recorded(engine: Engine) -> None:
    with engine.begin() as conn:
        model = repo.create_model(conn, model_no="G2", now=at(0))
        job = repo.create_job(conn, spec={}, model_uuid=model.uuid, now=at(0))
        new = states.run_train(model.states)
        assert repo.update_model_states(
            conn,
            model.uuid,
            new=new,
            expect_version=model.row_version,
            reason="RunTrain",
            actor="user:ann",
            now=at(10),
            current_attempt_id=job.id,
        )
        got = repo.get_model(conn, model.uuid)
        assert got.states == (M.IN_PROGRESS, M.IN_PROGRESS, M.READY)
        assert got.step1_started_at == at(10) and got.step1_finished_at is None
        assert got.current_attempt_id == job.id and got.row_version == 2 and got.updated_at == at(10)
        # A stale version loses, changing nothing.
        assert not repo.update_model_states(
            conn, model.uuid, new=states.cancel_train(got.states), expect_version=1, reason="x", actor="y"
        )
        # Outcome of the train job.
        done = states.train_succeeded(got.states, has_zip=False)
        assert repo.update_model_states(
            conn,
            model.uuid,
            new=done,
            reason="job SUCCESS",
            actor="reconciler",
            now=at(8110),
            best_epoch=7,
            step1_metric_saved=True,
        )
        got = repo.get_model(conn, model.uuid)
        assert got.states == (M.COMPLETED, M.COMPLETED, M.READY) and got.best_epoch == 7
        assert got.step1_finished_at == at(8110) and got.step1_metric_saved
        assert states.format_duration(got.step_seconds(states.Step.TRAIN, at(9999))) == "2h 15m 0s"
        assert got.step_seconds(states.Step.TEST, at(9999)) is None
        # Re-applying the same verdict is a no-op (False), not an error, and writes no event.
        n_events = count(conn, events)
        assert not repo.update_model_states(conn, model.uuid, new=done, reason="again", actor="reconciler")
        assert count(conn, events) == n_events
        # Illegal: COMPLETED -> STOPPED; refused before anything is written.
        with pytest.raises(InvalidTransition, match="cannot go from COMPLETED to STOPPED"):
            repo.update_model_states(
                conn, model.uuid, new=ModelStates(M.STOPPED, M.STOPPED, M.READY), reason="x", actor="y"
            )
        assert repo.get_model(conn, model.uuid) == got and count(conn, events) == n_events
        with pytest.raises(TypeError, match="unknown fields"):
            repo.update_model_states(conn, model.uuid, reason="x", actor="y", status="READY")
        model_events = [
            (e.from_state, e.to_state, (e.detail or {}).get("field"), e.actor)
            for e in audit.list_events(conn, "model", model.uuid)
        ]
    assert model_events == [
        (None, "READY", None, "api"),
        ("READY", "IN_PROGRESS", "status", "user:ann"),
        ("READY", "IN_PROGRESS", "step1_state", "user:ann"),
        ("IN_PROGRESS", "COMPLETED", "status", "reconciler"),
        ("IN_PROGRESS", "COMPLETED", "step1_state", "reconciler"),
    ]


# ---------------------------------------------------------------------------------------------
# Jobs


def test_claim_order_is_priority_then_age(engine: Engine) -> None:
    with engine.begin() as conn:
        old_low = queued_job(conn, 0, priority=0)
        new_high = queued_job(conn, 5, priority=10)
        old_high = queued_job(conn, 1, priority=10)
        mid = queued_job(conn, 2, priority=5)
        newest_low = queued_job(conn, 9, priority=0)
        placed = queued_job(conn, 3, priority=99)
        assert assign(conn, placed, "n1", [0])
    with engine.begin() as conn:
        claimed = [j.id for j in repo.claim_queued(conn, 10)]
        assert claimed == [old_high, new_high, mid, old_low, newest_low]
        assert [j.id for j in repo.claim_queued(conn, 2)] == [old_high, new_high]
        with pytest.raises(InvalidArgument):
            repo.claim_queued(conn, 0)


def test_an_assigned_job_is_claimed_no_more(engine: Engine) -> None:
    """The scheduler's path: claim (the guard: only QUEUED rows), then the batched assignment."""
    with engine.begin() as conn:
        job_id = queued_job(conn)
    with engine.begin() as conn:
        assert [j.id for j in repo.claim_queued(conn, 10)] == [job_id]
        repo.assign_jobs(conn, [(job_id, "n1", [0, 1])], now=at(5))
    with engine.begin() as conn:
        assert repo.claim_queued(conn, 10) == []  # a second replica finds nothing to place
        assert not assign(conn, job_id, "n2", [3], now=at(6))
        job = repo.get_job(conn, job_id)
    assert (job.status, job.node, job.gpu_indices, job.assigned_at) == (
        JobStatus.RUNNING,
        "n1",
        (0, 1),
        at(5),
    )
    assert job.row_version == 2
    with engine.connect() as conn:
        assert job_events(conn, job_id) == [(None, "QUEUED"), ("QUEUED", "RUNNING")]
        assert repo.gpus_in_use(conn) == {"n1": {0, 1}}
        assert [j.id for j in repo.running_jobs(conn)] == [job_id]
        assert [j.id for j in repo.jobs_on_node(conn, "n1")] == [job_id]


def test_illegal_status_write_changes_nothing(engine: Engine) -> None:
    with engine.begin() as conn:
        job_id = queued_job(conn)
        before = repo.get_job(conn, job_id)
        n_events = count(conn, events)
        with pytest.raises(InvalidTransition, match=f"job {job_id}: cannot go from QUEUED to SUCCESS"):
            repo.set_job_status(conn, job_id, JobStatus.SUCCESS, exit_code=0, actor="reconciler")
        with pytest.raises(InvalidTransition, match="QUEUED to STOPPED"):
            repo.set_job_status(conn, job_id, JobStatus.STOPPED, actor="reconciler")
        # Same transaction, still open: the refusals wrote nothing.
        assert repo.get_job(conn, job_id) == before
        assert count(conn, events) == n_events
    with engine.connect() as conn:
        assert repo.get_job(conn, job_id) == before
        assert count(conn, events) == n_events


def test_final_status_exit_codes_and_first_reason_kept(engine: Engine) -> None:
    with engine.begin() as conn:
        a, b, c, d = (queued_job(conn, i) for i in range(4))
        for job_id in (a, b, c):
            assign(conn, job_id, "n1", [0])
        reason = TerminationReason.SERVER_RESTART_CONTAINER_MISSING_OUTPUT_INCOMPLETE.message("2/10 epochs")
        assert repo.set_job_status(
            conn, a, JobStatus.STOPPED, error_message=reason, actor="reconciler", now=at(9)
        )
        # A repeat (the agent's own STOPPED report) is a no-op that keeps the first reason.
        assert not repo.set_job_status(conn, a, JobStatus.STOPPED, error_message="later", actor="agent")
        # A late contradicting verdict is refused: the first final state stands.
        with pytest.raises(InvalidTransition, match="STOPPED to SUCCESS"):
            repo.set_job_status(conn, a, JobStatus.SUCCESS, actor="agent")
        job = repo.get_job(conn, a)
        assert (job.status, job.exit_code, job.error_message, job.finished_at) == (
            JobStatus.STOPPED,
            -1,
            reason,
            at(9),
        )
        assert repo.set_job_status(conn, b, JobStatus.SUCCESS, actor="reconciler")
        assert repo.get_job(conn, b).exit_code == 0
        with pytest.raises(InvalidArgument, match="exit_code"):
            repo.set_job_status(conn, c, JobStatus.FAILED, exit_code=0, actor="reconciler")
        assert repo.set_job_status(
            conn,
            c,
            JobStatus.FAILED,
            exit_code=3,
            error_message=TerminationReason.EXIT_NONZERO.message(),
            actor="reconciler",
        )
        assert repo.get_job(conn, c).exit_code == 3
        assert repo.set_job_status(conn, d, JobStatus.CANCELED, actor="user:bob")
        assert repo.get_job(conn, d).exit_code is None
        # Acknowledgements to the agent.
        assert not any(repo.get_job(conn, x).acked for x in (a, b, c, d))
        assert repo.mark_acked(conn, [a, b, d]) == 3
        assert repo.mark_acked(conn, [a]) == 0
        assert [x for x in (a, b, c, d) if not repo.get_job(conn, x).acked] == [c]


def test_requeue_creates_next_attempt_with_same_root(engine: Engine) -> None:
    with engine.begin() as conn:
        model = repo.create_model(conn, model_no="G3")
        first = repo.create_job(
            conn,
            spec={"image": "x"},
            model_uuid=model.uuid,
            max_retries=1,
            priority=4,
            gpus=2,
            constraints={"zone": "a"},
            resume_on_retry=True,
            name="train G3",
            now=at(0),
        )
        with pytest.raises(FailedPrecondition, match="only an ended attempt"):
            repo.requeue_job(conn, first.id, reason="x", actor="y")
        assign(conn, first.id, "n1", [0, 1])
        repo.set_job_status(conn, first.id, JobStatus.STOPPED, error_message="NODE_LOST", actor="reconciler")
        second = repo.requeue_job(
            conn,
            first.id,
            reason="NODE_LOST",
            actor="reconciler",
            spec={"image": "x", "resume": 3},
            now=at(50),
        )
        assert second is not None
        assert (second.id, second.root_id, second.attempt) == (f"{first.id}.2", first.id, 2)
        assert (second.status, second.retries_used, second.spec) == (
            JobStatus.QUEUED,
            1,
            {"image": "x", "resume": 3},
        )
        assert (second.priority, second.gpus, second.constraints, second.name) == (
            4,
            2,
            {"zone": "a"},
            "train G3",
        )
        assert second.model_uuid == model.uuid and second.created_at == at(50) and second.node is None
        assert repo.get_job(conn, second.id) == second
        assert repo.get_job(conn, first.id).superseded_by == second.id
        # Someone else already requeued it: None, nothing new.
        assert repo.requeue_job(conn, first.id, reason="again", actor="replica-2") is None
        assert repo.list_jobs(conn, root_id=first.id).total_elements == 2
        # The retry budget is spent: an automatic requeue is refused, a user restart is not.
        assign(conn, second.id, "n2", [0, 1])
        repo.set_job_status(conn, second.id, JobStatus.STOPPED, actor="reconciler")
        with pytest.raises(FailedPrecondition, match="retry limit"):
            repo.requeue_job(conn, second.id, reason="NODE_LOST", actor="reconciler")
        third = repo.requeue_job(conn, second.id, reason="RestartTrain", actor="user:ann", count_retry=False)
        assert third is not None and third.attempt == 3 and third.retries_used == 1
        assert job_events(conn, first.id)[-1] == ("STOPPED", "STOPPED")  # the "superseded" note
        listed = repo.list_jobs(conn, model_uuid=model.uuid, size=2)
        assert listed.total_elements == 3 and listed.total_pages == 2


def test_desired_and_observed_state(engine: Engine) -> None:
    with engine.begin() as conn:
        job_id = queued_job(conn)
        assign(conn, job_id, "n1", [0])
        assert repo.set_observed_state(conn, job_id, "PENDING", at(1))
        assert repo.set_observed_state(conn, job_id, "RUNNING", at(2))
        assert not repo.set_observed_state(conn, job_id, "RUNNING", at(3))  # unchanged: no write
        assert repo.set_desired_state(conn, job_id, DesiredState.STOP, reason="CancelJob", actor="user:bob")
        assert not repo.set_desired_state(conn, job_id, DesiredState.STOP, reason="again", actor="user:bob")
        job = repo.get_job(conn, job_id)
    assert (job.observed_state, job.observed_at, job.started_at) == ("RUNNING", at(2), at(2))
    assert job.desired_state is DesiredState.STOP and job.status is JobStatus.RUNNING


# ---------------------------------------------------------------------------------------------
# Metrics, progress, datasets


def test_metric_ingestion_is_idempotent_and_validated(engine: Engine) -> None:
    rows = [(e, {"loss": 1.0 / e, "acc": 0.5 + e / 100}) for e in range(1, 4)]
    with engine.begin() as conn:
        model = repo.create_model(conn, model_no="G1")
        job_id = queued_job(conn, model_uuid=model.uuid)
        assert repo.ingest_metrics(conn, "train", model.uuid, job_id, rows) == 6
        assert repo.ingest_metrics(conn, "val", model.uuid, job_id, [(1, {"mAP": 0.3, "bad": math.nan})]) == 1
    with engine.begin() as conn:
        assert repo.ingest_metrics(conn, "train", model.uuid, job_id, rows) == 0  # repeat: nothing new
        assert repo.ingest_metrics(conn, "train", model.uuid, job_id, [*rows, (4, {"loss": 0.1})]) == 1
        assert count(conn, metrics_train) == 7 and count(conn, metrics_validation) == 1
    for bad_rows, field in [
        ([(5, {"ok": 1.0}), (6, {"x" * 65: 1.0})], "metrics.train.key"),
        ([(5, {"ok": 1.0}), (6, {"tab\there": 1.0})], "metrics.train.key"),
        ([(5, {"": 1.0})], "metrics.train.key"),
        ([(-1, {"ok": 1.0})], "metrics.train.epoch"),
        ([(5, {"ok": "high"})], "metrics.train.ok"),
    ]:
        with engine.begin() as conn:
            with pytest.raises(InvalidArgument) as info:
                repo.ingest_metrics(conn, "train", model.uuid, job_id, bad_rows)  # type: ignore[arg-type]
            assert info.value.field == field
            assert count(conn, metrics_train) == 7  # nothing of the batch was written
    with engine.connect() as conn:
        with pytest.raises(InvalidArgument, match="split"):
            repo.ingest_metrics(conn, "validation", None, job_id, rows)
        points = repo.get_job_metrics(conn, job_id)
    assert [(p.split, p.epoch) for p in points] == [
        ("train", 1),
        ("train", 2),
        ("train", 3),
        ("train", 4),
        ("val", 1),
    ]
    assert points[0].values == {"loss": 1.0, "acc": 0.51}
    assert points[-1].values == {"mAP": 0.3}


def test_progress_and_dataset_counts(engine: Engine) -> None:
    with engine.begin() as conn:
        job_id = queued_job(conn)
        repo.upsert_progress(conn, job_id, 1, 10, {"loss": 0.9}, now=at(1))
        repo.upsert_progress(conn, job_id, 2, 10, {"loss": 0.5}, now=at(2))
        progress = repo.get_progress(conn, [job_id, "other"])
        assert list(progress) == [job_id]
        assert (progress[job_id].current_epoch, progress[job_id].metrics, progress[job_id].updated_at) == (
            2,
            {"loss": 0.5},
            at(2),
        )
        repo.set_dataset_counts(conn, "m-1", {"train/images": 100, "val/images": 20}, "n1", now=at(1))
        repo.set_dataset_counts(conn, "m-1", {"train/images": 120}, "n1", now=at(2))
        assert repo.get_dataset_counts(conn, "m-1") == {"train/images": 120, "val/images": 20}
        assert repo.get_dataset_counts(conn, "m-2") == {}
        with pytest.raises(InvalidArgument):
            repo.set_dataset_counts(conn, "m-1", {"x": -1}, "n1")


# ---------------------------------------------------------------------------------------------
# Nodes


def test_node_register_is_idempotent_and_revives_lost_nodes(engine: Engine) -> None:
    gpus = [{"index": 0, "healthy": True}, {"index": 1, "healthy": True}]
    with engine.begin() as conn:
        first = repo.upsert_node(
            conn,
            "n1",
            address="10.0.0.1:7001",
            labels={"zone": "a"},
            agent_version="0.1",
            runtime="docker",
            gpus=gpus,
            now=at(0),
        )
        again = repo.upsert_node(
            conn,
            "n1",
            address="10.0.0.1:7002",
            labels={"zone": "a"},
            agent_version="0.2",
            runtime="docker",
            gpus=gpus[:1],
            now=at(5),
        )
        assert first.state is NodeState.READY and first.row_version == 1
        assert (again.address, again.agent_version, again.gpus, again.row_version) == (
            "10.0.0.1:7002",
            "0.2",
            gpus[:1],
            2,
        )
        assert again.registered_at == at(0) and again.last_heartbeat == at(5)
        assert count(conn, nodes) == 1
        assert [(e.from_state, e.to_state) for e in audit.list_events(conn, "node", "n1")] == [(None, "READY")]

        assert repo.heartbeat_node(conn, "n1", gpus, now=at(7)) is NodeState.READY
        assert repo.get_node(conn, "n1").last_heartbeat == at(7)
        assert repo.heartbeat_node(conn, "ghost", gpus) is None

        with pytest.raises(InvalidTransition, match="node n1: cannot go from READY to DRAINED"):
            repo.set_node_state(conn, "n1", NodeState.DRAINED, reason="x", actor="y")
        assert repo.set_node_state(
            conn, "n1", NodeState.LOST, reason="no heartbeat for 10s", actor="reconciler"
        )
        assert not repo.set_node_state(conn, "n1", NodeState.LOST, reason="again", actor="reconciler")
        back = repo.upsert_node(
            conn,
            "n1",
            address="10.0.0.1:7002",
            labels={},
            agent_version="0.2",
            runtime="docker",
            gpus=gpus,
            now=at(20),
        )
        assert back.state is NodeState.READY

        # Drained, then lost: it comes back drained.
        assert repo.set_node_state(conn, "n1", NodeState.DRAINING, reason="DrainNode", actor="user:ops")
        assert repo.set_node_state(conn, "n1", NodeState.LOST, reason="no heartbeat", actor="reconciler")
        back = repo.upsert_node(
            conn,
            "n1",
            address="10.0.0.1:7002",
            labels={},
            agent_version="0.2",
            runtime="docker",
            gpus=gpus,
            now=at(30),
        )
        assert back.state is NodeState.DRAINED and back.drain_requested
        assert repo.set_node_state(conn, "n1", NodeState.READY, reason="UndrainNode", actor="user:ops")
        assert not repo.get_node(conn, "n1").drain_requested
        assert repo.set_drain_requested(conn, "n1", True) and not repo.set_drain_requested(conn, "n1", True)
        with pytest.raises(InvalidArgument, match="node_name"):
            repo.upsert_node(
                conn, "bad name", address="x:1", labels={}, agent_version="", runtime="", gpus=[]
            )
        assert [n.name for n in repo.list_nodes(conn)] == ["n1"]
        history = [(e.from_state, e.to_state) for e in audit.list_events(conn, "node", "n1")]
    assert history == [
        (None, "READY"),
        ("READY", "LOST"),
        ("LOST", "READY"),
        ("READY", "DRAINING"),
        ("DRAINING", "LOST"),
        ("LOST", "DRAINED"),
        ("DRAINED", "READY"),
    ]


# ---------------------------------------------------------------------------------------------
# Concurrency and faults


def test_concurrent_claimers_take_every_job_exactly_once(engine: Engine) -> None:
    """Two workers (two connections, as two coordinator replicas would have) claim and assign
    from 200 queued jobs at once. SKIP LOCKED on PostgreSQL, the writer lock on SQLite."""
    with engine.begin() as conn:
        all_ids = {queued_job(conn, i, priority=i % 3) for i in range(200)}
    barrier = threading.Barrier(2)
    claimed: dict[str, list[str]] = {"a": [], "b": []}
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            barrier.wait(timeout=30)
            while True:
                with engine.begin() as conn:
                    batch = repo.claim_queued(conn, 10)
                    if not batch:
                        return
                    # The scheduler's path: the claimed batch is assigned in one batched write.
                    repo.assign_jobs(conn, [(job.id, f"node-{name}", [0]) for job in batch], actor=name)
                    claimed[name].extend(job.id for job in batch)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert not set(claimed["a"]) & set(claimed["b"])  # never handed to both claimers
    print(f"\n[{engine.dialect.name}] worker a placed {len(claimed['a'])}, worker b placed {len(claimed['b'])}")
    with engine.connect() as conn:
        assert repo.claim_queued(conn, 10) == []
        rows = conn.execute(sa.select(jobs.c.id, jobs.c.node, jobs.c.status)).all()
        assigned = Counter(e.entity_id for e in audit.list_events(conn, "job") if e.reason == "assigned")
    assert assigned == Counter(all_ids)  # every job placed exactly once
    # ... on the node of the worker that claimed it, and RUNNING there
    assert {r.id: r.node for r in rows} == {j: f"node-{n}" for n in ("a", "b") for j in claimed[n]}
    assert {r.status for r in rows} == {JobStatus.RUNNING.value}


@pytest.mark.postgres
def test_engine_survives_a_postgres_restart(pg_server: object, pg_url: str) -> None:
    eng = make_engine(pg_url)
    try:
        migrate(eng)
        with eng.begin() as conn:
            repo.create_model(conn, model_no="G1")
        pg_server.restart()  # type: ignore[attr-defined]
        # The pooled connection died with the server; pre-ping replaces it transparently.
        with eng.connect() as conn:
            assert repo.list_models(conn).total_elements == 1
    finally:
        eng.dispose()


def test_replicas_migrating_together_migrate_once(db_url: str) -> None:
    """Two coordinators starting at once on an empty database (advisory lock on PostgreSQL, the
    writer lock on SQLite): both end at head, neither fails on a half-made schema."""
    engines = [make_engine(db_url), make_engine(db_url)]
    barrier = threading.Barrier(2)
    results: list[object] = []

    def start(eng: Engine) -> None:
        try:
            barrier.wait(timeout=30)
            results.append(migrate(eng))
        except BaseException as exc:  # surfaced below
            results.append(exc)

    threads = [threading.Thread(target=start, args=(e,)) for e in engines]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert [getattr(r, "current", r) for r in results] == ["0022", "0022"]
    finally:
        for e in engines:
            e.dispose()


def test_sqlite_readers_can_opt_out_of_the_writer_lock(tmp_path: object) -> None:
    eng = make_engine(f"sqlite:///{tmp_path}/c.db")
    try:
        migrate(eng)
        reader = eng.execution_options(gpufleet_sqlite_begin="DEFERRED")
        with eng.begin() as writer:
            repo.create_model(writer, model_no="G1")  # holds the writer lock, uncommitted
            # A DEFERRED reader does not queue behind it and sees the last committed state.
            with reader.connect() as conn:
                assert repo.list_models(conn).total_elements == 0
        with reader.connect() as conn:
            assert repo.list_models(conn).total_elements == 1
    finally:
        eng.dispose()


def test_references_are_checked_once_with_clear_errors(engine: Engine) -> None:
    with engine.begin() as conn:
        with pytest.raises(NotFound, match="model ghost"):
            repo.create_job(conn, spec={}, model_uuid="ghost")
        model = repo.create_model(conn, model_no="G1")
        other = repo.create_model(conn, model_no="G2")
        job_id = queued_job(conn, model_uuid=model.uuid)
        assert repo.get_model(conn, model.uuid, for_update=True) == model
        assert repo.get_job(conn, job_id, for_update=True).id == job_id
        with pytest.raises(NotFound, match="job ghost"):
            repo.ingest_metrics(conn, "train", model.uuid, "ghost", [(1, {"loss": 1.0})])
        with pytest.raises(InvalidArgument, match=f"belongs to model {model.uuid}"):
            repo.ingest_metrics(conn, "train", other.uuid, job_id, [(1, {"loss": 1.0})])
        assert count(conn, metrics_train) == 0


def test_zip_shortcut_completes_both_steps_with_end_times(engine: Engine) -> None:
    with engine.begin() as conn:
        model = repo.create_model(conn, model_no="G4", now=at(0))
        repo.update_model_states(
            conn, model.uuid, new=states.run_train(model.states), reason="RunTrain", actor="user", now=at(10)
        )
        cur = repo.get_model(conn, model.uuid)
        done = states.train_succeeded(cur.states, has_zip=True)
        assert repo.update_model_states(
            conn,
            model.uuid,
            new=done,
            reason="job SUCCESS with zip",
            actor="reconciler",
            now=at(70),
            step1_metric_saved=True,
            step2_metric_saved=True,
        )
        got = repo.get_model(conn, model.uuid)
    assert got.states == (M.COMPLETED, M.COMPLETED, M.COMPLETED)
    assert (got.step1_started_at, got.step1_finished_at, got.step2_finished_at) == (at(10), at(70), at(70))
    assert got.step2_started_at is None and got.step1_metric_saved and got.step2_metric_saved
    assert states.format_duration(got.step_seconds(states.Step.TRAIN, at(999))) == "1m 0s"
