"""Bad input on every gpufleet.v1.Coordinator RPC (and Fleet.Register/Heartbeat), against a real
coordinator with one real agent: each refusal has the right status code, a message that names the
field (or the current states), and changes nothing (ListModels/ListJobs totals, node states and
the model's own states stay as they were).

One coordinator and agent serve the whole module; models in each lifecycle state are made once.
"""
from __future__ import annotations

import functools
import json
import sys
import uuid as uuidlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from gpufleet.v1 import agent_pb2 as apb
from gpufleet.v1 import common_pb2 as pb
from gpufleet.v1 import coordinator_pb2 as cpb
from gpufleet.v1 import coordinator_pb2_grpc
from tests.harness import AgentProc, CoordinatorProc, wait_for

PY = sys.executable
TRAINER = [PY, "-m", "gpufleet.trainer"]
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
UNKNOWN_UUID = "00000000-0000-4000-8000-000000000000"
NOWHERE = {"zone": "nowhere"}  # no node carries this label: jobs stay queued


class Env:
    def __init__(self, c: CoordinatorProc, a: AgentProc) -> None:
        self.c, self.a = c, a
        self.stub = c.stub
        assert c.channel is not None
        self.fleet = coordinator_pb2_grpc.FleetStub(c.channel)
        self.models: dict[str, cpb.Model] = {}

    def model(self, uuid: str) -> cpb.Model:
        return self.stub.GetModel(cpb.ModelRef(uuid=uuid), timeout=5)

    def snapshot(self) -> tuple[Any, ...]:
        models = self.stub.ListModels(cpb.ListModelsRequest(size=500), timeout=5)
        jobs = self.stub.ListJobs(cpb.ListJobsQuery(size=500), timeout=5)
        nodes = self.stub.ListNodes(cpb.ListNodesRequest(), timeout=5).nodes
        return (
            models.total_elements,
            sorted((m.uuid, m.status_name, m.step1_state_name, m.step2_state_name, m.current_attempt_id,
                    m.last_error, m.test_epoch) for m in models.items),
            jobs.total_elements,
            sorted((j.job_id, j.status_name) for j in jobs.jobs),
            sorted((n.name, n.state_name, n.address) for n in nodes),
        )


def stable(m: cpb.Model) -> tuple[Any, ...]:
    """A model's stored fields (not the durations and progress computed at read time)."""
    return (m.status_name, m.step1_state_name, m.step2_state_name, m.current_attempt_id, m.last_error,
            m.best_epoch, m.test_epoch, m.params_json, m.step1_metric_saved, m.step2_metric_saved,
            m.step1_started_at.ToJsonString(), m.step1_finished_at.ToJsonString(),
            m.step2_started_at.ToJsonString(), m.step2_finished_at.ToJsonString())


def _create(stub: Any, model_no: str, params: dict[str, Any], **kw: Any) -> cpb.Model:
    spec = kw.pop("spec", None) or pb.JobSpec(command=TRAINER)
    return stub.CreateModel(cpb.CreateModelRequest(model_no=model_no, params_json=json.dumps(params), spec=spec,
                                                   **kw), timeout=10)


