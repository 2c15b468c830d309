"""mTLS and tokens on real gRPC servers on loopback (built in-process, with gpufleet.auth's interceptors).

The coordinator here is the real CoordinatorService + FleetService over a SQLite database (no
scheduler or reconciler running: queued jobs stay queued); the agent is a fake AgentServicer that
counts calls, since what is under test is who gets through, not what the agent does.

A refusal by the TLS handshake (wrong CA, expired, not yet valid, no client certificate) reaches
the caller as UNAVAILABLE and never reaches a servicer; a refusal by gpufleet.auth is
UNAUTHENTICATED (no identity) or PERMISSION_DENIED (identity without the right).
"""
from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from gpufleet.agent.registrar import Registrar
from gpufleet.coordinator import tokens as ctok
from gpufleet.coordinator.agents import AgentPool
from gpufleet.coordinator.db.engine import make_engine, migrate
from gpufleet.coordinator.fleet import Fleet
from gpufleet.coordinator.lifecycle import Lifecycle
from gpufleet.coordinator.reconciler import Reconciler
from gpufleet.coordinator.service import CoordinatorService, FleetService, add_to_server
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from sqlalchemy import Engine

from gpufleet import auth, tls
from gpufleet.v1 import agent_pb2 as apb
from gpufleet.v1 import agent_pb2_grpc, coordinator_pb2_grpc
from gpufleet.v1 import common_pb2 as pb
from gpufleet.v1 import coordinator_pb2 as cpb

OK = None
UNAUTH, DENIED, UNAVAILABLE, NOT_FOUND = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                                          grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND)
TIMEOUT = 5


# -------------------------------------------------------------------------------------------------
# PKI: one fleet CA, one rogue CA, a certificate per party and some bad ones


@dataclass
class Pki:
    root: Path
    ca: Path = field(init=False)

    def __post_init__(self) -> None:
        self.ca = self.root / "ca" / "ca.crt"

    def cert(self, name: str) -> tuple[Path, Path]:
        return self.root / name / f"{self.cn(name)}.crt", self.root / name / f"{self.cn(name)}.key"

    @staticmethod
    def cn(name: str) -> str:
        return name.split("@")[0]

    def creds(self, name: str | None, trust: str = "ca") -> grpc.ChannelCredentials:
        """Client credentials: trust `trust`'s CA, present certificate `name` (None: no certificate)."""
        ca = self.root / trust / "ca.crt"
        if name is None:
            return tls.channel_credentials(ca)
        crt, key = self.cert(name)
        return tls.channel_credentials(ca, crt, key)

    def server_creds(self, name: str) -> grpc.ServerCredentials:
        crt, key = self.cert(name)
        return tls.server_credentials(crt, key, self.ca)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    tls.init_ca(root / "ca")
    tls.init_ca(root / "rogue-ca", common_name="rogue CA")
    loop = ["127.0.0.1", "localhost"]
    now = dt.datetime.now(dt.UTC)
    parties: list[tuple[str, str, str, dict[str, Any]]] = [
        ("coord", "coord", "coordinator", {}),
        ("gpu01", "gpu01", "agent", {}),
        ("gpu02", "gpu02", "agent", {}),
        ("ops", "ops", "client", {}),
        ("stale", "stale", "coordinator", {"days": -1}),  # expired yesterday
        ("early", "early", "coordinator", {"valid_from": now + dt.timedelta(days=1)}),  # valid from tomorrow
    ]
    for out, name, role, kw in parties:
        tls.issue(root / "ca", root / out, name, role, loop, **kw)
    # Same names and roles as real parties, signed by a CA the fleet does not trust.
    tls.issue(root / "rogue-ca", root / "coord@rogue", "coord", "coordinator", loop)
    tls.issue(root / "rogue-ca", root / "gpu01@rogue", "gpu01", "agent", loop)
    return Pki(root)


