"""Benchmark of the gpufleet coordinator: placements/s, SubmitJob latency, metric ingestion.

One run, against a real `gpufleet-coordinator` process (`python -P -m gpufleet.coordinator.main` with
`sys.executable`, its production defaults for heartbeat/reconcile/schedule intervals and node
timeout; any other port it listens on by default, such as --metrics-listen, moved to a free one)
on PostgreSQL: a throwaway cluster started here as tests/postgres.py starts one (initdb in a temp
dir, as the `postgres` user when we are root, fsync on unless --no-fsync), or a fresh database on
the server of --database-url, or SQLite with --sqlite. 100 simulated agents live in this process:
each one a grpc.aio server on its own loopback port (all on one event loop in a background
thread) that implements gpufleet.v1.Agent — Launch records the job and answers RUNNING at once
(idempotent on (job_id, attempt)), Inspect answers RUNNING (or SUCCEEDED once told), Stop,
Acknowledge, ListJobs, GetNode — and that registers through gpufleet.v1.Fleet.Register and then
heartbeats at the interval the coordinator answers with, carrying its GPU snapshot and a digest
of every job it holds, as the real agent does.

Figures, in this order:
- floors: a SELECT 1 round trip and an INSERT+COMMIT through SQLAlchemy right now (what every
  per-row statement costs; a loaded machine inflates them).
- metric rows ingested/s: coordinator.db.repo.ingest_metrics, in this process, N rows (default
  100,000) in batches of B (default 2,000 = 100 epochs x 20 keys), one job and one transaction per
  batch, splits train/val/test in turn, before the fleet starts. A repeat of one batch must
  insert 0 rows (ingestion is idempotent).
- placements/s: J queued jobs (default 5,000; 1 GPU each) are committed in one transaction while
  the fleet is registered and idle, then the scheduler is woken (an idempotent Register of one
  agent) and the clock runs until every job has been decided, committed, launched over gRPC on a
  fake agent, and the agent's answer stored (`observed_state` RUNNING in the database).
  Everything the coordinator runs in production runs meanwhile: heartbeats, the reconciler
  (Inspect of every RUNNING job), the node sweep. When --placement-budget (30 s) runs out first,
  the rate is over the jobs stored by then and the rest of the queue is canceled.
- SubmitJob p50/p99: S sequential SubmitJob calls (default 1,000, after 50 warm-up calls; at
  most --submit-budget, 20 s) on one channel with a sync stub, against the same coordinator,
  which now holds the jobs placed above and places each submitted one; the reply is the "ack".
  Submit->Launch (when the fake agent got the Launch) is shown too, without a target.
With each phase: CPU used by the coordinator, this process and PostgreSQL, how busy the whole
machine was, and with --py-spy DIR where the coordinator's busy samples went.

Targets (issue 4): >= 1,000 placements/s, SubmitJob p99 <= 50 ms, >= 50,000 metric rows/s.
Exit status: 0 every target met, 1 a target missed, 2 the bench failed, 130 interrupted.
The coordinator, the fake agents and a PostgreSQL cluster started here are removed at the end,
also on Ctrl-C or SIGTERM (a database created on a --database-url server is dropped).

    python3 bench/coordinator.py [--json] [--sqlite | --database-url URL] [--py-spy DIR]
"""
from __future__ import annotations

import argparse
import math
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# Run as `python3 bench/coordinator.py`, this file's folder comes first on sys.path, and its name
# would shadow the `coordinator` package: look in the repository root instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO))

import sqlalchemy as sa  # noqa: E402
from gpufleet.coordinator.db import engine as dbengine  # noqa: E402
from gpufleet.coordinator.db import repo  # noqa: E402
from gpufleet.coordinator.db.schema import jobs as jobs_table  # noqa: E402
from gpufleet.coordinator.db.tokens import set_owner  # noqa: E402
from gpufleet.coordinator.states import JobStatus  # noqa: E402

from bench import _harness  # noqa: E402
from bench._harness import READY_TIMEOUT, RPC_TIMEOUT, BenchError, percentile, poll  # noqa: E402
from bench.fakefleet import AgentFarm, Coordinator, Database  # noqa: E402  (the simulated fleet)
from bench.profiling import CpuMeter, Spy  # noqa: E402
from gpufleet.jobspec import JobSpec  # noqa: E402
from gpufleet.v1 import common_pb2 as pb  # noqa: E402
from gpufleet.v1 import coordinator_pb2 as cpb  # noqa: E402
from gpufleet.v1 import coordinator_pb2_grpc  # noqa: E402