def _settled(env: Env, uuid: str, status: str) -> cpb.Model:
    def ended() -> cpb.Model | None:
        x = env.model(uuid)
        return x if x.status_name != "IN_PROGRESS" else None
    m = wait_for(ended, 60, f"model {uuid} to end")
    assert m.status_name == status, (m.status_name, m.last_error)
    return m


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root: Path = tmp_path_factory.mktemp("bad-input")
    c = CoordinatorProc(root / "c").start()
    a = AgentProc(root / "a", extra=["--coordinator", c.addr]).start()
    try:
        wait_for(lambda: len(c.stub.ListNodes(cpb.ListNodesRequest(), timeout=5).nodes) == 1, 30, "agent registered")
        e = Env(c, a)
        quick = {"total_epoch": 2, "epoch_seconds": 0.01}
        e.models["READY"] = _create(c.stub, "G1", quick)
        e.models["IN_PROGRESS"] = _create(c.stub, "G2", quick, constraints=NOWHERE)
        c.stub.RunTrain(cpb.ModelRef(uuid=e.models["IN_PROGRESS"].uuid), timeout=10)
        e.models["STOPPED"] = _create(c.stub, "G3", quick, constraints=NOWHERE)
        c.stub.RunTrain(cpb.ModelRef(uuid=e.models["STOPPED"].uuid), timeout=10)
        c.stub.CancelTrain(cpb.ModelRef(uuid=e.models["STOPPED"].uuid), timeout=10)
        e.models["COMPLETED"] = _create(c.stub, "G4", quick)
        c.stub.RunTrain(cpb.ModelRef(uuid=e.models["COMPLETED"].uuid), timeout=10)
        e.models["ERROR"] = _create(c.stub, "G4", dict(quick, fail_at_epoch=1))
        c.stub.RunTrain(cpb.ModelRef(uuid=e.models["ERROR"].uuid), timeout=10)
        for state in ("STOPPED", "COMPLETED", "ERROR"):
            e.models[state] = _settled(e, e.models[state].uuid, state)
        e.models["READY"] = e.model(e.models["READY"].uuid)
        e.models["IN_PROGRESS"] = e.model(e.models["IN_PROGRESS"].uuid)
        assert e.models["IN_PROGRESS"].status_name == "IN_PROGRESS"
        yield e
    finally:
        a.kill()
        a.cleanup_jobs()
        c.kill()


def refused(env: Env, call: Callable[[], Any], code: grpc.StatusCode, *needles: str) -> str:
    """`call()` fails with `code`, its message holds every needle, and nothing changed."""
    before = env.snapshot()
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if hasattr(result, "__iter__") and not hasattr(result, "DESCRIPTOR"):
            list(result)  # a server stream fails when read
    err = info.value
    assert err.code() == code, (err.code(), err.details())
    details = err.details() or ""
    for needle in needles:
        assert needle in details, (needle, details)
    assert "internal error" not in details
    assert env.snapshot() == before
    return details


# -- CreateModel -------------------------------------------------------------------------------------

CREATE_BAD = [
    # (id, request fields, field named in the message)
    ("model_no-empty", dict(model_no=""), "model_no"),
    ("model_no-space", dict(model_no="G 1"), "model_no"),
    ("model_no-slash", dict(model_no="../G1"), "model_no"),
    ("model_no-too-long", dict(model_no="G" * 33), "model_no"),
    ("version-too-long", dict(version="v" * 65), "version"),
    ("train_type-too-long", dict(train_type="t" * 65), "train_type"),
    ("memo-too-long", dict(memo="m" * 4097), "memo"),
    ("params-not-json", dict(params_json="{total_epoch: 3"), "params_json"),
    ("params-array", dict(params_json="[1, 2]"), "params_json"),
    ("params-string", dict(params_json='"x"'), "params_json"),
    ("params-number", dict(params_json="3"), "params_json"),
    ("gpus-negative", dict(gpus=-1), "gpus"),
    ("gpus-too-many", dict(gpus=1000), "gpus"),
    ("max_retries-negative", dict(max_retries=-1), "max_retries"),
    ("spec-no-command-or-image", dict(spec=pb.JobSpec()), "spec.command"),
    ("spec-bad-image", dict(spec=pb.JobSpec(image="Not An/Image!!")), "spec.image"),
    ("spec-output-dir-dotdot", dict(spec=pb.JobSpec(command=TRAINER, output_dir="../escape")), "spec.output_dir"),
    ("spec-output-dir-absolute", dict(spec=pb.JobSpec(command=TRAINER, output_dir="/etc")), "spec.output_dir"),
    ("spec-env-reserved", dict(spec=pb.JobSpec(command=TRAINER, env={"GPUFLEET_JOB_ID": "x"})), "spec.env"),
    ("spec-env-bad-key", dict(spec=pb.JobSpec(command=TRAINER, env={"A=B": "x"})), "spec.env"),
    ("spec-total-epoch-negative", dict(spec=pb.JobSpec(command=TRAINER, total_epoch=-1)), "spec.total_epoch"),
    ("spec-mount-dotdot", dict(spec=pb.JobSpec(command=TRAINER, mounts=[pb.Mount(source="../x")])),
     "spec.mounts[0].source"),
    ("spec-empty-program", dict(spec=pb.JobSpec(command=[""])), "spec.command[0]"),
]


