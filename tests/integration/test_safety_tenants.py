"""Tenants apart and nodes who their certificate says, on real daemons with auth on.

One mTLS fleet (a coordinator and a process-runtime agent, each its own process, certificates from
gpufleet.tls, tokens minted in the coordinator's database before it starts): two users (alice, bob),
a viewer (val) and an admin (root) call it over gRPC as the CLI would, with a client certificate and
a bearer token.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from gpufleet.coordinator import tokens as ctok
from gpufleet.coordinator.db import engine as dbengine

from gpufleet import auth, tls
from gpufleet.v1 import agent_pb2 as apb
from gpufleet.v1 import common_pb2 as pb
from gpufleet.v1 import coordinator_pb2 as cpb
from gpufleet.v1 import coordinator_pb2_grpc
from tests.harness import AgentProc, CoordinatorProc, free_port, wait_for

DENIED, UNAUTH = grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED
TIMEOUT = 10
PEOPLE = (("root", "admin"), ("alice", "user"), ("bob", "user"), ("val", "viewer"))


@dataclass
class Fleet:
    pki: Path
    c: CoordinatorProc
    a: AgentProc
    tokens: dict[str, str]
    channels: list[grpc.Channel] = field(default_factory=list)

    def tls_flags(self, name: str) -> list[str]:
        d = self.pki / name
        return ["--tls-cert", str(d / f"{name}.crt"), "--tls-key", str(d / f"{name}.key"),
                "--tls-ca", str(self.pki / "ca" / "ca.crt")]

    def creds(self, name: str) -> grpc.ChannelCredentials:
        d = self.pki / name
        return tls.channel_credentials(self.pki / "ca" / "ca.crt", d / f"{name}.crt", d / f"{name}.key")

    def stub(self, who: str) -> coordinator_pb2_grpc.CoordinatorStub:
        ch = grpc.secure_channel(self.c.addr, self.creds("ops"))
        self.channels.append(ch)
        return coordinator_pb2_grpc.CoordinatorStub(auth.with_token(ch, self.tokens[who]))

    def fleet_stub(self, cert: str) -> coordinator_pb2_grpc.FleetStub:
        ch = grpc.secure_channel(self.c.addr, self.creds(cert))
        self.channels.append(ch)
        return coordinator_pb2_grpc.FleetStub(ch)


def mint_tokens(state: Path) -> dict[str, str]:
    """Tokens made in the coordinator's own database before it starts (as `tokens create` would)."""
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    eng = dbengine.make_engine(dbengine.default_sqlite_url(state))
    try:
        dbengine.migrate(eng)
        return {name: ctok.create_token(eng, name, role) for name, role in PEOPLE}
    finally:
        eng.dispose()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("tenants")
    pki = root / "pki"
    tls.init_ca(pki / "ca")
    for name, role in (("coordinator", "coordinator"), ("gpu01", "agent"), ("gpu02", "agent"), ("ops", "client")):
        tls.issue(pki / "ca", pki / name, name, role, ["127.0.0.1"])
    c = CoordinatorProc(root / "c", extra=["--auth", "on"], port=free_port())
    tokens = mint_tokens(root / "c" / "state")
    f = Fleet(pki, c, None, tokens)  # type: ignore[arg-type]
    c.daemon.argv += f.tls_flags("coordinator")
    c.daemon.start()
    f.a = AgentProc(root / "a", node_name="gpu01", gpus="fake:2",
                    extra=[*f.tls_flags("gpu01"), "--coordinator", c.addr])
    f.a.daemon.start()
    try:
        wait_for(lambda: [n.name for n in f.stub("root").ListNodes(cpb.ListNodesRequest(), timeout=TIMEOUT).nodes]
                 == ["gpu01"], 60, "gpu01 registered over mTLS")
        yield f
    except AssertionError as exc:
        raise AssertionError(f"{exc}\ncoordinator:\n{c.daemon.log_tail()}\nagent:\n{f.a.daemon.log_tail()}") from None
    finally:
        for ch in f.channels:
            ch.close()
        f.a.cleanup_jobs()
        f.a.kill()
        c.kill()


def code_of(fn: Callable[[], Any]) -> tuple[grpc.StatusCode | None, str]:
    try:
        r = fn()
        if hasattr(r, "__next__"):
            list(r)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return None, ""


