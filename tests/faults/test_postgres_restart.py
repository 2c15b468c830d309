"""Matrix 3: PostgreSQL restarted (`pg_ctl restart -m fast`) under a working coordinator.

A real coordinator on a fresh PostgreSQL database and one real agent (process runtime). Three
gated jobs are running and a client thread keeps submitting short jobs when the server is
restarted. Clients may see UNAVAILABLE (safe to retry) while the database is away; afterwards:
- the coordinator recovers by itself (same process, health SERVING again);
- every submission that returned OK exists and reaches SUCCESS, and so does every job the
  database holds (a submission whose answer was lost may or may not have been committed, but
  nothing is left half-way);
- every job row has its "submitted" audit event and every audit event its job (one transaction);
- the invariants hold once settled.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import grpc
import pytest
import sqlalchemy as sa

from gpufleet.v1 import common_pb2 as pb
from gpufleet.v1 import coordinator_pb2 as cpb
from tests.faults import gated, release, runs, settle
from tests.harness import AgentProc, CoordinatorProc, healthy, wait_for
from tests.integration.test_coordinator_reconcile import register, wait_job

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

SHORT = ["/bin/sh", "-c", "echo run >> runs"]
# A lost database connection is UNAVAILABLE (retry), never INTERNAL.
ALLOWED = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


class Submitter(threading.Thread):
    """A client submitting jobs one after another until told to stop."""

    def __init__(self, c: CoordinatorProc) -> None:
        super().__init__(name="submitter", daemon=True)
        self.c = c
        self.ok: list[str] = []
        self.errors: Counter[grpc.StatusCode] = Counter()
        self.stop = threading.Event()
        self.unexpected: list[str] = []

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            spec = pb.JobSpec(command=SHORT, output_dir=f"s{i}")
            try:
                job = self.c.stub.SubmitJob(cpb.SubmitJobRequest(spec=spec, gpus=0, name=f"s{i}"), timeout=10)
            except grpc.RpcError as exc:
                self.errors[exc.code()] += 1
                if exc.code() not in ALLOWED:
                    self.unexpected.append(f"{exc.code().name}: {exc.details()}")
                self.stop.wait(0.05)  # a client's pause before its next try
                continue
            self.ok.append(job.job_id)
            self.stop.wait(0.02)  # a client's pace, not synchronisation


def test_postgres_restart_loses_no_acknowledged_submission(
        pg_server, pg_url: str, coordinator_factory: Callable[..., CoordinatorProc],  # type: ignore[no-untyped-def]
        agent_factory: Callable[..., AgentProc]) -> None:
    # A long node timeout: the agent's heartbeats fail (and back off) while the database is away;
    # node loss is not what this test is about.
    c = coordinator_factory(database_url=pg_url, node_timeout=60)
    a = agent_factory("a", extra=["--coordinator", c.addr])
    register(c, a)
    pid = c.daemon.proc.pid  # type: ignore[union-attr]

    running = []
    for i in range(3):
        spec = pb.JobSpec(output_dir=f"g{i}", **gated("process"))
        running.append(c.stub.SubmitJob(cpb.SubmitJobRequest(spec=spec, gpus=1, name=f"g{i}"), timeout=10).job_id)
    for job_id in running:
        wait_job(c, job_id, "RUNNING")
        a.wait_state(job_id, "RUNNING")

    sub = Submitter(c)
    sub.start()
    try:
        wait_for(lambda: len(sub.ok) >= 15, 30, "15 submissions before the restart")
        before = len(sub.ok)
        t0 = time.monotonic()
        pg_server.restart()
        restart_s = time.monotonic() - t0
        wait_for(lambda: healthy(c.channel), 30, "coordinator health SERVING after the restart")  # type: ignore[arg-type]
        wait_for(lambda: len(sub.ok) >= before + 15, 30, "15 submissions after the restart")
    finally:
        sub.stop.set()
        sub.join(30)
    assert not sub.unexpected, sub.unexpected
    assert c.daemon.proc is not None and c.daemon.proc.poll() is None and c.daemon.proc.pid == pid
    assert restart_s < 30

    for i in range(len(running)):  # jobs that ran across the restart end truthfully
        release(a, f"g{i}", 0)
    ok = set(sub.ok)
    assert len(ok) == len(sub.ok)  # every OK carried a new id

    def all_done() -> set[str] | None:
        page = c.stub.ListJobs(cpb.ListJobsQuery(size=500), timeout=10)
        if page.total_elements != sum(1 for j in page.jobs if j.status_name == "SUCCESS"):
            return None
        return {j.job_id for j in page.jobs}
    ids = wait_for(all_done, 60, "every job in the database SUCCESS", interval=0.3)
    assert ok | set(running) <= ids, f"acknowledged submissions lost: {sorted(ok - ids)}"
    for job_id in running:
        assert wait_job(c, job_id, "SUCCESS").exit_code == 0
    # Each job ran once (a submission whose answer was lost may exist and have run, also once).
    names = {j.job_id: j.name for j in c.stub.ListJobs(cpb.ListJobsQuery(size=500), timeout=10).jobs}
    for job_id in ids:
        assert runs(a, names[job_id]) == 1, (job_id, names[job_id])

    engine = sa.create_engine(pg_url)
    try:
        with engine.connect() as conn:
            job_ids = {r.id for r in conn.execute(sa.text("SELECT id FROM jobs"))}
            submitted = Counter(r.entity_id for r in conn.execute(sa.text(
                "SELECT entity_id FROM events WHERE entity = 'job' AND from_state IS NULL AND to_state = 'QUEUED'")))
            evented = {r.entity_id for r in conn.execute(sa.text("SELECT entity_id FROM events WHERE entity = 'job'"))}
    finally:
        engine.dispose()
    assert job_ids == ids
    assert set(submitted) == job_ids and set(submitted.values()) == {1}
    assert evented <= job_ids
    settle(pg_url, {a.node_name: a.state_dir})
    print(f"restart {restart_s:.2f}s, submissions ok={len(ok)} errors={dict(sub.errors)}")