@pytest.mark.parametrize(("fields", "needle"), [pytest.param(f, n, id=i) for i, f, n in CREATE_BAD])
def test_create_model_refuses(env: Env, fields: dict[str, Any], needle: str) -> None:
    req: dict[str, Any] = dict(model_no="G1", params_json='{"total_epoch": 2}', spec=pb.JobSpec(command=TRAINER))
    req.update(fields)
    refused(env, lambda: env.stub.CreateModel(cpb.CreateModelRequest(**req), timeout=10), INVALID, needle)


# -- GetModel / ListModels / ListJobs ----------------------------------------------------------------

UUID_RPCS: list[tuple[str, Callable[[Any, str], Any]]] = [
    ("GetModel", lambda s, u: s.GetModel(cpb.ModelRef(uuid=u), timeout=10)),
    ("RunTrain", lambda s, u: s.RunTrain(cpb.ModelRef(uuid=u), timeout=10)),
    ("RestartTrain", lambda s, u: s.RestartTrain(cpb.ModelRef(uuid=u), timeout=10)),
    ("ResumeTrain", lambda s, u: s.ResumeTrain(cpb.ModelRef(uuid=u), timeout=10)),
    ("CancelTrain", lambda s, u: s.CancelTrain(cpb.ModelRef(uuid=u), timeout=10)),
    ("RunTest", lambda s, u: s.RunTest(cpb.RunTestRequest(uuid=u, epoch=1), timeout=10)),
    ("CancelTest", lambda s, u: s.CancelTest(cpb.ModelRef(uuid=u), timeout=10)),
    ("SyncStatus", lambda s, u: s.SyncStatus(cpb.ModelRef(uuid=u), timeout=10)),
    ("StageDataset", lambda s, u: s.StageDataset(cpb.CoordinatorStageRequest(
        uuid=u, links=[apb.StageLink(split="train", input1="x.png")]), timeout=10)),
    ("DatasetCounts", lambda s, u: s.DatasetCounts(cpb.ModelRef(uuid=u), timeout=10)),
]


@pytest.mark.parametrize("bad", ["", "not-a-uuid", "1234", "x" * 300, "00000000-0000-4000-8000-00000000000g"])
@pytest.mark.parametrize(("name", "rpc"), UUID_RPCS, ids=[n for n, _ in UUID_RPCS])
def test_model_rpcs_refuse_a_malformed_uuid(env: Env, name: str, rpc: Callable[[Any, str], Any], bad: str) -> None:
    details = refused(env, lambda: rpc(env.stub, bad), INVALID, "uuid")
    assert len(details) < 400  # the echo of a long input is cut


@pytest.mark.parametrize(("name", "rpc"), UUID_RPCS, ids=[n for n, _ in UUID_RPCS])
def test_model_rpcs_refuse_an_unknown_model(env: Env, name: str, rpc: Callable[[Any, str], Any]) -> None:
    refused(env, lambda: rpc(env.stub, UNKNOWN_UUID), NOT_FOUND, UNKNOWN_UUID)


PAGING_BAD = [
    ("page-negative", dict(page=-1), "page"),
    ("size-negative", dict(size=-1), "size"),
    ("size-too-big", dict(size=501), "size"),
    ("status-unknown", dict(status=99), "status"),
]


