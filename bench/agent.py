"""Benchmark of the gpufleet agent, on real agent processes over loopback gRPC.

One run starts two agents as separate processes (`python -P -m gpufleet.agent.main`, the agent's own defaults
for poll and GPU sample intervals): one on the process runtime, one on the docker runtime against
an engine that already answers or a private `dockerd` started here (tests/dockerd.py's helpers,
tiny busybox image made with the engine's import API). It measures:

- Inspect p50/p99 over N calls (default 1,000) on one channel with a sync stub, while the process
  agent holds M jobs (default 20) that sleep;
- Launch->RUNNING p50/p99 per runtime: the Launch round trip of a short-lived job (Launch returns
  the job RUNNING once its process/container started; the returned state is checked). Between
  launches the bench waits, by polling, until the previous job's process/container has exited,
  so each launch meets an otherwise idle host; two warm-up launches are not counted;
- each agent's RSS (VmRSS) after the runs, and its idle CPU (% of one core, utime+stime from
  /proc/<pid>/stat) over a window with no job running and every record acknowledged.

Targets (issue 3): Inspect p99 <= 5 ms, RSS <= 80 MiB, idle CPU <= 1 % of a core.
Exit status: 0 all targets met, 1 a target missed, 2 the bench itself failed.
Everything it started (agents, job processes, containers, its own dockerd) is removed at the end,
also on Ctrl-C or SIGTERM.

    python3 bench/agent.py [--json] [--idle-seconds 30] [--no-docker]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# Run as `python3 bench/agent.py`, this file's folder comes first on sys.path, and its name would
# shadow the `agent` package: look in the repository root instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from bench import _harness  # noqa: E402
from bench._harness import PY, READY_TIMEOUT, RPC_TIMEOUT, BenchError, cpu_seconds, poll, proc_stat_fields, summary  # noqa: E402
from gpufleet.v1 import agent_pb2 as apb  # noqa: E402
from gpufleet.v1 import agent_pb2_grpc  # noqa: E402
from gpufleet.v1 import common_pb2 as pb  # noqa: E402
from tests.harness import free_port, healthy  # noqa: E402

RUNNING = pb.AGENT_JOB_STATE_RUNNING
LIVE_STATES = [pb.AGENT_JOB_STATE_PENDING, pb.AGENT_JOB_STATE_RUNNING]
SLEEP_JOB = [PY, "-I", "-c", "import time; time.sleep(3600)"]
SHORT_JOB = [PY, "-I", "-c", "pass"]
DOCKER_SHORT_JOB = ["true"]
WARMUP_LAUNCHES = 2
WARMUP_INSPECTS = 20

TARGET_INSPECT_P99_MS = 5.0
TARGET_RSS_MIB = 80.0
TARGET_IDLE_CPU_PCT = 1.0


def process_ended(pid: int) -> bool:
    f = proc_stat_fields(pid)
    return f is None or f[0] in (b"Z", b"X")


def rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of `pid` in MiB."""
    vals: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                vals[key] = int(rest.split()[0]) / 1024  # kB
    return vals["VmRSS"], vals["VmHWM"]


# ---- agents ----------------------------------------------------------------------------------------


