"""Scheduler.decide alone, in process: placements/s of the decide-and-commit part of a pass (no
Launch), behind a blocked queue, on a throwaway PostgreSQL cluster (or --sqlite).

    python3 bench/decide.py --blocked 5000 --jobs 5000            # placements/s
    python3 bench/decide.py --blocked 5000 --jobs 5000 --profile 25   # and cProfile's top functions

Nodes: 100 READY nodes with enough GPUs for every job; the blocked jobs (higher priority) are as
bench/coordinator.py's --blocked makes them: half need 64 GPUs, half a label no node carries.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpufleet.coordinator.db import repo  # noqa: E402
from gpufleet.coordinator.db.engine import make_engine, migrate  # noqa: E402
from gpufleet.coordinator.scheduler import Scheduler  # noqa: E402

from gpufleet.jobspec import JobSpec  # noqa: E402
from tests.postgres import start_server  # noqa: E402


class NoAgents:
    """Placement only: decide never launches."""


def run(url: str, nodes: int, jobs: int, blocked: int, profile: int) -> dict[str, Any]:
    engine = make_engine(url)
    migrate(engine)
    now = datetime.now(UTC)
    per_node = max(8, -(-jobs // nodes))
    spec = JobSpec(command=["true"], output_dir="bench").to_dict()
    names = {f"n{i:03d}" for i in range(nodes)}
    with engine.begin() as conn:
        for name in sorted(names):
            repo.upsert_node(conn, name, address=f"{name}:1", labels={"zone": "a"}, agent_version="bench",
                             runtime="process", gpus=[{"index": i, "uuid": f"GPU-{name}-{i}"}
                                                      for i in range(per_node)], now=now)
        for i in range(jobs):
            repo.create_job(conn, spec=spec, gpus=1, job_id=f"p{i:05d}", actor="bench",
                            now=now + timedelta(microseconds=i))
        for i in range(blocked):
            kw: dict[str, Any] = {"gpus": 64} if i % 2 else {"gpus": 1, "constraints": {"bench-never": "1"}}
            repo.create_job(conn, spec=spec, priority=100, job_id=f"b{i:05d}", actor="bench", now=now, **kw)
    s = Scheduler(engine, NoAgents(), lambda: names)  # type: ignore[arg-type]
    prof = cProfile.Profile() if profile else None
    placed = passes = 0
    t0 = time.perf_counter()
    try:
        if prof:
            prof.enable()
        while placed < jobs:
            got = s.decide()
            passes += 1
            if not got:
                break
            placed += len(got)
        took = time.perf_counter() - t0
        if prof:
            prof.disable()
    finally:
        s.close()
        engine.dispose()
    if prof:
        pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(profile)
    return {"placed": placed, "passes": passes, "seconds": round(took, 3),
            "placements_per_s": round(placed / took, 1), "ms_per_pass": round(1e3 * took / max(1, passes), 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sqlite", action="store_true", help="SQLite (a temp file) instead of PostgreSQL")
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--blocked", type=int, default=5000)
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="print cProfile's top N functions")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gpufleet-decide-") as tmp:
        if args.sqlite:
            print(run(f"sqlite:///{tmp}/bench.db", args.nodes, args.jobs, args.blocked, args.profile))
            return 0
        server = start_server(fsync=True)
        try:
            print(run(server.url(), args.nodes, args.jobs, args.blocked, args.profile))
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
