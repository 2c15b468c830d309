"""Quotas, fair share, the priority cap and users' arrays and pipelines, on a real coordinator with
tokens (--auth on, loopback) and a real agent (process runtime, fake GPUs)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from gpufleet import auth
from gpufleet.v1 import common_pb2 as pb
from gpufleet.v1 import coordinator_pb2 as cpb
from gpufleet.v1 import coordinator_pb2_grpc
from tests.harness import AgentProc, CoordinatorProc, release, wait_for
from tests.integration.test_coordinator_reconcile import GATED
from tests.pki import make_pki

PY = sys.executable


class Users:
    """A stub per token name (admin, alice, bob) on a coordinator with tokens."""

    def __init__(self, c: CoordinatorProc, a: AgentProc) -> None:
        self.c, self.a = c, a
        self.tokens: dict[str, str] = {}
        for name, role in (("root", "admin"), ("alice", "user"), ("bob", "user")):
            r = subprocess.run([PY, "-P", "-m", "gpufleet.coordinator.main", "tokens", "create", name, "--role", role,
                                "--state-dir", str(c.root / "state")], capture_output=True, text=True, timeout=60,
                               check=True)
            self.tokens[name] = r.stdout.strip()
        assert c.channel is not None  # mTLS as the client `ops` (tests/pki.py)
        self.channels = [c.channel]

    def __getitem__(self, name: str) -> coordinator_pb2_grpc.CoordinatorStub:
        return coordinator_pb2_grpc.CoordinatorStub(auth.with_token(self.channels[0], self.tokens[name]))

    def submit(self, who: str, command: list[str], output_dir: str, gpus: int = 1, **kw: object) -> cpb.Job:
        spec = pb.JobSpec(command=command, output_dir=output_dir)
        return self[who].SubmitJob(cpb.SubmitJobRequest(spec=spec, gpus=gpus, **kw), timeout=10)  # type: ignore[arg-type]

    def job(self, job_id: str) -> cpb.Job:
        return self["root"].GetJob(cpb.JobRef(job_id=job_id), timeout=5)

    def wait(self, job_id: str, *statuses: str, timeout: float = 60) -> cpb.Job:
        return wait_for(lambda: (j := self.job(job_id)).status_name in statuses and j, timeout,
                        f"job {job_id} in {statuses}")

    def release(self, job: cpb.Job) -> None:
        release(self.a, job.spec.output_dir)  # under auth a user's folder is under users/<name>/

    def cli(self, who: str, *args: str) -> subprocess.CompletedProcess[str]:
        assert self.c.pki is not None
        env = {**os.environ, **self.c.pki.cli_env("ops"), "GPUFLEET_COORDINATOR": self.c.addr,
               "GPUFLEET_TOKEN": self.tokens[who]}
        return subprocess.run([PY, "-m", "gpufleet.cli", *args], capture_output=True, text=True, timeout=60,
                              env=env, stdin=subprocess.DEVNULL)


def make_users(coordinator_factory: Callable[..., CoordinatorProc], agent_factory: Callable[..., AgentProc],
               tmp_path: Path,
               gpus: str) -> Users:
    pki = make_pki(tmp_path / "pki", agents=("n1",))  # auth on: the Fleet service takes only mTLS
    c = coordinator_factory(pki=pki, extra=["--auth", "on", "--user-max-priority", "100"])
    a = agent_factory("n1", node_name="n1", pki=pki, gpus=gpus, extra=["--coordinator", c.addr])
    u = Users(c, a)
    wait_for(lambda: len(u["root"].ListNodes(cpb.ListNodesRequest(), timeout=5).nodes) == 1, 30, "agent registered")
    return u


def test_a_job_past_its_owners_quota_waits_and_others_run_meanwhile(
        coordinator_factory: Callable[..., CoordinatorProc], agent_factory: Callable[..., AgentProc],
        tmp_path: Path) -> None:
    u = make_users(coordinator_factory, agent_factory, tmp_path, "fake:2")
    r = u.cli("root", "-o", "json", "quotas", "set", "alice", "--gpus", "1")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["gpus"] == 1

    first = u.submit("alice", GATED, "a1")
    u.wait(first.job_id, "RUNNING")
    second = u.submit("alice", GATED, "a2")
    theirs = u.submit("bob", GATED, "b1")
    # Bob's job, submitted after Alice's second, runs on the free GPU: no head-of-line blocking.
    u.wait(theirs.job_id, "RUNNING")
    j = u.job(second.job_id)
    assert (j.status_name, j.pending_code) == ("QUEUED", "QUOTA")
    assert j.pending_reason == "alice uses 1 of 1 GPUs; this job needs 1"
    listed = {q["owner"]: q for q in json.loads(u.cli("alice", "-o", "json", "quotas", "list").stdout)["items"]}
    assert listed["alice"]["gpus"] == 1 and listed["alice"]["used"] == 1 and listed["alice"]["updated_by"] == "root"

    # Only an admin sets quotas; bad input names the field and changes nothing.
    denied = u.cli("alice", "quotas", "set", "alice", "--gpus", "8")
    assert denied.returncode == 1 and "admin only" in denied.stderr
    with pytest.raises(grpc.RpcError) as err:
        u["root"].SetQuota(cpb.SetQuotaRequest(owner="alice", gpus=-1), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "gpus" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        u["root"].SetQuota(cpb.SetQuotaRequest(owner="no one", gpus=1), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith("owner")
    assert [q.gpus for q in u["root"].ListQuotas(cpb.ListQuotasRequest(), timeout=5).items] == [1]

    u.release(first)  # Alice's first ends: her second now fits her quota
    u.wait(second.job_id, "RUNNING")
    u.release(second)
    u.release(theirs)
    # Raising the quota to 2 lets two of hers run at once; clearing it removes the limit.
    assert u.cli("root", "quotas", "set", "alice", "--gpus", "2").returncode == 0
    assert u.cli("root", "quotas", "clear", "alice").returncode == 0
    assert u["root"].ListQuotas(cpb.ListQuotasRequest(), timeout=5).items == []


def test_two_users_with_equal_queues_take_turns_on_the_gpu(
        coordinator_factory: Callable[..., CoordinatorProc], agent_factory: Callable[..., AgentProc],
        tmp_path: Path) -> None:
    u = make_users(coordinator_factory, agent_factory, tmp_path, "fake:1")
    order = tmp_path / "order"
    order.touch()
    order.chmod(0o666)
    tmp_path.chmod(0o777)
    holder = u.submit("root", GATED, "hold")
    u.wait(holder.job_id, "RUNNING")
    n = 6
    # Alice queues all hers first: first-come-first-served would run all six before any of Bob's.
    jobs = [u.submit(who, [PY, "-c", f"open({str(order)!r}, 'a').write({who!r} + '\\n')"], f"{who}{i}")
            for who in ("alice", "bob") for i in range(n)]
    assert {u.job(j.job_id).pending_code for j in jobs} == {"GPUS_BUSY"}
    u.release(holder)
    for j in jobs:
        assert u.wait(j.job_id, "SUCCESS", "FAILED").status_name == "SUCCESS"
    ran = order.read_text().split()  # one GPU: the jobs ran one after the other, in placement order
    assert sorted(ran) == ["alice"] * n + ["bob"] * n
    first_half = ran[:n]
    assert 2 <= first_half.count("bob") <= 4, ran  # GPU time in proportion, not first come first served
    assert ran.index("bob") <= 1, ran


def test_users_priority_is_capped_and_they_own_their_arrays_and_pipelines(
        coordinator_factory: Callable[..., CoordinatorProc], agent_factory: Callable[..., AgentProc],
        tmp_path: Path) -> None:
    u = make_users(coordinator_factory, agent_factory, tmp_path, "fake:2")
    with pytest.raises(grpc.RpcError) as err:
        u.submit("alice", [PY, "-c", "pass"], "p", priority=101)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "priority: role user may set at most 100, got 101 (an admin may set any)"
    assert u["root"].ListJobs(cpb.ListJobsQuery(), timeout=5).total_elements == 0  # nothing queued
    assert u.submit("alice", [PY, "-c", "pass"], "p100", priority=100).priority == 100
    assert u.submit("root", [PY, "-c", "pass"], "pmax", priority=2**31 - 1).priority == 2**31 - 1

    template = cpb.SubmitJobRequest(spec=pb.JobSpec(command=GATED, output_dir="arr"), gpus=1)
    arr = u["alice"].SubmitArray(cpb.SubmitArrayRequest(job=template, count=3, max_running=1), timeout=10)
    assert len(arr.jobs) == 3
    with pytest.raises(grpc.RpcError) as err:  # not Bob's to cancel
        u["bob"].CancelArray(cpb.ArrayRef(array_id=arr.array_id), timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "array" in err.value.details()
    done = u["alice"].CancelArray(cpb.ArrayRef(array_id=arr.array_id), timeout=10)
    assert {j.status_name for j in done.jobs} <= {"CANCELED", "STOPPED"}

    step = cpb.SubmitJobRequest(spec=pb.JobSpec(command=[PY, "-c", "pass"], output_dir="pl"), gpus=1)
    with pytest.raises(grpc.RpcError) as err:
        u["bob"].SubmitPipeline(cpb.SubmitPipelineRequest(name="x", steps=[
            cpb.PipelineStep(name="a", job=step),
            cpb.PipelineStep(name="b", job=cpb.SubmitJobRequest(spec=step.spec, gpus=1, priority=500))]), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("steps[1].job.priority: role user may set at most 100")
    pl = u["bob"].SubmitPipeline(cpb.SubmitPipelineRequest(name="x", steps=[
        cpb.PipelineStep(name="a", job=step), cpb.PipelineStep(name="b", job=step, after=["a"])]), timeout=10)
    with pytest.raises(grpc.RpcError) as err:
        u["alice"].CancelPipeline(cpb.PipelineRef(pipeline_id=pl.pipeline_id), timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    got = wait_for(lambda: (p := u["bob"].GetPipeline(cpb.PipelineRef(pipeline_id=pl.pipeline_id), timeout=5))
                   .state == "SUCCESS" and p, 60, "pipeline done")
    assert [s.status_name for s in got.steps] == ["SUCCESS", "SUCCESS"]
