"""The interface every job runtime implements (docker, process).

The supervisor owns job state; a runtime only creates, observes, signals and removes the thing
that runs a job. Every method must be safe to call again after an agent crash at any point:
`start` finds an existing container/process for (job_id, attempt) instead of making a second one.
"""
from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from gpufleet.agent.jobuser import JobUser


@dataclass(frozen=True)
class LaunchPlan:
    """A validated job, with host paths resolved under the agent's roots."""

    job_id: str
    attempt: int
    # argv; for docker an empty list keeps the image's default command.
    argv: list[str]
    image: str
    env: dict[str, str]
    # Absolute host path of the output folder (exists).
    output_dir: Path
    # (absolute host path, container target) pairs, always read-only.
    mounts: list[tuple[Path, str]]
    gpu_indices: list[int]
    # True when the GPUs are real (NVML): docker then gets a DeviceRequest.
    real_gpus: bool
    # Per-attempt folder in the agent's state dir for runtime files (exit file, logs).
    job_dir: Path
    shm_size_bytes: int = 0
    cpu_millis: int = 0
    memory_bytes: int = 0
    workdir: str = ""
    user: str = ""
    # Rotate the captured output at this size (bytes).
    log_max_bytes: int = 64 * 1024 * 1024
    # The job's owner ('' without auth) and the account it runs as when it has its own uid
    # (agent/owneruids.py); None: the runtime's default (--job-user, --container-user).
    owner: str = ""
    run_as: JobUser | None = None


@dataclass(frozen=True)
class Handle:
    """What the agent stores to find the job again after a restart."""

    # Container id (docker) or pid of the wrapper process (process).
    runtime_id: str
    # Process start time in clock ticks since boot (process runtime) so a reused pid is not
    # mistaken for the job; empty for docker.
    start_marker: str = ""


class Seen(enum.Enum):
    CREATED = "created"  # exists, not started yet
    RUNNING = "running"
    EXITED = "exited"  # ended; exit code known
    MISSING = "missing"  # gone without a known exit code


@dataclass(frozen=True)
class Observation:
    seen: Seen
    exit_code: int | None = None
    # Signal that ended the job (0 = none); exit_code is then 128 + signal.
    signal: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    message: str = ""


@dataclass
class Found:
    """A runtime object labelled with this agent, found without the store's help."""

    job_id: str
    attempt: int
    handle: Handle
    extra: dict[str, str] = field(default_factory=dict)


class RuntimeError_(Exception):
    """The runtime could not do what was asked (engine down, image missing, ...)."""


class Runtime(Protocol):
    name: str

    def start(self, plan: LaunchPlan) -> Handle:
        """Create and start the job; if it already exists for (job_id, attempt), return it."""
        ...

    def find(self, job_id: str, attempt: int, job_dir: Path) -> Handle | None:
        """The existing container/process of (job_id, attempt), if any."""
        ...

    def observe(self, handle: Handle, job_dir: Path) -> Observation: ...

    def observe_many(self, items: list[tuple[Handle, Path]]) -> list[Observation]:
        """Observe several jobs at once (one engine call where possible)."""
        ...

    def signal(self, handle: Handle, job_dir: Path, sig: int) -> None:
        """Send `sig` to the job (its whole process group). No error if it already ended."""
        ...

    def remove(self, handle: Handle, job_dir: Path) -> None:
        """Remove what is left of the job (container, runtime files). Idempotent."""
        ...

    def logs(self, handle: Handle, job_dir: Path, tail_lines: int = 0) -> bytes:
        """The captured stdout+stderr (the last `tail_lines` lines when > 0)."""
        ...

    def follow(self, handle: Handle, job_dir: Path, tail_lines: int = 0) -> Iterator[bytes]:
        """Captured output, then new output as it comes, until the job ends."""
        ...

    def read_since(self, handle: Handle, job_dir: Path, cursor: str) -> tuple[bytes, str]:
        """Output produced after `cursor` ("" = start) and the new cursor (for progress parsing)."""
        ...

    def list_labelled(self) -> list[Found]:
        """Every job object this agent made that still exists (for orphan checks)."""
        ...

    def healthy(self) -> bool: ...

    def close(self) -> None: ...
