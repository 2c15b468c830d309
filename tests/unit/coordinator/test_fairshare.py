"""Fair share, quotas and the priority cap: pure decisions, as tables."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from gpufleet.coordinator import fairshare, priority
from gpufleet.coordinator.fairshare import Head, Use, decayed_gpu_seconds, next_owner, over_quota, usage_by_owner
from gpufleet.coordinator.pending import PendingCode

NOW = datetime(2026, 12, 5, 12, tzinfo=UTC)
H = 3600.0


def ago(s: float) -> datetime:
    return NOW - timedelta(seconds=s)


@pytest.mark.parametrize("gpus,start,end,half_life,expected", [
    (1, ago(10), ago(0), 0, 10.0),  # no decay: plain GPU-seconds
    (2, ago(10), ago(0), 0, 20.0),
    (1, ago(2 * H), ago(H), H, H / 2 / 0.6931471805599453 * (1 - 0.5)),  # an hour, an hour ago
    (1, ago(0), None, H, fairshare.PLACED_CHARGE_S),  # just placed: charged at least the minimum
    (1, ago(0.1), ago(0.05), 0, fairshare.PLACED_CHARGE_S),  # a very short job too
    (1, ago(5), ago(10), H, 0.0),  # ended before it began: nothing
])
def test_decayed_gpu_seconds(gpus: int, start: datetime, end: datetime | None, half_life: float,
                             expected: float) -> None:
    assert decayed_gpu_seconds(gpus, start, end, NOW, half_life) == pytest.approx(expected, rel=1e-3)


def test_an_hour_old_second_counts_half() -> None:
    recent = decayed_gpu_seconds(1, ago(1), ago(0), NOW, H)
    old = decayed_gpu_seconds(1, ago(H + 1), ago(H), NOW, H)
    assert old == pytest.approx(recent / 2, rel=1e-3)


def test_usage_sums_per_owner() -> None:
    uses = [Use("alice", 1, ago(100), ago(0)), Use("alice", 2, ago(50), ago(0)), Use("bob", 1, ago(10), None)]
    got = usage_by_owner(uses, NOW, 0)
    assert got == {"alice": 200.0, "bob": 10.0}


def head(owner: str, prio: int = 0, age: float = 0, jid: str = "") -> Head:
    return Head(owner, prio, ago(age), jid or owner)


@pytest.mark.parametrize("name,heads,usage,expected", [
    ("priority first", [head("alice", 5), head("bob", 1)], {"alice": 1e6}, "alice"),
    ("then least recent use", [head("alice", age=100), head("bob")], {"alice": 10.0, "bob": 2.0}, "bob"),
    ("no use counts zero", [head("alice", age=100), head("bob")], {"alice": 1.0}, "bob"),
    ("then the oldest job", [head("alice", age=1), head("bob", age=100)], {}, "bob"),
    ("nothing queued", [], {}, None),
])
def test_next_owner(name: str, heads: list[Head], usage: dict[str, float], expected: str | None) -> None:
    assert next_owner(heads, usage) == expected, name


def test_equal_queues_take_turns() -> None:
    """Two owners, equal queues, each placement charged: they alternate."""
    usage: dict[str, float] = {}
    order = []
    for i in range(6):
        who = next_owner([head("alice", age=100 - i), head("bob", age=50 - i)], usage)
        assert who is not None
        order.append(who)
        usage[who] = usage.get(who, 0.0) + fairshare.PLACED_CHARGE_S
    assert order == ["alice", "bob"] * 3


@pytest.mark.parametrize("owner,gpus,held,quotas,blocked", [
    ("alice", 1, {"alice": 2}, {"alice": 2}, "alice uses 2 of 2 GPUs; this job needs 1"),
    ("alice", 2, {"alice": 1}, {"alice": 2}, "alice uses 1 of 2 GPUs; this job needs 2"),
    ("alice", 1, {"alice": 1}, {"alice": 2}, None),
    ("alice", 0, {"alice": 2}, {"alice": 2}, None),  # CPU-only jobs hold no GPU
    ("bob", 4, {"alice": 2}, {"alice": 2}, None),  # no quota: no limit
    ("alice", 1, {}, {"alice": 0}, "alice uses 0 of 0 GPUs; this job needs 1"),
])
def test_over_quota(owner: str, gpus: int, held: dict[str, int], quotas: dict[str, int], blocked: str | None) -> None:
    why = over_quota(owner, gpus, held, quotas)
    if blocked is None:
        assert why is None
    else:
        assert why is not None and why.code is PendingCode.QUOTA and why.message == blocked


def job(p: int) -> SimpleNamespace:
    return SimpleNamespace(priority=p)


@pytest.mark.parametrize("method,request_,role,why", [
    ("SubmitJob", SimpleNamespace(priority=100), "user", None),
    ("SubmitJob", SimpleNamespace(priority=101), "user", "priority: role user may set at most 100, got 101"),
    ("SubmitJob", SimpleNamespace(priority=2**31 - 1), "admin", None),
    ("SubmitJob", SimpleNamespace(priority=-5), "user", None),
    ("CreateModel", SimpleNamespace(priority=500), "user", "priority: role user may set at most 100, got 500"),
    ("SubmitArray", SimpleNamespace(job=job(101)), "user", "job.priority: role user may set at most 100"),
    ("SubmitPipeline", SimpleNamespace(steps=[SimpleNamespace(job=job(1)), SimpleNamespace(job=job(200))]),
     "user", "steps[1].job.priority: role user may set at most 100, got 200"),
])
def test_priority_cap(method: str, request_: object, role: str, why: str | None) -> None:
    got = priority.over_cap(method, request_, role, 100)
    if why is None:
        assert got is None
    else:
        assert got is not None and got.startswith(why)
