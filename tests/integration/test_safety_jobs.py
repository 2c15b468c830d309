"""Issue 13: process jobs run unprivileged, cannot touch the agent or another job, leave no zombie."""
from __future__ import annotations

import os
import pwd
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from gpufleet.v1 import agent_pb2 as apb
from tests.harness import JOB_USER, AgentProc, ensure_job_user, free_port, release, wait_for

PY = sys.executable


def script(body: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(body)]


def zombies_of(pid: int) -> list[int]:
    """Children of `pid` that ended and were never reaped."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) == pid:
            found.append(int(entry))
    return found


def test_job_runs_as_the_job_user_and_cannot_touch_the_agent_or_other_jobs(agent: AgentProc) -> None:
    ensure_job_user()
    want = pwd.getpwnam(JOB_USER)
    # A second job that stays running: the first tries to forge its exit record and signal its wrapper.
    agent.launch("victim", script("""
        import os, time
        while not os.path.exists('release'):
            time.sleep(0.05)
    """))
    victim = agent.wait_state("victim", "RUNNING")
    jobs = agent.state_dir / "jobs"
    attack = script(f"""
        import json, os, signal
        out = {{"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups()}}
        def attempt(name, fn):
            try:
                fn()
                out[name] = "done"
            except OSError as exc:
                out[name] = exc.errno
        attempt("read_db", lambda: open({str(agent.state_dir / 'agent.db')!r}, "rb").read(1))
        attempt("forge_exit", lambda: open({str(jobs / 'victim' / '1' / 'exit.json')!r}, "w").write(
            '{{"exit_code": 0}}'))
        attempt("list_jobs", lambda: os.listdir({str(jobs)!r}))
        attempt("kill_wrapper", lambda: os.kill({int(victim.runtime_id)}, signal.SIGTERM))
        attempt("shadow", lambda: open("/etc/shadow").read(1))
        print(json.dumps(out), flush=True)
    """)
    agent.launch("attacker", attack)
    done = agent.wait_state("attacker", "SUCCEEDED", "FAILED")
    assert done.exit_code == 0, agent.logs("attacker")
    import json

    out = json.loads(agent.logs("attacker").strip().splitlines()[-1])
    assert out["uid"] == want.pw_uid != 0
    assert out["gid"] == want.pw_gid != 0
    assert 0 not in out["groups"]
    for key in ("read_db", "forge_exit", "list_jobs", "kill_wrapper", "shadow"):
        assert out[key] != "done", (key, out)
    # The victim is untouched: still running, no exit record.
    assert not (jobs / "victim" / "1" / "exit.json").exists()
    assert agent.inspect("victim").state == victim.state
    # Its output folder belongs to the job user; the agent's folders are the agent's alone.
    st = (agent.output_root / "attacker").stat()
    assert (st.st_uid, st.st_gid) == (want.pw_uid, want.pw_gid)
    assert agent.state_dir.stat().st_mode & 0o077 == 0
    release(agent, "victim")
    agent.wait_state("victim", "SUCCEEDED")


def test_no_zombie_remains_after_jobs_end(agent: AgentProc) -> None:
    assert agent.daemon.proc is not None
    for i in range(3):
        agent.launch(f"z{i}", ["/bin/true"])
    for i in range(3):
        agent.wait_state(f"z{i}", "SUCCEEDED")
    wait_for(lambda: not zombies_of(agent.daemon.proc.pid), 30, "no zombie children of the agent")  # type: ignore[union-attr]


def test_a_planted_symlink_in_the_output_path_is_not_followed(agent: AgentProc, tmp_path: Path) -> None:
    """A job that owns folder `a` replaces a child folder with a link out of the output root: the
    next job naming `a/b` must not get (or chown) the link's target."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (agent.output_root / "a").mkdir()
    os.symlink(outside, agent.output_root / "a" / "b")
    try:
        agent.launch("link1", ["/bin/true"], output_dir="a/b")
    except Exception:  # noqa: BLE001 - refused at launch is a fine answer too
        pass
    else:
        agent.wait_state("link1", "FAILED", "SUCCEEDED", "LOST")
    assert outside.stat().st_uid == 0


def _agent_cmd(tmp: Path, *extra: str) -> list[str]:
    return [PY, "-P", "-m", "gpufleet.agent.main", "--listen", f"127.0.0.1:{free_port()}",
            "--state-dir", str(tmp / "s"), "--runtime", "process", "--gpus", "fake:1",
            "--output-root", str(tmp / "o"), "--data-root", str(tmp / "d"), "--metrics-listen", "", *extra]


def test_agent_refuses_a_missing_job_user_or_root_without_the_admin_flag(tmp_path: Path) -> None:
    for extra, needle in ((["--job-user", "no-such-gpufleet-user"], "no local account"),
                          (["--job-user", "root"], "--allow-root-jobs")):
        r = subprocess.run(_agent_cmd(tmp_path, *extra), capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 2, r.stderr
        assert needle in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_root_jobs_only_when_the_admin_allows_them(agent_factory: Callable[..., AgentProc]) -> None:
    a = agent_factory("root", extra=["--job-user", "root", "--allow-root-jobs"])
    a.launch("r1", script("import os; print(os.getuid(), flush=True)"))
    a.wait_state("r1", "SUCCEEDED")
    assert a.logs("r1").strip() == b"0"
    node = a.stub.GetNode(apb.GetNodeRequest(), timeout=5)
    assert node.runtime == "process"