def submit(stub: coordinator_pb2_grpc.CoordinatorStub, output_dir: str, argv: list[str] | None = None,
           **spec: Any) -> cpb.Job:
    req = cpb.SubmitJobRequest(spec=pb.JobSpec(command=argv or ["true"], output_dir=output_dir, **spec), gpus=1,
                               wait_for_capacity=True)
    return stub.SubmitJob(req, timeout=TIMEOUT)


def finished(stub: coordinator_pb2_grpc.CoordinatorStub, job_id: str) -> cpb.Job:
    return wait_for(lambda: (j := stub.GetJob(cpb.JobRef(job_id=job_id), timeout=TIMEOUT)).status_name
                    in ("SUCCESS", "FAILED", "CANCELED", "STOPPED") and j, 60, f"job {job_id} ended")


def test_each_users_output_lives_under_their_own_folder(fleet: Fleet) -> None:
    alice, bob, root = fleet.stub("alice"), fleet.stub("bob"), fleet.stub("root")
    job = submit(alice, "jobs/a", [sys.executable, "-c",
                                   "import os; open(os.environ['GPUFLEET_OUTPUT_DIR'] + '/ckpt', 'w').write('a')"])
    assert job.spec.output_dir == "users/alice/jobs/a"
    assert finished(alice, job.job_id).status_name == "SUCCESS"
    assert (fleet.a.output_root / "users" / "alice" / "jobs" / "a" / "ckpt").read_text() == "a"
    # Naming one's own folder keeps it; a model's attempts inherit the prefix.
    assert submit(alice, "users/alice/x").spec.output_dir == "users/alice/x"
    m = alice.CreateModel(cpb.CreateModelRequest(model_no="T1", spec=pb.JobSpec(command=["true"])), timeout=TIMEOUT)
    assert m.spec.output_dir == "users/alice/models"

    before = root.ListJobs(cpb.ListJobsQuery(), timeout=TIMEOUT).total_elements
    for path in ("users/alice/jobs/a", "./users/alice", "users/alice/../bob"):
        code, msg = code_of(lambda p=path: submit(bob, p))  # type: ignore[misc]
        if path.endswith("../bob"):
            assert code == DENIED and "spec.output_dir" in msg
            continue
        assert code == DENIED, path
        assert msg.startswith(f"spec.output_dir: {path!r} is not under your own folder users/bob/"), msg
    code, msg = code_of(lambda: submit(bob, "jobs/b", mounts=[pb.Mount(source="users/alice/jobs")]))
    assert code == DENIED and msg.startswith("spec.mounts[0].source: 'users/alice/jobs' is another user's folder")
    code, msg = code_of(lambda: submit(bob, "jobs/b", mounts=[pb.Mount(source=f"tmp/{m.uuid}")]))
    assert code == DENIED and "spec.mounts[0].source" in msg and "spec.dataset" in msg
    code, msg = code_of(lambda: submit(bob, "jobs/b", dataset=m.uuid))
    assert code == DENIED and msg.startswith(f"spec.dataset: {m.uuid!r} is not a model owned by 'bob'")
    bobs = bob.CreateModel(cpb.CreateModelRequest(model_no="B1", spec=pb.JobSpec(command=["true"])),
                           timeout=TIMEOUT)
    stage = cpb.CoordinatorStageRequest(uuid=bobs.uuid, links=[apb.StageLink(split="train",
                                                                             input1="users/alice/jobs/a/ckpt")])
    code, msg = code_of(lambda: bob.StageDataset(stage, timeout=TIMEOUT))
    assert code == DENIED and msg.startswith("links[0].input1: 'users/alice/jobs/a/ckpt' is another user's")
    code, _ = code_of(lambda: bob.StageDataset(cpb.CoordinatorStageRequest(uuid=m.uuid, links=stage.links),
                                               timeout=TIMEOUT))
    assert code == DENIED  # alice's model: bob may not stage into it either
    assert root.ListJobs(cpb.ListJobsQuery(), timeout=TIMEOUT).total_elements == before  # nothing was made
    assert not (fleet.a.data_root / "tmp" / bobs.uuid).exists()

    # Admins may name anyone's folder, and their own paths are left as written.
    assert submit(root, "users/alice/shared").spec.output_dir == "users/alice/shared"
    assert submit(root, "jobs/r").spec.output_dir == "jobs/r"


