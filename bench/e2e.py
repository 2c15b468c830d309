#!/usr/bin/env python3
"""End to end: a real coordinator and a real agent, started as a user would, N trivial 1-GPU jobs.

    python3 bench/e2e.py                 # SQLite coordinator, 200 jobs (+ 50 one at a time)
    python3 bench/e2e.py --postgres      # a throwaway PostgreSQL cluster (as tests/postgres.py makes one)
    python3 bench/e2e.py --jobs 500 --json

Both daemons run as separate processes with their production defaults (`python -P -m
gpufleet.coordinator.main`, `python -P -m gpufleet.agent.main --runtime process --gpus fake:4`; only
addresses, state dirs and the metrics port are given). Each job is `/bin/sh -c 'date +%s%N > t0'` in
its own output folder: the time its process started, on this machine's clock.

| figure | how |
|---|---|
| jobs/s | `--jobs` SubmitJob calls back to back, until none is QUEUED or RUNNING (ListJobs) |
| submit -> started p50/p99 | the job's own t0 minus when its SubmitJob was sent: back to back (includes the wait for a
  GPU) and one at a time (the target) |
| submit -> end visible p50/p99 | `--serial` jobs one at a time: SubmitJob, then GetJob every 2 ms until ended |

Targets (issue 12): >= 100 jobs/s, started p50 <= 10 ms, end visible p50 <= 50 ms, every job SUCCESS.
Exit status: 0 all met, 1 a target missed, 2 the bench failed, 130 interrupted.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _harness  # noqa: E402
from bench._harness import PY, BenchError, ServiceProcess, poll, summary  # noqa: E402

TERMINAL = {"SUCCESS", "FAILED", "STOPPED", "CANCELED"}
JOB = ["/bin/sh", "-c", "date +%s%N > t0"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(args: argparse.Namespace, root: Path, cleanup: _harness.Cleanup) -> dict[str, Any]:
    import grpc

    from gpufleet.v1 import agent_pb2 as apb  # noqa: F401 - loads the common descriptors first
    from gpufleet.v1 import common_pb2 as pb
    from gpufleet.v1 import coordinator_pb2 as cpb
    from gpufleet.v1 import coordinator_pb2_grpc

    say = _harness.progress_printer(args.quiet)
    url = ""
    describe = "SQLite (embedded default)"
    if args.postgres:
        from tests import postgres as tp

        server = tp.start_server(fsync=True)
        cleanup.append(server.stop)
        import psycopg

        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute('CREATE DATABASE "gpufleet_e2e"')
        url = server.url("gpufleet_e2e")
        describe = f"PostgreSQL, throwaway cluster on 127.0.0.1:{server.port}"

    cport, aport = _free_port(), _free_port()
    caddr, aaddr = f"127.0.0.1:{cport}", f"127.0.0.1:{aport}"
    out = root / "output"
    argv = [PY, "-P", "-m", "gpufleet.coordinator.main", "--listen", caddr, "--state-dir", str(root / "coordinator"),
            "--metrics-listen", ""]
    if url:
        argv += ["--database-url", url]
    coord = ServiceProcess(root / "coordinator", argv)
    coord.log_name = "coordinator.log"
    coord.spawn()
    cleanup.append(coord.stop)
    agent = ServiceProcess(root / "agent", [
        PY, "-P", "-m", "gpufleet.agent.main", "--listen", aaddr, "--state-dir", str(root / "agent" / "state"),
        "--runtime", "process", "--gpus", "fake:4", "--output-root", str(out), "--data-root", str(root / "data"),
        "--coordinator", caddr, "--node-name", "e2e", "--metrics-listen", ""])
    agent.log_name = "agent.log"
    (root / "data").mkdir(parents=True, exist_ok=True)
    agent.spawn()
    cleanup.append(agent.stop)

    ch = grpc.insecure_channel(caddr)
    cleanup.append(ch.close)
    stub = coordinator_pb2_grpc.CoordinatorStub(ch)

    def ready() -> bool:
        try:
            nodes = stub.ListNodes(cpb.ListNodesRequest(), timeout=2).nodes
        except grpc.RpcError:
            return False
        return any(n.name == "e2e" and n.state_name == "READY" for n in nodes)
    poll(ready, 60, "the agent registered and READY", interval=0.1)
    say(f"e2e: coordinator ({describe}) and agent up")

    def submit(name: str) -> tuple[str, float]:
        t = time.time()
        j = stub.SubmitJob(cpb.SubmitJobRequest(spec=pb.JobSpec(command=JOB, output_dir=name), gpus=1, name=name),
                           timeout=30)
        return j.job_id, t

    # Warm-up: the first job pays for imports and connections.
    jid, _ = submit("warm")
    poll(lambda: stub.GetJob(cpb.JobRef(job_id=jid), timeout=10).status_name in TERMINAL, 60, "warm-up job")

    # One at a time: submit -> end visible, polled every 2 ms.
    visible: list[float] = []
    serial_started: list[float] = []
    serial_status: dict[str, int] = {}
    for i in range(args.serial):
        jid, sent = submit(f"s{i}")
        t0 = time.monotonic()
        while True:
            st = stub.GetJob(cpb.JobRef(job_id=jid), timeout=10).status_name
            if st in TERMINAL:
                visible.append((time.monotonic() - t0) * 1000)
                serial_status[st] = serial_status.get(st, 0) + 1
                try:
                    serial_started.append((int((out / f"s{i}" / "t0").read_text().strip()) / 1e9 - sent) * 1000)
                except (OSError, ValueError):
                    pass
                break
            if time.monotonic() - t0 > 60:
                raise BenchError(f"serial job {jid} not ended after 60 s")
            time.sleep(0.002)
    say(f"e2e: {args.serial} serial jobs done")

    # Throughput: back to back.
    submitted: list[tuple[str, float, str]] = []
    start = time.monotonic()
    for i in range(args.jobs):
        name = f"j{i}"
        jid, t = submit(name)
        submitted.append((jid, t, name))
    ids = {jid for jid, _, _ in submitted}

    def all_ended() -> bool:
        pending = 0
        for status in (cpb.JOB_STATUS_CODE_QUEUED, cpb.JOB_STATUS_CODE_RUNNING):
            page = stub.ListJobs(cpb.ListJobsQuery(status=status, size=1), timeout=30)
            pending += page.total_elements
        return pending == 0
    poll(all_ended, args.timeout, f"{args.jobs} jobs ended", interval=0.005)
    elapsed = time.monotonic() - start
    statuses: dict[str, int] = {}
    for jid in ids:
        st = stub.GetJob(cpb.JobRef(job_id=jid), timeout=30).status_name
        statuses[st] = statuses.get(st, 0) + 1
    started: list[float] = []
    for _jid, t, name in submitted:
        try:
            t0 = int((out / name / "t0").read_text().strip()) / 1e9
        except (OSError, ValueError):
            continue
        started.append((t0 - t) * 1000)
    res: dict[str, Any] = {
        "machine": _harness.machine_info(), "database": describe, "jobs": args.jobs,
        "jobs_per_s": round(args.jobs / elapsed, 1), "elapsed_s": round(elapsed, 2), "statuses": statuses,
        "serial_statuses": serial_status,
        "submit_to_started": summary(started) if started else None,
        "submit_to_started_idle": summary(serial_started) if serial_started else None,
        "submit_to_end_visible": summary(visible) if visible else None,
    }
    ok = statuses.get("SUCCESS", 0) == args.jobs and serial_status.get("SUCCESS", 0) == args.serial
    res["targets"] = {
        "jobs_per_s >= 100": res["jobs_per_s"] >= 100,
        "started p50 <= 10 ms (idle fleet)": bool(serial_started) and res["submit_to_started_idle"]["p50_ms"] <= 10,
        "end visible p50 <= 50 ms": bool(visible) and res["submit_to_end_visible"]["p50_ms"] <= 50,
        "every job SUCCESS": ok,
    }
    res["pass"] = all(res["targets"].values())
    return res


def print_table(res: dict[str, Any]) -> None:
    m = res["machine"]
    print(f"gpufleet e2e: {res['database']}, 1 agent (process runtime, fake:4); {m['cpus']} CPUs, "
          f"load {m['loadavg_at_start']} at start")
    print(f"  {res['jobs']} jobs back to back: {res['jobs_per_s']} jobs/s ({res['elapsed_s']} s); statuses "
          f"{res['statuses']}")
    for key, label in (("submit_to_started", "submit -> started (back to back: includes the wait for a GPU)"),
                       ("submit_to_started_idle", "submit -> started (one at a time)"),
                       ("submit_to_end_visible", "submit -> end visible (one at a time)")):
        s = res[key]
        if s:
            print(f"  {label}: p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms (n={s['n']}, max {s['max_ms']:.1f})")
    for target, ok in res["targets"].items():
        print(f"  {'PASS' if ok else 'MISS'} {target}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--serial", type=int, default=50, help="jobs run one at a time for the end-visible latency")
    ap.add_argument("--postgres", action="store_true")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return _harness.run_main(args, run, print_table, lambda res: bool(res["pass"]), tmp_prefix="gfe2e-", name="e2e")


if __name__ == "__main__":
    sys.exit(main())
