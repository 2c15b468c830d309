"""Issue 13: no unauthenticated control of an agent, even on loopback."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from gpufleet.agent.control import SECRET_FILE, SECRET_HEADER, parse_peer

from tests.harness import AgentProc

PY = sys.executable

# Runs as another local account: health, Launch without and with the secret.
CLIENT = textwrap.dedent("""
    import json, sys
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from gpufleet.v1 import agent_pb2 as apb, agent_pb2_grpc, common_pb2 as pb
    addr, secret, header, py = sys.argv[1:5]
    ch = grpc.insecure_channel(addr)
    out = {"health": health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status}
    stub = agent_pb2_grpc.AgentStub(ch)
    req = apb.LaunchRequest(job_id="esc", attempt=1, spec=pb.JobSpec(command=[py, "-c", "pass"], output_dir="esc"))
    for name, md in (("plain", None), ("secret", [(header, secret)] if secret else None)):
        if md is None and name == "secret":
            continue
        try:
            stub.Launch(req, timeout=10, metadata=md)
            out[name] = "OK"
        except grpc.RpcError as exc:
            out[name] = exc.code().name
    try:
        stub.ListJobs(apb.ListJobsRequest(), timeout=10)
        out["list"] = "OK"
    except grpc.RpcError as exc:
        out["list"] = exc.code().name
    print(json.dumps(out))
""")


def run_as(uid: int, agent: AgentProc, secret: str) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run([PY, "-c", CLIENT, agent.addr, secret, SECRET_HEADER, PY], capture_output=True, text=True,
                       timeout=120, user=uid, group=uid, extra_groups=[], env=env, cwd="/")
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_another_local_uid_cannot_control_the_agent(agent: AgentProc) -> None:
    out = run_as(65534, agent, "")
    assert out["health"] == 1  # SERVING: health stays open
    assert out["plain"] == "PERMISSION_DENIED" and out["list"] == "PERMISSION_DENIED"
    assert not (agent.output_root / "esc").exists()
    # The secret file is the agent's alone.
    path = agent.state_dir / SECRET_FILE
    assert path.stat().st_mode & 0o777 == 0o600 and path.stat().st_uid == 0


def test_the_control_secret_lets_a_holder_in(agent: AgentProc) -> None:
    secret = (agent.state_dir / SECRET_FILE).read_text().strip()
    out = run_as(65534, agent, secret)
    assert out["plain"] == "PERMISSION_DENIED"
    assert out["secret"] == "OK"
    agent.wait_state("esc", "SUCCEEDED", "FAILED")


def test_root_on_the_same_host_controls_the_agent(agent: AgentProc) -> None:
    agent.launch("mine", ["/bin/true"])  # the harness is root: allowed by its uid
    agent.wait_state("mine", "SUCCEEDED")


def test_peer_addresses_parse() -> None:
    assert parse_peer("ipv4:127.0.0.1:5000") is not None
    got = parse_peer("ipv6:[::ffff:127.0.0.1]:6000")
    assert got is not None and str(got[0]) == "127.0.0.1" and got[1] == 6000
    assert parse_peer("unix:/x") is None and parse_peer("ipv4:junk") is None


POOL_CLIENT = textwrap.dedent("""
    import json, sys
    from gpufleet.coordinator.agents import AgentPool
    addr, secret = sys.argv[1:3]
    pool = AgentPool()
    out = {"without": pool.list_live(addr) is not None}
    pool.remember_secret(addr, secret)
    out["with"] = pool.list_live(addr) is not None
    pool.close()
    print(json.dumps(out))
""")


def test_a_coordinator_that_is_not_root_uses_the_secret_the_agent_registered(agent: AgentProc) -> None:
    """The agent sends its secret with Register; the coordinator's AgentPool puts it on every call."""
    secret = (agent.state_dir / SECRET_FILE).read_text().strip()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run([PY, "-c", POOL_CLIENT, agent.addr, secret], capture_output=True, text=True, timeout=120,
                       user=65534, group=65534, extra_groups=[], env=env, cwd="/")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"without": False, "with": True}