class Agent(_harness.ServiceProcess):
    """One `gpufleet-agent` process on a free loopback port with its own state/output/data dirs.
    stop() is SIGTERM (the agent leaves jobs running), SIGKILL of its group if it lingers."""

    log_name = "agent.log"
    stop_timeout = 10.0

    def __init__(self, root: Path, name: str, runtime: str, gpus: str, docker_host: str = "") -> None:
        self.name, self.runtime = name, runtime
        self.state_dir = root / "state"
        self.addr = f"127.0.0.1:{free_port()}"
        argv = [PY, "-P", "-m", "gpufleet.agent.main", "--listen", self.addr, "--state-dir", str(self.state_dir),
                "--runtime", runtime, "--gpus", gpus, "--output-root", str(root / "out"),
                "--data-root", str(root / "data"), "--node-name", name,
                # /metrics on a free port: two bench agents (or a running one) must not collide.
                "--metrics-listen", "127.0.0.1:0"]
        if docker_host:
            argv += ["--docker-host", docker_host]
        super().__init__(root, argv)
        self.stub: agent_pb2_grpc.AgentStub

    def start(self) -> None:
        self.spawn()
        self.channel = grpc.insecure_channel(self.addr)
        self.stub = agent_pb2_grpc.AgentStub(self.channel)

    def wait_ready(self) -> None:
        assert self.proc is not None and self.channel is not None
        end = time.monotonic() + READY_TIMEOUT
        while not healthy(self.channel):
            if self.proc.poll() is not None or time.monotonic() > end:
                why = f"exited with {self.proc.returncode}" if self.proc.poll() is not None else "timed out"
                raise BenchError(f"{self.name} agent did not become SERVING ({why}); log:\n{self.log_tail()}")
            time.sleep(0.02)

    def launch(self, job_id: str, argv: list[str], image: str = "") -> pb.JobStatus:
        spec = pb.JobSpec(image=image, command=argv, output_dir=job_id)
        return self.stub.Launch(apb.LaunchRequest(job_id=job_id, attempt=1, spec=spec), timeout=RPC_TIMEOUT)

    def live_jobs(self) -> list[pb.JobStatus]:
        return list(self.stub.ListJobs(apb.ListJobsRequest(states=LIVE_STATES), timeout=RPC_TIMEOUT).jobs)

    def acknowledge_all(self) -> int:
        jobs = self.stub.ListJobs(apb.ListJobsRequest(), timeout=RPC_TIMEOUT).jobs
        for j in jobs:
            req = apb.AcknowledgeRequest(job_id=j.job_id, attempt=j.attempt)
            self.stub.Acknowledge(req, timeout=RPC_TIMEOUT)
        return len(jobs)

    def kill_process_jobs(self) -> int:
        """SIGKILL every process-runtime job of this agent that is still alive (wrapper + job group)."""
        killed = 0
        for handle in self.state_dir.glob("jobs/*/*/handle.json"):
            try:
                data = json.loads(handle.read_text())
                pid, marker = int(data["pid"]), str(data.get("start_marker", ""))
            except (OSError, ValueError, KeyError):
                continue
            f = proc_stat_fields(pid)
            # The wrapper's start time guards against a reused pid; a dead wrapper means an ended job.
            if f is None or f[0] in (b"Z", b"X") or (marker and f[19].decode() != marker):
                continue
            try:
                child = int((handle.parent / "child.pid").read_text())
            except (OSError, ValueError):
                child = 0
            for pgid in (child, pid):
                if pgid:
                    try:
                        os.killpg(pgid, signal.SIGKILL)
                        killed += 1
                    except OSError:
                        pass
        return killed


# ---- docker engine ---------------------------------------------------------------------------------