@pytest.mark.parametrize(("fields", "needle"), [pytest.param(f, n, id=i) for i, f, n in PAGING_BAD])
def test_list_models_refuses(env: Env, fields: dict[str, Any], needle: str) -> None:
    refused(env, lambda: env.stub.ListModels(cpb.ListModelsRequest(**fields), timeout=10), INVALID, needle)


@pytest.mark.parametrize(("fields", "needle"), [pytest.param(f, n, id=i) for i, f, n in PAGING_BAD])
def test_list_jobs_refuses(env: Env, fields: dict[str, Any], needle: str) -> None:
    refused(env, lambda: env.stub.ListJobs(cpb.ListJobsQuery(**fields), timeout=10), INVALID, needle)


def test_list_edges_are_accepted(env: Env) -> None:
    """Not errors: size 0 means the default, a page past the end is empty, a filter may match nothing."""
    r = env.stub.ListModels(cpb.ListModelsRequest(size=0), timeout=5)
    assert r.size == 20 and r.total_elements == len(env.models)
    assert not env.stub.ListModels(cpb.ListModelsRequest(page=1000, size=500), timeout=5).items
    assert env.stub.ListModels(cpb.ListModelsRequest(model_no="nope"), timeout=5).total_elements == 0
    assert env.stub.ListModels(cpb.ListModelsRequest(size=500), timeout=5).total_pages == 1


# -- the action matrix: every action in a state that forbids it --------------------------------------

MATRIX = [
    # (state of the model, action, what the message names besides the states)
    ("READY", "RestartTrain", "status must be STOPPED or ERROR"),
    ("READY", "ResumeTrain", "status and step1 must be STOPPED"),
    ("READY", "CancelTrain", "status and step1 must be IN_PROGRESS"),
    ("READY", "RunTest", "step1 must be COMPLETED"),
    ("READY", "CancelTest", "step2 must be IN_PROGRESS"),
    ("IN_PROGRESS", "RunTrain", "status must be READY"),  # RunTrain twice
    ("IN_PROGRESS", "RestartTrain", "status must be STOPPED or ERROR"),
    ("IN_PROGRESS", "ResumeTrain", "status and step1 must be STOPPED"),
    ("IN_PROGRESS", "RunTest", "step1 must be COMPLETED"),
    ("IN_PROGRESS", "CancelTest", "step2 must be IN_PROGRESS"),
    ("STOPPED", "RunTrain", "status must be READY"),
    ("STOPPED", "CancelTrain", "status and step1 must be IN_PROGRESS"),
    ("STOPPED", "RunTest", "step1 must be COMPLETED"),
    ("STOPPED", "CancelTest", "step2 must be IN_PROGRESS"),
    ("ERROR", "RunTrain", "status must be READY"),
    ("ERROR", "ResumeTrain", "status and step1 must be STOPPED"),
    ("ERROR", "CancelTrain", "status and step1 must be IN_PROGRESS"),
    ("ERROR", "RunTest", "step1 must be COMPLETED"),
    ("ERROR", "CancelTest", "step2 must be IN_PROGRESS"),
    ("COMPLETED", "RunTrain", "status must be READY"),
    ("COMPLETED", "RestartTrain", "status must be STOPPED or ERROR"),
    ("COMPLETED", "ResumeTrain", "status and step1 must be STOPPED"),
    ("COMPLETED", "CancelTrain", "status and step1 must be IN_PROGRESS"),
    ("COMPLETED", "CancelTest", "step2 must be IN_PROGRESS"),
]
ACTIONS: dict[str, Callable[[Any, str], Any]] = dict(UUID_RPCS)


@pytest.mark.parametrize(("state", "action", "rule"), MATRIX, ids=[f"{s}-{a}" for s, a, _ in MATRIX])
def test_action_in_a_wrong_state_is_failed_precondition(env: Env, state: str, action: str, rule: str) -> None:
    m = env.model(env.models[state].uuid)
    states = f"status={m.status_name}, step1={m.step1_state_name}, step2={m.step2_state_name}"
    assert m.status_name == state
    details = refused(env, lambda: ACTIONS[action](env.stub, m.uuid), PRECONDITION, action, states, rule)
    assert details.startswith(f"{action} not allowed with {states}")
    assert stable(env.model(m.uuid)) == stable(m)  # not even a timestamp moved