@contextmanager
def serving(pki: Pki, cert: str, adders: list[Callable[[grpc.Server], None]],
            interceptors: list[grpc.ServerInterceptor], secure: bool = True) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), interceptors=interceptors,
                         options=[("grpc.so_reuseport", 0)])
    hs = health.HealthServicer()
    hs.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    reflection.enable_server_reflection([health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    for add in adders:
        add(server)
    port = (server.add_secure_port("127.0.0.1:0", pki.server_creds(cert)) if secure
            else server.add_insecure_port("127.0.0.1:0"))
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def code_of(fn: Callable[[], Any]) -> tuple[grpc.StatusCode | None, str]:
    try:
        r = fn()
        if hasattr(r, "__next__"):
            list(r)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return None, ""


# -------------------------------------------------------------------------------------------------
# Agent side


class FakeAgent(agent_pb2_grpc.AgentServicer):
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def GetNode(self, request: Any, context: Any) -> apb.NodeInfo:
        self.calls["GetNode"] += 1
        return apb.NodeInfo(node_name="gpu01", runtime="process")

    def ListJobs(self, request: Any, context: Any) -> apb.ListJobsResponse:
        self.calls["ListJobs"] += 1
        return apb.ListJobsResponse()

    def Launch(self, request: Any, context: Any) -> pb.JobStatus:
        self.calls["Launch"] += 1
        return pb.JobStatus(job_id=request.job_id, attempt=request.attempt, state=pb.AGENT_JOB_STATE_RUNNING)

    def Inspect(self, request: Any, context: Any) -> pb.JobStatus:
        self.calls["Inspect"] += 1
        return pb.JobStatus(job_id=request.job_id, attempt=request.attempt or 1,
                            state=pb.AGENT_JOB_STATE_RUNNING)

    def WatchEvents(self, request: Any, context: Any) -> Iterator[apb.JobEvent]:
        self.calls["WatchEvents"] += 1
        yield apb.JobEvent(seq=1, kind="state")


@pytest.fixture(scope="module")
def agent(pki: Pki) -> Iterator[tuple[str, FakeAgent]]:
    fake = FakeAgent()
    with serving(pki, "gpu01", [lambda s: agent_pb2_grpc.add_AgentServicer_to_server(fake, s)],
                 auth.interceptors_for_agent(tls=True)) as addr:
        yield addr, fake


def agent_stub(addr: str, creds: grpc.ChannelCredentials) -> agent_pb2_grpc.AgentStub:
    return agent_pb2_grpc.AgentStub(grpc.secure_channel(addr, creds))


def health_of(addr: str, creds: grpc.ChannelCredentials) -> tuple[grpc.StatusCode | None, str]:
    ch = grpc.secure_channel(addr, creds)
    try:
        stub = health_pb2_grpc.HealthStub(ch)
        return code_of(lambda: stub.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT))
    finally:
        ch.close()


def test_agent_accepts_the_coordinator_certificate(pki: Pki, agent: tuple[str, FakeAgent]) -> None:
    addr, fake = agent
    stub = agent_stub(addr, pki.creds("coord"))
    assert stub.GetNode(apb.GetNodeRequest(), timeout=TIMEOUT).node_name == "gpu01"
    assert stub.Launch(apb.LaunchRequest(job_id="j1", attempt=1), timeout=TIMEOUT).job_id == "j1"
    assert [e.seq for e in stub.WatchEvents(apb.WatchEventsRequest(), timeout=TIMEOUT)] == [1]
    # The coordinator's own client, wired the way coordinator/main.py does it.
    pool = AgentPool(credentials=tls.channel_credentials(pki.ca, *pki.cert("coord")))
    try:
        obs = pool.inspect(addr, "j1", 1)
        assert (obs.kind, obs.state) == ("found", "RUNNING")
    finally:
        pool.close()


def test_agent_refuses_every_other_role(pki: Pki, agent: tuple[str, FakeAgent]) -> None:
    addr, fake = agent
    launches = fake.calls["Launch"]
    other_agent = agent_stub(addr, pki.creds("gpu02"))
    code, msg = code_of(lambda: other_agent.Launch(apb.LaunchRequest(job_id="j2", attempt=1),
                                                   timeout=TIMEOUT))
    assert code == DENIED
    assert "'gpu02' has role agent" in msg and "gpufleet.v1.Agent/Launch accepts only role coordinator" in msg
    assert code_of(lambda: other_agent.GetNode(apb.GetNodeRequest(), timeout=TIMEOUT))[0] == DENIED
    # An operator's client certificate reads (gpufleet agent status) but never changes anything.
    ops = agent_stub(addr, pki.creds("ops"))
    assert ops.GetNode(apb.GetNodeRequest(), timeout=TIMEOUT).node_name == "gpu01"
    assert list(ops.ListJobs(apb.ListJobsRequest(), timeout=TIMEOUT).jobs) == []
    assert [e.seq for e in ops.WatchEvents(apb.WatchEventsRequest(), timeout=TIMEOUT)] == [1]
    code, msg = code_of(lambda: ops.Launch(apb.LaunchRequest(job_id="j3", attempt=1), timeout=TIMEOUT))
    assert code == DENIED and "'ops' has role client" in msg
    assert fake.calls["Launch"] == launches


def test_health_and_reflection_stay_open_to_any_fleet_certificate(pki: Pki,
                                                                  agent: tuple[str, FakeAgent]) -> None:
    addr, _ = agent
    for who in ("gpu02", "ops", "coord"):
        assert health_of(addr, pki.creds(who)) == (OK, "")
    ch = grpc.secure_channel(addr, pki.creds("gpu02"))
    try:
        responses = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=TIMEOUT)
        names = {s.name for r in responses for s in r.list_services_response.service}
        assert health.SERVICE_NAME in names
    finally:
        ch.close()


