"""The scheduler's and heartbeat's hot-path queries, on SQLite and on a real PostgreSQL (`db_url`).

PostgreSQL has its own bulk forms (arrays, server-side JSON): each test checks that both databases
give the same answers as the row-by-row forms, and that no GPU is handed out twice by two
schedulers that place at the same time (the placement lock).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from gpufleet.coordinator import scheduler
from gpufleet.coordinator.db import repo
from gpufleet.coordinator.db.engine import make_engine, migrate
from gpufleet.coordinator.db.schema import jobs
from gpufleet.coordinator.scheduler import Scheduler
from gpufleet.coordinator.states import JobStatus, NodeState
from sqlalchemy import Connection, Engine

from tests.unit.coordinator import audit

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    migrate(eng)
    yield eng
    eng.dispose()


def gpu(i: int, **kw: Any) -> dict[str, Any]:
    return {"index": i, "uuid": f"GPU-{i}", "utilization_gpu": 3, **kw}


def node(conn: Connection, name: str, gpus: list[dict[str, Any]], **labels: str) -> None:
    repo.upsert_node(conn, name, address=f"{name}:1", labels=labels, agent_version="t", runtime="docker",
                     gpus=gpus, now=T0)


def queued(conn: Connection, n: int, gpus: int = 1) -> str:
    return repo.create_job(conn, spec={"image": "busybox"}, gpus=gpus, now=T0 + timedelta(seconds=n)).id


def test_placeable_nodes_reads_ready_nodes_and_their_healthy_gpus(engine: Engine) -> None:
    with engine.begin() as conn:
        node(conn, "a", [gpu(0), gpu(1, healthy=False), gpu(2, healthy=True), gpu(3, healthy=None)], zone="x")
        node(conn, "b", [])
        node(conn, "c", [gpu(0)])
        repo.set_node_state(conn, "c", NodeState.DRAINING, reason="t", actor="t")
    with engine.connect() as conn:
        got = {n.name: n for n in repo.placeable_nodes(conn)}
        rows = {n.name: n for n in repo.list_nodes(conn)}
    assert set(got) == {"a", "b"}
    assert got["a"].healthy == {0, 2} and got["a"].address == "a:1" and got["a"].labels == {"zone": "x"}
    assert got["b"].healthy == frozenset()
    # the same as the Python rule applied to the whole snapshot
    for name, n in got.items():
        assert n.healthy == {int(g["index"]) for g in rows[name].gpus if g.get("healthy", True)}


def test_assign_jobs_and_gpus_in_use(engine: Engine) -> None:
    with engine.begin() as conn:
        ids = [queued(conn, i) for i in range(4)]
        claimed = repo.claim_queued(conn, 10)
        assert [j.id for j in claimed] == ids
        repo.assign_jobs(conn, [(ids[0], "a", [0, 1]), (ids[1], "a", [3]), (ids[2], "b", [])], actor="s1", now=T0)
    with engine.connect() as conn:
        rows = {j.id: j for j in (repo.get_job(conn, i) for i in ids)}
        assert repo.gpus_in_use(conn) == {"a": {0, 1, 3}, "b": set()}
        events = audit.list_events(conn, "job")
    assert [(rows[i].status, rows[i].node, rows[i].gpu_indices) for i in ids] == [
        (JobStatus.RUNNING, "a", (0, 1)), (JobStatus.RUNNING, "a", (3,)), (JobStatus.RUNNING, "b", ()),
        (JobStatus.QUEUED, None, ())]
    assert all(rows[i].assigned_at == T0 and rows[i].row_version == 2 for i in ids[:3])
    assigned = [(e.entity_id, e.from_state, e.to_state, e.reason, e.actor, e.detail, e.at) for e in events
                if e.reason == "assigned"]
    assert assigned == [
        (ids[0], "QUEUED", "RUNNING", "assigned", "s1", {"node": "a", "gpu_indices": [0, 1]}, T0),
        (ids[1], "QUEUED", "RUNNING", "assigned", "s1", {"node": "a", "gpu_indices": [3]}, T0),
        (ids[2], "QUEUED", "RUNNING", "assigned", "s1", {"node": "b", "gpu_indices": []}, T0),
    ]
    # a job no longer QUEUED is left alone
    with engine.begin() as conn:
        repo.assign_jobs(conn, [(ids[0], "z", [7])], now=T0)
        assert repo.get_job(conn, ids[0]).node == "a"


def test_heartbeat_node_and_set_observed_state(engine: Engine) -> None:
    with engine.begin() as conn:
        node(conn, "a", [gpu(0)])
        assert repo.heartbeat_node(conn, "a", [gpu(0), gpu(1)], now=T0 + timedelta(seconds=5)) \
            is NodeState.READY
        assert repo.heartbeat_node(conn, "ghost", []) is None
        n = repo.get_node(conn, "a")
        assert n.last_heartbeat == T0 + timedelta(seconds=5) and [g["index"] for g in n.gpus] == [0, 1]
        job_id = queued(conn, 0)
        repo.claim_queued(conn, 1)
        repo.assign_jobs(conn, [(job_id, "a", [0])], now=T0)
        assert repo.set_observed_state(conn, job_id, "PENDING", T0)
        assert not repo.set_observed_state(conn, job_id, "PENDING", T0)
        assert repo.get_job(conn, job_id).started_at is None
        assert repo.set_observed_state(conn, job_id, "RUNNING", T0 + timedelta(seconds=1))
        assert repo.set_observed_state(conn, job_id, "PENDING", T0 + timedelta(seconds=2))
        assert repo.set_observed_state(conn, job_id, "RUNNING", T0 + timedelta(seconds=3))
        j = repo.get_job(conn, job_id)
    assert (j.observed_state, j.observed_at, j.started_at) == ("RUNNING", T0 + timedelta(seconds=3),
                                                                 T0 + timedelta(seconds=1))


class NoAgents:
    """Placement only: these tests never launch."""


def test_two_schedulers_placing_at_once_never_share_a_gpu(engine: Engine) -> None:
    """Two Scheduler.decide passes (as two replicas would run them) race for the same 8 GPUs with
    40 one-GPU jobs: SKIP LOCKED splits the jobs, the placement lock keeps them off each other's GPUs."""
    with engine.begin() as conn:
        node(conn, "a", [gpu(i) for i in range(8)])
        for i in range(40):
            queued(conn, i)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(name: str) -> None:
        s = Scheduler(engine, NoAgents(), lambda: {"a"}, actor=name)  # type: ignore[arg-type]
        try:
            barrier.wait(timeout=30)
            for _ in range(3):
                s.decide()
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            s.close()

    threads = [threading.Thread(target=run, args=(n,)) for n in ("s1", "s2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    with engine.connect() as conn:
        running = conn.execute(sa.select(jobs.c.gpu_indices).where(jobs.c.status == "RUNNING")).scalars().all()
    held = [i for indices in running for i in indices]
    assert sorted(held) == list(range(8))  # all 8 placed, none twice


@pytest.mark.postgres
def test_a_second_replica_reads_gpu_use_only_after_the_first_committed(pg_url: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Deterministic form of the race: replica 1 stops right after reading GPU use (its assignment
    not committed yet) until replica 2 is seen waiting for the placement lock; without the lock,
    replica 2 would read the same free GPU and assign it too."""
    eng = make_engine(pg_url)
    migrate(eng)
    try:
        with eng.begin() as conn:
            node(conn, "a", [gpu(0), gpu(1)])
            queued(conn, 0)
            queued(conn, 1)
        first_read = threading.Event()
        second_done = threading.Event()
        real = repo.gpus_in_use

        def held_gpus_in_use(conn: Connection) -> dict[str, set[int]]:
            used = real(conn)
            if threading.current_thread().name == "s1":
                first_read.set()
                wait_until_waiting_for_the_lock(eng, second_done)
            return used

        monkeypatch.setattr(repo, "gpus_in_use", held_gpus_in_use)
        monkeypatch.setattr(scheduler, "CLAIM_BATCH", 1)  # one job each (SKIP LOCKED)
        errors: list[BaseException] = []

        def run(name: str) -> None:
            s = Scheduler(eng, NoAgents(), lambda: {"a"}, actor=name)  # type: ignore[arg-type]
            try:
                if name == "s2":
                    assert first_read.wait(timeout=30)
                assert len(s.decide()) == 1
            except BaseException as exc:  # surfaced below
                errors.append(exc)
            finally:
                if name == "s2":
                    second_done.set()
                s.close()

        threads = [threading.Thread(target=run, args=(n,), name=n) for n in ("s1", "s2")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors
        with eng.connect() as conn:
            rows = conn.execute(sa.select(jobs.c.gpu_indices).where(jobs.c.status == "RUNNING")).scalars().all()
        assert sorted(i for r in rows for i in r) == [0, 1]
    finally:
        eng.dispose()


def wait_until_waiting_for_the_lock(eng: Engine, done: threading.Event, timeout: float = 30.0) -> None:
    """Poll pg_stat_activity until a session waits on an advisory lock (or the other one is done:
    it did not wait at all)."""
    deadline = time.monotonic() + timeout
    with eng.connect() as conn:
        while time.monotonic() < deadline and not done.is_set():
            waiting = conn.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'"
            )).scalar_one()
            conn.rollback()
            if waiting:
                return
            time.sleep(0.01)