def test_run_test_epoch_out_of_range(env: Env) -> None:
    m = env.models["COMPLETED"]
    for epoch in (0, -1):
        refused(env, functools.partial(env.stub.RunTest, cpb.RunTestRequest(uuid=m.uuid, epoch=epoch), timeout=10),
                INVALID, "epoch", ">= 1")
    refused(env, lambda: env.stub.RunTest(cpb.RunTestRequest(uuid=m.uuid, epoch=3), timeout=10),
            INVALID, "epoch", "total_epoch 2")
    # the precondition is checked first: a model that cannot be tested says so whatever the epoch
    ready = env.models["READY"]
    refused(env, lambda: env.stub.RunTest(cpb.RunTestRequest(uuid=ready.uuid, epoch=99), timeout=10),
            PRECONDITION, "RunTest")


def test_run_test_epoch_beyond_spec_total_epoch(fleet) -> None:  # type: ignore[no-untyped-def]
    c, _ = fleet  # a fleet of its own: the bug starts a job that must not disturb the shared one
    script = "open('val.csv', 'w').write('epoch,val_loss\\n1,0.5\\n2,0.4\\n'); open('epoch_2.pth', 'w')"
    m = _create(c.stub, "G4", {}, spec=pb.JobSpec(command=[PY, "-c", script], total_epoch=2))
    c.stub.RunTrain(cpb.ModelRef(uuid=m.uuid), timeout=10)
    m = wait_for(lambda: (x := c.stub.GetModel(cpb.ModelRef(uuid=m.uuid), timeout=5)).status_name != "IN_PROGRESS"
                 and x, 60, "training to end")
    assert m.status_name == "COMPLETED", m.last_error
    jobs = c.stub.ListJobs(cpb.ListJobsQuery(), timeout=5).total_elements
    with pytest.raises(grpc.RpcError) as info:
        c.stub.RunTest(cpb.RunTestRequest(uuid=m.uuid, epoch=3), timeout=10)
    assert info.value.code() == INVALID and "total_epoch 2" in (info.value.details() or "")
    assert c.stub.ListJobs(cpb.ListJobsQuery(), timeout=5).total_elements == jobs


def test_cancel_job_of_a_model_points_to_the_model_actions(env: Env) -> None:
    job_id = env.models["IN_PROGRESS"].current_attempt_id
    refused(env, lambda: env.stub.CancelJob(cpb.JobRef(job_id=job_id), timeout=10), PRECONDITION,
            job_id, "CancelTrain")


# -- plain jobs --------------------------------------------------------------------------------------

SUBMIT_BAD = [
    ("no-command-no-image", dict(spec=pb.JobSpec(output_dir="x")), "spec.command"),
    ("no-spec", dict(spec=None), "spec"),
    ("empty-program", dict(spec=pb.JobSpec(command=[""], output_dir="x")), "spec.command[0]"),
    ("bad-image", dict(spec=pb.JobSpec(image="UPPER/case:!", output_dir="x")), "spec.image"),
    ("output-dir-dotdot", dict(spec=pb.JobSpec(command=["/bin/true"], output_dir="a/../../b")), "spec.output_dir"),
    ("output-dir-parent", dict(spec=pb.JobSpec(command=["/bin/true"], output_dir="..")), "spec.output_dir"),
    ("output-dir-absolute", dict(spec=pb.JobSpec(command=["/bin/true"], output_dir="/tmp/x")), "spec.output_dir"),
    ("output-dir-home", dict(spec=pb.JobSpec(command=["/bin/true"], output_dir="~root")), "spec.output_dir"),
    ("gpus-negative", dict(gpus=-1), "gpus"),
    ("gpus-1000", dict(gpus=1000), "gpus"),
    ("max-retries-negative", dict(max_retries=-1), "max_retries"),
    ("name-too-long", dict(name="n" * 257), "name"),
    ("env-reserved", dict(spec=pb.JobSpec(command=["/bin/true"], output_dir="x", env={"GPUFLEET_X": "1"})),
     "spec.env"),
    ("params-not-object", dict(spec=pb.JobSpec(command=["/bin/true"], output_dir="x", params_json="[]")),
     "spec.params_json"),
    ("params-not-json", dict(spec=pb.JobSpec(command=["/bin/true"], output_dir="x", params_json="{")),
     "spec.params_json"),
    ("val-interval-negative", dict(spec=pb.JobSpec(command=["/bin/true"], output_dir="x", val_interval=-2)),
     "spec.val_interval"),
    ("nul-in-arg", dict(spec=pb.JobSpec(command=["/bin/echo", "a\x00b"], output_dir="x")), "spec.command[1]"),
]


