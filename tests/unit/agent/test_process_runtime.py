"""Process runtime and its wrapper, on real processes: pid reuse, durable exit codes, signals, logs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from gpufleet.agent.runtime.base import Handle, LaunchPlan, Observation, Seen
from gpufleet.agent.runtime.process import ProcessRuntime, proc_start_marker

from tests.harness import wait_for

PY = sys.executable


def script(body: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(body)]


@dataclass
class Jobs:
    """A ProcessRuntime under tmp_path, plus every job it started so the test kills them all."""

    tmp: Path
    rt: ProcessRuntime
    started: list[tuple[Handle, Path]] = field(default_factory=list)

    def plan(self, job_id: str, argv: list[str], attempt: int = 1,
             log_max_bytes: int = 1 << 20) -> LaunchPlan:
        out = self.tmp / "out" / job_id
        out.mkdir(parents=True, exist_ok=True)
        return LaunchPlan(job_id=job_id, attempt=attempt, argv=argv, image="", output_dir=out, mounts=[],
                          gpu_indices=[], real_gpus=False, job_dir=self.rt.jobs_root / job_id / str(attempt),
                          env={"PATH": os.environ["PATH"]}, log_max_bytes=log_max_bytes)

    def start(self, plan: LaunchPlan) -> Handle:
        h = self.rt.start(plan)
        self.started.append((h, plan.job_dir))
        return h

    def ended(self, h: Handle, job_dir: Path, timeout: float = 20,
              rt: ProcessRuntime | None = None) -> Observation:
        def exited() -> Observation | None:
            o = (rt or self.rt).observe(h, job_dir)
            return o if o.seen is Seen.EXITED else None

        return wait_for(exited, timeout, f"job in {job_dir} to exit")

    def wait_log(self, h: Handle, job_dir: Path, needle: bytes) -> None:
        wait_for(lambda: needle in self.rt.logs(h, job_dir), what=f"{needle!r} in the job's log")


@pytest.fixture
def jobs(tmp_path: Path) -> Iterator[Jobs]:
    j = Jobs(tmp_path, ProcessRuntime(tmp_path / "jobs"))
    yield j
    for h, job_dir in j.started:
        try:
            os.killpg(int((job_dir / "child.pid").read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass
        pid = int(h.runtime_id)
        if proc_start_marker(pid) == h.start_marker:
            os.kill(pid, signal.SIGKILL)
        try:
            os.waitpid(pid, 0)  # the wrapper is our child: reap it
        except ChildProcessError:
            pass


# -- identity ----------------------------------------------------------------------------------
def test_start_marker_of_a_live_process_is_stable() -> None:
    me = proc_start_marker(os.getpid())
    assert me is not None and me.isdigit()
    assert proc_start_marker(os.getpid()) == me


def test_start_marker_of_an_ended_process_is_none() -> None:
    p = subprocess.Popen([PY, "-c", "pass"])
    p.wait()
    assert proc_start_marker(p.pid) is None


def test_a_zombie_counts_as_ended() -> None:
    p = subprocess.Popen([PY, "-c", "import time; time.sleep(60)"])
    try:
        os.kill(p.pid, signal.SIGKILL)

        def zombie() -> bool:
            with open(f"/proc/{p.pid}/stat", "rb") as f:
                return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"

        wait_for(zombie, what="the child to become a zombie")
        assert proc_start_marker(p.pid) is None
    finally:
        p.wait()


@pytest.mark.parametrize(
    ("marker", "seen"),
    [
        ("own", Seen.RUNNING),  # our pid with our start time: the job
        ("1", Seen.MISSING),  # our pid but another start time: the pid was reused while the agent was down
    ],
)
def test_a_reused_pid_is_not_the_job(jobs: Jobs, tmp_path: Path, marker: str, seen: Seen) -> None:
    me = proc_start_marker(os.getpid())
    assert me is not None
    h = Handle(str(os.getpid()), me if marker == "own" else marker)
    job_dir = tmp_path / "jobs" / "j" / "1"
    job_dir.mkdir(parents=True)
    obs = jobs.rt.observe(h, job_dir)
    assert obs.seen is seen and obs.exit_code is None
    if seen is Seen.MISSING:
        assert obs.message == "the job's process is gone and left no exit code"
    else:
        assert obs.started_at is not None


def test_a_dead_pid_is_missing(jobs: Jobs, tmp_path: Path) -> None:
    p = subprocess.Popen([PY, "-c", "pass"])
    p.wait()
    obs = jobs.rt.observe(Handle(str(p.pid), "12345"), tmp_path)
    assert obs.seen is Seen.MISSING


@pytest.mark.parametrize(
    ("content", "seen", "code", "sig"),
    [
        ({"exit_code": 0, "signal": 0}, Seen.EXITED, 0, 0),
        ({"exit_code": 5, "signal": 0, "message": ""}, Seen.EXITED, 5, 0),
        ({"exit_code": 137, "signal": 9, "message": "killed by signal 9"}, Seen.EXITED, 137, 9),
        ("{not json", Seen.MISSING, None, 0),
    ],
)
def test_exit_file_decides_even_when_the_pid_looks_alive(jobs: Jobs, tmp_path: Path, content: object,
                                                         seen: Seen, code: int | None, sig: int) -> None:
    job_dir = tmp_path / "j"
    job_dir.mkdir()
    (job_dir / "exit.json").write_text(content if isinstance(content, str) else json.dumps(content))
    h = Handle(str(os.getpid()), proc_start_marker(os.getpid()) or "")
    obs = jobs.rt.observe(h, job_dir)
    assert (obs.seen, obs.exit_code, obs.signal) == (seen, code, sig)
    if seen is Seen.MISSING:
        assert obs.message.startswith("exit file unreadable")


# -- real jobs through the wrapper -------------------------------------------------------------
def test_a_job_that_exits_5_is_exited_5_with_its_output(jobs: Jobs) -> None:
    plan = jobs.plan("five", script("""
        import os, sys
        print('to stdout', flush=True)
        print('to stderr', file=sys.stderr, flush=True)
        print(os.getcwd(), os.environ['PATH'] != '', flush=True)
        sys.exit(5)
    """))
    h = jobs.start(plan)
    assert h.runtime_id.isdigit() and h.start_marker == proc_start_marker(int(h.runtime_id))
    obs = jobs.ended(h, plan.job_dir)
    assert (obs.exit_code, obs.signal, obs.message) == (5, 0, "")
    assert obs.started_at is not None and obs.finished_at is not None and obs.finished_at >= obs.started_at
    log = jobs.rt.logs(h, plan.job_dir)
    assert b"to stdout\n" in log and b"to stderr\n" in log
    assert f"{plan.output_dir} True".encode() in log  # runs in its output folder
    assert jobs.rt.logs(h, plan.job_dir, tail_lines=1) == f"{plan.output_dir} True\n".encode()


def test_the_exit_code_is_known_to_a_runtime_that_did_not_start_the_job(jobs: Jobs, tmp_path: Path) -> None:
    flag = tmp_path / "go"
    plan = jobs.plan("later", script(f"""
        import os, sys, time
        while not os.path.exists({str(flag)!r}):
            time.sleep(0.02)
        sys.exit(3)
    """))
    jobs.start(plan)
    fresh = ProcessRuntime(jobs.rt.jobs_root)  # the agent after a restart
    h = fresh.find("later", 1, plan.job_dir)
    assert h is not None
    assert fresh.observe(h, plan.job_dir).seen is Seen.RUNNING
    assert [(f.job_id, f.attempt, f.handle) for f in fresh.list_labelled()] == [("later", 1, h)]
    flag.write_text("1")
    assert jobs.ended(h, plan.job_dir, rt=fresh).exit_code == 3
    wait_for(lambda: fresh.list_labelled() == [], what="the wrapper to be gone")


def test_log_rotation_read_since_returns_every_byte_exactly_once(jobs: Jobs, tmp_path: Path) -> None:
    lines = [f"{i:02d}".encode() + b"." * 57 + b"\n" for i in range(12)]  # 60 bytes each
    # Lines printed per go-file, read after each batch. At most 2 lines (120 bytes < 150) per batch, so
    # at most one rotation happens between two reads: the wrapper keeps one old file only.
    batches = [1, 2, 1, 2, 2, 1, 1, 2]
    assert sum(batches) == len(lines)
    plan = jobs.plan("rot", script(f"""
        import os, sys, time
        batches, n = {batches!r}, 0
        for b, count in enumerate(batches):
            while not os.path.exists(os.path.join({str(tmp_path)!r}, f'go{{b}}')):
                time.sleep(0.01)
            for _ in range(count):
                sys.stdout.write(f'{{n:02d}}' + '.' * 57 + '\\n')
                sys.stdout.flush()
                n += 1
    """), log_max_bytes=150)
    h = jobs.start(plan)
    got, cursor, n = b"", "", 0

    def read_until(size: int) -> bool:
        nonlocal got, cursor
        data, cursor = jobs.rt.read_since(h, plan.job_dir, cursor)
        got += data
        return len(got) >= size

    for b, count in enumerate(batches):
        (tmp_path / f"go{b}").write_text("1")
        n += count
        want = b"".join(lines[:n])
        wait_for(lambda: read_until(len(want)), what=f"batch {b} in the log")  # noqa: B023 - called here
        assert got == want  # nothing lost, nothing twice
    assert jobs.ended(h, plan.job_dir).exit_code == 0
    data, _ = jobs.rt.read_since(h, plan.job_dir, cursor)
    assert data == b""
    assert (plan.job_dir / "output.log.1").exists()  # it did rotate
    for name in ("output.log", "output.log.1"):
        size = (plan.job_dir / name).stat().st_size
        assert 0 < size <= 150, name
    assert jobs.rt.logs(h, plan.job_dir).endswith(lines[-1])


def test_sigterm_reaches_a_job_that_traps_it(jobs: Jobs) -> None:
    plan = jobs.plan("trap", script("""
        import signal, sys, time
        def bye(*_):
            print('cleaning up', flush=True)
            sys.exit(42)
        signal.signal(signal.SIGTERM, bye)
        print('ready', flush=True)
        time.sleep(60)
    """))
    h = jobs.start(plan)
    jobs.wait_log(h, plan.job_dir, b"ready")
    assert jobs.rt.observe(h, plan.job_dir).seen is Seen.RUNNING
    jobs.rt.signal(h, plan.job_dir, signal.SIGTERM)
    obs = jobs.ended(h, plan.job_dir)
    assert (obs.exit_code, obs.signal) == (42, 0)
    assert b"cleaning up" in jobs.rt.logs(h, plan.job_dir)


def test_sigkill_reaches_the_whole_job_and_is_exit_137(jobs: Jobs, tmp_path: Path) -> None:
    # The job starts a grandchild: killing the job's process group must take it too.
    pidfile = tmp_path / "grandchild.pid"
    plan = jobs.plan("kill", script(f"""
        import subprocess, sys, time
        g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
        open({str(pidfile)!r}, 'w').write(str(g.pid))
        signal_ignored = __import__('signal').signal(15, 1)
        print('ready', flush=True)
        time.sleep(60)
    """))
    h = jobs.start(plan)
    jobs.wait_log(h, plan.job_dir, b"ready")
    grandchild = int(pidfile.read_text())
    marker = proc_start_marker(grandchild)
    jobs.rt.signal(h, plan.job_dir, signal.SIGKILL)
    obs = jobs.ended(h, plan.job_dir)
    assert (obs.exit_code, obs.signal, obs.message) == (137, 9, "killed by signal 9")
    wait_for(lambda: proc_start_marker(grandchild) != marker, what="the grandchild to die")


def test_a_program_that_cannot_start_exits_127_with_a_message(jobs: Jobs, tmp_path: Path) -> None:
    prog = str(tmp_path / "no-such-program")
    plan = jobs.plan("nostart", [prog, "--flag"])
    h = jobs.start(plan)
    obs = jobs.ended(h, plan.job_dir)
    assert obs.exit_code == 127 and obs.signal == 0
    assert obs.message == f"cannot start {prog!r}: No such file or directory"
    assert jobs.rt.logs(h, plan.job_dir) == f"gpufleet: {obs.message}\n".encode()


def test_signal_to_an_ended_job_is_harmless(jobs: Jobs) -> None:
    plan = jobs.plan("done", script("pass"))
    h = jobs.start(plan)
    assert jobs.ended(h, plan.job_dir).exit_code == 0
    for sig in (signal.SIGTERM, signal.SIGKILL):
        jobs.rt.signal(h, plan.job_dir, sig)
    assert jobs.rt.observe(h, plan.job_dir).exit_code == 0


def test_remove_is_idempotent(jobs: Jobs, tmp_path: Path) -> None:
    plan = jobs.plan("gone", script("print('x')"))
    h = jobs.start(plan)
    jobs.ended(h, plan.job_dir)
    wait_for(lambda: jobs.rt.list_labelled() == [], what="the wrapper to be gone")
    jobs.rt.remove(h, plan.job_dir)
    assert not plan.job_dir.exists() and not plan.job_dir.parent.exists()
    jobs.rt.remove(h, plan.job_dir)  # again: no error
    jobs.rt.remove(Handle("999999999", "1"), tmp_path / "never" / "1")  # never existed: no error
    assert jobs.rt.observe(h, plan.job_dir).seen is Seen.MISSING
    assert jobs.rt.logs(h, plan.job_dir) == b""
    assert plan.output_dir.is_dir()  # the job's outputs are not the runtime's to remove


def test_start_twice_returns_the_same_handle_and_one_process(jobs: Jobs, tmp_path: Path) -> None:
    flag = tmp_path / "go"
    plan = jobs.plan("once", script(f"""
        import os, time
        print('started', os.getpid(), flush=True)
        while not os.path.exists({str(flag)!r}):
            time.sleep(0.02)
    """))
    first = jobs.start(plan)
    assert jobs.start(plan) == first
    assert ProcessRuntime(jobs.rt.jobs_root).start(plan) == first  # also after an agent restart
    jobs.wait_log(first, plan.job_dir, b"started")
    flag.write_text("1")
    assert jobs.ended(first, plan.job_dir).exit_code == 0
    assert jobs.rt.logs(first, plan.job_dir).count(b"started") == 1
