"""Matrix 7: the Docker engine restarted under a running container job.

- Without live-restore, stopping dockerd stops every container: the agent must then report the
  job with the exit code docker recorded (FAILED 143/137), never SUCCEEDED, never a guess.
- With `--live-restore` the container keeps running across the restart and the job later ends
  SUCCEEDED with exit code 0, having run once.
In both cases, while the engine is down the agent keeps the job's last state (RUNNING, never
LOST: supervisor.tick keeps it when the runtime raises) and its health goes NOT_SERVING, then
SERVING again once the engine answers.

The engine is the session's `dockerd` fixture (tests/dockerd.py). It is restarted here with the
same argv (Popen.args of the process the fixture started, plus or minus `--live-restore`), the
same data root and socket, so images survive; `dockerd.process`/`dockerd.client` are pointed at
the new engine. After each test the engine runs again with the fixture's original flags, and at
the end of the session a replacement engine is stopped before the fixture removes its root.
When the engine is an external one (`dockerd.process is None`) these tests are skipped: they do
not restart an engine they did not start.
"""
from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from gpufleet.v1 import common_pb2 as pb
from tests.faults import GATED_SH, IMAGE, release, runs
from tests.harness import AgentProc, healthy, pid_alive, state_name, wait_for
from tests.integration.test_coordinator_reconcile import holds
from tests.invariants import assert_invariants

pytestmark = [pytest.mark.docker, pytest.mark.slow]

LIVE_RESTORE = "--live-restore"
ENGINE_START_S = 60.0
ENGINE_STOP_S = 60.0
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED", "LOST")


def _containerd_pid(argv: list[str]) -> int | None:
    """The pid of the engine's managed containerd (from its pid file under --exec-root)."""
    try:
        exec_root = Path(argv[argv.index("--exec-root") + 1])
        return int((exec_root / "containerd" / "containerd.pid").read_text().strip())
    except (ValueError, IndexError, OSError):
        return None