@pytest.mark.parametrize(("who", "trust"), [
    ("gpu01@rogue", "ca"),  # right name and role, wrong CA
    ("stale", "ca"),  # expired
    ("early", "ca"),  # not yet valid
    (None, "ca"),  # no client certificate at all
    ("coord", "rogue-ca"),  # the client does not trust the server's CA
])
def test_the_handshake_refuses_bad_certificates(pki: Pki, agent: tuple[str, FakeAgent], who: str | None,
                                                trust: str) -> None:
    addr, fake = agent
    before = sum(fake.calls.values())
    stub = agent_stub(addr, pki.creds(who, trust))
    code, _ = code_of(lambda: stub.GetNode(apb.GetNodeRequest(), timeout=TIMEOUT))
    assert code == UNAVAILABLE
    assert health_of(addr, pki.creds(who, trust))[0] == UNAVAILABLE  # not even the open services
    assert sum(fake.calls.values()) == before


@pytest.mark.parametrize("server_cert", ["stale", "early", "coord@rogue"])
def test_clients_refuse_a_server_with_a_bad_certificate(pki: Pki, server_cert: str) -> None:
    fake = FakeAgent()
    with serving(pki, server_cert, [lambda s: agent_pb2_grpc.add_AgentServicer_to_server(fake, s)],
                 auth.interceptors_for_agent(tls=True)) as addr:
        stub = agent_stub(addr, pki.creds("coord"))
        code, _ = code_of(lambda: stub.GetNode(apb.GetNodeRequest(), timeout=TIMEOUT))
    assert code == UNAVAILABLE and not fake.calls


def test_agent_auth_on_a_plaintext_port_lets_nobody_in(pki: Pki) -> None:
    fake = FakeAgent()
    with serving(pki, "gpu01", [lambda s: agent_pb2_grpc.add_AgentServicer_to_server(fake, s)],
                 [auth.AgentAuth()], secure=False) as addr:
        code, msg = code_of(lambda: agent_pb2_grpc.AgentStub(grpc.insecure_channel(addr)).GetNode(
            apb.GetNodeRequest(), timeout=TIMEOUT))
    assert code == UNAUTH and "needs a client certificate signed by the fleet CA" in msg
    assert not fake.calls


# -------------------------------------------------------------------------------------------------
# Coordinator side


