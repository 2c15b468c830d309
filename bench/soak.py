"""Soak: the real coordinator on PostgreSQL, 100 simulated agents, thousands of short jobs, random faults.

    python3 bench/soak.py                               # defaults: 10,000 jobs, 120 s of faults; ~3 min
    python3 bench/soak.py --seconds 40 --jobs 2500      # quick: one fault of each kind at least; ~1 min
    python3 bench/soak.py --json                        # the same figures as JSON
    python3 bench/soak.py --seconds 3600 --jobs 200000  # longer: an hour of faults, 200,000 jobs
    python3 bench/soak.py --seconds 3600 --jobs 200000 --restart-every 0   # one coordinator process the
                                                        # whole hour, to watch its RSS grow (or not)

Running longer: --seconds is the fault period (the faults keep their rates: about 20 agent kills, 4
partitions and 3 coordinator restarts every 2 minutes), and the --jobs are submitted over its first
85 %: 10,000 in 102 s (98 jobs/s) at the defaults, 200,000 in 3,060 s (65 jobs/s) for the hour. On a
loaded 2-core machine the client falls behind the default pace and the last jobs arrive after the
faults are over; keep the rate at or below the default. The settle period (--settle), the final read
of the database and the mid-run invariant checks (--check-every; each reads every job and job
event, so they are spaced out as they grow slower) grow with the number of jobs. --seed repeats a
run's fault plan (the seed is printed). A coordinator restart resets its RSS: --restart-every 0
keeps one process for the whole run when memory is the point.

What runs. A throwaway PostgreSQL cluster (bench/fakefleet.py's Database: initdb as the `postgres`
user the way tests/postgres.py does; fsync off unless --fsync, since the soak kills the coordinator,
never PostgreSQL) and a real `python -P -m gpufleet.coordinator.main` (bench/fakefleet.py's Coordinator) on a
fixed loopback port, with --node-timeout/--reconcile-interval as given here and production defaults
otherwise. In this process: 100 fake agents, each a grpc.aio server implementing gpufleet.v1.Agent
(bench/fakefleet.py's FakeAgent and AgentFarm, extended here) that registers through
gpufleet.v1.Fleet and heartbeats the way agent/registrar.py does (digest of every job held; on
`reregister` it registers again the next beat; it stops the attempts the answer fences and forgets
the acknowledged ones). Fake runtime: Launch records (job, attempt) in the agent's own job table with
the real agent's rules (idempotent on (job, attempt); an older attempt, a second live attempt of a
job, an attempt already acknowledged, or a GPU held by another job is refused as agent/store.py
refuses it) and "runs" it for a random --run-min..--run-max seconds (a --long-share of the jobs up
to 10x longer, so that some outlast a partition, but not past the fault period), after which
Inspect/ListJobs and the heartbeat digest say SUCCEEDED, exit 0. A job keeps "running" while its
agent is down or cut off, like a container does. A client submits --jobs 1-GPU/2-GPU jobs (max_retries --max-retries)
through Coordinator.SubmitJob, paced over 85 % of the fault period; a submission whose call failed
in a way that may have committed (the coordinator was killed under it) is sent again with the same
request_id (SubmitJob's idempotency key) once the coordinator answers again; every job also has a
unique name, by which jobs created twice are counted (must be 0).

Faults, random (Poisson arrivals, --kill-every/--partition-every/--restart-every seconds apart on
average; at least one of each kind when it fits) during --seconds, at most --max-faulty agents at a
time, all over by the end of the period:
- agent kill: its gRPC server stops and its heartbeats stop for 2-15 s, then a new server comes up
  on the same port with the job table intact and registers again (a restarted agent);
- partition: the agent's heartbeats stop and every call to it hangs until its deadline (packets
  dropped), for --node-timeout + 3-10 s, so the node is declared LOST; then healed (calls still
  within their deadline get through late, as TCP retransmits would): the agent must obey the
  fencing in the heartbeat answers;
- coordinator restart: SIGKILL of the coordinator process, restarted 0.5-3 s later.
Then: no new faults, every job submitted, and up to --settle seconds for every job to end and every
agent to have forgotten every acknowledged attempt.

Figures (table, or --json):
- jobs completed (final attempt SUCCESS), ended otherwise (by status and reason), lost: a submitted
  job (acknowledged to the client) missing from the database, or whose last attempt is not terminal
  after the settle period. Must be 0.
- duplicated: job roots that ran more than once. A root counts when (a) two of its attempts ran to
  completion on the fake agents "as the current attempt": the coordinator took that completion as
  the job's result (SUCCESS), or it had been told (a heartbeat sent after the completion was
  answered before the coordinator ended that attempt otherwise, and the coordinator was not killed
  within RECORD_GRACE_S of that answer, before it could record the end). A completion the coordinator
  could not hear of, because the node was cut off or killed before its next heartbeat, and that it then
  ended as NODE_LOST and ran again, is the price of the fault: counted apart, as "re-runs after
  node loss". Or (b) two of its attempts ran at the same time, unless the older one's node was cut
  off when the coordinator declared it LOST and that attempt ended within --fence-bound seconds of
  the node coming back (fencing). Or (c) one attempt ran twice (two nodes, or again after it
  ended). Must be 0.
- fault to true state, max (and p50): cut off -> node LOST and its jobs STOPPED+requeued in the
  database; node back -> its superseded attempts stopped (fenced); agent back (short kill) -> the
  jobs that ended while it was down recorded; coordinator SIGKILL -> serving again, and -> the jobs
  that ended meanwhile recorded; and for every job, agent completion -> SUCCESS in the database.
  Also, without a fault of their own: QUEUED -> assigned (a stalled scheduler shows here),
  SubmitJob -> first Launch, and the agents' heartbeat round trip.
- false node losses (LOST although the coordinator had answered a heartbeat from it within the
  timeout), missed node losses (silent longer than timeout + 2 s, counted from a restarted
  coordinator's start as the coordinator counts it, and never LOST), final states that contradict
  what the agents did (SUCCESS no agent completed, a completed attempt ended STOPPED/FAILED on the
  agent's word, LAUNCH_FAILED for an attempt that ran), leftovers on the agents, tests/invariants.py's
  checks of the coordinator's database (mid-run, and settled at the end), coordinator RSS (max, at
  the end, per process) and the error lines and tracebacks in its log.
- warnings, which do not fail the run: Launch calls for attempts that had already ended (refused by
  the agent's own rules, so nothing ran twice), Launches refused because an older attempt was still
  live there (ABORTED: the job is queued again), ProbeOutputs calls for attempts the agent no longer
  held. Jobs created twice by a retried SubmitJob count as a problem.
Exit status: 0 all of the must-be-0 figures clean, 1 something is wrong (lost, duplicated, untrue,
...), 2 the soak itself failed, 130 interrupted. The coordinator, the agents and the PostgreSQL
cluster are removed at the end, also on Ctrl-C/SIGTERM (--keep keeps the temp dir with the
coordinator's log).
"""
from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# As in bench/coordinator.py: run as `python3 bench/soak.py`, this folder comes first on sys.path and
# bench/coordinator.py would shadow the `coordinator` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
from gpufleet.coordinator.db import engine as dbengine  # noqa: E402