class Engine:
    """A Docker engine for the docker runtime: one that answers already, or a private dockerd."""

    def __init__(self) -> None:
        self.client: Any = None
        self.base_url = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.root: Path | None = None
        self.image = ""
        self.imported = False
        self.describe = ""
        self._stop: Callable[[subprocess.Popen[bytes]], None] | None = None

    def setup(self) -> str | None:
        """Make the engine and the tiny image ready; the reason when docker has to be skipped."""
        try:
            # tests/dockerd.py is a pytest plugin, but its helpers are plain functions.
            from tests import dockerd as td
        except ImportError as exc:
            return f"cannot import tests/dockerd.py: {exc}"
        self._stop = td._stop
        found = td._existing_engine()
        if found is not None:
            self.base_url, self.client = found
            origin = "existing engine"
        else:
            binary = shutil.which("dockerd") or next(
                (p for p in ("/usr/sbin/dockerd", "/usr/bin/dockerd") if Path(p).exists()), None)
            if binary is None:
                return "dockerd is not installed (apt-get install docker.io)"
            if os.geteuid() != 0:
                return "dockerd needs root"
            # Short path: the socket path must stay under the 108-byte sun_path limit.
            self.root = Path(tempfile.mkdtemp(prefix="gfb-", dir="/tmp"))
            failures = []
            for driver in ("", "vfs"):
                proc, client, log_path = td._start_dockerd(binary, self.root, driver)
                if client is not None:
                    self.proc, self.client = proc, client
                    break
                td._stop(proc)
                failures.append(f"driver {driver or 'default'}: exit {proc.returncode}: "
                                f"{td._tail(log_path, 3)}")
            if self.client is None:
                return "dockerd did not answer: " + " | ".join(failures)
            self.base_url = f"unix://{self.root / 'docker.sock'}"
            origin = "own dockerd"
        info = self.client.info()
        self.describe = f"{origin} {info.get('ServerVersion', '?')}, {info.get('Driver', '?')}"
        import docker.errors

        self.image = td.TINY_IMAGE
        try:
            self.client.images.get(self.image)
        except docker.errors.ImageNotFound:
            if not td.BUSYBOX.exists():
                return f"{td.BUSYBOX} is missing (apt-get install busybox-static)"
            self.client.api.import_image_from_data(td._tiny_rootfs_tar(), repository=td.TINY_REPOSITORY,
                                                   tag="latest")
            self.client.images.get(self.image)
            self.imported = True
        return None

    def container_ended(self, cid: str) -> bool:
        import docker.errors

        try:
            state = self.client.api.inspect_container(cid)["State"]
        except docker.errors.NotFound:
            return True
        return not state.get("Running") and state.get("Status") != "created"

    def remove_containers(self, agent_name: str) -> int:
        if self.client is None:
            return 0
        n = 0
        for c in self.client.containers.list(all=True, filters={"label": f"gpufleet.agent={agent_name}"}):
            try:
                c.remove(force=True)
                n += 1
            except Exception:  # noqa: BLE001 - cleanup goes on with the rest
                pass
        return n

    def close(self) -> None:
        if self.client is not None:
            if self.imported and self.proc is None:  # an engine we do not own: take our image back
                try:
                    self.client.images.remove(self.image)
                except Exception:  # noqa: BLE001
                    pass
            self.client.close()
        if self.proc is not None and self._stop is not None:
            self._stop(self.proc)
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)


# ---- measurements ----------------------------------------------------------------------------------


def bench_inspect(a: Agent, jobs: int, calls: int) -> dict[str, Any]:
    ids = [f"hold-{i:02d}" for i in range(jobs)]
    for job_id in ids:
        st = a.launch(job_id, SLEEP_JOB)
        if st.state != RUNNING:
            state = pb.AgentJobState.Name(st.state)
            raise BenchError(f"sleeping job {job_id} came back {state}: {st.message}")
    node = a.stub.GetNode(apb.GetNodeRequest(), timeout=RPC_TIMEOUT)
    reqs = [apb.InspectRequest(job_id=job_id) for job_id in ids]
    inspect = a.stub.Inspect
    for i in range(WARMUP_INSPECTS):
        inspect(reqs[i % jobs], timeout=RPC_TIMEOUT)
    # Each Inspect is followed by a Health.Check on the same channel: the cheapest RPC the agent
    # serves, timed under the same conditions, so a slow tail can be told apart from a busy host.
    check, check_req = health_pb2_grpc.HealthStub(a.channel).Check, health_pb2.HealthCheckRequest()
    samples, floor, not_running = [], [], 0
    clock = time.perf_counter_ns
    for i in range(calls):
        t0 = clock()
        st = inspect(reqs[i % jobs], timeout=RPC_TIMEOUT)
        t1 = clock()
        check(check_req, timeout=RPC_TIMEOUT)
        floor.append((clock() - t1) / 1e6)
        samples.append((t1 - t0) / 1e6)
        not_running += st.state != RUNNING
    # Stop them all at once (grace 0 = SIGKILL); each Stop waits for the end to be recorded.
    futs = [a.stub.Stop.future(apb.StopRequest(job_id=j, grace_seconds=0), timeout=RPC_TIMEOUT) for j in ids]
    for f in futs:
        f.result()
    poll(lambda: not a.live_jobs(), 30, "the sleeping jobs to end", interval=0.05)
    return {**summary(samples), "calls": calls, "jobs_held": node.jobs_held,
            "jobs_running": node.jobs_running, "not_running_replies": not_running,
            "gpu_source": node.gpu_source, "health_check": summary(floor)}