@dataclass
class Coord:
    addr: str
    engine: Engine
    life: Lifecycle
    pki: Pki
    tokens: dict[str, str]
    channels: list[grpc.Channel] = field(default_factory=list)

    def channel(self, token: str | None, cert: str | None = "ops") -> grpc.Channel:
        ch = grpc.secure_channel(self.addr, self.pki.creds(cert))
        self.channels.append(ch)
        return auth.with_token(ch, token)

    def stub(self, who: str | None, cert: str | None = "ops") -> coordinator_pb2_grpc.CoordinatorStub:
        return coordinator_pb2_grpc.CoordinatorStub(self.channel(self.tokens.get(who or "", who), cert))

    def fleet(self, cert: str) -> coordinator_pb2_grpc.FleetStub:
        return coordinator_pb2_grpc.FleetStub(self.channel(None, cert))


@pytest.fixture(scope="module")
def coord(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coord]:
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('coord') / 'coordinator.db'}")
    migrate(engine)
    agents = AgentPool(credentials=tls.channel_credentials(pki.ca, *pki.cert("coord")))
    reconciler = Reconciler(engine, agents)
    fleet = Fleet(engine, reconciler, lambda: None)
    life = Lifecycle(engine, agents, reconciler, lambda: None)
    interceptor = ctok.CoordinatorAuth(engine, agent_certs=True)
    tokens = {name: ctok.create_token(engine, name, role)
              for name, role in [("root", "admin"), ("alice", "user"), ("bob", "user"), ("val", "viewer")]}
    with serving(pki, "coord", [lambda s: add_to_server(CoordinatorService(engine, life, agents),
                                                         FleetService(fleet), s)], [interceptor]) as addr:
        c = Coord(addr, engine, life, pki, tokens)
        yield c
        for ch in c.channels:
            ch.close()
    interceptor.close()
    agents.close()
    engine.dispose()


def new_model(stub: coordinator_pb2_grpc.CoordinatorStub, no: str = "G1") -> cpb.Model:
    req = cpb.CreateModelRequest(model_no=no, params_json='{"total_epoch": 2}',
                                 spec=pb.JobSpec(command=["python3", "train.py"]))
    return stub.CreateModel(req, timeout=TIMEOUT)


def new_job(stub: coordinator_pb2_grpc.CoordinatorStub) -> cpb.Job:
    # The fleet here is certificates without GPUs: the job only has to exist (it never runs).
    req = cpb.SubmitJobRequest(spec=pb.JobSpec(command=["true"], output_dir="jobs/j"), gpus=1, name="j",
                               wait_for_capacity=True)
    return stub.SubmitJob(req, timeout=TIMEOUT)


def test_fleet_calls_need_the_agent_certificate_of_that_node(coord: Coord) -> None:
    reg = cpb.RegisterRequest(node_name="gpu01", address="127.0.0.1:1", agent_version="t", runtime="process")
    assert coord.fleet("gpu01").Register(reg, timeout=TIMEOUT).node_name == "gpu01"
    coord.fleet("gpu01").Heartbeat(cpb.HeartbeatRequest(node_name="gpu01"), timeout=TIMEOUT)

    code, msg = code_of(lambda: coord.fleet("gpu01").Register(
        cpb.RegisterRequest(node_name="gpu02", address="127.0.0.1:2"), timeout=TIMEOUT))
    assert code == DENIED and "'gpu01' may only speak for node 'gpu01', not 'gpu02'" in msg
    code, msg = code_of(lambda: coord.fleet("gpu01").Heartbeat(cpb.HeartbeatRequest(node_name="gpu02"),
                                                               timeout=TIMEOUT))
    assert code == DENIED and "not 'gpu02'" in msg
    for cert, role in (("ops", "client"), ("coord", "coordinator")):
        code, msg = code_of(lambda c=cert: coord.fleet(c).Register(  # type: ignore[misc]
            cpb.RegisterRequest(node_name=Pki.cn(c), address="127.0.0.1:3"), timeout=TIMEOUT))
        assert code == DENIED
        assert f"has role {role}; gpufleet.v1.Fleet/Register accepts only role agent" in msg
    assert code_of(lambda: coord.fleet("gpu01@rogue").Register(reg, timeout=TIMEOUT))[0] == UNAVAILABLE
    nodes = coord.stub("root").ListNodes(cpb.ListNodesRequest(), timeout=TIMEOUT).nodes
    assert [n.name for n in nodes] == ["gpu01"]


