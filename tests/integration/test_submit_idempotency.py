"""SubmitJob's request_id: a client's retry after a lost answer never queues the job twice.

Lifecycle over a real database (SQLite and PostgreSQL, where concurrent retries race on the key's
primary key), then the whole path: a real coordinator and the `gpufleet jobs submit` command.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from gpufleet.coordinator.agents import AgentPool
from gpufleet.coordinator.db import repo
from gpufleet.coordinator.db.engine import make_engine, migrate
from gpufleet.coordinator.lifecycle import Lifecycle
from gpufleet.coordinator.reconciler import Reconciler

from gpufleet.errors import InvalidArgument
from gpufleet.v1 import coordinator_pb2 as cpb
from tests.harness import CoordinatorProc

SPEC = {"command": ["/bin/true"], "output_dir": "idem"}


@pytest.fixture
def life(db_url: str) -> Iterator[tuple[Lifecycle, sa.Engine]]:
    engine = make_engine(db_url)
    migrate(engine)
    woken: list[int] = []
    yield Lifecycle(engine, AgentPool(), Reconciler(engine, AgentPool()), lambda: woken.append(1)), engine
    engine.dispose()


def submit(life: Lifecycle, request_id: str = "", **over: Any) -> Any:
    kw: dict[str, Any] = {"spec": SPEC, "gpus": 1, "priority": 0, "constraints": {}, "max_retries": 0,
                          "resume_on_retry": False, "name": "idem"}
    kw.update(over)
    return life.submit_job(request_id=request_id, **kw)


def count_jobs(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return repo.list_jobs(conn, page=0, size=500).total_elements


def test_a_repeated_request_id_returns_the_first_job(life: tuple[Lifecycle, sa.Engine]) -> None:
    lc, engine = life
    first = submit(lc, "client-42:try")
    again = submit(lc, "client-42:try")
    assert again.id == first.id and count_jobs(engine) == 1
    other = submit(lc, "client-43")  # another key is another job
    assert other.id != first.id and count_jobs(engine) == 2
    plain = [submit(lc), submit(lc)]  # no key: every submit is a new job, as before
    assert plain[0].id != plain[1].id and count_jobs(engine) == 4


@pytest.mark.parametrize("change", [{"gpus": 2}, {"name": "other"}, {"priority": 5}, {"constraints": {"z": "a"}},
                                    {"spec": {**SPEC, "command": ["/bin/false"]}}])
def test_a_request_id_reused_for_another_request_is_refused(life: tuple[Lifecycle, sa.Engine],
                                                            change: dict[str, Any]) -> None:
    lc, engine = life
    first = submit(lc, "k1")
    with pytest.raises(InvalidArgument) as e:
        submit(lc, "k1", **change)
    assert e.value.field == "request_id" and first.id in str(e.value)
    assert count_jobs(engine) == 1


@pytest.mark.parametrize("bad", ["a b", "x" * 129, "../k", "ключ", "k\x00"])
def test_a_malformed_request_id_is_refused_and_nothing_queued(life: tuple[Lifecycle, sa.Engine], bad: str) -> None:
    lc, engine = life
    with pytest.raises(InvalidArgument) as e:
        submit(lc, bad)
    assert e.value.field == "request_id"
    assert count_jobs(engine) == 0


def test_concurrent_retries_of_one_request_make_one_job(life: tuple[Lifecycle, sa.Engine]) -> None:
    lc, engine = life
    n = 8
    barrier = threading.Barrier(n)
    got: list[Any] = []

    def go() -> None:
        barrier.wait(timeout=30)
        try:
            got.append(submit(lc, "race").id)
        except Exception as exc:  # noqa: BLE001 - surfaced below
            got.append(exc)

    threads = [threading.Thread(target=go) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(got) == n and all(isinstance(g, str) for g in got), got
    assert len(set(got)) == 1 and count_jobs(engine) == 1


def test_the_cli_submit_with_a_request_id_is_safe_to_repeat(
        coordinator_factory: Callable[..., CoordinatorProc]) -> None:
    c = coordinator_factory()

    def cli_submit(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gpufleet.cli", "--coordinator", c.addr, "-o", "json", "jobs", "submit",
             "--request-id", "nightly-2026-11-23", *extra, "--", "/bin/true"],
            capture_output=True, text=True, timeout=60, check=False)

    first, second = cli_submit(), cli_submit()
    assert first.returncode == 0 and second.returncode == 0, (first.stderr, second.stderr)
    assert json.loads(first.stdout)["job_id"] == json.loads(second.stdout)["job_id"]
    assert c.stub.ListJobs(cpb.ListJobsQuery(), timeout=5).total_elements == 1
    changed = cli_submit("--gpus", "2")
    assert changed.returncode == 1 and "request_id" in changed.stderr, changed.stderr
    assert c.stub.ListJobs(cpb.ListJobsQuery(), timeout=5).total_elements == 1
    with pytest.raises(grpc.RpcError) as e:
        c.stub.SubmitJob(cpb.SubmitJobRequest(request_id="no spaces please"), timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
