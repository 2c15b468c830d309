"""The committed stubs in gpufleet/v1/ are exactly what scripts/genproto.py makes from proto/."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from gpufleet.agent import convert
from gpufleet.agent.states import JobState

from gpufleet.v1 import common_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "gpufleet" / "v1"
FIX = "the committed stubs are stale: run `python scripts/genproto.py` and commit gpufleet/v1/"


def _genproto() -> ModuleType:
    spec = importlib.util.spec_from_file_location("genproto", ROOT / "scripts" / "genproto.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.is_file()}


def test_committed_stubs_are_not_stale(tmp_path: Path) -> None:
    _genproto().generate(tmp_path)
    fresh = tmp_path / "gpufleet" / "v1"
    made = _files(fresh)
    assert {"agent_pb2.py", "agent_pb2_grpc.py", "agent_pb2.pyi", "common_pb2.py"} <= made
    # Every generated file is committed, and nothing generated-looking is committed without a .proto.
    generated_like = {n for n in _files(COMMITTED) if "_pb2" in n or n == "__init__.py"}
    assert made == generated_like, f"{FIX}: file sets differ: {sorted(made ^ generated_like)}"
    for name in sorted(made):
        assert (fresh / name).read_bytes() == (COMMITTED / name).read_bytes(), f"{FIX}: {name} differs"


def test_every_proto_has_its_stubs() -> None:
    for proto in sorted((ROOT / "proto" / "gpufleet" / "v1").glob("*.proto")):
        assert (COMMITTED / f"{proto.stem}_pb2.py").is_file(), f"{FIX}: no stubs for {proto.name}"


@pytest.mark.parametrize("state", list(JobState), ids=lambda s: s.value)
def test_every_job_state_round_trips_through_the_wire_enum(state: JobState) -> None:
    value = convert.state_to_pb(state)
    assert pb.AgentJobState.Name(value) == "AGENT_JOB_STATE_" + state.value
    assert convert.state_from_pb(value) is state


def test_the_wire_enum_has_exactly_the_agent_states_plus_unspecified() -> None:
    names = {n.removeprefix("AGENT_JOB_STATE_") for n in pb.AgentJobState.keys()}
    assert names == {s.value for s in JobState} | {"UNSPECIFIED"}
    assert pb.AGENT_JOB_STATE_UNSPECIFIED == 0
    for value in pb.AgentJobState.values():
        if value != pb.AGENT_JOB_STATE_UNSPECIFIED:
            assert convert.state_to_pb(convert.state_from_pb(value)) == value
    with pytest.raises(ValueError):
        convert.state_from_pb(pb.AGENT_JOB_STATE_UNSPECIFIED)  # never silently a real state
    with pytest.raises(ValueError):
        convert.state_from_pb(99)