def test_the_agent_registrar_registers_over_mtls(coord: Coord, pki: Pki) -> None:
    class Sup:
        store = None  # the reporter's outbox: not started by heartbeat_once

        def jobs(self) -> list[Any]:
            return []

        list = jobs  # older Registrar

    class Service:
        sup = Sup()

        def node_info(self) -> apb.NodeInfo:
            return apb.NodeInfo(node_name="gpu02", agent_version="t", runtime="process")

    r = Registrar(coord.addr, Service(), advertise="127.0.0.1:50052",  # type: ignore[arg-type]
                  credentials=tls.channel_credentials(pki.ca, *pki.cert("gpu02")))
    try:
        r.heartbeat_once()
        assert r.registered
    finally:
        r.channel.close()


def test_missing_malformed_and_unknown_tokens_are_unauthenticated(coord: Coord) -> None:
    req = cpb.ListModelsRequest()
    code, msg = code_of(lambda: coord.stub(None).ListModels(req, timeout=TIMEOUT))
    assert code == UNAUTH and msg.startswith("missing bearer token")
    code, msg = code_of(lambda: coord.stub("gft_" + "x" * 43).ListModels(req, timeout=TIMEOUT))
    assert code == UNAUTH and msg == "unknown or revoked token"
    code, msg = code_of(lambda: coord.stub("not-a-token").ListModels(req, timeout=TIMEOUT))
    assert code == UNAUTH and "unknown or revoked token" in msg
    raw = coordinator_pb2_grpc.CoordinatorStub(coord.channel(None))
    basic = [("authorization", "Basic eDp5")]
    code, msg = code_of(lambda: raw.ListModels(req, timeout=TIMEOUT, metadata=basic))
    assert code == UNAUTH and "expected `Bearer <token>`" in msg
    # Streams are checked too.
    anon = coord.stub(None)
    code, msg = code_of(lambda: anon.StreamJobLogs(apb.StreamLogsRequest(job_id="x"), timeout=TIMEOUT))
    assert code == UNAUTH and msg.startswith("missing bearer token")
    # The health service needs no token (only the transport's client certificate).
    assert health_of(coord.addr, coord.pki.creds("ops")) == (OK, "")


def test_a_coordinator_call_without_a_client_certificate_fails_the_handshake(coord: Coord) -> None:
    stub = coord.stub("root", cert=None)
    code, _ = code_of(lambda: stub.ListModels(cpb.ListModelsRequest(), timeout=TIMEOUT))
    assert code == UNAVAILABLE


def test_viewer_reads_and_changes_nothing_and_reads_no_logs(coord: Coord) -> None:
    m = new_model(coord.stub("alice"), "V1")
    j = new_job(coord.stub("alice"))
    v = coord.stub("val")
    assert v.GetModel(cpb.ModelRef(uuid=m.uuid), timeout=TIMEOUT).uuid == m.uuid
    assert v.ListModels(cpb.ListModelsRequest(), timeout=TIMEOUT).total_elements >= 1
    assert v.GetJob(cpb.JobRef(job_id=j.job_id), timeout=TIMEOUT).job_id == j.job_id
    assert v.ListJobs(cpb.ListJobsQuery(), timeout=TIMEOUT).total_elements >= 1
    assert v.DatasetCounts(cpb.ModelRef(uuid=m.uuid), timeout=TIMEOUT).total == 0
    v.ListNodes(cpb.ListNodesRequest(), timeout=TIMEOUT)
    # Logs and metrics are the owner's and admins' unless the coordinator lets viewers read them
    # (--viewers-read-logs; see test_tenants.py).
    code, msg = code_of(lambda: v.GetJobMetrics(cpb.JobRef(job_id=j.job_id), timeout=TIMEOUT))
    assert code == DENIED and "--viewers-read-logs" in msg
    code, _ = code_of(lambda: v.StreamJobLogs(apb.StreamLogsRequest(job_id=j.job_id), timeout=TIMEOUT))
    assert code == DENIED
    # Queued: no logs yet, but the owner's stream is allowed.
    assert list(coord.stub("alice").StreamJobLogs(apb.StreamLogsRequest(job_id=j.job_id), timeout=TIMEOUT)) == []
    for method, req in [
        ("CreateModel", cpb.CreateModelRequest(model_no="V2")),
        ("RunTrain", cpb.ModelRef(uuid=m.uuid)),
        ("SyncStatus", cpb.ModelRef(uuid=m.uuid)),
        ("SubmitJob", cpb.SubmitJobRequest()),
        ("CancelJob", cpb.JobRef(job_id=j.job_id)),
        ("DrainNode", cpb.NodeRef(name="gpu01")),
    ]:
        code, msg = code_of(lambda m=method, r=req: getattr(v, m)(r, timeout=TIMEOUT))  # type: ignore[misc]
        assert code == DENIED, method
        assert f"token 'val' has role viewer, which may not call gpufleet.v1.Coordinator/{method}" in msg
    assert coord.stub("root").GetModel(cpb.ModelRef(uuid=m.uuid), timeout=TIMEOUT).status_name == "READY"