def test_secrets_logs_and_metrics_are_the_owners(fleet: Fleet) -> None:
    alice, bob, val, root = (fleet.stub(n) for n in ("alice", "bob", "val", "root"))
    job = submit(alice, "jobs/s", [sys.executable, "-c", "print('alice-was-here')"],
                 env={"API_KEY": "s3cret-value"})
    m = alice.CreateModel(cpb.CreateModelRequest(model_no="S1", spec=pb.JobSpec(
        command=["true"], env={"HF_TOKEN": "hf-secret"})), timeout=TIMEOUT)
    assert m.spec.env["HF_TOKEN"] == "hf-secret"  # the creator sees what it sent
    assert finished(alice, job.job_id).status_name == "SUCCESS"

    ref, mref = cpb.JobRef(job_id=job.job_id), cpb.ModelRef(uuid=m.uuid)
    for who, stub in (("alice", alice), ("root", root)):
        assert stub.GetJob(ref, timeout=TIMEOUT).spec.env["API_KEY"] == "s3cret-value", who
        assert stub.GetModel(mref, timeout=TIMEOUT).spec.env["HF_TOKEN"] == "hf-secret", who
        logs = b"".join(c.data for c in stub.StreamJobLogs(apb.StreamLogsRequest(job_id=job.job_id),
                                                           timeout=TIMEOUT))
        assert b"alice-was-here" in logs, who
        assert stub.GetJobMetrics(ref, timeout=TIMEOUT).job_id == job.job_id
    for who, stub in (("bob", bob), ("val", val)):
        assert dict(stub.GetJob(ref, timeout=TIMEOUT).spec.env) == {"API_KEY": "<redacted>"}, who
        listed = {j.job_id: j for j in stub.ListJobs(cpb.ListJobsQuery(), timeout=TIMEOUT).jobs}
        assert "s3cret-value" not in str(listed[job.job_id]), who
        assert dict(stub.GetModel(mref, timeout=TIMEOUT).spec.env) == {"HF_TOKEN": "<redacted>"}, who
        models = stub.ListModels(cpb.ListModelsRequest(), timeout=TIMEOUT).items
        assert "hf-secret" not in str(models), who
        code, msg = code_of(lambda s=stub: s.StreamJobLogs(apb.StreamLogsRequest(job_id=job.job_id),  # type: ignore[misc]
                                                           timeout=TIMEOUT))
        assert code == DENIED, who
        code, msg = code_of(lambda s=stub: s.GetJobMetrics(ref, timeout=TIMEOUT))  # type: ignore[misc]
        assert code == DENIED, who
    assert "may only read the logs, metrics and outputs of its own models and jobs" in code_of(
        lambda: bob.GetJobMetrics(ref, timeout=TIMEOUT))[1]


def test_each_owners_jobs_run_as_its_own_uid(fleet: Fleet) -> None:
    """The coordinator sends each job's owner with Launch; the agent runs it as that owner's uid
    (the attacks between two owners' jobs: tests/integration/test_safety_owners.py)."""
    import pwd

    whoami = [sys.executable, "-c", "import os; print(os.getuid(), os.getgid(), flush=True)"]
    seen: dict[str, list[int]] = {}
    for who in ("alice", "bob", "alice"):
        stub = fleet.stub(who)
        job = submit(stub, f"jobs/uid-{len(seen)}", whoami)
        assert finished(stub, job.job_id).status_name == "SUCCESS"
        logs = b"".join(c.data for c in stub.StreamJobLogs(apb.StreamLogsRequest(job_id=job.job_id),
                                                           timeout=TIMEOUT))
        ids = [int(x) for x in logs.split()[-2:]]
        assert seen.setdefault(who, ids) == ids, who  # the same owner: the same uid every time
    job_user = pwd.getpwnam("gpufleet-job")
    assert len({seen["alice"][0], seen["bob"][0], job_user.pw_uid, 0}) == 4
    assert seen["alice"][1] == seen["bob"][1] == job_user.pw_gid
    assert (fleet.a.output_root / "users" / "bob").stat().st_uid == seen["bob"][0]


