"""Issue 15, per-job GPU accounting end to end: a real coordinator (tokens on) and a real agent with
fake GPUs run real process jobs of two users; each ended attempt's GPU use reaches the coordinator
and is shown by GetJob, `gpufleet jobs show`, `gpufleet usage` and the coordinator's /metrics."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from gpufleet.coordinator import tokens
from gpufleet.coordinator.db import engine as dbengine

from gpufleet import auth
from gpufleet.v1 import agent_pb2 as apb
from gpufleet.v1 import common_pb2 as pb
from gpufleet.v1 import coordinator_pb2 as cpb
from gpufleet.v1 import coordinator_pb2_grpc
from tests.harness import AgentProc, CoordinatorProc, free_port, wait_for
from tests.integration.test_metrics import scrape, values
from tests.pki import make_pki

PY = sys.executable
# Waits for its release file (in its output folder, the job's working directory).
GATE = "import os, time\nwhile not os.path.exists('release'):\n    time.sleep(0.05)\n"


def cli(c: CoordinatorProc, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    assert c.pki is not None
    env = {**os.environ, **c.pki.cli_env("ops"), "GPUFLEET_COORDINATOR": c.addr, "GPUFLEET_TOKEN": token}
    return subprocess.run([PY, "-m", "gpufleet.cli", *args], capture_output=True, text=True, timeout=60, env=env,
                          stdin=subprocess.DEVNULL)


def test_gpu_use_of_ended_jobs_is_stored_shown_and_summed_per_user(
        coordinator_factory: Callable[..., CoordinatorProc], agent_factory: Callable[..., AgentProc],
        tmp_path: Path) -> None:
    mport = free_port()
    pki = make_pki(tmp_path / "pki", agents=("gpu01",))  # auth on: the Fleet service takes only mTLS
    c = coordinator_factory(start=False, pki=pki, extra=["--auth", "on", "--metrics-listen", f"127.0.0.1:{mport}"])
    eng = dbengine.make_engine(dbengine.default_sqlite_url(c.root / "state"))
    try:
        dbengine.migrate(eng)
        tok = {name: tokens.create_token(eng, name, role)
               for name, role in (("alice", "user"), ("bob", "user"), ("ops", "viewer"))}
    finally:
        eng.dispose()
    c.start()
    a = agent_factory("a", node_name="gpu01", pki=pki, extra=["--coordinator", c.addr])
    assert c.channel is not None
    stub = {n: coordinator_pb2_grpc.CoordinatorStub(auth.with_token(c.channel, t))
            for n, t in tok.items()}
    wait_for(lambda: len(stub["ops"].ListNodes(cpb.ListNodesRequest(), timeout=5).nodes) == 1, 30, "agent registered")

    def submit(who: str, name: str, gpus: int) -> cpb.Job:
        return stub[who].SubmitJob(cpb.SubmitJobRequest(
            name=name, gpus=gpus, spec=pb.JobSpec(command=[PY, "-c", GATE], output_dir=name)), timeout=10)

    big, small = submit("alice", "acct-big", 2), submit("bob", "acct-small", 1)
    for j in (big, small):
        wait_for(lambda j=j: stub["ops"].GetJob(cpb.JobRef(job_id=j.job_id), timeout=5).status_name == "RUNNING",
                 60, f"{j.name} running")
    # Let the agent sample its jobs' GPUs under load a few times (fake GPUs load only while held).
    held = {i for j in (big, small) for i in stub["ops"].GetJob(cpb.JobRef(job_id=j.job_id), timeout=5).gpu_indices}
    assert len(held) == 3

    def loaded() -> bool:
        gpus = a.stub.GetNode(apb.GetNodeRequest(), timeout=5).gpus
        return all(g.utilization_gpu >= 40 for g in gpus if g.index in held)
    for _ in range(2):
        wait_for(loaded, 60, "load on the held GPUs")
        before = a.stub.GetNode(apb.GetNodeRequest(), timeout=5).gpus_sampled_at.ToNanoseconds()
        wait_for(lambda b=before: a.stub.GetNode(apb.GetNodeRequest(), timeout=5).gpus_sampled_at.ToNanoseconds() > b,
                 30, "a new GPU sample")
    for j in (big, small):  # under auth each user's folder is under users/<name>/
        (a.output_root / j.spec.output_dir / "release").write_text("")

    def ended(j: cpb.Job) -> cpb.Job | None:
        got = stub["ops"].GetJob(cpb.JobRef(job_id=j.job_id), timeout=5)
        return got if got.status_name == "SUCCESS" and got.HasField("gpu_usage") else None
    big_done, small_done = (wait_for(lambda j=j: ended(j), 60, f"{j.name} ended with its GPU use")
                            for j in (big, small))

    u = big_done.gpu_usage
    # Two GPUs for as long as it ran on the agent: within the coordinator's wider window (queued to ended).
    window_s = (big_done.finished_at.ToNanoseconds() - big_done.created_at.ToNanoseconds()) / 1e9
    assert 0 < u.gpu_seconds <= 2 * window_s
    assert u.samples >= 2 and u.mean_utilization >= 40 and u.peak_memory_bytes >= 2 << 30
    assert u.energy_joules > 0
    assert small_done.gpu_usage.gpu_seconds > 0

    # jobs show: a line for people, the fields for scripts.
    shown = cli(c, tok["ops"], "jobs", "show", big.job_id)
    assert shown.returncode == 0, shown.stderr
    assert "GPU use:" in shown.stdout and "GPU-hours" in shown.stdout and "peak memory" in shown.stdout
    as_json = json.loads(cli(c, tok["ops"], "-o", "json", "jobs", "show", big.job_id).stdout)
    assert as_json["gpu_usage"]["gpu_seconds"] == pytest.approx(u.gpu_seconds)
    assert int(as_json["gpu_usage"]["peak_memory_bytes"]) == u.peak_memory_bytes

    # gpufleet usage: the sacct question, per user.
    report = json.loads(cli(c, tok["ops"], "-o", "json", "usage", "--since", "7d").stdout)
    by_user = {r["key"]: r for r in report["items"]}
    assert set(by_user) == {"alice", "bob"} and report["by"] == "user"
    assert by_user["alice"]["gpu_seconds"] == pytest.approx(u.gpu_seconds)
    assert by_user["bob"]["gpu_seconds"] == pytest.approx(small_done.gpu_usage.gpu_seconds)
    assert report["total"]["jobs"] == 2
    table = cli(c, tok["ops"], "usage", "--since", "7d")
    assert table.returncode == 0 and "alice" in table.stdout and "GPU-hours" in table.stdout
    by_node = json.loads(cli(c, tok["ops"], "-o", "json", "usage", "--by", "node", "--since", "all").stdout)
    assert [r["key"] for r in by_node["items"]] == [a.node_name] and by_node["items"][0]["jobs"] == 2

    # /metrics: per-owner counters with the same numbers.
    m = scrape(mport)
    assert values(m, "gpufleet_user_gpu_seconds_total", owner="alice") == [pytest.approx(u.gpu_seconds)]
    assert values(m, "gpufleet_user_gpu_energy_joules_total", owner="bob") == [
        pytest.approx(small_done.gpu_usage.energy_joules)]

    # Bad input: the field and its rule, nothing stored changes.
    bad = cli(c, tok["ops"], "usage", "--since", "7x")
    assert bad.returncode == 2 and "--since" in bad.stderr and "7d" in bad.stderr
    with pytest.raises(grpc.RpcError) as e:
        stub["ops"].GetUsage(cpb.UsageQuery(by="team"), timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "by" in (e.value.details() or "")
    with pytest.raises(grpc.RpcError) as e:
        stub["ops"].GetUsage(cpb.UsageQuery(since_seconds=-1), timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "since_seconds" in (e.value.details() or "")
    assert stub["ops"].GetUsage(cpb.UsageQuery(by="all"), timeout=5).total.jobs == 2