def bench_launch(a: Agent, n: int, argv: list[str], ended: Callable[[str], bool], image: str = "",
                 prefix: str = "l") -> dict[str, Any]:
    samples: list[float] = []
    warmup: list[float] = []
    bad: list[str] = []
    clock = time.perf_counter_ns
    for i in range(WARMUP_LAUNCHES + n):
        job_id = f"{prefix}-{i:03d}"
        t0 = clock()
        st = a.launch(job_id, argv, image)
        ms = (clock() - t0) / 1e6
        if st.state != RUNNING:
            bad.append(f"{job_id}: {pb.AgentJobState.Name(st.state)} {st.message}")
        (warmup if i < WARMUP_LAUNCHES else samples).append(ms)
        # Let the job finish before the next launch, so each one meets an idle host.
        rid = st.runtime_id
        poll(lambda: not rid or ended(rid), 20, f"job {job_id} to exit", interval=0.002)  # noqa: B023 - called here
    poll(lambda: not a.live_jobs(), 30, "the launched jobs to be recorded as ended", interval=0.05)
    if bad:
        raise BenchError("Launch did not return RUNNING: " + "; ".join(bad[:3]))
    return {**summary(samples), "warmup_ms": [round(x, 3) for x in warmup], "all_running": not bad}


def measure_idle(agents: list[Agent], seconds: float) -> dict[str, float]:
    """CPU % of one core each agent used over the same `seconds` window (no RPCs meanwhile)."""
    before = {a.name: cpu_seconds(a.pid, required=True) for a in agents}
    t0 = time.monotonic()
    end = t0 + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(left, 1.0))  # the measurement window itself, not a synchronisation wait
    wall = time.monotonic() - t0
    return {a.name: round(100 * (cpu_seconds(a.pid, required=True) - before[a.name]) / wall, 3) for a in agents}


# ---- report ----------------------------------------------------------------------------------------