TARGET_PLACEMENTS_PER_S = 1000.0
TARGET_SUBMIT_P99_MS = 50.0
TARGET_METRIC_ROWS_PER_S = 50000.0


def summary(samples_ms: list[float]) -> dict[str, Any]:
    return _harness.summary(samples_ms, (50, 90, 99))


# ---- measurements ----------------------------------------------------------------------------------


def bench_floors(engine: sa.Engine, n: int = 200) -> dict[str, Any]:
    """What one database round trip and one committed write cost right now, through SQLAlchemy:
    the unit every per-row statement of the coordinator pays (and what a loaded machine inflates)."""
    clock = time.perf_counter
    reader = engine.execution_options(gpufleet_sqlite_begin="DEFERRED")
    select1, commit = [], []
    with reader.connect() as conn:
        for _ in range(n):
            t0 = clock()
            conn.exec_driver_sql("SELECT 1").scalar()
            select1.append((clock() - t0) * 1e3)
    for i in range(n // 2):
        t0 = clock()
        with engine.begin() as conn:
            repo.record_event(conn, "job", f"bench-floor-{i}", None, None, reason="bench: commit floor", actor="bench")
        commit.append((clock() - t0) * 1e3)
    return {"select1_p50_ms": round(percentile(select1, 50), 3), "select1_p99_ms": round(percentile(select1, 99), 3),
            "insert_commit_p50_ms": round(percentile(commit, 50), 3),
            "insert_commit_p99_ms": round(percentile(commit, 99), 3)}


def bench_metrics(engine: sa.Engine, tag: str, total: int, batch: int) -> dict[str, Any]:
    """ingest_metrics of `total` rows in batches of `batch` (one job, one transaction each)."""
    keys_per_epoch = 20 if batch >= 20 else batch
    epochs = max(1, batch // keys_per_epoch)
    per_batch = epochs * keys_per_epoch
    n_batches = max(1, math.ceil(total / per_batch))
    spec = JobSpec(command=["true"], output_dir="bench").to_dict()
    job_ids = [f"{tag}m{i:05d}" for i in range(n_batches)]
    with engine.begin() as conn:
        for j in job_ids:
            repo.create_job(conn, spec=spec, gpus=0, job_id=j, actor="bench")
            # Out of the queue, so that the coordinator started later does not place them.
            repo.set_job_status(conn, j, JobStatus.CANCELED, reason="bench: metrics only", actor="bench")
    keys = [f"metric_{k:02d}" for k in range(keys_per_epoch)]
    splits = ("train", "val", "test")
    batches = [[(e, {k: (e * 31 + i) / 997.0 for i, k in enumerate(keys)}) for e in range(1, epochs + 1)]
               for _ in range(n_batches)]
    inserted = 0
    t0 = time.perf_counter()
    for i, j in enumerate(job_ids):
        with engine.begin() as conn:
            inserted += repo.ingest_metrics(conn, splits[i % 3], None, j, batches[i])
    took = time.perf_counter() - t0
    with engine.begin() as conn:
        repeat = repo.ingest_metrics(conn, splits[0], None, job_ids[0], batches[0])
    if inserted != n_batches * per_batch:
        raise BenchError(f"ingest_metrics inserted {inserted} rows, expected {n_batches * per_batch}")
    return {"rows": inserted, "batches": n_batches, "rows_per_batch": per_batch, "epochs_per_batch": epochs,
            "keys_per_epoch": keys_per_epoch, "seconds": round(took, 3), "rows_per_s": round(inserted / took, 1),
            "batch_ms_mean": round(1e3 * took / n_batches, 3), "repeat_inserted": repeat}


def bench_placements(engine: sa.Engine, farm: AgentFarm, coord: Coordinator, meter: CpuMeter, spy: Spy,
                     tag: str, n: int, budget: float, timeout: float, blocked: int = 0,
                     owners: int = 0) -> dict[str, Any]:
    """Commit n QUEUED jobs at once, wake the scheduler, time until each one is decided, committed,
    launched on its fake agent and the agent's answer stored (observed_state RUNNING). When the
    budget runs out first, the rate is over the jobs done by then and the rest is canceled (so it
    does not load the next phase)."""
    spec = JobSpec(command=["true"], output_dir="bench").to_dict()
    job_ids = [f"{tag}p{i:05d}" for i in range(n)]
    prefix = f"{tag}p%"
    reader = engine.execution_options(gpufleet_sqlite_begin="DEFERRED")
    stored_q = sa.select(sa.func.count()).select_from(jobs_table).where(
        jobs_table.c.id.like(prefix), jobs_table.c.observed_state == "RUNNING")

    def stored() -> int:
        with reader.connect() as c:
            return int(c.execute(stored_q).scalar_one())

    t_ins = time.perf_counter()
    conn = engine.connect()
    tx = conn.begin()
    # --owners: every job owned by one of N users (as a submit with a token records it), so the
    # pass merges N fair-share streams.
    at = datetime.now(UTC)

    def owner(i: int, j: str) -> str | None:
        if not owners:
            return None
        set_owner(conn, "job", j, f"user{i % owners}", at)
        return f"user{i % owners}"

    for i, j in enumerate(job_ids):
        repo.create_job(conn, spec=spec, gpus=1, job_id=j, actor="bench", owner=owner(i, j))
    # A blocked queue ahead of them (--blocked): higher priority, never placeable: half need more GPUs
    # than any node has, half a label no node carries (those pass the SQL filter and are looked at).
    for i in range(blocked):
        kw: dict[str, Any] = {"gpus": 64} if i % 2 else {"gpus": 1, "constraints": {"bench-never": "1"}}
        j = f"{tag}b{i:05d}"
        repo.create_job(conn, spec=spec, priority=100, job_id=j, actor="bench", owner=owner(i, j), **kw)
    insert_s = time.perf_counter() - t_ins
    spy.start("placements")
    cpu0 = meter.sample()
    launches0, inspects0, hb0 = farm.launch_calls, farm.inspect_calls, farm.heartbeats
    tx.commit()
    conn.close()
    # Committed: the scheduler may see them from here on (its periodic tick), so the clock starts.
    t0 = time.perf_counter()
    # Wake the scheduler: Register is idempotent and wakes it, as a submit would.
    assert coord.channel is not None
    coordinator_pb2_grpc.FleetStub(coord.channel).Register(farm.agents[0].register_request(), timeout=RPC_TIMEOUT)
    deadline = t0 + budget
    poll(lambda: farm.launched(job_ids) >= n or time.perf_counter() > deadline, timeout,
         f"{n} Launch calls on the fake agents", interval=0.005)
    partial = farm.launched(job_ids) < n
    if not partial:
        remaining = max(1.0, timeout - (time.perf_counter() - t0))
        poll(lambda: stored() >= n, remaining, f"{n} jobs with observed_state RUNNING", interval=0.01)
        done = n
    else:
        done = stored()
    t_end = time.perf_counter()
    cpu = meter.delta(cpu0, meter.sample())
    profile = spy.stop()
    launched = [t for j in job_ids if (t := farm.first_launch.get(j)) is not None and t <= t_end]
    canceled = cancel_queued(engine, prefix) if partial else 0
    if partial:
        # What was assigned before the cancel gets launched still; wait for it, untimed.
        assigned_q = sa.select(sa.func.count()).select_from(jobs_table).where(
            jobs_table.c.id.like(prefix), jobs_table.c.status == "RUNNING")
        with reader.connect() as c:
            assigned = int(c.execute(assigned_q).scalar_one())
        poll(lambda: stored() >= assigned, timeout, f"{assigned} assigned jobs to be launched", interval=0.02)
    with reader.connect() as c:
        rows = c.execute(sa.select(jobs_table.c.id, jobs_table.c.status, jobs_table.c.node,
                                   jobs_table.c.gpu_indices).where(jobs_table.c.id.like(prefix),
                                                                   jobs_table.c.status == "RUNNING")).all()
    wrong = [r.id for r in rows if (r.node, tuple(r.gpu_indices)) != farm.placed_on.get(r.id)]
    if wrong:
        raise BenchError(f"{len(wrong)} jobs placed differently than launched, e.g. {wrong[:3]}")
    took = t_end - t0
    if blocked:
        cancel_queued(engine, f"{tag}b%")
    return {"jobs": n, "blocked_ahead": blocked, "owners": owners, "placed": done, "partial": partial,
            "budget_s": budget,
            "canceled_after": canceled,
            "seconds": round(took, 3), "placements_per_s": round(done / took, 1),
            "first_launch_ms": round(1e3 * (min(launched) - t0), 1) if launched else None,
            "last_launch_s": round(max(launched) - t0, 3) if launched else None,
            "queue_insert_s": round(insert_s, 3), "nodes_used": len({farm.placed_on[r.id][0] for r in rows}),
            "launch_calls": farm.launch_calls - launches0, "duplicate_launches": farm.duplicate_launches,
            "inspect_calls": farm.inspect_calls - inspects0, "heartbeats": farm.heartbeats - hb0,
            "double_booked_gpus": farm.double_booked, "cpu_pct": cpu, "profile": profile}


def cancel_queued(engine: sa.Engine, prefix: str) -> int:
    """QUEUED -> CANCELED for the bench's jobs still queued (skipping any a scheduler pass holds)."""
    canceled = 0
    while True:
        with engine.begin() as conn:
            q = sa.select(jobs_table.c.id).where(jobs_table.c.id.like(prefix), jobs_table.c.status == "QUEUED")
            if conn.dialect.name == "postgresql":
                q = q.with_for_update(skip_locked=True)
            ids = list(conn.execute(q.limit(500)).scalars())
            for j in ids:
                canceled += repo.set_job_status(conn, j, JobStatus.CANCELED, reason="bench: budget spent",
                                                actor="bench")
        if not ids:
            with engine.connect() as conn:
                left = conn.execute(sa.select(sa.func.count()).select_from(jobs_table).where(
                    jobs_table.c.id.like(prefix), jobs_table.c.status == "QUEUED")).scalar_one()
            if not left:
                return canceled


def bench_submit(farm: AgentFarm, coord: Coordinator, meter: CpuMeter, spy: Spy, tag: str, n: int, warmup: int,
                 budget: float, timeout: float) -> dict[str, Any]:
    """Sequential SubmitJob calls on one channel (sync stub): n of them, or as many as fit in the
    budget; then, untimed, until each submitted job was launched on a fake agent."""
    assert coord.channel is not None
    stub = coordinator_pb2_grpc.CoordinatorStub(coord.channel)
    spec = pb.JobSpec(command=["true"], output_dir="bench")
    submit = stub.SubmitJob
    for i in range(warmup):
        submit(cpb.SubmitJobRequest(spec=spec, gpus=1, name=f"{tag}-warm-{i}"), timeout=RPC_TIMEOUT)
    spy.start("submit")
    cpu0 = meter.sample()
    hb0 = farm.heartbeats
    samples: list[float] = []
    started: dict[str, float] = {}
    clock = time.perf_counter
    t_begin = clock()
    deadline = t_begin + budget
    for i in range(n):
        req = cpb.SubmitJobRequest(spec=spec, gpus=1, name=f"{tag}-s-{i}")
        t0 = clock()
        job = submit(req, timeout=RPC_TIMEOUT)
        t1 = clock()
        samples.append((t1 - t0) * 1e3)
        started[job.job_id] = t0
        if job.status not in (cpb.JOB_STATUS_CODE_QUEUED, cpb.JOB_STATUS_CODE_RUNNING):
            raise BenchError(f"SubmitJob returned {job.status_name} for {job.job_id}")
        if t1 > deadline:
            break
    wall = clock() - t_begin
    cpu = meter.delta(cpu0, meter.sample())
    profile = spy.stop()
    ids = list(started)
    poll(lambda: farm.launched(ids) >= len(ids), timeout, f"the {len(ids)} submitted jobs to be launched",
         interval=0.01)
    to_launch = [(farm.first_launch[j] - started[j]) * 1e3 for j in ids]
    return {**summary(samples), "asked": n, "partial": len(samples) < n, "budget_s": budget, "warmup": warmup,
            "calls_per_s": round(len(samples) / wall, 1), "submit_to_launch": summary(to_launch),
            "heartbeats": farm.heartbeats - hb0, "cpu_pct": cpu, "profile": profile}


# ---- report ----------------------------------------------------------------------------------------


def verdicts(res: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def row(name: str, value: float | None, unit: str, target: float | None = None, higher: bool = False) -> None:
        ok = None if target is None or value is None else (value >= target if higher else value <= target)
        rows.append({"metric": name, "value": value, "unit": unit, "target": target,
                     "better": "higher" if higher else "lower", "pass": ok})

    pl, sb, mt = res["placements"], res["submit"], res["metrics"]
    cut = f", {pl['placed']} in the {pl['budget_s']:g} s budget" if pl["partial"] else ""
    row(f"placements ({pl['jobs']} jobs{cut}, {res['agents']} agents)", pl["placements_per_s"], "/s",
        TARGET_PLACEMENTS_PER_S, higher=True)
    row(f"SubmitJob p50 ({sb['n']} calls, {res['running_jobs_at_submit']} jobs running)", sb["p50_ms"], "ms")
    row("SubmitJob p99", sb["p99_ms"], "ms", TARGET_SUBMIT_P99_MS)
    row("submit->Launch p50", sb["submit_to_launch"]["p50_ms"], "ms")
    row("submit->Launch p99", sb["submit_to_launch"]["p99_ms"], "ms")
    row(f"metric rows ingested ({mt['rows']} in batches of {mt['rows_per_batch']})", mt["rows_per_s"], "/s",
        TARGET_METRIC_ROWS_PER_S, higher=True)
    return rows


def print_table(res: dict[str, Any]) -> None:
    m = res["machine"]
    print(f"gpufleet coordinator bench: {m['cpus']} CPUs, Python {m['python']}, load {m['loadavg_at_start']:g} "
          f"at start; {res['database']}")
    print(f"fleet: {res['agents']} fake agents x {res['gpus_per_agent']} GPUs (grpc.aio, one process), "
          f"heartbeat every {res['heartbeat_interval_s']:g} s "
          f"{'with job digests' if res['heartbeat_digests'] else 'WITHOUT job digests (--no-digests)'}; coordinator "
          + (f"args {' '.join(res['coordinator_args'])}" if res["coordinator_args"] else "defaults otherwise"))
    width = max(len(r["metric"]) for r in res["results"])
    print(f"{'metric':<{width}}  {'value':>12}  {'target':>13}  result")
    for r in res["results"]:
        val = f"{r['value']:,.1f} {r['unit']}" if r["unit"] == "/s" else f"{r['value']:.2f} {r['unit']}"
        if r["target"] is None:
            tgt = ""
        else:
            op = ">=" if r["better"] == "higher" else "<="
            tgt = f"{op} {r['target']:,.0f} {r['unit']}" if r["unit"] == "/s" else f"{op} {r['target']:g} {r['unit']}"
        verdict = "" if r["pass"] is None else ("PASS" if r["pass"] else "MISS")
        print(f"{r['metric']:<{width}}  {val:>12}  {tgt:>13}  {verdict}".rstrip())
    pl, sb, mt = res["placements"], res["submit"], res["metrics"]
    first = "n/a" if pl["first_launch_ms"] is None else f"{pl['first_launch_ms']:.0f} ms"
    last = "n/a" if pl["last_launch_s"] is None else f"{pl['last_launch_s']:.2f} s"
    print(f"placements: first Launch {first} after the wake, last at {last}, "
          f"{pl['placed']} stored at {pl['seconds']:.2f} s; {pl['duplicate_launches']} duplicate Launches, "
          f"{pl['inspect_calls']} Inspects, {pl['heartbeats']} heartbeats meanwhile")
    print(f"submit: {sb['calls_per_s']:.0f} calls/s, p90 {sb['p90_ms']:.2f} ms, max {sb['max_ms']:.2f} ms")
    for phase, d in (("placements", pl), ("submit", sb)):
        c = d["cpu_pct"]
        parts = ", ".join(f"{k} {v:.0f} %" for k, v in c.items() if k not in ("machine_busy", "loadavg_1m"))
        print(f"CPU during {phase} (% of one core): {parts}; machine {c['machine_busy']:.0f} % busy "
              f"(of {res['machine']['cpus']} CPUs), load {c['loadavg_1m']:g} at the end")
        prof = d.get("profile")
        if prof and prof.get("samples"):
            print(f"  py-spy of the coordinator during {phase}: {prof['samples']} busy samples ({prof['file']})")
            print("    threads: " + ", ".join(f"{e['what']} {e['pct']:.0f} %" for e in prof["threads"]))
            for e in prof["functions"][:12]:
                print(f"    {e['pct']:5.1f} %  {e['what']}")
    print(f"metrics: {mt['batches']} batches of {mt['epochs_per_batch']} epochs x {mt['keys_per_epoch']} keys, "
          f"{mt['batch_ms_mean']:.2f} ms a batch; a repeated batch inserted {mt['repeat_inserted']}")
    fl = res["floors"]
    print(f"floors now: SELECT 1 round trip p50 {fl['select1_p50_ms']:.2f} ms (p99 {fl['select1_p99_ms']:.2f}), "
          f"INSERT+COMMIT p50 {fl['insert_commit_p50_ms']:.2f} ms (p99 {fl['insert_commit_p99_ms']:.2f})")
    print("all targets met" if res["pass"] else "TARGET MISSED")


# ---- main ------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, root: Path, cleanup: _harness.Cleanup) -> dict[str, Any]:
    progress = _harness.progress_printer(args.quiet)
    res: dict[str, Any] = {
        "machine": _harness.machine_info(),
        "agents": args.agents, "targets": {"placements_per_s": TARGET_PLACEMENTS_PER_S,
                                           "submit_p99_ms": TARGET_SUBMIT_P99_MS,
                                           "metric_rows_per_s": TARGET_METRIC_ROWS_PER_S},
    }
    tag = uuid.uuid4().hex[:6]
    needed = args.jobs + args.submits + args.submit_warmup
    gpus = args.gpus_per_agent or max(8, math.ceil(needed / args.agents))
    res["gpus_per_agent"] = gpus

    progress("bench: preparing the database ...")
    db = Database(root, args)
    cleanup.append(db.close)
    db.setup()
    res["database"] = db.describe
    engine = dbengine.make_engine(db.url)
    cleanup.append(engine.dispose)
    dbengine.migrate(engine)  # the coordinator would do it at start; the metrics phase comes first

    res["floors"] = bench_floors(engine)
    progress(f"bench: ingest_metrics, {args.metric_rows:,} rows in batches of {args.metric_batch:,} ...")
    res["metrics"] = bench_metrics(engine, tag, args.metric_rows, args.metric_batch)

    progress(f"bench: starting the coordinator and {args.agents} fake agents ...")
    farm = AgentFarm(args.agents, gpus, f"bench-{tag}", digests=not args.no_digests)
    res["heartbeat_digests"] = not args.no_digests
    cleanup.append(farm.close)
    farm.start()
    coord = Coordinator(root / "coordinator", db.url, args.coordinator_arg)
    cleanup.append(coord.stop)
    coord.start()
    res["coordinator_pid"] = coord.pid
    res["coordinator_args"] = list(args.coordinator_arg)
    reg_s = farm.register_all(coord.addr)
    res["register_all_s"] = round(reg_s, 3)
    res["heartbeat_interval_s"] = farm.interval

    def fleet_ready() -> bool:
        with engine.execution_options(gpufleet_sqlite_begin="DEFERRED").connect() as conn:
            return sum(1 for nd in repo.list_nodes(conn)
                       if nd.name.startswith(f"bench-{tag}-") and nd.state.value == "READY") >= args.agents

    poll(fleet_ready, READY_TIMEOUT, "every fake agent READY in the database", interval=0.02)
    # One heartbeat from each agent before the clock starts (the scheduler only places on fresh nodes).
    poll(lambda: farm.heartbeats >= args.agents, READY_TIMEOUT + farm.interval, "a heartbeat from every agent",
         interval=0.02)

    progress(f"bench: placing {args.jobs:,} queued jobs ...")
    meter = CpuMeter(coord.pid, db.postmaster_pid())
    spy = Spy(coord.pid, args.py_spy)
    cleanup.append(spy.close)
    res["placements"] = bench_placements(engine, farm, coord, meter, spy, tag, args.jobs, args.placement_budget,
                                         args.phase_timeout, blocked=args.blocked, owners=args.owners)

    pl = res["placements"]
    if pl["partial"]:
        progress(f"bench: the budget ran out after {pl['placed']:,} placements; "
                 f"{pl['canceled_after']:,} queued jobs canceled")
    with engine.connect() as conn:
        res["running_jobs_at_submit"] = len(repo.running_jobs(conn))
    progress(f"bench: SubmitJob x{args.submits:,} (after {args.submit_warmup} warm-up calls; "
             f"{res['running_jobs_at_submit']:,} jobs running) ...")
    res["submit"] = bench_submit(farm, coord, meter, spy, tag, args.submits, args.submit_warmup, args.submit_budget,
                                 args.phase_timeout)

    res["fleet"] = {"launch_calls": farm.launch_calls, "duplicate_launches": farm.duplicate_launches,
                    "inspect_calls": farm.inspect_calls, "heartbeats": farm.heartbeats,
                    "heartbeat_errors": farm.heartbeat_errors, "fenced": farm.fenced,
                    "double_booked_gpus": farm.double_booked,
                    "heartbeat": summary(farm.heartbeat_ms) if farm.heartbeat_ms else None,
                    "coordinator_log_errors": coord.count_log('"level": "error"')}
    if farm.double_booked:
        raise BenchError(f"{farm.double_booked} GPUs were given to two live jobs")
    res["results"] = verdicts(res)
    res["pass"] = all(r["pass"] is not False for r in res["results"])
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Benchmark the gpufleet coordinator with simulated agents.")
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--database-url", default="",
                       help="PostgreSQL server to use (postgresql+psycopg://...): a fresh database is created "
                            "on it and dropped at the end (or the URL's own database when that is not allowed)")
    where.add_argument("--sqlite", action="store_true", help="run on SQLite (a file in the temp dir)")
    ap.add_argument("--no-fsync", action="store_true",
                    help="throwaway cluster with fsync/synchronous_commit off (default: durable, fsync on)")
    ap.add_argument("--agents", type=int, default=100, help="fake agents (default 100)")
    ap.add_argument("--gpus-per-agent", type=int, default=0,
                    help="fake GPUs per agent (default: enough for every job, at least 8)")
    ap.add_argument("--jobs", type=int, default=5000, help="queued jobs to place (default 5000)")
    ap.add_argument("--blocked", type=int, default=0,
                    help="unplaceable jobs queued ahead of them at higher priority (issue 16: 5000 with --jobs 5000)")
    ap.add_argument("--owners", type=int, default=0,
                    help="spread the queued jobs over this many users (fair-share streams; default 0: no owners)")
    ap.add_argument("--submits", type=int, default=1000, help="timed SubmitJob calls (default 1000)")
    ap.add_argument("--submit-warmup", type=int, default=50, help="SubmitJob warm-up calls (default 50)")
    ap.add_argument("--metric-rows", type=int, default=100_000, help="metric rows to ingest (default 100000)")
    ap.add_argument("--metric-batch", type=int, default=2000, help="rows per ingest_metrics call (default 2000)")
    ap.add_argument("--placement-budget", type=float, default=30.0,
                    help="stop timing placements after this many seconds, rate over the jobs placed by then, "
                         "the rest canceled (default 30)")
    ap.add_argument("--submit-budget", type=float, default=20.0,
                    help="stop the SubmitJob calls after this many seconds (default 20)")
    ap.add_argument("--phase-timeout", type=float, default=120.0,
                    help="deadline of every wait; past it the bench fails (default 120)")
    ap.add_argument("--coordinator-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for gpufleet-coordinator (repeat; e.g. --coordinator-arg=--log-level=warning)")
    ap.add_argument("--no-digests", action="store_true",
                    help="diagnostic: heartbeats without job digests (unlike real agents), to show their cost")
    ap.add_argument("--py-spy", type=Path, default=None, metavar="DIR",
                    help="record the coordinator with py-spy during the placement and submit phases into DIR "
                         "(raw collapsed stacks) and add the busiest functions to the report")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (coordinator log) for a look")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    args = ap.parse_args(argv)
    if min(args.agents, args.jobs, args.submits, args.metric_rows, args.metric_batch) < 1 or args.submit_warmup < 0:
        ap.error("--agents, --jobs, --submits, --metric-rows and --metric-batch must be positive")
    return _harness.run_main(args, run, print_table, lambda res: bool(res["pass"]), tmp_prefix="gfcbench-")


if __name__ == "__main__":
    sys.exit(main())
