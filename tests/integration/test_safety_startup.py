"""Issue 13: unsafe or broken start-ups stop the daemon with one line, never start half-protected."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from gpufleet.config import is_loopback
from tests.harness import AgentProc, CoordinatorProc, free_port, pid_alive, wait_for

PY = sys.executable


def one_line_refusal(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def gated(agent: AgentProc, job_id: str) -> int:
    agent.launch(job_id, [PY, "-c", textwrap.dedent("""
        import os, time
        while not os.path.exists('release'):
            time.sleep(0.05)
    """)])
    agent.wait_state(job_id, "RUNNING")
    return wait_for(lambda: int((agent.state_dir / "jobs" / job_id / "1" / "child.pid").read_text()), 20,
                    "child pid")


def test_a_deleted_agent_db_stops_the_agent_until_adopt_kills_the_orphan(
        agent_factory: Callable[..., AgentProc]) -> None:
    a = agent_factory("del")
    child = gated(a, "orphan")
    a.kill()
    for name in ("agent.db", "agent.db-wal", "agent.db-shm"):
        try:
            (a.state_dir / name).unlink()
        except FileNotFoundError:
            pass
    one_line_refusal(run(a.daemon.argv), "agent.db", "--adopt")
    assert pid_alive(child)  # nothing was touched
    a.daemon.argv.append("--adopt")
    a.start()
    wait_for(lambda: not pid_alive(child), 30, "the orphan killed by --adopt")


def test_a_corrupt_agent_db_is_one_line_and_adopt_moves_it_away(agent_factory: Callable[..., AgentProc]) -> None:
    a = agent_factory("bad", start=False)
    (a.state_dir / "agent.db").write_bytes(b"this is not SQLite" * 100)
    one_line_refusal(run(a.daemon.argv), "agent.db", "--adopt")
    a.daemon.argv.append("--adopt")
    a.start()
    assert list(a.state_dir.glob("agent.db.corrupt-*"))


def test_files_and_dirs_are_private(agent: AgentProc, coordinator_factory: Callable[..., CoordinatorProc]) -> None:
    c = coordinator_factory()
    for path in (agent.state_dir, c.root / "state"):
        assert path.stat().st_mode & 0o777 == 0o700, path
    for path in (agent.state_dir / "agent.db", c.root / "state" / "coordinator.db"):
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_a_corrupt_coordinator_db_stops_the_coordinator(coordinator_factory: Callable[..., CoordinatorProc]) -> None:
    c = coordinator_factory()
    c.kill()
    db = c.root / "state" / "coordinator.db"
    con = sqlite3.connect(str(db))
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything into the main file first
    con.close()
    size = db.stat().st_size
    assert size > 8192
    with open(db, "r+b") as f:  # keep the header, wreck every page after the first
        f.seek(4096)
        f.write(os.urandom(size - 4096))
    one_line_refusal(run(c.daemon.argv), "database")


@pytest.mark.parametrize("daemon", ["agent", "coordinator"])
@pytest.mark.parametrize("flags", [["--tls-cert", "/x.crt", "--tls-ca", "/ca.crt"], ["--tls-key", "/x.key"]])
def test_partial_tls_flags_are_an_error(daemon: str, flags: list[str], tmp_path: Path) -> None:
    listen = f"127.0.0.1:{free_port()}"
    if daemon == "agent":
        argv = [PY, "-P", "-m", "gpufleet.agent.main", "--listen", listen, "--state-dir", str(tmp_path / "s"),
                "--runtime", "process", "--gpus", "fake:1", "--output-root", str(tmp_path / "o"),
                "--data-root", str(tmp_path / "d"), "--metrics-listen", "", *flags]
    else:
        argv = [PY, "-P", "-m", "gpufleet.coordinator.main", "--listen", listen, "--state-dir", str(tmp_path / "c"),
                "--metrics-listen", "", *flags]
    one_line_refusal(run(argv), "--tls-")


def test_loopback_is_judged_on_the_parsed_address() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.1.2.3") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("127.evil.example") and not is_loopback("0.0.0.0") and not is_loopback("")