def verdicts(res: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def row(name: str, value: float | None, unit: str, target: float | None = None) -> None:
        ok = None if target is None or value is None else value <= target
        rows.append({"metric": name, "value": value, "unit": unit, "target": target, "pass": ok})

    ins = res["inspect"]
    row(f"Inspect p50 ({ins['calls']} calls, {ins['jobs_held']} jobs)", ins["p50_ms"], "ms")
    row("Inspect p99", ins["p99_ms"], "ms", TARGET_INSPECT_P99_MS)
    hc = ins["health_check"]
    row("  same channel, Health.Check p50", hc["p50_ms"], "ms")
    row("  same channel, Health.Check p99", hc["p99_ms"], "ms")
    for rt, lr in res["launch"].items():
        if "skipped" in lr:
            continue
        row(f"Launch->RUNNING {rt} p50 (n={lr['n']})", lr["p50_ms"], "ms")
        row(f"Launch->RUNNING {rt} p99", lr["p99_ms"], "ms")
    for rt, ag in res["agents"].items():
        row(f"RSS {rt} agent", ag["rss_mib"], "MiB", TARGET_RSS_MIB)
    for rt, ag in res["agents"].items():
        row(f"idle CPU {rt} agent ({res['idle_seconds']:g} s)", ag["idle_cpu_pct"], "%", TARGET_IDLE_CPU_PCT)
    return rows


def print_table(res: dict[str, Any]) -> None:
    m = res["machine"]
    print(f"gpufleet agent bench: {m['cpus']} CPUs, Python {m['python']}, "
          f"gpus={res['gpus']} ({res['inspect']['gpu_source']}), load {m['loadavg_at_start']:g} at start, "
          "agent poll/sample intervals at their defaults")
    width = max(len(r["metric"]) for r in res["results"])
    print(f"{'metric':<{width}}  {'value':>11}  {'target':>10}  result")
    for r in res["results"]:
        val = f"{r['value']:.2f} {r['unit']}"
        tgt = f"<= {r['target']:g} {r['unit']}" if r["target"] is not None else ""
        verdict = "" if r["pass"] is None else ("PASS" if r["pass"] else "MISS")
        print(f"{r['metric']:<{width}}  {val:>11}  {tgt:>10}  {verdict}".rstrip())
    dk = res["launch"].get("docker", {})
    if "skipped" in dk:
        print(f"docker: skipped ({dk['skipped']})")
    elif res.get("engine"):
        print(f"docker engine: {res['engine']}")
    print("all targets met" if res["pass"] else "TARGET MISSED")


# ---- main ------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, root: Path, cleanup: _harness.Cleanup) -> dict[str, Any]:
    res: dict[str, Any] = {
        "machine": _harness.machine_info(),
        "gpus": args.gpus, "idle_seconds": args.idle_seconds, "launch": {}, "agents": {},
    }
    progress = _harness.progress_printer(args.quiet)

    engine: Engine | None = None
    skip = "--no-docker" if args.no_docker else None
    if skip is None:
        progress("bench: preparing a docker engine and the tiny image ...")
        engine = Engine()
        cleanup.append(engine.close)
        try:
            skip = engine.setup()
        except Exception as exc:  # noqa: BLE001 - any engine trouble means "skip docker", said why
            skip = f"{type(exc).__name__}: {exc}"
        res["engine"] = engine.describe

    agents: list[Agent] = []
    proc_agent = Agent(root / "process", f"bench-{os.getpid()}-process", "process", args.gpus)
    agents.append(proc_agent)
    if skip is None:
        assert engine is not None
        dock_agent = Agent(root / "docker", f"bench-{os.getpid()}-docker", "docker", args.gpus,
                           engine.base_url)
        agents.append(dock_agent)
        cleanup.append(lambda: engine.remove_containers(dock_agent.name))  # after the agent stopped
    for a in agents:
        cleanup.append(a.kill_process_jobs)
        cleanup.append(a.stop)
        a.start()
    for a in agents:
        a.wait_ready()

    progress(f"bench: Inspect x{args.inspect_calls} with {args.jobs} sleeping jobs ...")
    res["inspect"] = bench_inspect(proc_agent, args.jobs, args.inspect_calls)
    progress(f"bench: {args.launches} process launches ...")
    res["launch"]["process"] = bench_launch(proc_agent, args.launches, SHORT_JOB, process_ended_str,
                                            prefix="p")
    if skip is None:
        assert engine is not None
        progress(f"bench: {args.launches} docker launches ...")
        res["launch"]["docker"] = bench_launch(dock_agent, args.launches, DOCKER_SHORT_JOB,
                                               engine.container_ended, image=engine.image, prefix="d")
    else:
        res["launch"]["docker"] = {"skipped": skip}

    # The coordinator would now acknowledge every ended job: records, files and containers go.
    for a in agents:
        a.acknowledge_all()
        if a.live_jobs():
            raise BenchError(f"{a.name}: jobs still live before the idle window")
        res["agents"][a.runtime] = {"pid": a.pid}
        rss, hwm = rss_mib(a.pid)
        res["agents"][a.runtime].update(rss_mib=round(rss, 2), peak_rss_mib=round(hwm, 2))
    progress(f"bench: idle CPU over {args.idle_seconds:g} s ...")
    for rt_name, pct in measure_idle(agents, args.idle_seconds).items():
        res["agents"][next(a.runtime for a in agents if a.name == rt_name)]["idle_cpu_pct"] = pct
    res["results"] = verdicts(res)
    res["pass"] = all(r["pass"] is not False for r in res["results"])
    return res


def process_ended_str(runtime_id: str) -> bool:
    return process_ended(int(runtime_id))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Benchmark the gpufleet agent on real agent processes.")
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    ap.add_argument("--idle-seconds", type=float, default=30.0, help="idle CPU window (default 30)")
    ap.add_argument("--inspect-calls", type=int, default=1000, help="Inspect calls timed (default 1000)")
    ap.add_argument("--jobs", type=int, default=20, help="sleeping jobs held during Inspect (default 20)")
    ap.add_argument("--launches", type=int, default=50, help="timed launches per runtime (default 50)")
    ap.add_argument("--gpus", default="auto", help="the agents' --gpus (default auto, the agent's default)")
    ap.add_argument("--no-docker", action="store_true", help="skip the docker runtime")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (agent logs, state) for a look")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    args = ap.parse_args(argv)
    if args.idle_seconds <= 0 or args.inspect_calls < 1 or args.jobs < 1 or args.launches < 1:
        ap.error("--idle-seconds, --inspect-calls, --jobs and --launches must be positive")
    return _harness.run_main(args, run, print_table, lambda res: bool(res["pass"]), tmp_prefix="gfbench-")


if __name__ == "__main__":
    sys.exit(main())
