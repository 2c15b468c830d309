"""Matrix 4: one agent partitioned from the coordinator by the network, then healed.

Topology (all of it made here, removed at teardown even on failure):

    host netns:  coordinator --listen 169.254.X.(B+1):PORT  on bridge gpfbr<tok>
                     |                                   |
                 veth gpfa<tok> (the cut)            veth gpfb<tok>
                     |                                   |
    netns gpf-test-<tok>a: agent A at .(B+2)      netns gpf-test-<tok>b: agent B at .(B+3)

X.B is a random link-local /29 (169.254.0.0/16: never routed); every packet stays on this bridge and
its two veth pairs. The coordinator is plaintext on a non-loopback address, so it runs with
`--insecure --auth off`, as do the agents (`--insecure`): nothing outside the namespaces can reach
these addresses. `ip link set gpfa<tok> down` cuts A off (its packets go nowhere, nothing is
refused); `up` heals.

The story: a job (max_retries=1, a short --lost-after) runs on A; A is cut off -> within the node
timeout A is UNREACHABLE, and once the job's lost_after passed too the attempt is STOPPED NODE_LOST
and requeued on B (in a fresh folder, part-attempt2), where it runs to completion, while A's process
keeps running on the far side of the partition. On heal A re-registers, is fenced (its old attempt
is stopped: the process is gone), and the database shows the job completed exactly once.

Needs root and `ip netns` (iproute2) with veth and bridge support; skipped with the reason otherwise
(an environment limit, not a code problem).
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from gpufleet.v1 import common_pb2 as pb
from gpufleet.v1 import coordinator_pb2 as cpb
from tests.faults import GATED, release, runs, settle, sqlite_url
from tests.harness import AgentProc, CoordinatorProc, pid_alive, wait_for
from tests.integration.test_coordinator_reconcile import agent_attempts, get_job, node, register, submit, wait_job

pytestmark = pytest.mark.slow

NODE_TIMEOUT = 3.0


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: exit {r.returncode}: {(r.stderr or r.stdout).strip()}")
    return r


@dataclass
class Net:
    """A bridge on the host with one address, and two namespaces hanging off it by veth pairs."""

    tok: str = field(default_factory=lambda: secrets.token_hex(3))
    made_links: list[str] = field(default_factory=list)
    made_ns: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        third = 1 + secrets.randbelow(254)
        base = 8 * secrets.randbelow(32)
        prefix = f"169.254.{third}"
        self.host_ip, self.a_ip, self.b_ip = (f"{prefix}.{base + i}" for i in (1, 2, 3))
        self.bridge = f"gpfbr{self.tok}"
        self.ns_a, self.ns_b = f"gpf-test-{self.tok}a", f"gpf-test-{self.tok}b"
        self.veth_a, self.veth_b = f"gpfa{self.tok}", f"gpfb{self.tok}"

    def create(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        self.made_links.append(self.bridge)
        _ip("addr", "add", f"{self.host_ip}/29", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for ns, veth, addr in ((self.ns_a, self.veth_a, self.a_ip), (self.ns_b, self.veth_b, self.b_ip)):
            _ip("netns", "add", ns)
            self.made_ns.append(ns)
            inner = f"{veth}n"
            _ip("link", "add", veth, "type", "veth", "peer", "name", inner)
            self.made_links.append(veth)
            _ip("link", "set", inner, "netns", ns)
            _ip("link", "set", veth, "master", self.bridge, "up")
            _ip("-n", ns, "addr", "add", f"{addr}/29", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def cut_a(self) -> None:
        _ip("link", "set", self.veth_a, "down")

    def heal_a(self) -> None:
        _ip("link", "set", self.veth_a, "up")

    def pids(self) -> list[int]:
        out: list[int] = []
        for ns in self.made_ns:
            r = _ip("netns", "pids", ns, check=False)
            out += [int(p) for p in r.stdout.split() if p.strip().isdigit()]
        return out

    def destroy(self) -> None:
        # Whatever still runs in our namespaces was started by this test (agents, their jobs).
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for link in reversed(self.made_links):
            _ip("link", "del", link, check=False)
        for ns in self.made_ns:
            _ip("netns", "del", ns, check=False)


@pytest.fixture
def net() -> Iterator[Net]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    probe = f"gpf-test-{secrets.token_hex(3)}p"
    try:
        r = _ip("netns", "add", probe, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"`ip netns` is not usable here: {exc}")
    if r.returncode != 0:
        pytest.skip(f"`ip netns add` is not permitted here: {(r.stderr or r.stdout).strip()}")
    _ip("netns", "del", probe, check=False)
    n = Net()
    try:
        try:
            n.create()
        except RuntimeError as exc:
            pytest.skip(f"cannot build the test network (veth/bridge): {exc}")
        yield n
    finally:
        n.destroy()


def coordinator_on(root: Path, n: Net) -> CoordinatorProc:
    c = CoordinatorProc(root, node_timeout=NODE_TIMEOUT, lost_after=1.0)
    argv = c.daemon.argv
    c.addr = f"{n.host_ip}:{c.port}"
    argv[argv.index("--listen") + 1] = c.addr
    argv += ["--insecure", "--auth", "off"]
    return c


def agent_in(root: Path, ns: str, ip: str, coordinator: str, name: str) -> AgentProc:
    a = AgentProc(root, node_name=name, extra=["--coordinator", coordinator, "--insecure"])
    argv = a.daemon.argv
    a.addr = f"{ip}:{a.port}"
    argv[argv.index("--listen") + 1] = a.addr
    a.daemon.argv = ["ip", "netns", "exec", ns, *argv]
    return a


@pytest.fixture
def fleet_across(net: Net, tmp_path: Path) -> Iterator[tuple[CoordinatorProc, AgentProc, AgentProc]]:
    c = coordinator_on(tmp_path / "c", net)
    a = agent_in(tmp_path / "A", net.ns_a, net.a_ip, c.addr, "part-A")
    b = agent_in(tmp_path / "B", net.ns_b, net.b_ip, c.addr, "part-B")
    try:
        yield c, a, b
    finally:
        for x in (a, b):
            x.kill()
            x.cleanup_jobs()
        c.kill()


def job_pids(a: AgentProc, job_id: str, attempt: int = 1) -> tuple[int, int]:
    """(wrapper pid, job pid) from the job's runtime files (readable while A is cut off)."""
    folder = a.state_dir / "jobs" / job_id / str(attempt)
    def text(name: str) -> str:
        return (folder / name).read_text() if (folder / name).exists() else ""

    handle = wait_for(lambda: text("handle.json"), 10, f"{folder}/handle.json")
    child = wait_for(lambda: text("child.pid"), 10, f"{folder}/child.pid")
    return int(json.loads(handle)["pid"]), int(child)


