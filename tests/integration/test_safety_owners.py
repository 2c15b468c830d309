"""Issue 13: each job owner's own uid (--owner-uids) on a real agent daemon, so that one owner's job can
neither signal nor read another owner's on the same node; jobs without an owner run as the job user.

The agent is driven as the coordinator drives it (Launch with the owner set); tests/integration/
test_safety_tenants.py shows the coordinator sends each job's owner under auth."""
from __future__ import annotations

import json
import pwd
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from gpufleet.v1 import agent_pb2 as apb
from gpufleet.v1 import common_pb2 as pb
from tests.harness import JOB_USER, AgentProc, release, wait_for

PY = sys.executable
GATED = """
import os, time
open('pid', 'w').write(str(os.getpid()))
open('ckpt.pth', 'w').write('secret weights')
while not os.path.exists('release'):
    time.sleep(0.05)
"""
WHOAMI = "import json, os; print(json.dumps([os.getuid(), os.getgid(), os.getgroups()]), flush=True)"


def script(body: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(body)]


def launch(a: AgentProc, job_id: str, argv: list[str], owner: str, output_dir: str, attempt: int = 1) -> pb.JobStatus:
    return a.stub.Launch(apb.LaunchRequest(job_id=job_id, attempt=attempt, owner=owner,
                                           spec=pb.JobSpec(command=argv, output_dir=output_dir)), timeout=30)


def last_json(a: AgentProc, job_id: str) -> Any:
    done = a.wait_state(job_id, "SUCCEEDED", "FAILED")
    assert done.exit_code == 0, a.logs(job_id)
    return json.loads(a.logs(job_id).strip().splitlines()[-1])


def test_two_owners_jobs_run_as_different_uids_and_cannot_touch_each_other(agent: AgentProc) -> None:
    job_user = pwd.getpwnam(JOB_USER)
    launch(agent, "a1", script(GATED), "alice", "users/alice/jobs/a1")
    agent.wait_state("a1", "RUNNING")
    pid_file = agent.output_root / "users/alice/jobs/a1/pid"
    wait_for(lambda: pid_file.exists() and pid_file.read_text().isdigit(), 30, "alice's job wrote its pid")
    alice_pid = int(pid_file.read_text())
    wrapper_pid = int(agent.inspect("a1").runtime_id)
    secret = str(agent.output_root / "users/alice/jobs/a1/ckpt.pth")

    # Bob's job, on the same node, goes after alice's running job and her files.
    launch(agent, "b1", script(f"""
        import json, os, signal
        out = {{"uid": os.getuid(), "gid": os.getgid()}}
        def attempt(name, fn):
            try:
                fn()
                out[name] = "done"
            except PermissionError:
                out[name] = "denied"
        attempt("kill_job", lambda: os.kill({alice_pid}, signal.SIGKILL))
        attempt("kill_wrapper", lambda: os.kill({wrapper_pid}, signal.SIGTERM))
        attempt("read_ckpt", lambda: open({secret!r}).read())
        attempt("list_folder", lambda: os.listdir({str(agent.output_root / "users/alice")!r}))
        print(json.dumps(out), flush=True)
    """), "bob", "users/bob/jobs/b1")
    bob = last_json(agent, "b1")
    assert bob["kill_job"] == bob["kill_wrapper"] == bob["read_ckpt"] == bob["list_folder"] == "denied", bob
    assert agent.inspect("a1").state == pb.AGENT_JOB_STATE_RUNNING  # alice's job lives on

    # Alice's own uid, not bob's, not the shared job user's, never root; the group is the job user's.
    alice_uid = (agent.output_root / "users/alice/jobs/a1/ckpt.pth").stat().st_uid
    assert len({alice_uid, bob["uid"], job_user.pw_uid, 0}) == 4
    assert bob["gid"] == job_user.pw_gid
    for folder in ("users/alice", "users/alice/jobs/a1"):
        st = (agent.output_root / folder).stat()
        assert (st.st_uid, st.st_mode & 0o777) == (alice_uid, 0o700), folder
    release(agent, "users/alice/jobs/a1")
    agent.wait_state("a1", "SUCCEEDED")

    # Alice's next attempt (same owner, same uid) reads what the first wrote, in the same folder.
    launch(agent, "a1", script("print(open('ckpt.pth').read(), flush=True)"), "alice", "users/alice/jobs/a1",
           attempt=2)
    agent.wait_state("a1", "SUCCEEDED")
    assert agent.logs("a1").strip() == b"secret weights"

    # A job without an owner (auth off) runs as the shared job user, as before.
    agent.launch("n1", script(WHOAMI))
    uid, gid, groups = last_json(agent, "n1")
    assert (uid, gid) == (job_user.pw_uid, job_user.pw_gid) and 0 not in groups


def test_a_folder_the_shared_job_user_wrote_becomes_the_owners(agent: AgentProc) -> None:
    """Written before owners had uids (no owner: the job user), then the owner's next job overwrites
    its checkpoint in place."""
    agent.launch("old", script("import os; os.makedirs('sub'); open('sub/ckpt.pth', 'w').write('v1')"),
                 output_dir="users/gina/m")
    agent.wait_state("old", "SUCCEEDED")
    launch(agent, "new", script("open('sub/ckpt.pth', 'w').write('v2')"), "gina", "users/gina/m")
    done = agent.wait_state("new", "SUCCEEDED", "FAILED")
    assert done.exit_code == 0, agent.logs("new")
    assert (agent.output_root / "users/gina/m/sub/ckpt.pth").read_text() == "v2"


def test_an_owner_keeps_its_uid_across_an_agent_restart(agent: AgentProc) -> None:
    launch(agent, "x1", script(WHOAMI), "carol", "users/carol/x1")
    first = last_json(agent, "x1")[0]
    agent.restart()
    launch(agent, "x2", script(WHOAMI), "dave", "users/dave/x2")
    launch(agent, "x3", script(WHOAMI), "carol", "users/carol/x3")
    assert last_json(agent, "x3")[0] == first != last_json(agent, "x2")[0]


def test_an_exhausted_uid_range_refuses_the_launch_naming_the_option(
        agent_factory: Callable[..., AgentProc]) -> None:
    a = agent_factory("one", extra=["--owner-uids", "62990-62990"])
    launch(a, "e1", ["/bin/true"], "erin", "users/erin/e1")
    a.wait_state("e1", "SUCCEEDED")
    with pytest.raises(grpc.RpcError) as e:
        launch(a, "f1", ["/bin/true"], "frank", "users/frank/f1")
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (e.value.details() or "").startswith("--owner-uids 62990-62990: every uid of the range is given")
    with pytest.raises(grpc.RpcError):
        a.inspect("f1")  # nothing was recorded
    assert not (a.output_root / "users/frank").exists()
    launch(a, "e2", ["/bin/true"], "erin", "users/erin/e2")  # erin keeps hers
    a.wait_state("e2", "SUCCEEDED")


def test_owner_uids_off_runs_every_job_as_the_job_user(agent_factory: Callable[..., AgentProc]) -> None:
    a = agent_factory("off", extra=["--owner-uids", "none"])
    launch(a, "o1", script(WHOAMI), "alice", "users/alice/o1")
    assert last_json(a, "o1")[0] == pwd.getpwnam(JOB_USER).pw_uid


def test_a_bad_owner_is_refused_at_launch(agent: AgentProc) -> None:
    with pytest.raises(grpc.RpcError) as e:
        launch(agent, "bad", ["/bin/true"], "../alice", "users/alice/bad")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (e.value.details() or "").startswith("owner: must be empty or 1-128 letters")
