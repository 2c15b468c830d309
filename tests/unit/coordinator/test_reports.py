"""Agents' pushed reports (coordinator/reports.py) applied to a real database (SQLite in tmp_path,
and PostgreSQL through the `db_url` fixture): idempotent, in order, metric pages with bad names
dropped and warned about, progress only forward, a lost verdict replaced by the node's true end.
No agent is called: everything the coordinator needs travels in the entries."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from gpufleet.coordinator.agents import AgentPool, Observation
from gpufleet.coordinator.db import repo
from gpufleet.coordinator.db.engine import make_engine, migrate
from gpufleet.coordinator.db.usage import get_usage
from gpufleet.coordinator.reconciler import Reconciler, end_job
from gpufleet.coordinator.reports import Entry, Reports
from gpufleet.coordinator.states import JobStatus
from sqlalchemy.engine import Engine

from tests.placing import assign

NODE = "n1"
GPU = {"index": 0, "uuid": "GPU-0", "name": "fake", "healthy": True}


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    migrate(eng)
    with eng.begin() as conn:
        repo.upsert_node(conn, NODE, address="127.0.0.1:1", labels={}, agent_version="t", runtime="process",
                         gpus=[GPU])
    yield eng
    eng.dispose()


@pytest.fixture
def reports(engine: Engine) -> Iterator[Reports]:
    woken: list[int] = []
    rec = Reconciler(engine, AgentPool())
    yield Reports(engine, rec, lambda: woken.append(1))
    rec.close()


def running_job(engine: Engine, **kw: Any) -> str:
    with engine.begin() as conn:
        job = repo.create_job(conn, spec={"command": ["true"], "output_dir": "out", "total_epoch": 3}, gpus=1, **kw)
        assert assign(conn, job.id, NODE, [0], actor="test")
    return job.id


def obs(state: str, exit_code: int | None = None, epoch: int = 0, probe: dict[str, Any] | None = None,
        log_tail: bytes = b"") -> Observation:
    progress = {"current_epoch": epoch, "total_epoch": 3, "metrics": {"loss": 0.5}} if epoch else None
    return Observation(kind="found", state=state, attempt=1, exit_code=exit_code, probe=probe, progress=progress,
                       log_tail=log_tail)


def get(engine: Engine, job_id: str) -> Any:
    with engine.connect() as conn:
        return repo.get_job(conn, job_id)


def progress(engine: Engine, job_id: str) -> int:
    with engine.connect() as conn:
        p = repo.get_progress(conn, [job_id]).get(job_id)
    return p.current_epoch if p else 0


PROBE = {"completed": True, "reason": "ok", "val_lines": 3, "expected_lines": 3, "has_result_zip": False,
         "best_epoch": 2, "latest_checkpoint": "epoch_3.pth", "latest_checkpoint_epoch": 3, "metrics": []}
LONG = "m" * 65


def test_started_progress_ended_in_order_and_again(engine: Engine, reports: Reports) -> None:
    jid = running_job(engine)
    rows = [("train", e, {"loss": 1.0 / e, LONG: 1.0}) for e in range(1, 4)]
    entries = [
        Entry(1, "started", jid, 1, obs("RUNNING")),
        Entry(2, "progress", jid, 1, obs("RUNNING", epoch=2)),
        Entry(3, "progress", jid, 1, obs("RUNNING", epoch=1)),  # late: progress never moves back
        Entry(5, "metrics", jid, 1, obs("SUCCEEDED"), metrics=rows[:2]),
        Entry(5, "metrics", jid, 1, obs("SUCCEEDED"), metrics=rows[2:]),
        Entry(5, "ended", jid, 1, obs("SUCCEEDED", 0, epoch=3, probe=PROBE, log_tail=b"done\n"), metric_rows=3),
    ]
    applied = reports.apply(NODE, entries[:3])
    assert applied.acked_seq == 3 and not applied.acknowledged
    assert get(engine, jid).observed_state == "RUNNING" and progress(engine, jid) == 2

    applied = reports.apply(NODE, entries[3:])
    assert applied.acked_seq == 5 and applied.acknowledged == [(jid, 1)] and applied.ended == 1
    job = get(engine, jid)
    assert job.status is JobStatus.SUCCESS and job.exit_code == 0 and job.acked
    assert progress(engine, jid) == 3  # the last epoch reported
    with engine.connect() as conn:
        points = repo.get_job_metrics(conn, jid)
        assert repo.get_log_tail(conn, jid) == b"done\n"
    assert [(p.epoch, sorted(p.values)) for p in points] == [(e, ["loss"]) for e in range(1, 4)]
    assert job.warnings and LONG in job.warnings and "dropped" in job.warnings

    # The same entries again (a lost answer, an agent restart): nothing changes, still acked.
    again = reports.apply(NODE, entries)
    assert again.acked_seq == 5 and again.acknowledged == [(jid, 1)] and again.ended == 0
    assert get(engine, jid).row_version == job.row_version


def test_failed_exit_has_the_one_reason(engine: Engine, reports: Reports) -> None:
    jid = running_job(engine)
    reports.apply(NODE, [Entry(1, "ended", jid, 1, obs("FAILED", 3))])
    job = get(engine, jid)
    assert job.status is JobStatus.FAILED and job.exit_code == 3
    assert job.error_message.startswith("EXIT_NONZERO: exit code 3"), job.error_message


def test_entries_of_other_nodes_or_unknown_jobs_are_acked_and_ignored(engine: Engine, reports: Reports) -> None:
    jid = running_job(engine)
    applied = reports.apply("other", [Entry(7, "ended", jid, 1, obs("SUCCEEDED", 0))])
    assert applied.acked_seq == 7 and get(engine, jid).status is JobStatus.RUNNING
    applied = reports.apply(NODE, [Entry(8, "ended", "nope", 1, obs("SUCCEEDED", 0))])
    assert applied.acked_seq == 8


def test_true_end_beats_the_lost_verdict_and_cancels_the_replacement(engine: Engine, reports: Reports) -> None:
    jid = running_job(engine, max_retries=1)
    replacement = end_job(engine, jid, JobStatus.STOPPED, "NODE_LOST: node n1 silent for 400s", actor="sweep",
                          requeue=True, lost=True)
    assert replacement is not None and replacement.spec["output_dir"] == "out-attempt2"
    applied = reports.apply(NODE, [Entry(9, "ended", jid, 1, obs("SUCCEEDED", 0, probe=PROBE))])
    assert applied.acknowledged == [(jid, 1)]
    original = get(engine, jid)
    assert original.status is JobStatus.SUCCESS and original.exit_code == 0
    rep = get(engine, replacement.id)
    assert rep.status is JobStatus.CANCELED and rep.error_message.startswith("SUPERSEDED_BY_ORIGINAL")
    # A repeat changes nothing.
    reports.apply(NODE, [Entry(9, "ended", jid, 1, obs("SUCCEEDED", 0, probe=PROBE))])
    assert get(engine, jid).row_version == original.row_version


def test_a_replacement_that_already_succeeded_keeps_its_result(engine: Engine, reports: Reports) -> None:
    jid = running_job(engine, max_retries=1)
    replacement = end_job(engine, jid, JobStatus.STOPPED, "NODE_LOST: node n1 silent for 400s", actor="sweep",
                          requeue=True, lost=True)
    assert replacement is not None
    with engine.begin() as conn:
        assert assign(conn, replacement.id, NODE, [0], actor="test")
    end_job(engine, replacement.id, JobStatus.SUCCESS, "", actor="test", exit_code=0)
    applied = reports.apply(NODE, [Entry(9, "ended", jid, 1, obs("SUCCEEDED", 0, probe=PROBE))])
    assert applied.acknowledged == [(jid, 1)]  # told, and the agent may forget it
    original = get(engine, jid)
    assert original.status is JobStatus.STOPPED and original.error_message.startswith("NODE_LOST")
    assert original.warnings and "already succeeded" in original.warnings
    assert get(engine, replacement.id).status is JobStatus.SUCCESS


def test_gpu_use_is_stored_with_the_end_and_also_when_the_coordinator_ended_it_first(engine: Engine,
                                                                                    reports: Reports) -> None:
    used = {"gpu_seconds": 12.0, "energy_joules": 3000.0, "peak_memory_bytes": 5 << 30, "mean_utilization": 80.0,
            "samples": 4}
    done, lost = running_job(engine), running_job(engine)
    reports.apply(NODE, [Entry(1, "ended", done, 1, replace(obs("SUCCEEDED", 0, probe=PROBE), gpu_usage=used))])
    # Ended here first (its node was given up for lost), then its node reports a stop: the use still counts.
    end_job(engine, lost, JobStatus.STOPPED, "NODE_LOST: silent", actor="test")
    reports.apply(NODE, [Entry(2, "ended", lost, 1, replace(obs("STOPPED", 137), gpu_usage=used))])
    reports.apply(NODE, [Entry(3, "ended", lost, 1, replace(obs("STOPPED", 137), gpu_usage={"gpu_seconds": 1.0}))])
    with engine.connect() as conn:
        got = get_usage(conn, [done, lost])
    assert get(engine, done).status is JobStatus.SUCCESS and get(engine, lost).status is JobStatus.STOPPED
    assert {k: (u.gpu_seconds, u.peak_memory_bytes, u.node) for k, u in got.items()} == {
        done: (12.0, 5 << 30, NODE), lost: (12.0, 5 << 30, NODE)}  # a repeated report changes nothing
