"""A blocked head never idles GPUs: a scheduling pass looks past every queued job that cannot be
placed (too big for any free slot, a constraint nothing free meets), on SQLite and PostgreSQL."""
from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from gpufleet.coordinator.db import repo
from gpufleet.coordinator.db.engine import make_engine, migrate
from gpufleet.coordinator.scheduler import CLAIM_BATCH, Scheduler
from sqlalchemy import Engine

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TOP = 2**31 - 1


class NoAgents:
    """Placement only: these tests never launch."""


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    migrate(eng)
    yield eng
    eng.dispose()


def _node(engine: Engine, name: str, gpus: int, **labels: str) -> None:
    with engine.begin() as conn:
        repo.upsert_node(conn, name, address=f"{name}:1", labels=labels, agent_version="t", runtime="docker",
                         gpus=[{"index": i, "uuid": f"GPU-{name}-{i}"} for i in range(gpus)], now=T0)


def _submit(engine: Engine, n: int, *, gpus: int = 1, priority: int = 0, at: int = 0, **kw: Any) -> list[str]:
    with engine.begin() as conn:
        return [repo.create_job(conn, spec={"image": "busybox"}, gpus=gpus, priority=priority,
                                now=T0 + timedelta(seconds=at), **kw).id for _ in range(n)]


def _decide(engine: Engine, nodes: set[str]) -> dict[str, str]:
    s = Scheduler(engine, NoAgents(), lambda: nodes)  # type: ignore[arg-type]
    try:
        return {p.job.id: p.node for p in s.decide()}
    finally:
        s.close()


def test_a_placeable_job_behind_more_than_a_batch_of_too_big_ones_runs_at_once(engine: Engine) -> None:
    _node(engine, "a", 2)
    blocked = _submit(engine, CLAIM_BATCH + 50, gpus=3, priority=TOP)
    [small] = _submit(engine, 1, gpus=1, priority=0, at=5)
    placed = _decide(engine, {"a"})
    assert placed == {small: "a"}
    with engine.connect() as conn:
        assert repo.get_job(conn, blocked[0]).status.value == "QUEUED"
        assert list(repo.get_job(conn, small).gpu_indices) == [0]


def test_a_constraint_nothing_meets_does_not_block_jobs_behind_it(engine: Engine) -> None:
    _node(engine, "a", 4, rack="y")
    _submit(engine, CLAIM_BATCH + 10, priority=TOP, constraints={"rack": "x"})
    later = _submit(engine, 3, priority=5, at=5)
    assert set(_decide(engine, {"a"})) == set(later)


def test_priority_order_is_kept_among_jobs_that_fit(engine: Engine) -> None:
    _node(engine, "a", 2)
    _submit(engine, CLAIM_BATCH + 1, gpus=4, priority=TOP)
    low = _submit(engine, 2, priority=1, at=1)
    high = _submit(engine, 2, priority=9, at=9)
    assert set(_decide(engine, {"a"})) == set(high)
    with engine.connect() as conn:
        assert {repo.get_job(conn, j).status.value for j in low} == {"QUEUED"}


def test_cpu_only_jobs_behind_a_full_fleet_still_start(engine: Engine) -> None:
    _node(engine, "a", 1)
    _submit(engine, 1, gpus=1, priority=TOP)
    _submit(engine, CLAIM_BATCH, gpus=1, priority=TOP, at=1)
    [cpu] = _submit(engine, 1, gpus=0, at=9)
    placed = _decide(engine, {"a"})
    assert cpu in placed and len(placed) == 2


def test_claim_leaves_out_only_jobs_that_hold_every_skipped_label_and_need_more(engine: Engine) -> None:
    """claim_queued's skip, on both databases: a label key with dots and slashes, jobs without the
    label, with more labels, and below the GPU bound are all still read."""
    key = "gpufleet.io/rack"
    hopeless = sorted(_submit(engine, 2, gpus=3, constraints={key: "x"}))  # same age: by id
    more_labels = _submit(engine, 1, gpus=3, constraints={key: "x", "zone": "q"}, at=1)
    small = _submit(engine, 1, gpus=2, constraints={key: "x"}, at=2)
    other_value = _submit(engine, 1, gpus=3, constraints={key: "y"}, at=3)
    other_key = _submit(engine, 1, gpus=3, constraints={"rack": "x"}, at=4)
    plain = _submit(engine, 1, gpus=3, at=5)
    with engine.begin() as conn:
        got = [j.id for j in repo.claim_queued(conn, 100, skip=[({key: "x"}, 2)])]
        assert got == [*small, *other_value, *other_key, *plain]
        none_match = [j.id for j in repo.claim_queued(conn, 100, skip=[({key: "x", "zone": "q"}, -1)])]
        assert none_match == [*hopeless, *small, *other_value, *other_key, *plain]
        assert [j.id for j in repo.claim_queued(conn, 100)] == [
            *hopeless, *more_labels, *small, *other_value, *other_key, *plain]


def test_a_remembered_hopeless_shape_is_placed_once_a_node_fits_it(engine: Engine) -> None:
    """The scheduler leaves out, pass after pass, jobs whose labels no node offers; the same
    scheduler places them as soon as a node that fits registers (it re-judges every pass)."""
    _node(engine, "a", 2)
    _node(engine, "b", 1, rack="x")
    # Same age within each group: the queue takes them by id.
    wide = sorted(_submit(engine, CLAIM_BATCH + 5, gpus=2, priority=TOP, constraints={"rack": "x"}))
    odd = sorted(_submit(engine, 3, priority=TOP, constraints={"rack": "z"}, at=1))
    [small] = _submit(engine, 1, gpus=1, at=2)
    nodes = {"a", "b"}
    s = Scheduler(engine, NoAgents(), lambda: nodes)  # type: ignore[arg-type]
    try:
        assert {p.job.id: p.node for p in s.decide()} == {small: "b"}  # best fit
        assert s.decide() == []
        _node(engine, "c", 2, rack="z")
        _node(engine, "d", 4, rack="x")
        nodes.update({"c", "d"})
        s.invalidate_nodes()
        placed = {p.job.id: p.node for p in s.decide()}
        assert placed == {odd[0]: "c", odd[1]: "c", wide[0]: "d", wide[1]: "d"}
    finally:
        s.close()
    with engine.connect() as conn:
        assert repo.get_job(conn, odd[2]).status.value == "QUEUED"