from bench import _harness  # noqa: E402  (what every bench shares)
from bench import fakefleet as cb  # noqa: E402  (fake agents, coordinator process, database)
from bench.soak_drivers import CoordinatorProcess, Faults, Submitter, Watcher, vm_kb  # noqa: E402
from bench.soak_fleet import TERMINAL, SoakFarm, wall  # noqa: E402
from bench.soak_report import analyse, print_table, verdict, warnings  # noqa: E402
from tests.harness import free_port  # noqa: E402

# ---- main ------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, root: Path, cleanup: _harness.Cleanup) -> dict[str, Any]:
    progress = _harness.progress_printer(args.quiet)
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    rng = random.Random(seed)
    t_begin = time.monotonic()
    res: dict[str, Any] = {
        "machine": _harness.machine_info(),
        "args": {"seconds": args.seconds, "jobs": args.jobs, "agents": args.agents,
                 "gpus_per_agent": args.gpus_per_agent, "run_min": args.run_min, "run_max": args.run_max,
                 "long_share": args.long_share,
                 "node_timeout": args.node_timeout, "reconcile_interval": args.reconcile_interval,
                 "kill_every": args.kill_every, "partition_every": args.partition_every,
                 "restart_every": args.restart_every, "max_faulty": args.max_faulty, "settle": args.settle,
                 "settle_max": args.settle_max,
                 "max_retries": args.max_retries, "fence_bound": args.fence_bound, "seed": seed,
                 "coordinator_arg": list(args.coordinator_arg)},
    }
    progress(f"soak: seed {seed}; preparing PostgreSQL ...")
    db_args = argparse.Namespace(sqlite=False, database_url=args.database_url, no_fsync=not args.fsync)
    db = cb.Database(root, db_args)
    cleanup.append(db.close)
    db.setup()
    res["database"] = db.describe
    engine = dbengine.make_engine(db.url)
    cleanup.append(engine.dispose)

    tag = f"soak-{rng.randrange(16 ** 4):04x}"
    farm = SoakFarm(args.agents, args.gpus_per_agent, tag, random.Random(seed + 3), args.run_min, args.run_max,
                    args.long_share)
    cleanup.append(farm.close)
    farm.start()
    extra = [f"--node-timeout={args.node_timeout:g}", f"--reconcile-interval={args.reconcile_interval:g}",
             f"--lost-after={args.lost_after:g}", *args.coordinator_arg]
    coord = CoordinatorProcess(root / "coordinator", db.url, free_port(), extra)
    cleanup.append(coord.stop)
    progress(f"soak: starting the coordinator and {args.agents} fake agents ...")
    coord.start()
    farm.register_all(coord.addr)
    interval = farm.interval
    _harness.poll(lambda: farm.heartbeats >= args.agents, _harness.READY_TIMEOUT, "a heartbeat from every agent",
                  interval=0.05)

    faults = Faults(args, random.Random(seed + 1), farm, coord, progress)
    sub = Submitter(coord, engine, args.jobs, 0.85 * args.seconds, random.Random(seed + 2), args.max_retries)
    cleanup.append(sub.close)
    watcher = Watcher(engine, db.url, coord, farm, faults, sub, args.check_every, progress, db.postmaster_pid())
    cleanup.append(watcher.close)

    def end_faults() -> None:
        faults.stop.set()
        faults.finish()

    cleanup.append(end_faults)
    plan = Counter(k for _, k, _ in faults.plan)
    progress(f"soak: {args.jobs:,} jobs over {0.85 * args.seconds:.0f} s; faults planned over {args.seconds:g} s: "
             f"{plan['kill']} agent kills, {plan['partition']} partitions, {plan['restart']} coordinator restarts")
    t0 = time.monotonic()
    faults.t0_wall = wall()
    farm.long_until = t0 + args.seconds
    watcher.start()
    pg0, coord0 = dict(watcher.pg_cpu), sum(coord.cpu.values())
    sub.start()
    faults.run(t0)  # returns once the fault period is over, everything healed
    progress("soak: faults over; waiting for every submission and every job to end ...")

    # -- settle ------------------------------------------------------------------------------------
    # Done when every job ended and every agent forgot every attempt; given up when nothing ended
    # for --settle seconds (a stuck job), or after --settle-max (the run stops by itself).
    t_settle = last_change = time.monotonic()
    settled = False
    before: tuple[int, int] | None = None
    while time.monotonic() - t_settle < args.settle_max and time.monotonic() - last_change < args.settle:
        counts = watcher.count()
        snap = farm.snapshot()
        now_ = (sum(counts.get(x, 0) for x in TERMINAL), len(sub.acked))
        if now_ != before:
            before, last_change = now_, time.monotonic()
        if sub.done.is_set() and not counts.get("QUEUED") and not counts.get("RUNNING") and not snap["held"]:
            settled = True
            break
        time.sleep(0.5)
    settle_s = time.monotonic() - t_settle
    if not settled:
        progress(f"soak: not settled after {settle_s:.0f} s; counting what is left")
    watcher.close()
    sub.close()
    coord.sample()
    watcher.sample_pg()
    res["cpu"] = watcher.cpu(pg0, coord0)
    t_end = time.monotonic()

    progress("soak: reading the database ...")
    watcher.check(settled=True)
    res.update(analyse(engine, args, farm, faults, sub, interval))
    snap = farm.snapshot()
    kills = [w for w in faults.windows if w.kind == "kill"]
    res["faults"] = {"kill": len(kills), "partition": sum(w.kind == "partition" for w in faults.windows),
                     "restart": sum(w.kind == "restart" for w in faults.windows),
                     "kill_lost": sum(1 for w in kills if w.end is not None and w.end - w.start > args.node_timeout),
                     "skipped": dict(faults.skipped), "t0_wall": faults.t0_wall,
                     "windows": [{"kind": w.kind, "target": w.target, "at_s": round(w.start - faults.t0_wall, 2),
                                  "seconds": round((w.end or w.start) - w.start, 2), **w.detail}
                                 for w in faults.windows]}
    res["wall_s"] = round(t_end - t_begin, 1)
    res["machine"]["loadavg_at_end"] = round(os.getloadavg()[0], 2)
    res["settle_s"] = round(settle_s, 1)
    res["settled"] = settled
    res["max_queued"] = watcher.max_queued
    res["max_running"] = watcher.max_running
    res["invariants"] = {"checks": watcher.checks, "check_s_max": round(max(watcher.check_s, default=0), 2),
                         "violations": watcher.violations[:50]}
    lat = sub.latency_ms or [0.0]
    res["submit"] = {"p50_ms": round(_harness.percentile(lat, 50), 2), "p99_ms": round(_harness.percentile(lat, 99), 2),
                     "max_ms": round(max(lat), 1), "errors": dict(sub.errors)}
    res["agents"] = {"launch_calls": farm.launch_calls, "duplicate_launches": farm.duplicate_launches,
                     "refused": dict(farm.refused), "stop_calls": farm.stop_calls, "fenced": farm.fenced,
                     "acked": farm.acked, "probe_calls": farm.probe_calls, "inspect_calls": farm.inspect_calls,
                     "heartbeats": farm.heartbeats, "heartbeat_errors": farm.heartbeat_errors,
                     "reregisters": farm.reregisters, "lost_answers": farm.lost_answers,
                     "blackholed": dict(farm.blackholed), "left_live": snap["live"], "left_held": snap["held"]}
    pids = coord.pids
    last = pids[-1]
    starts = [w.end for w in faults.windows if w.kind == "restart" and w.end is not None]
    lifetimes = [b - a for a, b in zip([faults.t0_wall, *starts], [*starts, wall()], strict=False)]
    res["coordinator"] = {
        "processes": len(pids), "rss_max_kb": max(coord.rss_max.values(), default=0),
        "rss_end_kb": coord.rss_last.get(last, 0), "vmhwm_end_kb": vm_kb(last, "VmHWM"),
        "rss_max_by_process_kb": [coord.rss_max.get(p, 0) for p in pids],
        "longest_process_s": round(max(lifetimes, default=0.0), 1),
        "cpu_s": round(sum(coord.cpu.values()), 1),
        "log_errors": coord.c.count_log('"level": "error"'), "log_tracebacks": coord.c.count_log("Traceback"),
    }
    res["errors"] = faults.errors + ([f"watcher: {watcher.error}"] if watcher.error else [])
    res["warnings"] = warnings(res)
    res["problems"] = verdict(res)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Soak the gpufleet coordinator with simulated agents and faults.")
    ap.add_argument("--seconds", type=float, default=120.0, help="fault period in seconds (default 120)")
    ap.add_argument("--jobs", type=int, default=10_000, help="jobs to submit over the period (default 10000)")
    ap.add_argument("--agents", type=int, default=100, help="fake agents (default 100)")
    ap.add_argument("--gpus-per-agent", type=int, default=8, help="fake GPUs per agent (default 8)")
    ap.add_argument("--run-min", type=float, default=0.5, help="shortest fake job run in seconds (default 0.5)")
    ap.add_argument("--run-max", type=float, default=4.0, help="longest fake job run in seconds (default 4)")
    ap.add_argument("--long-share", type=float, default=0.03,
                    help="share of jobs that run 10x longer (--run-max..10x--run-max), so that some outlast "
                         "a partition and must be fenced (default 0.03)")
    ap.add_argument("--max-retries", type=int, default=10,
                    help="each job's max_retries: node losses it may be requeued after (default 10)")
    ap.add_argument("--node-timeout", type=float, default=10.0,
                    help="the coordinator's --node-timeout (default 10, its own default)")
    ap.add_argument("--lost-after", type=float, default=0.0,
                    help="the coordinator's --lost-after (default 0 here: a silent node's jobs are requeued as "
                         "soon as it is UNREACHABLE, so the faults exercise requeues and fencing)")
    ap.add_argument("--reconcile-interval", type=float, default=5.0,
                    help="the coordinator's --reconcile-interval (default 5, its own default)")
    ap.add_argument("--kill-every", type=float, default=6.0, help="mean seconds between agent kills (0: none)")
    ap.add_argument("--partition-every", type=float, default=30.0, help="mean seconds between partitions (0: none)")
    ap.add_argument("--restart-every", type=float, default=35.0,
                    help="mean seconds between coordinator SIGKILL+restarts (0: none)")
    ap.add_argument("--max-faulty", type=int, default=5, help="at most this many agents down or cut off at once")
    ap.add_argument("--fence-bound", type=float, default=12.0,
                    help="seconds a node back from a cut may keep running a superseded attempt (default 12: "
                         "a beat answered reregister, one interval, Register, the beat that fences)")
    ap.add_argument("--settle", type=float, default=30.0,
                    help="after the faults, wait for every job to end and be acknowledged while something still "
                         "ends at least every this many seconds (default 30); what is left is lost")
    ap.add_argument("--settle-max", type=float, default=180.0,
                    help="and at most this many seconds in all (default 180)")
    ap.add_argument("--check-every", type=float, default=30.0,
                    help="seconds between mid-run invariant checks of the database (0: only at the end)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (fault plan, job sizes, run times)")
    ap.add_argument("--fsync", action="store_true", help="throwaway cluster with fsync on (default off)")
    ap.add_argument("--database-url", default="",
                    help="an existing PostgreSQL server (postgresql+psycopg://...): a fresh database on it")
    ap.add_argument("--coordinator-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for gpufleet-coordinator (repeat)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (coordinator log) for a look")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    args = ap.parse_args(argv)
    if min(args.seconds, args.jobs, args.agents, args.gpus_per_agent) <= 0 or args.run_min > args.run_max:
        ap.error("--seconds, --jobs, --agents and --gpus-per-agent must be positive, --run-min <= --run-max")
    if args.max_faulty >= args.agents:
        ap.error("--max-faulty must leave some agents up")
    return _harness.run_main(args, run, print_table, lambda res: not res["problems"], tmp_prefix="gfsoak-",
                             name="soak", errors=(_harness.BenchError, grpc.RpcError, subprocess.SubprocessError),
                             describe=lambda exc: f"{type(exc).__name__}: {exc}")


if __name__ == "__main__":
    sys.exit(main())
