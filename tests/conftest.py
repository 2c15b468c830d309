"""Shared fixtures: real dockerd + tiny image (tests.dockerd), PostgreSQL (tests.postgres), agents."""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import AgentProc, CoordinatorProc, ensure_job_user, open_path_to, wait_for

pytest_plugins = ["tests.dockerd"] + (
    ["tests.postgres"] if (Path(__file__).parent / "postgres.py").exists() else []
)

PY = sys.executable


@pytest.fixture(autouse=True, scope="session")
def _job_user() -> None:
    """Agents run process jobs as the unprivileged `gpufleet-job` (scripts/setup-dev.sh makes it too).
    Test jobs run this interpreter and this checkout (`python -m gpufleet.trainer`): the job user must
    reach both by path, and both may sit under a 0700 home (/root on CI machines)."""
    ensure_job_user()
    if os.geteuid() == 0:
        open_path_to(Path(sys.executable).resolve())
        open_path_to(Path(sys.executable).parent)
        open_path_to(Path(__file__).resolve().parents[1])


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[Callable[..., AgentProc]]:
    """Start real agent processes; every one is killed and its jobs cleaned up at the end."""
    made: list[AgentProc] = []

    def make(name: str = "a", start: bool = True, **kw: object) -> AgentProc:
        a = AgentProc(tmp_path / name, **kw)  # type: ignore[arg-type]
        made.append(a)
        return a.start() if start else a

    yield make
    for a in made:
        a.kill()
        a.cleanup_jobs()


@pytest.fixture
def agent(agent_factory: Callable[..., AgentProc]) -> AgentProc:
    """One agent, process runtime, 4 fake GPUs."""
    return agent_factory()


@pytest.fixture
def docker_agent(agent_factory: Callable[..., AgentProc], dockerd: object, tiny_image: str) -> Iterator[AgentProc]:
    """One agent on the docker runtime against the test engine."""
    a = agent_factory("d", runtime="docker", docker_host=dockerd.base_url)  # type: ignore[attr-defined]
    yield a
    client = dockerd.client  # type: ignore[attr-defined]
    for c in client.containers.list(all=True, filters={"label": f"gpufleet.agent={a.node_name}"}):
        c.remove(force=True)


@pytest.fixture
def coordinator_factory(tmp_path: Path) -> Iterator[Callable[..., CoordinatorProc]]:
    made: list[CoordinatorProc] = []

    def make(name: str = "c", start: bool = True, **kw: object) -> CoordinatorProc:
        c = CoordinatorProc(tmp_path / name, **kw)  # type: ignore[arg-type]
        made.append(c)
        return c.start() if start else c

    yield make
    for c in made:
        c.kill()


@pytest.fixture
def fleet(coordinator_factory: Callable[..., CoordinatorProc], agent_factory: Callable[..., AgentProc]):
    """A coordinator (embedded SQLite) and one registered agent (process runtime, fake:4)."""
    from gpufleet.v1 import coordinator_pb2 as cpb

    c = coordinator_factory()
    a = agent_factory("a1", extra=["--coordinator", c.addr])
    wait_for(lambda: len(c.stub.ListNodes(cpb.ListNodesRequest(), timeout=5).nodes) == 1, 20, "agent registered")
    return c, a