@pytest.mark.parametrize(("fields", "needle"), [pytest.param(f, n, id=i) for i, f, n in SUBMIT_BAD])
def test_submit_job_refuses(env: Env, fields: dict[str, Any], needle: str) -> None:
    req: dict[str, Any] = dict(spec=pb.JobSpec(command=["/bin/true"], output_dir="x"), gpus=1)
    req.update(fields)
    req = {k: v for k, v in req.items() if v is not None}
    refused(env, lambda: env.stub.SubmitJob(cpb.SubmitJobRequest(**req), timeout=10), INVALID, needle)


JOB_ID_RPCS: list[tuple[str, Callable[[Any, str], Any]]] = [
    ("GetJob", lambda s, j: s.GetJob(cpb.JobRef(job_id=j), timeout=10)),
    ("CancelJob", lambda s, j: s.CancelJob(cpb.JobRef(job_id=j), timeout=10)),
    ("GetJobMetrics", lambda s, j: s.GetJobMetrics(cpb.JobRef(job_id=j), timeout=10)),
    ("StreamJobLogs", lambda s, j: s.StreamJobLogs(apb.StreamLogsRequest(job_id=j), timeout=10)),
]


@pytest.mark.parametrize(("name", "rpc"), JOB_ID_RPCS, ids=[n for n, _ in JOB_ID_RPCS])
def test_job_rpcs_refuse_unknown_and_malformed_ids(env: Env, name: str, rpc: Callable[[Any, str], Any]) -> None:
    refused(env, lambda: rpc(env.stub, "0123456789abcdef"), NOT_FOUND, "0123456789abcdef")
    refused(env, lambda: rpc(env.stub, "../../etc/passwd"), NOT_FOUND)
    refused(env, lambda: rpc(env.stub, ""), INVALID, "job_id")
    refused(env, lambda: rpc(env.stub, "j" * 129), INVALID, "job_id")


def test_stream_job_logs_refuses_a_negative_tail(env: Env) -> None:
    job_id = env.models["COMPLETED"].current_attempt_id
    for target in (job_id, "0123456789abcdef"):
        req = apb.StreamLogsRequest(job_id=target, tail_lines=-1)
        refused(env, functools.partial(env.stub.StreamJobLogs, req, timeout=10), INVALID, "tail_lines", "-1")


# -- fleet -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rpc", ["DrainNode", "UndrainNode"])
def test_drain_refuses_unknown_and_empty_node(env: Env, rpc: str) -> None:
    call = getattr(env.stub, rpc)
    refused(env, lambda: call(cpb.NodeRef(name="no-such-node"), timeout=10), NOT_FOUND, "no-such-node")
    refused(env, lambda: call(cpb.NodeRef(name=""), timeout=10), INVALID, "name")