def _stop_engine(proc: subprocess.Popen[bytes] | None, argv: list[str]) -> None:
    """SIGTERM dockerd and wait until it and its containerd are gone. A dockerd started after a
    crash adopted the old containerd (not its child) and may exit before that containerd has:
    the next dockerd would adopt a dying containerd and fail to start."""
    if proc is None or proc.poll() is not None:
        return
    containerd = _containerd_pid(argv)
    proc.terminate()
    try:
        proc.wait(timeout=ENGINE_STOP_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    if containerd is not None:
        wait_for(lambda: not pid_alive(containerd), ENGINE_STOP_S, f"containerd (pid {containerd}) to exit")


class Engine:
    """Stops and starts the session's dockerd in place (same argv, data root and socket)."""

    def __init__(self, dockerd: Any) -> None:
        self.d = dockerd
        proc: subprocess.Popen[bytes] = dockerd.process
        self.original_argv = [str(a) for a in proc.args]  # type: ignore[union-attr]
        self.argv = list(self.original_argv)

    @property
    def running(self) -> bool:
        p = self.d.process
        return p is not None and p.poll() is None

    def stop(self) -> None:
        """SIGTERM, as `systemctl stop docker` does: dockerd shuts down cleanly."""
        _stop_engine(self.d.process, self.argv)

    def crash(self) -> None:
        """SIGKILL dockerd alone (an engine crash): its containerd and the containers' shims live on."""
        p = self.d.process
        if p is not None and p.poll() is None:
            p.kill()
            p.wait(timeout=10)

    def start(self, live_restore: bool | None = None) -> None:
        """Start dockerd again; once more after clearing an orphaned containerd that a crashed engine
        left wedged (on a loaded machine the new engine can time out dialing it and exit 1)."""
        try:
            self._start(live_restore)
        except AssertionError as exc:
            if "exited with" not in str(exc):
                raise
            self._kill_orphaned_containerd()
            self._start(live_restore)

    def _kill_orphaned_containerd(self) -> None:
        marker = str(Path(self.d.root or "/nonexistent"))
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "containerd" in cmd and marker in cmd and "shim" not in cmd:
                try:
                    os.kill(int(entry.name), signal.SIGKILL)
                except OSError:
                    pass

    def _start(self, live_restore: bool | None = None) -> None:
        assert not self.running, "stop the engine first"
        argv = [a for a in self.argv if a != LIVE_RESTORE]
        if live_restore or (live_restore is None and LIVE_RESTORE in self.argv):
            argv.append(LIVE_RESTORE)
        env = dict(os.environ)
        env["PATH"] = env.get("PATH", "") + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        env.pop("DOCKER_HOST", None)
        log_path: Path = self.d.log_path or Path(self.d.root) / "dockerd-restart.log"
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.d.process = proc
        self.argv = argv

        def answers() -> docker.DockerClient | None:
            if proc.poll() is not None:
                raise AssertionError(f"dockerd exited with {proc.returncode} at restart:\n{self.log_tail()}")
            try:
                # version "auto" asks the engine already: constructing the client can fail too.
                client = docker.DockerClient(base_url=self.d.base_url, timeout=30)
            except Exception:  # noqa: BLE001 - not up yet
                return None
            try:
                if client.ping():
                    return client
            except Exception:  # noqa: BLE001 - not up yet
                pass
            client.close()
            return None

        try:
            client = wait_for(answers, ENGINE_START_S, "dockerd to answer after a restart", interval=0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tail()}") from None
        old, self.d.client = self.d.client, client
        try:
            old.close()
        except Exception:  # noqa: BLE001
            pass

    def restart(self, live_restore: bool | None = None) -> None:
        self.stop()
        self.start(live_restore)

    def restore_original(self) -> None:
        """Leave the engine as the fixture made it: running, with its original flags."""
        if self.running and self.argv == self.original_argv:
            return
        self.stop()
        self.argv = list(self.original_argv)
        self.start()

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(Path(self.d.log_path).read_text(errors="replace").splitlines()[-n:])
        except (OSError, TypeError):
            return ""


@pytest.fixture(scope="session")
def _replacement_engine_stopper(dockerd: Any) -> Iterator[None]:
    """At session end, stop an engine these tests started in place of the fixture's own process
    (the fixture's teardown only stops the process it started, then removes the engine's root)."""
    original = dockerd.process
    yield
    current = dockerd.process
    if current is not None and current is not original:
        _stop_engine(current, [str(a) for a in current.args])  # type: ignore[union-attr]


@pytest.fixture
def engine(dockerd: Any, tiny_image: str, _replacement_engine_stopper: None) -> Iterator[Engine]:
    if dockerd.process is None:
        pytest.skip("the docker engine is an external one (DOCKER_HOST or /var/run/docker.sock); "
                    "these tests only restart an engine the test session started itself")
    e = Engine(dockerd)
    try:
        yield e
    finally:
        e.restore_original()


@pytest.fixture
def docker_agent_on(engine: Engine, agent_factory: Callable[..., AgentProc]) -> Iterator[AgentProc]:
    """A docker-runtime agent against the session engine; its containers are removed afterwards."""
    a = agent_factory("d", runtime="docker", docker_host=engine.d.base_url)
    yield a
    a.kill()
    if not engine.running:
        engine.restore_original()
    for row in engine.d.client.api.containers(all=True, filters={"label": f"gpufleet.agent={a.node_name}"}):
        try:
            engine.d.client.api.remove_container(row["Id"], force=True, v=True)
        except Exception:  # noqa: BLE001 - best effort at teardown
            pass


def launch_gated(a: AgentProc, job_id: str, client: Any) -> dict[str, Any]:
    """Launch a gated container job and wait until it runs its work; returns docker's inspect."""
    a.launch(job_id, GATED_SH, image=IMAGE, output_dir=job_id)
    st = a.wait_state(job_id, "RUNNING")
    wait_for(lambda: runs(a, job_id) == 1, 20, f"{job_id} to start its work in the container")
    return dict(client.api.inspect_container(st.runtime_id))


def engine_down(a: AgentProc, job_id: str, *allowed: str) -> pb.JobStatus:
    """While the engine is down: health NOT_SERVING, and the job's state does not move (it is
    what the agent last saw: never LOST, never SUCCEEDED for lack of an answer)."""
    wait_for(lambda: not healthy(a.channel), 15, "agent health NOT_SERVING with the engine down")  # type: ignore[arg-type]
    seen = a.inspect(job_id)
    assert state_name(seen.state) in allowed, (seen, a.daemon.log_tail())
    holds(lambda: a.inspect(job_id) == seen, 1.5, f"job {job_id} unchanged while the engine is down")
    assert a.daemon.proc is not None and a.daemon.proc.poll() is None, a.daemon.log_tail()
    return seen


def back_up(a: AgentProc) -> None:
    wait_for(lambda: healthy(a.channel), 30, "agent health SERVING once the engine answers")  # type: ignore[arg-type]


def assert_true_end(a: AgentProc, job_id: str, client: Any, cid: str) -> pb.JobStatus:
    """The job ended FAILED with exactly the exit code docker recorded for its container."""
    done = a.wait_state(job_id, *TERMINAL, timeout=30)
    state = client.api.inspect_container(cid)["State"]
    assert state["Status"] == "exited", state
    recorded = int(state["ExitCode"])
    assert recorded in (137, 143), state  # SIGKILL or SIGTERM (through tini)
    assert state_name(done.state) == "FAILED", done  # ended by the engine, not stopped through the agent
    assert done.exit_code == recorded and done.signal == recorded - 128, (done, state)
    assert runs(a, job_id) == 1
    return done


def test_engine_stopped_without_live_restore_reports_the_real_exit_code(
        engine: Engine, docker_agent_on: AgentProc) -> None:
    a = docker_agent_on
    cid = launch_gated(a, "dr-stop", engine.d.client)["Id"]

    # Without live-restore dockerd stops every container on its way out (SIGTERM, 143). Whether
    # the agent saw that exit before the API closed or not, what it shows is what it last saw.
    engine.stop()
    seen = engine_down(a, "dr-stop", "RUNNING", "FAILED")
    if state_name(seen.state) == "FAILED":
        assert seen.exit_code in (137, 143), seen

    engine.start()
    back_up(a)
    assert_true_end(a, "dr-stop", engine.d.client, cid)
    assert_invariants(None, {a.node_name: a.state_dir}, engine.d.client, settled=True)


def test_engine_crash_without_live_restore_reports_the_real_exit_code(
        engine: Engine, docker_agent_on: AgentProc) -> None:
    a = docker_agent_on
    info = launch_gated(a, "dr-crash", engine.d.client)
    cid, pid = info["Id"], int(info["State"]["Pid"])

    # dockerd dies at once: the container runs on under its shim, the agent can ask no one.
    engine.crash()
    assert pid_alive(pid)
    engine_down(a, "dr-crash", "RUNNING")

    # An engine without live-restore kills what its crashed predecessor left running.
    engine.start()
    back_up(a)
    assert_true_end(a, "dr-crash", engine.d.client, cid)
    assert not pid_alive(pid)
    assert_invariants(None, {a.node_name: a.state_dir}, engine.d.client, settled=True)


def test_engine_restart_with_live_restore_keeps_the_job_running(
        engine: Engine, docker_agent_on: AgentProc) -> None:
    a = docker_agent_on
    engine.restart(live_restore=True)  # live-restore must be on in the engine that goes down
    wait_for(lambda: healthy(a.channel), 30, "agent health SERVING on the live-restore engine")  # type: ignore[arg-type]
    info = launch_gated(a, "dr-live", engine.d.client)
    cid, pid = info["Id"], int(info["State"]["Pid"])
    assert pid > 0 and pid_alive(pid)

    engine.stop()
    assert pid_alive(pid), "live-restore: the container's process must outlive dockerd"
    engine_down(a, "dr-live", "RUNNING")

    engine.start()  # with --live-restore again
    back_up(a)
    state = engine.d.client.api.inspect_container(cid)["State"]
    assert state["Status"] == "running" and int(state["Pid"]) == pid, state
    st = a.inspect("dr-live")
    assert state_name(st.state) == "RUNNING", st

    release(a, "dr-live", 0)
    done = a.wait_state("dr-live", *TERMINAL, timeout=30)
    assert state_name(done.state) == "SUCCEEDED" and done.HasField("exit_code") and done.exit_code == 0, done
    assert runs(a, "dr-live") == 1
    assert len(engine.d.client.api.containers(all=True, filters={"label": "gpufleet.job_id=dr-live"})) == 1
    assert_invariants(None, {a.node_name: a.state_dir}, engine.d.client, settled=True)
    # (the engine fixture's teardown restarts the engine without --live-restore)

