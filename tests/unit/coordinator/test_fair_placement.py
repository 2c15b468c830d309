"""Quotas and fair share in a scheduling pass (Scheduler.decide), on SQLite and PostgreSQL: each
owner's queue is its own stream, so a capped or long queue never hides another owner's jobs."""
from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from gpufleet.coordinator.db import quotas, repo
from gpufleet.coordinator.db.engine import make_engine, migrate
from gpufleet.coordinator.db.tokens import set_owner
from gpufleet.coordinator.scheduler import CLAIM_BATCH, Scheduler
from gpufleet.coordinator.states import JobStatus
from sqlalchemy import Engine

NOW = datetime.now(UTC)
TOP = 2**31 - 1


class NoAgents:
    """Placement only: these tests never launch."""


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    migrate(eng)
    yield eng
    eng.dispose()


def _node(engine: Engine, name: str, gpus: int) -> None:
    with engine.begin() as conn:
        repo.upsert_node(conn, name, address=f"{name}:1", labels={}, agent_version="t", runtime="docker",
                         gpus=[{"index": i, "uuid": f"GPU-{name}-{i}"} for i in range(gpus)], now=NOW)


def _submit(engine: Engine, owner: str, n: int, *, priority: int = 0, at: float = 0, gpus: int = 1) -> list[str]:
    made = []
    with engine.begin() as conn:
        for i in range(n):
            when = NOW - timedelta(seconds=1000 - at - i * 0.001)
            job = repo.create_job(conn, spec={"image": "busybox"}, gpus=gpus, priority=priority, now=when,
                                  owner=owner)
            set_owner(conn, "job", job.root_id, owner, when)
            made.append(job.id)
    return made


def _decide(engine: Engine, nodes: set[str]) -> list[str]:
    s = Scheduler(engine, NoAgents(), lambda: nodes)  # type: ignore[arg-type]
    try:
        return [p.job.id for p in s.decide()]
    finally:
        s.close()


def test_a_capped_owner_waits_and_the_others_are_placed(engine: Engine) -> None:
    _node(engine, "a", 4)
    alice = _submit(engine, "alice", CLAIM_BATCH + 50, priority=TOP)
    bob = _submit(engine, "bob", 1, at=10)
    with engine.begin() as conn:
        quotas.set_quota(conn, "alice", 1, actor="root", now=NOW)
    placed = _decide(engine, {"a"})
    assert sorted(placed) == sorted([alice[0], *bob])
    assert set(_decide(engine, {"a"})) == set()  # alice holds her one GPU; the two free ones wait for others
    with engine.connect() as conn:
        assert quotas.held_gpus(conn) == {"alice": 1, "bob": 1}


def test_equal_queues_alternate_within_one_pass(engine: Engine) -> None:
    _node(engine, "a", 4)
    alice = _submit(engine, "alice", 10)
    bob = _submit(engine, "bob", 10, at=100)  # all of Bob's are younger than all of Alice's
    placed = _decide(engine, {"a"})
    assert placed == [alice[0], bob[0], alice[1], bob[1]]


def test_recent_use_puts_an_owner_behind_and_priority_still_comes_first(engine: Engine) -> None:
    _node(engine, "a", 2)
    # Alice used a GPU for the last hour.
    [old] = _submit(engine, "alice", 1)
    with engine.begin() as conn:
        repo.assign_jobs(conn, [(old, "a", [0])], now=NOW - timedelta(hours=1))
        repo.set_job_status(conn, old, JobStatus.SUCCESS, actor="t", now=NOW - timedelta(seconds=5))
    alice = _submit(engine, "alice", 3)
    bob = _submit(engine, "bob", 3, at=100)
    assert _decide(engine, {"a"}) == bob[:2]  # an hour of use outweighs two placements
    _submit(engine, "alice", 1, priority=5, at=200)
    with engine.begin() as conn:
        repo.set_job_status(conn, bob[0], JobStatus.SUCCESS, actor="t")
    [next_] = _decide(engine, {"a"})
    assert next_ not in alice + bob  # Alice's higher-priority job goes before any fair-share order


def test_fair_share_off_is_priority_then_age(engine: Engine) -> None:
    _node(engine, "a", 2)
    alice = _submit(engine, "alice", 3)
    _submit(engine, "bob", 3, at=100)
    s = Scheduler(engine, NoAgents(), lambda: {"a"}, half_life_s=0)  # type: ignore[arg-type]
    try:
        assert [p.job.id for p in s.decide()] == alice[:2]
    finally:
        s.close()


def test_migration_0021_gives_existing_jobs_their_owner(db_url: str) -> None:
    from alembic import command
    from gpufleet.coordinator.db.engine import _alembic_config

    eng = make_engine(db_url)
    try:
        cfg = _alembic_config()
        with eng.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0020")
            m1 = repo.create_model(conn, model_no="M", version="1", train_type="t", memo="", params_json="{}",
                                   spec={"image": "busybox"}, gpus=1, priority=0, constraints={},
                                   max_retries=0).uuid
            for jid, model in (("j1", None), ("j2", m1), ("j3", None)):
                conn.execute(sa.text(
                    "INSERT INTO jobs (id, root_id, model_uuid, job_type, attempt, status, desired_state, "
                    "error_message, gpu_indices, gpus, priority, spec, constraints, max_retries, retries_used, "
                    "resume_on_retry, name, acked, created_at, row_version) VALUES (:id, :id, :m, 'TRAIN', 1, "
                    "'QUEUED', 'RUN', '', '[]', 1, 0, '{}', '{}', 0, 0, false, '', false, :at, 1)"),
                    {"id": jid, "m": model, "at": NOW})
            conn.execute(sa.text("INSERT INTO owners (entity, entity_id, owner, created_at) VALUES "
                                 "('job', 'j1', 'alice', :at), ('model', :m1, 'bob', :at)"), {"at": NOW, "m1": m1})
            command.upgrade(cfg, "0021")
            got = dict(conn.execute(sa.text("SELECT id, owner FROM jobs")).all())  # type: ignore[arg-type]
        assert got == {"j1": "alice", "j2": "bob", "j3": None}
    finally:
        eng.dispose()


def test_a_models_jobs_take_its_owner_and_requeues_keep_it(engine: Engine) -> None:
    with engine.begin() as conn:
        m = repo.create_model(conn, model_no="M", version="1", train_type="t", memo="", params_json="{}",
                              spec={"image": "busybox"}, gpus=1, priority=0, constraints={}, max_retries=1)
        set_owner(conn, "model", m.uuid, "carol", NOW)
        job = repo.create_job(conn, spec={"image": "busybox"}, model_uuid=m.uuid, max_retries=1)
        assert job.owner == "carol"
        repo.assign_jobs(conn, [(job.id, "a", [0])])
        repo.set_job_status(conn, job.id, JobStatus.STOPPED, actor="t")
        again = repo.requeue_job(conn, job.id, reason="node lost", actor="t")
        assert again is not None and again.owner == "carol"
        assert repo.create_job(conn, spec={"image": "busybox"}).owner is None  # no auth: nobody's