def test_users_change_only_their_own_models_and_jobs(coord: Coord) -> None:
    alice, bob, root = coord.stub("alice"), coord.stub("bob"), coord.stub("root")
    m = new_model(alice, "U1")
    ref = cpb.ModelRef(uuid=m.uuid)
    assert alice.RunTrain(ref, timeout=TIMEOUT).status_name == "IN_PROGRESS"
    for method in ("CancelTrain", "SyncStatus", "RestartTrain"):
        code, msg = code_of(lambda x=method: getattr(bob, x)(ref, timeout=TIMEOUT))  # type: ignore[misc]
        assert code == DENIED, method
        assert f"may only change its own models and jobs; model {m.uuid} is not owned by 'bob'" in msg
    code, _ = code_of(lambda: bob.RunTest(cpb.RunTestRequest(uuid=m.uuid, epoch=1), timeout=TIMEOUT))
    assert code == DENIED
    assert bob.GetModel(ref, timeout=TIMEOUT).uuid == m.uuid  # reading is fine
    # The model's jobs are the model's owner's: bob may not cancel them either.
    attempt = alice.GetModel(ref, timeout=TIMEOUT).current_attempt_id
    code, msg = code_of(lambda: bob.CancelJob(cpb.JobRef(job_id=attempt), timeout=TIMEOUT))
    assert code == DENIED and f"job {attempt} (model {m.uuid}) is not owned by 'bob'" in msg
    assert alice.CancelTrain(ref, timeout=TIMEOUT).status_name == "STOPPED"

    j = new_job(alice)
    code, _ = code_of(lambda: bob.CancelJob(cpb.JobRef(job_id=j.job_id), timeout=TIMEOUT))
    assert code == DENIED
    assert alice.CancelJob(cpb.JobRef(job_id=j.job_id), timeout=TIMEOUT).status_name == "CANCELED"

    # Admins change anything; what they create is theirs, not a user's.
    theirs = new_model(root, "A1")
    assert root.RunTrain(cpb.ModelRef(uuid=theirs.uuid), timeout=TIMEOUT).status_name == "IN_PROGRESS"
    assert code_of(lambda: alice.CancelTrain(cpb.ModelRef(uuid=theirs.uuid), timeout=TIMEOUT))[0] == DENIED
    assert root.CancelTrain(cpb.ModelRef(uuid=theirs.uuid), timeout=TIMEOUT).status_name == "STOPPED"
    # Made while auth was off: nobody's, so only admins may change it.
    legacy = coord.life.create_model(model_no="L1", version="", train_type="", memo="", params_json="{}",
                                     spec={"command": ["true"]}, gpus=1, priority=0, constraints={},
                                     max_retries=0)
    assert code_of(lambda: alice.RunTrain(cpb.ModelRef(uuid=legacy.uuid), timeout=TIMEOUT))[0] == DENIED
    assert root.RunTrain(cpb.ModelRef(uuid=legacy.uuid), timeout=TIMEOUT).status_name == "IN_PROGRESS"

    # Admin-only methods, and unknown entities answered by the servicer as always.
    code, msg = code_of(lambda: alice.DrainNode(cpb.NodeRef(name="gpu01"), timeout=TIMEOUT))
    assert code == DENIED
    assert "role user, which may not call gpufleet.v1.Coordinator/DrainNode (admin only)" in msg
    missing = "00000000-0000-4000-8000-000000000000"
    assert code_of(lambda: alice.RunTrain(cpb.ModelRef(uuid=missing), timeout=TIMEOUT))[0] == NOT_FOUND
    assert code_of(lambda: root.DrainNode(cpb.NodeRef(name="no-such-node"), timeout=TIMEOUT))[0] == NOT_FOUND


