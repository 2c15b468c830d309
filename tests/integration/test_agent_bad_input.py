"""Bad input to every Agent RPC on a real agent process: the exact code, the field named, nothing changed.

One agent (process runtime, fake:4 GPUs) is shared by the table tests; it holds a running job on GPU 0,
a finished attempt 3 of another job and an unhealthy GPU 3, so refusals that need state can be tried.
Every refusal is checked against a snapshot of what a user can see: the job list, the event sequence,
GPU holders and health, and the files under the output root, the data root and the jobs folder.
"""
from __future__ import annotations

import itertools
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gpufleet.v1 import agent_pb2 as apb
from gpufleet.v1 import common_pb2 as pb
from tests.harness import AgentProc, healthy, state_name, wait_for

PY = sys.executable
IA, NF, FP, RE, AB = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                      grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED)
STREAMING = {"WatchEvents", "StreamLogs", "ReadOutput"}


def tree(root: Path) -> list[str]:
    """Every path under root, without following links."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            out.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(out)


@dataclass(frozen=True)
class Snapshot:
    jobs: list[str]
    last_event_seq: int
    jobs_held: int
    jobs_running: int
    gpus: list[tuple[int, bool, str, str]]
    files: list[str]


def snapshot(a: AgentProc) -> Snapshot:
    jobs = a.stub.ListJobs(apb.ListJobsRequest(), timeout=10).jobs
    node = a.stub.GetNode(apb.GetNodeRequest(), timeout=10)
    files = [f"{d.name}/{p}" for d in (a.output_root, a.data_root, a.state_dir / "jobs") for p in tree(d)]
    return Snapshot(
        jobs=[str(j) for j in jobs], last_event_seq=node.last_event_seq, jobs_held=node.jobs_held,
        jobs_running=node.jobs_running,
        gpus=[(g.index, g.healthy, g.health_reason, g.assigned_job_id) for g in node.gpus], files=files,
    )


def call(a: AgentProc, method: str, request: Any) -> Any:
    fn = getattr(a.stub, method)
    if method in STREAMING:
        return list(fn(request, timeout=10))
    return fn(request, timeout=10)


def assert_refused(a: AgentProc, method: str, request: Any, code: grpc.StatusCode, needle: str) -> None:
    before = snapshot(a)
    with pytest.raises(grpc.RpcError) as e:
        call(a, method, request)
    details = e.value.details() or ""
    assert e.value.code() == code, f"{method}: {e.value.code()} {details!r}"
    assert needle in details, f"{method}: {details!r} does not name {needle!r}"
    assert snapshot(a) == before, f"{method} changed the agent although it was refused"


def sleeper(seconds: int = 300) -> list[str]:
    return [PY, "-c", f"import time; time.sleep({seconds})"]


def prepare_roots(a: AgentProc) -> None:
    outside = a.root / "outside"
    outside.mkdir(exist_ok=True)
    (a.output_root / "escape").symlink_to(outside)
    (a.output_root / "afile").write_text("not a folder")
    (a.data_root / "ds").mkdir()
    (a.data_root / "ds" / "a.png").write_text("png")
    (a.data_root / "link.png").symlink_to(a.data_root / "ds" / "a.png")
    (a.data_root / "escape").symlink_to(outside)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    a = AgentProc(tmp_path_factory.mktemp("bad-input"))
    try:
        prepare_roots(a)
        a.start()
        a.launch("holder", sleeper(), gpus=[0])
        a.wait_state("holder", "RUNNING")
        a.launch("done3", [PY, "-c", "pass"], attempt=3)
        a.wait_state("done3", "SUCCEEDED")
        a.stub.SetGpuHealth(apb.SetGpuHealthRequest(index=3, healthy=False, reason="xid=79"), timeout=10)
        yield a
    finally:
        a.kill()
        a.cleanup_jobs()


def launch(job_id: str = "new", attempt: int = 1, gpus: tuple[int, ...] = (),
           **spec: Any) -> apb.LaunchRequest:
    spec.setdefault("command", [PY, "-c", "pass"])
    spec.setdefault("output_dir", "new-out")
    return apb.LaunchRequest(job_id=job_id, attempt=attempt, spec=pb.JobSpec(**spec), gpu_indices=list(gpus))


def case(name: str, method: str, request: Any, code: grpc.StatusCode, needle: str) -> Any:
    return pytest.param(method, request, code, needle, id=f"{method}-{name}")


def bug(name: str, method: str, request: Any, code: grpc.StatusCode, needle: str, why: str) -> Any:
    return pytest.param(method, request, code, needle, id=f"{method}-{name}")


def mount(source: str, target: str = "") -> list[pb.Mount]:
    return [pb.Mount(source=source, target=target)]


def link(split: str = "train", **parts: str) -> apb.StageLink:
    return apb.StageLink(split=split, **parts)


def stage(stage_id: str = "s1", *links: apb.StageLink) -> apb.StageDatasetRequest:
    return apb.StageDatasetRequest(stage_id=stage_id, links=list(links))


CASES = [
    # -- Launch: invalid fields
    case("empty job id", "Launch", launch(job_id=""), IA, "job_id"),
    case("job id traversal", "Launch", launch(job_id="../etc"), IA, "job_id"),
    case("job id slash", "Launch", launch(job_id="a/b"), IA, "job_id"),
    case("job id NUL", "Launch", launch(job_id="a\x00b"), IA, "job_id"),
    case("job id too long", "Launch", launch(job_id="j" * 129), IA, "job_id"),
    case("attempt 0", "Launch", launch(attempt=0), IA, "attempt"),
    case("attempt negative", "Launch", launch(attempt=-4), IA, "attempt"),
    case("no command", "Launch", launch(command=[]), IA, "spec.command"),
    case("program not on PATH", "Launch", launch(command=["no-such-program"]), IA, "spec.command[0]"),
    case("NUL in arg", "Launch", launch(command=[PY, "-c", "pass\x00"]), IA, "spec.command[2]"),
    case("env key with =", "Launch", launch(env={"A=B": "1"}), IA, "spec.env['A=B']"),
    case("env key non-printable", "Launch", launch(env={"A\x07": "1"}), IA, "spec.env['A\\x07']"),
    case("GPUFLEET_ env key", "Launch", launch(env={"GPUFLEET_JOB_ID": "x"}), IA,
         "spec.env['GPUFLEET_JOB_ID']"),
    case("env value NUL", "Launch", launch(env={"A": "\x00"}), IA, "spec.env['A']"),
    case("output_dir empty", "Launch", launch(output_dir=""), IA, "spec.output_dir"),
    case("output_dir absolute", "Launch", launch(output_dir="/tmp/x"), IA, "spec.output_dir"),
    case("output_dir dot-dot", "Launch", launch(output_dir="../x"), IA, "spec.output_dir"),
    case("output_dir inner dot-dot", "Launch", launch(output_dir="a/../../x"), IA, "spec.output_dir"),
    case("output_dir symlink escape", "Launch", launch(output_dir="escape/x"), IA, "spec.output_dir"),
    case("mount outside data root", "Launch", launch(mounts=mount("../out")), IA, "spec.mounts[0].source"),
    case("mount absolute", "Launch", launch(mounts=mount("/etc")), IA, "spec.mounts[0].source"),
    case("mount symlink escape", "Launch", launch(mounts=mount("escape")), IA, "spec.mounts[0].source"),
    case("mount missing", "Launch", launch(mounts=mount("nope")), IA, "spec.mounts[0].source"),
    case("mount target relative", "Launch", launch(mounts=mount("ds", "data")), IA, "spec.mounts[0].target"),
    case("mount target /output", "Launch", launch(mounts=mount("ds", "/output")), IA,
         "spec.mounts[0].target"),
    case("negative total_epoch", "Launch", launch(total_epoch=-1), IA, "spec.total_epoch"),
    case("negative val_interval", "Launch", launch(val_interval=-2), IA, "spec.val_interval"),
    case("negative shm", "Launch", launch(shm_size_bytes=-1), IA, "spec.shm_size_bytes"),
    case("negative cpu", "Launch", launch(resources=pb.Resources(cpu_millis=-1)), IA, "cpu_millis"),
    case("negative memory", "Launch", launch(resources=pb.Resources(memory_bytes=-1)), IA, "memory_bytes"),
    case("params_json not JSON", "Launch", launch(params_json="{oops"), IA, "spec.params_json"),
    case("params_json not an object", "Launch", launch(params_json="[1]"), IA, "spec.params_json"),
    case("unknown job type", "Launch", launch(job_type=9), IA, "spec.job_type"),
    case("duplicate gpu", "Launch", launch(gpus=(1, 1)), IA, "gpu_indices"),
    case("unknown gpu", "Launch", launch(gpus=(4,)), IA, "gpu_indices"),
    case("negative gpu", "Launch", launch(gpus=(-1,)), IA, "gpu_indices"),
    case("user on process runtime", "Launch", launch(user="root"), IA, "spec.user"),
    case("workdir escapes", "Launch", launch(workdir="../x"), IA, "spec.workdir"),
    bug("params_json deeply nested", "Launch", launch(params_json="[" * 100_000), IA, "spec.params_json",
        "json.loads raises RecursionError on deep nesting; validate() only catches ValueError, so Launch "
        "answers INTERNAL"),
    bug("mount source name too long", "Launch", launch(mounts=mount("n" * 300)), IA, "spec.mounts[0].source",
        "Path.exists() raises OSError(ENAMETOOLONG) for a component over 255 bytes; Launch answers INTERNAL"),
    # -- Launch: refused because of state
    case("another attempt still running", "Launch", launch(job_id="holder", attempt=2, gpus=(1,)), AB,
         "attempt 1 is still RUNNING"),
    case("older attempt", "Launch", launch(job_id="done3", attempt=2), FP,
         "attempt 2 is older than attempt 3"),
    case("unhealthy gpu", "Launch", launch(gpus=(3,)), AB, "gpu_indices: GPU 3 is unhealthy (xid=79)"),
    case("gpu held", "Launch", launch(gpus=(0,)), RE, "gpu_indices: GPU 0 is held by job holder"),
    case("one of two gpus held", "Launch", launch(gpus=(1, 0)), RE,
         "gpu_indices: GPU 0 is held by job holder"),
    # -- Stop
    case("empty job id", "Stop", apb.StopRequest(job_id=""), IA, "job_id"),
    case("job id traversal", "Stop", apb.StopRequest(job_id="../holder"), IA, "job_id"),
    case("negative grace", "Stop", apb.StopRequest(job_id="holder", grace_seconds=-1), IA, "grace_seconds"),
    case("grace too long", "Stop", apb.StopRequest(job_id="holder", grace_seconds=3601), IA, "grace_seconds"),
    case("unknown job", "Stop", apb.StopRequest(job_id="ghost", grace_seconds=1), NF, "'ghost'"),
    case("unknown attempt", "Stop", apb.StopRequest(job_id="holder", attempt=7), NF, "attempt 7"),
    bug("negative attempt", "Stop", apb.StopRequest(job_id="holder", attempt=-1), IA, "attempt",
        "Stop does not validate attempt (Inspect, StreamLogs and Acknowledge do): -1 is looked up and "
        "answers NOT_FOUND instead of INVALID_ARGUMENT"),
    # -- Inspect
    case("empty job id", "Inspect", apb.InspectRequest(job_id=""), IA, "job_id"),
    case("slash", "Inspect", apb.InspectRequest(job_id="a/b"), IA, "job_id"),
    case("too long", "Inspect", apb.InspectRequest(job_id="j" * 500), IA, "job_id"),
    case("unknown", "Inspect", apb.InspectRequest(job_id="ghost"), NF, "'ghost'"),
    case("negative attempt", "Inspect", apb.InspectRequest(job_id="holder", attempt=-1), IA, "attempt"),
    case("unknown attempt", "Inspect", apb.InspectRequest(job_id="holder", attempt=9), NF, "attempt 9"),
    # -- ListJobs
    case("unspecified state", "ListJobs", apb.ListJobsRequest(states=[pb.AGENT_JOB_STATE_UNSPECIFIED]), IA,
         "states[0]"),
    case("unknown state", "ListJobs", apb.ListJobsRequest(states=[2, 42]), IA,  # type: ignore[list-item]
         "states[1]"),
    # -- WatchEvents
    case("negative after_seq", "WatchEvents", apb.WatchEventsRequest(after_seq=-1, no_follow=True), IA,
         "after_seq"),
    # -- StreamLogs
    case("empty job id", "StreamLogs", apb.StreamLogsRequest(job_id=""), IA, "job_id"),
    case("bad job id", "StreamLogs", apb.StreamLogsRequest(job_id="../x"), IA, "job_id"),
    case("unknown", "StreamLogs", apb.StreamLogsRequest(job_id="ghost"), NF, "'ghost'"),
    case("negative attempt", "StreamLogs", apb.StreamLogsRequest(job_id="holder", attempt=-2), IA, "attempt"),
    case("unknown attempt", "StreamLogs", apb.StreamLogsRequest(job_id="done3", attempt=1), NF, "attempt 1"),
    case("negative tail", "StreamLogs", apb.StreamLogsRequest(job_id="holder", tail_lines=-1), IA,
         "tail_lines"),
    # -- ReadOutput (a download: one regular file below an output folder, no link followed)
    case("no path", "ReadOutput", apb.ReadOutputRequest(output_dir="holder"), IA, "path"),
    case("path dot-dot", "ReadOutput", apb.ReadOutputRequest(output_dir="holder", path="../x"), IA, "path"),
    case("path absolute", "ReadOutput", apb.ReadOutputRequest(output_dir="holder", path="/etc/passwd"), IA,
         "path"),
    case("dir dot-dot", "ReadOutput", apb.ReadOutputRequest(output_dir="../outside", path="f"), IA, "output_dir"),
    case("dir symlink escape", "ReadOutput", apb.ReadOutputRequest(output_dir="escape", path="passwd"), FP,
         "symbolic link"),
    case("missing file", "ReadOutput", apb.ReadOutputRequest(output_dir="holder", path="none.pt"), NF,
         "no such file"),
    case("negative cap", "ReadOutput", apb.ReadOutputRequest(output_dir="holder", path="f", max_bytes=-1), IA,
         "max_bytes"),
    # -- ProbeOutputs
    case("nothing to probe", "ProbeOutputs", apb.ProbeOutputsRequest(), IA, "job_id"),
    case("bad mode", "ProbeOutputs", apb.ProbeOutputsRequest(job_id="holder", best_metric_mode="median"), IA,
         "best_metric_mode"),
    case("bad job id", "ProbeOutputs", apb.ProbeOutputsRequest(job_id="a/b"), IA, "job_id"),
    case("unknown job", "ProbeOutputs", apb.ProbeOutputsRequest(job_id="ghost"), NF, "'ghost'"),
    case("dir dot-dot", "ProbeOutputs", apb.ProbeOutputsRequest(output_dir="../outside"), IA, "output_dir"),
    case("dir absolute", "ProbeOutputs", apb.ProbeOutputsRequest(output_dir="/etc"), IA, "output_dir"),
    case("dir symlink escape", "ProbeOutputs", apb.ProbeOutputsRequest(output_dir="escape"), IA,
         "output_dir"),
    case("dir NUL", "ProbeOutputs", apb.ProbeOutputsRequest(output_dir="a\x00"), IA, "output_dir"),
    case("negative total_epoch", "ProbeOutputs", apb.ProbeOutputsRequest(output_dir="holder", total_epoch=-1),
         IA, "total_epoch"),
    case("negative val_interval", "ProbeOutputs",
         apb.ProbeOutputsRequest(output_dir="holder", total_epoch=2, val_interval=-1), IA, "val_interval"),
    # -- StageDataset
    case("empty stage id", "StageDataset", stage("", link(input1="ds/a.png")), IA, "stage_id"),
    case("stage id dot-dot", "StageDataset", stage("..", link(input1="ds/a.png")), IA, "stage_id"),
    case("stage id slash", "StageDataset", stage("a/b", link(input1="ds/a.png")), IA, "stage_id"),
    case("no links", "StageDataset", stage("s1"), IA, "links"),
    case("bad split", "StageDataset", stage("s1", link("dev", input1="ds/a.png")), IA, "links[0].split"),
    case("link names no file", "StageDataset", stage("s1", link()), IA, "links[0]"),
    case("bad dataset id", "StageDataset", stage("s1", link(dataset_id="a/b", input1="ds/a.png")), IA,
         "links[0].dataset_id"),
    case("source dot-dot", "StageDataset", stage("s1", link(input1="../outside/x")), IA, "links[0].input1"),
    case("source absolute", "StageDataset", stage("s1", link(label="/etc/hostname")), IA, "links[0].label"),
    case("source symlink", "StageDataset", stage("s1", link(input2="link.png")), IA, "links[0].input2"),
    case("source symlink escape", "StageDataset", stage("s1", link(input1="escape/x")), IA,
         "links[0].input1"),
    case("source a folder", "StageDataset", stage("s1", link(label_json="ds")), IA, "links[0].label_json"),
    case("second link bad", "StageDataset", stage("s1", link(input1="ds/a.png"), link(input1="../x")), IA,
         "links[1].input1"),
    case("all sources missing", "StageDataset", stage("s1", link(input1="ds/nope.png")), FP,
         "links[0].input1"),
    bug("source name too long", "StageDataset", stage("s1", link(input1="n" * 300)), IA, "links[0].input1",
        "os.lstat raises OSError(ENAMETOOLONG) for a component over 255 bytes; staging only catches "
        "FileNotFoundError/NotADirectoryError, so StageDataset answers INTERNAL"),
    # -- Acknowledge
    case("empty job id", "Acknowledge", apb.AcknowledgeRequest(job_id="", attempt=1), IA, "job_id"),
    case("bad job id", "Acknowledge", apb.AcknowledgeRequest(job_id="a b", attempt=1), IA, "job_id"),
    case("attempt 0", "Acknowledge", apb.AcknowledgeRequest(job_id="done3", attempt=0), IA, "attempt"),
    case("still running", "Acknowledge", apb.AcknowledgeRequest(job_id="holder", attempt=1), FP,
         "holder attempt 1 is still RUNNING"),
    # -- SetGpuHealth
    case("index past the end", "SetGpuHealth", apb.SetGpuHealthRequest(index=4, healthy=False), NF,
         "gpu index 4"),
    case("negative index", "SetGpuHealth", apb.SetGpuHealthRequest(index=-1, healthy=True), NF,
         "gpu index -1"),
]


@pytest.mark.parametrize(("method", "request_", "code", "needle"), CASES)
def test_bad_input_is_refused_and_changes_nothing(shared: AgentProc, method: str, request_: Any,
                                                  code: grpc.StatusCode, needle: str) -> None:
    assert_refused(shared, method, request_, code, needle)


def test_every_rpc_is_covered() -> None:
    methods = {p.values[0] for p in CASES}
    service = apb.DESCRIPTOR.services_by_name["Agent"]
    assert methods | {"GetNode"} == {m.name for m in service.methods}


def test_get_node_has_no_input_and_changes_nothing(shared: AgentProc) -> None:
    before = snapshot(shared)
    node = shared.stub.GetNode(apb.GetNodeRequest(), timeout=10)
    assert node.runtime == "process" and len(node.gpus) == 4 and node.jobs_running == 1
    evs = list(shared.stub.WatchEvents(apb.WatchEventsRequest(no_follow=True), timeout=10))
    assert node.last_event_seq == evs[-1].seq
    assert snapshot(shared) == before


def test_acknowledging_an_unknown_job_is_a_harmless_no(shared: AgentProc) -> None:
    before = snapshot(shared)
    r = shared.stub.Acknowledge(apb.AcknowledgeRequest(job_id="ghost", attempt=1), timeout=10)
    assert r.dropped is False
    assert snapshot(shared) == before


# -- bugs that leave state behind: each on an agent of its own -----------------------------------
def iso(name: str, request: apb.LaunchRequest, needle: str, why: str) -> Any:
    return pytest.param(request, IA, needle, id=name)


ISOLATED = [
    iso("job id with trailing newline", launch(job_id="nl\n"), "job_id",
        "JOB_ID_RE's '$' matches before a trailing newline; the job 'nl\\n' is recorded and run"),
    iso("output_dir too long", launch(output_dir="o" * 300, gpus=(1,)), "spec.output_dir",
        "the output dir is made after store.insert; its OSError gives INTERNAL and leaves the job PENDING "
        "for ever, holding GPU 1, also after a restart"),
    iso("output_dir under a regular file", launch(output_dir="afile/sub", gpus=(1,)), "spec.output_dir",
        "same as above: mkdir fails after insert, INTERNAL, job stuck PENDING holding GPU 1"),
    iso("arg over the kernel limit", launch(command=[PY, "-c", "pass", "\u20ac" * 50_000]), "spec.command[3]",
        "MAX_ARG_LEN counts characters, the kernel limit (MAX_ARG_STRLEN, 128 KiB) counts bytes: Launch "
        "answers OK and the job is FAILED with 'Argument list too long'"),
]


@pytest.mark.parametrize(("request_", "code", "needle"), ISOLATED)
def test_bad_launch_on_a_fresh_agent(agent_factory: Callable[..., AgentProc], request_: apb.LaunchRequest,
                                     code: grpc.StatusCode, needle: str) -> None:
    a = agent_factory(start=False)
    prepare_roots(a)
    a.start()
    assert_refused(a, "Launch", request_, code, needle)


# -- random Launch requests --------------------------------------------------------------------
ALLOWED_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
                 grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.NOT_FOUND}
TEXT = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"]), max_size=24),  # anything valid as UTF-8
    st.sampled_from(["", ".", "..", "../", "../../etc/passwd", "/", "/etc", "/output", "a/../..", "~",
                     "~root", "\x00", "a\x00b", "é", "日本", "\u202e", "\n", " ", "-rf", "$(id)", "${HOME}",
                     "*", "%s", "A=B", "GPUFLEET_JOB_ID", "CUDA_VISIBLE_DEVICES", "ds", "escape", "fz-out"]),
)
# Long strings (100 k to 1 M characters). No brackets: deep JSON nesting is the xfail'd RecursionError bug.
HUGE = st.builds(lambda c, n: c * n, st.sampled_from(["a", "é", "日", "/", "../", ".", "\x00", " ", "\n"]),
                 st.integers(100_000, 1_000_000))
INT32 = st.one_of(st.integers(-3, 5), st.integers(-(2**31), 2**31 - 1))
INT64 = st.one_of(st.integers(-3, 5), st.integers(-(2**63), 2**63 - 1))
# Mostly a fresh job id (so validation runs), sometimes a repeat (idempotency and attempt fencing run).
FRESH = "@fresh"
JOB_IDS = st.sampled_from([FRESH, FRESH, FRESH, "fz-1", "fz.2"])
_fresh_ids = itertools.count()


def _runnable(prog: str) -> bool:
    try:
        return shutil.which(prog) is not None or os.access(prog, os.X_OK)
    except (ValueError, OSError):
        return False


def _set(attr: str, strategy: st.SearchStrategy[Any]) -> Callable[[Any, apb.LaunchRequest], None]:
    def mutate(draw: Any, req: apb.LaunchRequest) -> None:
        target = req if attr in ("job_id", "attempt") else req.spec
        setattr(target, attr, draw(strategy))
    return mutate


def _resources(draw: Any, req: apb.LaunchRequest) -> None:
    req.spec.resources.cpu_millis = draw(INT64)
    req.spec.resources.memory_bytes = draw(INT64)


def _command(draw: Any, req: apb.LaunchRequest) -> None:
    # Never something that could run for long: a random program must not exist here.
    argv = draw(st.lists(st.one_of(TEXT, HUGE), max_size=4).filter(lambda c: not c or not _runnable(c[0])))
    req.spec.command[:] = argv


def _env(draw: Any, req: apb.LaunchRequest) -> None:
    req.spec.env[draw(TEXT)] = draw(st.one_of(TEXT, HUGE))


def _mount(draw: Any, req: apb.LaunchRequest) -> None:
    req.spec.mounts.add(source=draw(st.one_of(TEXT, HUGE)), target=draw(TEXT))


def _gpus(draw: Any, req: apb.LaunchRequest) -> None:
    req.gpu_indices[:] = draw(st.lists(st.one_of(st.integers(0, 3), INT32), max_size=5))


MUTATIONS: list[Callable[[Any, apb.LaunchRequest], None]] = [
    _set("job_id", st.one_of(TEXT, HUGE)), _set("attempt", INT64), _command,
    lambda draw, req: req.spec.command.append(draw(st.one_of(TEXT, HUGE))),
    _env, _set("output_dir", st.one_of(TEXT, HUGE)), _mount, _set("total_epoch", INT32),
    _set("val_interval", INT32),
    _set("params_json", st.one_of(TEXT, HUGE, st.sampled_from(["{}", "[]", "null", '{"total_epoch": 2}']))),
    _set("job_type", INT32), _set("shm_size_bytes", INT64), _resources, _set("workdir", TEXT),
    _set("user", TEXT), _set("image", st.one_of(TEXT, HUGE)), _gpus,
]


@st.composite
def launch_requests(draw: Any) -> apb.LaunchRequest:
    """A valid request with 0 to 4 fields replaced by random values: some launch, most are refused."""
    req = launch(job_id=draw(JOB_IDS), attempt=draw(st.integers(1, 3)),
                 gpus=tuple(draw(st.lists(st.integers(0, 3), max_size=2, unique=True))),
                 output_dir=draw(st.sampled_from(["fz-out", "fz/a"])))
    for mutate in draw(st.lists(st.sampled_from(MUTATIONS), max_size=4)):
        mutate(draw, req)
    return req


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(req=launch_requests())
def test_random_launch_requests_never_break_the_agent(agent: AgentProc, req: apb.LaunchRequest) -> None:
    if req.job_id == FRESH:
        req.job_id = f"fz-{next(_fresh_ids)}"
    try:
        st_ = agent.stub.Launch(req, timeout=30)
    except grpc.RpcError as e:
        event(f"refused {e.code().name}")  # shown by --hypothesis-show-statistics
        assert e.code() in ALLOWED_CODES, f"{e.code()}: {e.details()!r}"
    else:
        event(f"launched, {state_name(st_.state)}")
        assert st_.job_id == req.job_id and st_.attempt == req.attempt
        done = agent.stub.Stop(apb.StopRequest(job_id=st_.job_id, attempt=st_.attempt, grace_seconds=1),
                               timeout=30)
        if state_name(done.state) in ("PENDING", "RUNNING"):
            done = wait_for(lambda: (j := agent.inspect(st_.job_id)).state not in (1, 2) and j,
                            what=f"job {st_.job_id!r} to end")
        assert state_name(done.state) in ("SUCCEEDED", "FAILED", "STOPPED")
    assert healthy(agent.channel)  # type: ignore[arg-type]
    node = agent.stub.GetNode(apb.GetNodeRequest(), timeout=10)
    assert node.jobs_running == 0 and all(g.assigned_job_id == "" for g in node.gpus)
