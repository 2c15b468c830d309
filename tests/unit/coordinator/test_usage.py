"""GPU accounting on the coordinator (coordinator/usage.py) on SQLite and PostgreSQL: an attempt's use
is stored once with its owner, sums per user/node/all honour the window, bad queries name the field."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from gpufleet.coordinator import usage
from gpufleet.coordinator.db import repo, tokens
from gpufleet.coordinator.db.engine import make_engine, migrate
from gpufleet.coordinator.db.usage import get_usage
from sqlalchemy import Connection, Engine

from gpufleet.errors import InvalidArgument

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    migrate(eng)
    yield eng
    eng.dispose()


def ended(conn: Connection, owner: str | None, node: str, secs: float, util: float, days_ago: float) -> str:
    job = repo.create_job(conn, spec={"command": ["true"]}, gpus=2, now=NOW)
    if owner:
        tokens.set_owner(conn, "job", job.root_id, owner, NOW)
    job = replace(repo.get_job(conn, job.id), node=node)
    usage.record(conn, job, {"gpu_seconds": secs, "energy_joules": secs * 100, "peak_memory_bytes": int(secs),
                             "mean_utilization": util, "samples": 3}, now=NOW - timedelta(days=days_ago))
    return job.id


def test_usage_is_stored_once_and_summed_per_user_node_and_in_all(engine: Engine) -> None:
    with engine.begin() as conn:
        a1 = ended(conn, "alice", "n1", 100, 90, 1)
        ended(conn, "alice", "n2", 300, 50, 2)
        ended(conn, "bob", "n1", 50, 20, 3)
        ended(conn, None, "n1", 10, 0, 4)
        ended(conn, "alice", "n1", 1000, 99, 30)  # outside a 7-day window
        # A repeated report changes nothing: the first record stands.
        job = repo.get_job(conn, a1)
        assert not usage.record(conn, job, {"gpu_seconds": 1e9})
        assert get_usage(conn, [a1])[a1].gpu_seconds == 100
    with engine.connect() as conn:
        week = usage.summarize(conn, 7 * 86400, "user", now=NOW)
        assert [(r.key, r.jobs, r.gpu_seconds) for r in week.rows] == [
            ("alice", 2, 400), ("bob", 1, 50), (usage.NO_OWNER, 1, 10)]
        assert week.rows[0].mean_utilization == pytest.approx((100 * 90 + 300 * 50) / 400)  # weighted by time
        assert week.rows[0].peak_memory_bytes == 300 and week.rows[0].energy_joules == pytest.approx(40000)
        assert week.total.jobs == 4 and week.total.gpu_seconds == 460 and week.since == NOW - timedelta(days=7)
        ever = usage.summarize(conn, 0, "node", now=NOW)
        assert ever.since is None and {r.key: r.jobs for r in ever.rows} == {"n1": 4, "n2": 1}
        (everything,) = usage.summarize(conn, 0, "all", now=NOW).rows
        assert (everything.key, everything.jobs, everything.gpu_seconds) == ("all", 5, 1460)


def test_bad_queries_name_the_field(engine: Engine) -> None:
    with engine.connect() as conn:
        with pytest.raises(InvalidArgument) as e:
            usage.summarize(conn, -5, "user")
        assert "since_seconds" in str(e.value)
        with pytest.raises(InvalidArgument) as e:
            usage.summarize(conn, 0, "team")
        assert "by" in str(e.value) and "user, node, all" in str(e.value)


def test_odd_reported_figures_are_clamped(engine: Engine) -> None:
    with engine.begin() as conn:
        job = repo.create_job(conn, spec={"command": ["true"]}, now=NOW)
        usage.record(conn, job, {"gpu_seconds": float("nan"), "energy_joules": -4, "peak_memory_bytes": 1e300,
                                 "mean_utilization": 400, "samples": "x"}, now=NOW)
        u = get_usage(conn, [job.id])[job.id]
    assert (u.gpu_seconds, u.energy_joules, u.mean_utilization, u.samples) == (0, 0, 100, 0)
    assert u.peak_memory_bytes == 2**62
