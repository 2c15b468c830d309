"""A node whose certificate does not name the address the coordinator dials (issue 17): its heartbeats
arrive, so it shows READY, but every call to it fails TLS verification and jobs would hang silently.
The coordinator says so on the node (`nodes show`, `nodes list`), and its log stays JSON only although
grpc's C core reports each failed handshake."""
from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from gpufleet import tls
from gpufleet.v1 import agent_pb2 as apb
from gpufleet.v1 import agent_pb2_grpc, coordinator_pb2_grpc
from gpufleet.v1 import common_pb2 as pb
from gpufleet.v1 import coordinator_pb2 as cpb
from tests.harness import AgentProc, CoordinatorProc, wait_for
from tests.integration.test_cli import cli_env
from tests.pki import Pki, make_pki

NODE = "n1"  # its certificate does not name the address it is dialled at
OTHER_CA = "n2"  # its certificate comes from another CA


@dataclass
class Fleet:
    pki: Pki
    coordinator: CoordinatorProc

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gpufleet.cli", *args], capture_output=True, text=True,
                              timeout=60, env=cli_env(self.coordinator.addr, **self.pki.cli_env("ops")),
                              stdin=subprocess.DEVNULL)


def register(c: CoordinatorProc, pki: Pki, a: AgentProc, dial: grpc.ChannelCredentials, target: str) -> None:
    """Register and heartbeat `a` with its own (fleet) agent certificate, as its registrar would; without
    --coordinator the agent does not check that its certificate names its address, so this test does."""
    named = grpc.secure_channel(a.addr, dial, options=[("grpc.ssl_target_name_override", target)])
    info = wait_for(lambda: agent_pb2_grpc.AgentStub(named).GetNode(apb.GetNodeRequest(), timeout=5), 30,
                    f"agent {a.node_name} serving")
    named.close()
    with grpc.secure_channel(c.addr, pki.creds(a.node_name)) as ch:
        stub = coordinator_pb2_grpc.FleetStub(ch)
        stub.Register(cpb.RegisterRequest(node_name=a.node_name, address=a.addr, agent_version=info.agent_version,
                                          runtime=info.runtime, gpus=info.gpus), timeout=10)
        stub.Heartbeat(cpb.HeartbeatRequest(node_name=a.node_name, gpus=info.gpus), timeout=10)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("nodetls")
    pki = make_pki(root / "pki", agents=(OTHER_CA,))
    pki.issue(NODE, "agent", ("node-a.example",))  # not 127.0.0.1, where the coordinator will dial it
    other = make_pki(root / "other", agents=(OTHER_CA,))
    c = CoordinatorProc(root / "c", pki=pki, node_timeout=120, extra=["--auth", "off"]).start()
    a1 = AgentProc(root / "a1", node_name=NODE, pki=pki, gpus="fake:1")
    crt, key = other.cert(OTHER_CA)
    a2 = AgentProc(root / "a2", node_name=OTHER_CA, gpus="fake:1",
                   extra=["--tls-cert", str(crt), "--tls-key", str(key), "--tls-ca", str(pki.ca)])
    try:
        for a in (a1, a2):
            a.daemon.start()
        register(c, pki, a1, pki.creds("coordinator"), "node-a.example")
        ccrt, ckey = pki.cert("coordinator")
        register(c, pki, a2, tls.channel_credentials(other.ca, ccrt, ckey), "127.0.0.1")
        for i in range(2):
            spec = pb.JobSpec(command=[sys.executable, "-c", "print('hi')"], output_dir=f"tls-job-{i}")
            c.stub.SubmitJob(cpb.SubmitJobRequest(spec=spec, gpus=1), timeout=10)
        yield Fleet(pki, c)
    finally:
        for a in (a1, a2):
            a.kill()
        c.kill()


def test_nodes_show_names_the_certificate_problem(fleet: Fleet) -> None:
    def shown() -> str | None:
        r = fleet.cli("nodes", "show", NODE)
        return r.stdout if r.returncode == 0 and "Hostname Verification Check failed" in r.stdout else None

    text = wait_for(shown, 60, "nodes show naming the failed hostname verification")
    assert "127.0.0.1" in text and "--host" in text  # which address, and how to fix it
    listed = fleet.cli("nodes", "list")
    assert listed.returncode == 0 and "fail TLS" in listed.stdout, listed.stdout
    doc = json.loads(fleet.cli("nodes", "show", NODE, "-o", "json").stdout)
    assert "Hostname Verification Check failed" in doc["dial_error"]


def test_a_certificate_from_another_ca_is_named(fleet: Fleet) -> None:
    def shown() -> str | None:
        r = fleet.cli("nodes", "show", OTHER_CA)
        return r.stdout if r.returncode == 0 and "CERTIFICATE_VERIFY_FAILED" in r.stdout else None

    assert "--tls-ca" in wait_for(shown, 60, "nodes show naming the unverifiable certificate")


def test_the_coordinator_log_stays_json_after_failed_handshakes(fleet: Fleet) -> None:
    path = fleet.coordinator.daemon.log_path
    wait_for(lambda: path.read_text().count("agent.tls_refused") >= 2, 60, "the coordinator logging both refusals")
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    not_json = []
    for ln in lines:
        try:
            json.loads(ln)
        except ValueError:
            not_json.append(ln)
    assert lines and not not_json, not_json[:5]
