"""Real daemons as separate processes for tests: start, SIGKILL, restart, talk over loopback gRPC."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gpufleet.v1 import agent_pb2 as apb
from gpufleet.v1 import agent_pb2_grpc
from gpufleet.v1 import common_pb2 as pb
from tests.pki import Pki

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(fn: Callable[[], T | None], timeout: float = 20.0, what: str = "condition",
             interval: float = 0.05) -> T:
    """Poll `fn` until it returns something truthy, or fail with `what` after `timeout`."""
    end = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < end:
        try:
            last = fn()
        except (grpc.RpcError, OSError, ValueError) as exc:  # not there yet
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def healthy(channel: grpc.Channel) -> bool:
    try:
        r = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
    except grpc.RpcError:
        return False
    return r.status == health_pb2.HealthCheckResponse.SERVING


@dataclass
class Daemon:
    """A daemon process we own; `kill()` is SIGKILL of its process group, as a crash would be."""

    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, **self.env}
        self.proc = subprocess.Popen(self.argv, stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True, env=env)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def terminate(self, timeout: float = 10) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode if self.proc else None

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


JOB_USER = "gpufleet-job"


def ensure_job_user() -> None:
    """The unprivileged account process-runtime jobs run as (as scripts/setup-dev.sh makes it)."""
    import pwd

    if os.geteuid() != 0:
        return  # an agent that is not root runs jobs as itself
    try:
        pwd.getpwnam(JOB_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", JOB_USER], check=False, capture_output=True)
        pwd.getpwnam(JOB_USER)  # made now, or by a concurrent test run


def open_path_to(path: Path) -> None:
    """Let other users traverse (not list) the folders down to `path`: pytest makes its temporary
    folders 0700, and a job running as the job user must reach its output folder by path."""
    p = path.resolve()
    for d in [p, *p.parents]:
        if d == Path("/"):
            break
        try:
            mode = d.stat().st_mode
            if not mode & 0o001:
                os.chmod(d, (mode & 0o7777) | 0o001)
        except OSError:
            pass


class AgentProc:
    """A real `gpufleet-agent` on a loopback port with its own state, output and data dirs."""

    def __init__(self, root: Path, runtime: str = "process", gpus: str = "fake:4", docker_host: str = "",
                 node_name: str = "", extra: list[str] | None = None, env: dict[str, str] | None = None,
                 port: int | None = None, pki: Pki | None = None) -> None:
        """`pki`: serve mTLS with the certificate named after `node_name` (tests dial it as the coordinator)."""
        self.root = root
        self.pki = pki
        self.state_dir, self.output_root, self.data_root = root / "state", root / "out", root / "data"
        for p in (self.state_dir, self.output_root, self.data_root):
            p.mkdir(parents=True, exist_ok=True)
        if runtime == "process":
            ensure_job_user()
            open_path_to(self.output_root)
            open_path_to(self.data_root)
        self.port = port or free_port()
        self.node_name = node_name or f"node-{self.port}"
        self.addr = f"127.0.0.1:{self.port}"
        argv = [sys.executable, "-P", "-m", "gpufleet.agent.main", "--listen", self.addr,
                "--state-dir", str(self.state_dir),
                "--runtime", runtime, "--gpus", gpus, "--output-root", str(self.output_root),
                "--data-root", str(self.data_root), "--node-name", self.node_name, "--poll-interval", "0.1",
                "--gpu-sample-interval", "1", "--metrics-listen", ""]
        if docker_host:
            argv += ["--docker-host", docker_host]
        if pki is not None:
            assert node_name, "an agent with a certificate needs the node name it names"
            argv += pki.flags(node_name)
        self.daemon = Daemon(argv + (extra or []), root / "agent.log", env=env or {})
        self.channel: grpc.Channel | None = None
        self.stub: agent_pb2_grpc.AgentStub

    def start(self, wait: bool = True) -> AgentProc:
        self.daemon.start()
        self.channel = (grpc.secure_channel(self.addr, self.pki.creds("coordinator")) if self.pki
                        else grpc.insecure_channel(self.addr))
        self.stub = agent_pb2_grpc.AgentStub(self.channel)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        assert self.channel is not None
        try:
            wait_for(lambda: healthy(self.channel), timeout, "agent health SERVING")  # type: ignore[arg-type]
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nagent log:\n{self.daemon.log_tail()}") from None

    def kill(self) -> None:
        self.daemon.kill()
        if self.channel:
            self.channel.close()
            self.channel = None

    def restart(self) -> AgentProc:
        self.kill()
        return self.start()

    def stop(self) -> None:
        self.daemon.terminate()
        if self.channel:
            self.channel.close()
            self.channel = None

    # -- helpers -------------------------------------------------------------------------------
    def launch(self, job_id: str, argv: list[str] | None = None, attempt: int = 1, gpus: list[int] | None = None,
               **spec: Any) -> pb.JobStatus:
        spec.setdefault("output_dir", job_id)
        if argv is not None:
            spec["command"] = argv
        return self.stub.Launch(apb.LaunchRequest(job_id=job_id, attempt=attempt, spec=pb.JobSpec(**spec),
                                                  gpu_indices=gpus or []), timeout=30)

    def inspect(self, job_id: str) -> pb.JobStatus:
        return self.stub.Inspect(apb.InspectRequest(job_id=job_id), timeout=10)

    def wait_state(self, job_id: str, *states: str, timeout: float = 30) -> pb.JobStatus:
        want = {pb.AgentJobState.Value("AGENT_JOB_STATE_" + s) for s in states}
        return wait_for(lambda: (j := self.inspect(job_id)).state in want and j, timeout,
                        f"job {job_id} in {states}")

    def logs(self, job_id: str, follow: bool = False, tail: int = 0) -> bytes:
        chunks = self.stub.StreamLogs(apb.StreamLogsRequest(job_id=job_id, follow=follow, tail_lines=tail),
                                      timeout=30)
        return b"".join(c.data for c in chunks)

    def cleanup_jobs(self) -> None:
        """Kill every process-runtime job this agent started (tests must leave nothing behind)."""
        for pidfile in self.state_dir.glob("jobs/*/*/child.pid"):
            try:
                os.killpg(int(pidfile.read_text()), signal.SIGKILL)
            except (OSError, ValueError):
                pass


def state_name(value: int) -> str:
    return pb.AgentJobState.Name(value).removeprefix("AGENT_JOB_STATE_")


class CoordinatorProc:
    """A real `gpufleet-coordinator` on a loopback port (SQLite in its state dir unless a URL is given)."""

    def __init__(self, root: Path, database_url: str = "", node_timeout: float = 3.0, extra: list[str] | None = None,
                 env: dict[str, str] | None = None, port: int | None = None,
                 lost_after: float | None = None, pki: Pki | None = None) -> None:
        """`pki`: serve mTLS with its `coordinator` certificate (tests dial it as the client `ops`)."""
        from gpufleet.v1 import coordinator_pb2_grpc

        self.pki = pki
        self._grpc = coordinator_pb2_grpc
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.addr = f"127.0.0.1:{self.port}"
        argv = [sys.executable, "-P", "-m", "gpufleet.coordinator.main", "--listen", self.addr,
                "--state-dir", str(root / "state"),
                "--node-timeout", str(node_timeout), "--heartbeat-interval", "0.5", "--reconcile-interval", "0.5",
                "--schedule-interval", "0.5", "--metrics-listen", ""]
        if database_url:
            argv += ["--database-url", database_url]
        if lost_after is not None:  # how long a silent node's jobs are kept (default 300 s)
            argv += ["--lost-after", str(lost_after)]
        if pki is not None:
            argv += pki.flags("coordinator")
        self.daemon = Daemon(argv + (extra or []), root / "coordinator.log", env=env or {})
        self.channel: grpc.Channel | None = None

    def start(self, wait: bool = True) -> CoordinatorProc:
        self.daemon.start()
        self.channel = (grpc.secure_channel(self.addr, self.pki.creds("ops")) if self.pki
                        else grpc.insecure_channel(self.addr))
        self.stub = self._grpc.CoordinatorStub(self.channel)
        if wait:
            try:
                wait_for(lambda: healthy(self.channel), 60, "coordinator health SERVING")  # type: ignore[arg-type]
            except AssertionError as exc:
                raise AssertionError(f"{exc}\ncoordinator log:\n{self.daemon.log_tail()}") from None
        return self

    def kill(self) -> None:
        self.daemon.kill()
        if self.channel:
            self.channel.close()
            self.channel = None

    def restart(self) -> CoordinatorProc:
        self.kill()
        return self.start()


def release(a: AgentProc, output_dir: str, code: int = 0) -> None:
    """Let a gated job (it waits for a `release` file in its output folder) exit with `code`."""
    folder = a.output_root / output_dir
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "release.tmp"
    tmp.write_text(str(code))
    os.replace(tmp, folder / "release")


def runs(a: AgentProc, output_dir: str) -> int:
    """How many times a gated job started (one line each in `runs`)."""
    path = a.output_root / output_dir / "runs"
    return len(path.read_text().splitlines()) if path.exists() else 0


def pid_alive(pid: int) -> bool:
    """Running (not a zombie) by /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False
