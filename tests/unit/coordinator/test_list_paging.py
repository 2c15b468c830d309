"""ListJobs/ListModels pages stay under gRPC's 4 MiB answer limit however big the accepted items are,
and paging by (page, size) still returns every item exactly once."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from gpufleet.coordinator import convert
from gpufleet.coordinator.agents import AgentPool
from gpufleet.coordinator.db import repo
from gpufleet.coordinator.db.engine import default_sqlite_url, make_engine, migrate
from gpufleet.coordinator.lifecycle import Lifecycle
from gpufleet.coordinator.service import CoordinatorService
from sqlalchemy import Engine

from gpufleet.v1 import common_pb2 as pb
from gpufleet.v1 import coordinator_pb2 as cpb

GRPC_LIMIT = 4 * 1024 * 1024
BIG_PARAMS = json.dumps({"blob": "a" * 500_000})  # under lifecycle.MAX_SPEC_BYTES, as the API accepts it


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = make_engine(default_sqlite_url(tmp_path))
    migrate(eng)
    yield eng
    eng.dispose()


def service(engine: Engine) -> CoordinatorService:
    # ListJobs/ListModels only read the database: no lifecycle or agents behind them.
    return CoordinatorService(engine, cast(Lifecycle, None), cast(AgentPool, None))


def spec(params_json: str) -> dict[str, Any]:
    return {"command": ["/bin/true"], "output_dir": "out", "params_json": params_json}


def add_jobs(engine: Engine, big: int, small: int) -> set[str]:
    with engine.begin() as conn:
        return {repo.create_job(conn, spec=spec(BIG_PARAMS if i < big else "{}"), constraints={"k": "v"}).id
                for i in range(big + small)}


def add_models(engine: Engine, big: int, small: int) -> set[str]:
    with engine.begin() as conn:
        return {repo.create_model(conn, model_no="G1", memo="m", params_json=BIG_PARAMS if i < big else "{}",
                                  spec=spec(BIG_PARAMS if i < big else "{}")).uuid
                for i in range(big + small)}


@pytest.mark.parametrize("size", [0, 3, 7, 500])  # 0: the default (20)
def test_paging_through_big_jobs_sees_each_exactly_once(engine: Engine, size: int) -> None:
    want = add_jobs(engine, big=14, small=5)
    svc, seen, page = service(engine), [], 0
    while True:
        p = svc.ListJobs(cpb.ListJobsQuery(page=page, size=size), None)
        assert p.ByteSize() <= convert.LIST_PAGE_BYTES < GRPC_LIMIT
        assert p.total_elements == len(want)
        if not p.jobs:
            break
        assert p.jobs[0].HasField("spec"), "the first item of a page is always whole"
        seen += [j.job_id for j in p.jobs]
        page += 1
    assert len(seen) == len(want) and set(seen) == want
    assert page == p.total_pages


@pytest.mark.parametrize("size", [0, 2, 500])
def test_paging_through_big_models_sees_each_exactly_once(engine: Engine, size: int) -> None:
    want = add_models(engine, big=7, small=3)  # ~1 MiB each: params twice
    svc, seen, page = service(engine), [], 0
    while True:
        p = svc.ListModels(cpb.ListModelsRequest(page=page, size=size), None)
        assert p.ByteSize() <= convert.LIST_PAGE_BYTES < GRPC_LIMIT
        if not p.items:
            break
        seen += [m.uuid for m in p.items]
        page += 1
    assert len(seen) == len(want) and set(seen) == want


def test_a_full_page_lightens_only_its_last_items(engine: Engine) -> None:
    add_jobs(engine, big=9, small=0)  # 9 x ~0.5 MB: ~4.5 MB in full
    jobs = service(engine).ListJobs(cpb.ListJobsQuery(), None).jobs
    whole = [j.HasField("spec") for j in jobs]
    assert whole == sorted(whole, reverse=True) and 1 <= whole.count(True) < len(jobs)  # a whole prefix
    light = jobs[-1]
    assert not light.constraints and light.job_id and light.status_name == "QUEUED"
    assert [j.trimmed for j in jobs] == [not w for w in whole]  # a client can tell which to GetJob


def test_small_pages_are_unchanged(engine: Engine) -> None:
    add_jobs(engine, big=0, small=3)
    add_models(engine, big=0, small=3)
    svc = service(engine)
    assert all(j.HasField("spec") and j.constraints == {"k": "v"} and not j.trimmed
               for j in svc.ListJobs(cpb.ListJobsQuery(), None).jobs)
    assert all(m.HasField("spec") and m.memo == "m" and not m.trimmed
               for m in svc.ListModels(cpb.ListModelsRequest(), None).items)


def test_fit_page_keeps_the_first_item_whole_even_over_budget() -> None:
    items = [pb.JobSpec(params_json="x" * 100) for _ in range(3)]
    out = convert.fit_page(items, lambda s: s.ClearField("params_json"), budget=10)
    assert [len(s.params_json) for s in out] == [100, 0, 0]


def test_fit_page_lightens_no_more_than_needed() -> None:
    items = [pb.JobSpec(params_json="x" * 100) for _ in range(5)]
    per_item = items[0].ByteSize()
    out = convert.fit_page(items, lambda s: s.ClearField("params_json"), budget=3 * per_item)
    assert [len(s.params_json) for s in out] == [100, 100, 100, 0, 0]