def test_stage_dataset_refuses_an_unknown_node(env: Env) -> None:
    m = env.models["READY"]
    link = apb.StageLink(split="train", input1="img/a.png")
    refused(env, lambda: env.stub.StageDataset(cpb.CoordinatorStageRequest(uuid=m.uuid, links=[link], node="ghost"),
                                               timeout=10), NOT_FOUND, "ghost")
    refused(env, lambda: env.stub.StageDataset(cpb.CoordinatorStageRequest(uuid=UNKNOWN_UUID, links=[link]),
                                               timeout=10), NOT_FOUND, UNKNOWN_UUID)
    counts = env.stub.DatasetCounts(cpb.ModelRef(uuid=m.uuid), timeout=10)
    assert counts.uuid == m.uuid and counts.total == 0 and not counts.counts


STAGE_BAD = [
    ("no-links", [], "links"),
    ("bad-split", [apb.StageLink(split="bogus", input1="a.png")], "split"),
    ("no-file", [apb.StageLink(split="train")], "links[0]"),
    ("under-tmp", [apb.StageLink(split="train", input1="tmp/x.png")], "input1"),
]


@pytest.mark.parametrize(("links", "needle"), [pytest.param(lk, n, id=i) for i, lk, n in STAGE_BAD])
def test_stage_dataset_forwards_the_agents_refusal(env: Env, links: list[apb.StageLink], needle: str) -> None:
    m = env.models["READY"]
    # forwarded to the agent, which names the field; the coordinator says which node refused
    refused(env, lambda: env.stub.StageDataset(cpb.CoordinatorStageRequest(uuid=m.uuid, links=links), timeout=30),
            INVALID, f"node {env.a.node_name}", needle)


def test_fleet_register_refuses(env: Env) -> None:
    good: dict[str, Any] = dict(node_name="extra-node", address="127.0.0.1:1", agent_version="t", runtime="process")
    for fields, needle in ((dict(node_name=""), "node_name"), (dict(node_name="bad name"), "node_name"),
                           (dict(node_name="x" * 129), "node_name"), (dict(node_name="a/b"), "node_name"),
                           (dict(address=""), "address"), (dict(address="h" * 300 + ":1"), "address")):
        req = cpb.RegisterRequest(**dict(good, **fields))
        refused(env, functools.partial(env.fleet.Register, req, timeout=10), INVALID, needle)
    refused(env, lambda: env.fleet.Heartbeat(cpb.HeartbeatRequest(node_name=""), timeout=10), INVALID, "node_name")
    # an unknown node is told to register, and nothing is created for it
    before = env.snapshot()
    r = env.fleet.Heartbeat(cpb.HeartbeatRequest(node_name="never-registered"), timeout=10)
    assert r.reregister and env.snapshot() == before


def test_fleet_register_refuses_a_malformed_address(coordinator_factory) -> None:  # type: ignore[no-untyped-def]
    c = coordinator_factory()  # its own: the bug registers nodes that then go LOST
    fleet = coordinator_pb2_grpc.FleetStub(c.channel)
    accepted = []
    for i, address in enumerate(["no-port", "host:", ":5000", "host:port", "host:99999", "a b:1"]):
        req = cpb.RegisterRequest(node_name=f"n{i}", address=address, agent_version="t", runtime="process")
        try:
            fleet.Register(req, timeout=10)
            accepted.append(address)
        except grpc.RpcError as exc:
            assert exc.code() == INVALID and "address" in (exc.details() or ""), exc
    assert not accepted, f"registered with malformed addresses: {accepted}"
    assert not c.stub.ListNodes(cpb.ListNodesRequest(), timeout=5).nodes


def test_nothing_was_left_behind(env: Env) -> None:
    """After all the refusals: the fixture's models only, and one node, READY."""
    nodes = env.stub.ListNodes(cpb.ListNodesRequest(), timeout=5).nodes
    assert [(n.name, n.state_name) for n in nodes] == [(env.a.node_name, "READY")]
    models = env.stub.ListModels(cpb.ListModelsRequest(size=500), timeout=5)
    assert {m.uuid for m in models.items} == {m.uuid for m in env.models.values()}
    assert str(uuidlib.UUID(models.items[0].uuid)) == models.items[0].uuid