def test_a_jobs_outputs_download_to_its_owner_and_admins_only(fleet: Fleet) -> None:
    alice, bob, val, root = (fleet.stub(n) for n in ("alice", "bob", "val", "root"))
    job = submit(alice, "jobs/dl", [sys.executable, "-c",
                                    "import os; open(os.environ['GPUFLEET_OUTPUT_DIR'] + '/w.pt', 'w').write('w')"])
    assert finished(alice, job.job_id).status_name == "SUCCESS"
    req = cpb.DownloadOutputRequest(job_id=job.job_id, path="w.pt")
    for who, stub in (("alice", alice), ("root", root)):
        assert b"".join(c.data for c in stub.DownloadOutput(req, timeout=TIMEOUT)) == b"w", who
    for who, stub in (("bob", bob), ("val", val)):
        code, msg = code_of(lambda s=stub: s.DownloadOutput(req, timeout=TIMEOUT))  # type: ignore[misc]
        assert code == DENIED, who
    assert "may only read the logs, metrics and outputs of its own" in code_of(
        lambda: bob.DownloadOutput(req, timeout=TIMEOUT))[1]


def test_viewers_read_logs_only_where_an_admin_grants_it(tmp_path: Path) -> None:
    """A loopback coordinator with tokens and --viewers-read-logs (no agent: queued jobs only)."""
    c = CoordinatorProc(tmp_path / "c", extra=["--auth", "on", "--viewers-read-logs"])
    tokens = mint_tokens(tmp_path / "c" / "state")
    c.start()
    try:
        def stub(who: str) -> coordinator_pb2_grpc.CoordinatorStub:
            return coordinator_pb2_grpc.CoordinatorStub(auth.with_token(c.channel, tokens[who]))  # type: ignore[arg-type]

        job = submit(stub("alice"), "jobs/q")
        ref = cpb.JobRef(job_id=job.job_id)
        assert list(stub("val").StreamJobLogs(apb.StreamLogsRequest(job_id=job.job_id), timeout=TIMEOUT)) == []
        assert stub("val").GetJobMetrics(ref, timeout=TIMEOUT).job_id == job.job_id
        assert code_of(lambda: stub("bob").GetJobMetrics(ref, timeout=TIMEOUT))[0] == DENIED  # users: never
        # Without mTLS nobody can speak for a node: Fleet calls are refused, saying why.
        fleet = coordinator_pb2_grpc.FleetStub(c.channel)
        code, msg = code_of(lambda: fleet.Register(cpb.RegisterRequest(node_name="gpu09", address="127.0.0.1:1"),
                                                   timeout=TIMEOUT))
        assert code == UNAUTH and "needs mTLS when the coordinator's auth is on" in msg
        assert stub("root").ListNodes(cpb.ListNodesRequest(), timeout=TIMEOUT).nodes == []
    finally:
        c.kill()


def test_a_node_cannot_register_at_an_address_its_certificate_does_not_name(fleet: Fleet) -> None:
    gpu02 = fleet.fleet_stub("gpu02")  # certificate names gpu02 and 127.0.0.1
    code, msg = code_of(lambda: gpu02.Register(cpb.RegisterRequest(node_name="gpu02", address="10.9.8.7:50051",
                                                                    runtime="process"), timeout=TIMEOUT))
    assert code == DENIED
    assert msg.startswith("address: '10.9.8.7:50051' is not named by the certificate of node 'gpu02'"), msg
    assert "gpufleet certs issue gpu02 --role agent --host 10.9.8.7" in msg
    # gpu01's certificate can re-register gpu01 nowhere else either (the hijack of issue 13).
    code, msg = code_of(lambda: fleet.fleet_stub("gpu01").Register(
        cpb.RegisterRequest(node_name="gpu01", address="evil.example:50051", runtime="process"), timeout=TIMEOUT))
    assert code == DENIED and msg.startswith("address: 'evil.example:50051'")
    nodes = fleet.stub("root").ListNodes(cpb.ListNodesRequest(), timeout=TIMEOUT).nodes
    assert [(n.name, n.address) for n in nodes] == [("gpu01", fleet.a.addr)]
    # An address the certificate names is accepted.
    ok = gpu02.Register(cpb.RegisterRequest(node_name="gpu02", address="127.0.0.1:1", runtime="process"),
                        timeout=TIMEOUT)
    assert ok.node_name == "gpu02"