def test_partitioned_node_is_lost_requeued_and_fenced_on_heal(
        net: Net, fleet_across: tuple[CoordinatorProc, AgentProc, AgentProc]) -> None:
    c, a, b = fleet_across
    c.start()
    a.start()
    register(c, a)
    job = submit(c, GATED, "part", max_retries=1)
    assert wait_job(c, job.job_id, "RUNNING").node == a.node_name
    wait_for(lambda: runs(a, "part") == 1, 20, "attempt 1 to start its work on A")
    old, old_job = job_pids(a, job.job_id)
    b.start()  # only now: the job could go nowhere else
    register(c, b, 2)

    net.cut_a()
    cut_at = time.monotonic()
    first = wait_job(c, job.job_id, "STOPPED", "SUCCESS", "FAILED", timeout=NODE_TIMEOUT + 15)
    lost_after = time.monotonic() - cut_at
    assert first.status_name == "STOPPED" and first.exit_code == -1, first
    assert first.error_message.startswith("NODE_LOST"), first.error_message
    assert node(c, a.node_name).state_name == "UNREACHABLE"
    # Declared lost once the timeout passed (plus a sweep and a heartbeat interval), not much later.
    assert lost_after <= NODE_TIMEOUT + 3.0, f"node LOST only {lost_after:.1f}s after the cut"
    retry_id = f"{job.job_id}.2"
    assert first.superseded_by == retry_id
    second = wait_job(c, retry_id, "RUNNING")
    assert second.node == b.node_name and second.attempt == 2 and second.retries_used == 1, second
    wait_for(lambda: runs(b, "part-attempt2") == 1, 20, "attempt 2 to start its work on B")
    # The partition stopped nothing on A's side: its attempt 1 still runs there.
    assert pid_alive(old) and pid_alive(old_job) and runs(a, "part") == 1

    release(b, "part-attempt2")
    done = wait_job(c, retry_id, "SUCCESS", "FAILED", "STOPPED")
    assert done.status_name == "SUCCESS" and done.exit_code == 0, done
    assert pid_alive(old), "the partitioned attempt should still run until A hears from the coordinator"

    net.heal_a()
    wait_for(lambda: node(c, a.node_name).state_name == "READY", 30, "node A to re-register after the heal")
    wait_for(lambda: not pid_alive(old) and not pid_alive(old_job), 30,
             "attempt 1 on A (wrapper and job) to be fenced (stopped) after the heal")
    log = a.daemon.log_path.read_text()
    assert '"fence.stop"' in log and f'"job_id": "{job.job_id}"' in log, a.daemon.log_tail()

    def fenced_on_a() -> bool:
        try:
            return a.inspect(job.job_id).state == pb.AGENT_JOB_STATE_STOPPED
        except grpc.RpcError as exc:  # acknowledged and dropped already
            return exc.code() == grpc.StatusCode.NOT_FOUND
    wait_for(fenced_on_a, 15, "agent A to report its attempt STOPPED (or to have dropped it)")

    # Exactly once, as far as the database says: one SUCCESS for the root, the old attempt STOPPED.
    attempts = {j.job_id: j for j in c.stub.ListJobs(cpb.ListJobsQuery(), timeout=5).jobs}
    assert set(attempts) == {job.job_id, retry_id}
    assert Counter(j.status_name for j in attempts.values()) == Counter({"STOPPED": 1, "SUCCESS": 1})
    assert attempts[job.job_id].error_message.startswith("NODE_LOST")  # the first verdict stands
    assert get_job(c, retry_id).status_name == "SUCCESS"
    # A's attempt 1 was stopped, never released; each agent ran its attempt once.
    assert not (a.output_root / "part" / "release").exists()
    assert runs(a, "part") == 1 and runs(b, "part-attempt2") == 1
    assert agent_attempts(a) == {(job.job_id, 1)} and agent_attempts(b) == {(job.job_id, 2)}
    settle(sqlite_url(c), {a.node_name: a.state_dir, b.node_name: b.state_dir})