def test_a_revoked_token_is_refused_at_once(coord: Coord) -> None:
    token = ctok.create_token(coord.engine, "carol", "user")
    stub = coordinator_pb2_grpc.CoordinatorStub(coord.channel(token))
    stub.ListModels(cpb.ListModelsRequest(), timeout=TIMEOUT)
    ctok.revoke_token(coord.engine, "carol")
    code, msg = code_of(lambda: stub.ListModels(cpb.ListModelsRequest(), timeout=TIMEOUT))
    assert (code, msg) == (UNAUTH, "unknown or revoked token")


def test_tokens_never_reach_the_log(coord: Coord, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    code_of(lambda: coord.stub("val").CreateModel(cpb.CreateModelRequest(model_no="X"), timeout=TIMEOUT))
    code_of(lambda: coord.stub("gft_" + "y" * 43).ListModels(cpb.ListModelsRequest(), timeout=TIMEOUT))
    coord.stub("alice").ListModels(cpb.ListModelsRequest(), timeout=TIMEOUT)
    text = caplog.text + " ".join(str(getattr(r, "fields", "")) for r in caplog.records)
    assert "auth.denied" in text
    for token in coord.tokens.values():
        assert token not in text and token[16:] not in text
    assert "y" * 20 not in text


def test_auth_off_changes_nothing(pki: Pki, tmp_path: Path) -> None:
    """No interceptor (the demo, loopback development): no token, no certificate, as before."""
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(engine)
    agents = AgentPool()
    reconciler = Reconciler(engine, agents)
    life = Lifecycle(engine, agents, reconciler, lambda: None)
    try:
        fleet = FleetService(Fleet(engine, reconciler, lambda: None))
        adders = [lambda s: add_to_server(CoordinatorService(engine, life, agents), fleet, s)]
        with serving(pki, "coord", adders, [], secure=False) as addr:
            ch = grpc.insecure_channel(addr)
            stub = coordinator_pb2_grpc.CoordinatorStub(ch)
            m = new_model(stub)
            assert stub.RunTrain(cpb.ModelRef(uuid=m.uuid), timeout=TIMEOUT).status_name == "IN_PROGRESS"
            ch.close()
    finally:
        agents.close()
        engine.dispose()


def test_a_database_failure_during_the_token_check_is_unavailable_and_says_nothing_inside(
        pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = make_engine(f"sqlite:///{tmp_path / 'good.db'}")
    migrate(good)
    token = ctok.create_token(good, "root", "admin")
    broken = make_engine(f"sqlite:///{tmp_path / 'never-migrated.db'}")  # no tokens table
    interceptor = ctok.CoordinatorAuth(broken)
    agents = AgentPool()
    reconciler = Reconciler(good, agents)
    life = Lifecycle(good, agents, reconciler, lambda: None)
    fleet = FleetService(Fleet(good, reconciler, lambda: None))
    adders = [lambda s: add_to_server(CoordinatorService(good, life, agents), fleet, s)]
    try:
        with serving(pki, "coord", adders, [interceptor]) as addr:
            ch = grpc.secure_channel(addr, pki.creds("ops"))
            stub = coordinator_pb2_grpc.CoordinatorStub(auth.with_token(ch, token))
            code, msg = code_of(lambda: stub.ListModels(cpb.ListModelsRequest(), timeout=TIMEOUT))
            ch.close()
    finally:
        interceptor.close()
        agents.close()
        good.dispose()
        broken.dispose()
    assert code == UNAVAILABLE and "cannot check the token now" in msg
    assert "no such table" not in msg and "never-migrated" not in msg
    assert "no such table" in caplog.text  # the operator sees why, in the log
    assert token not in caplog.text
