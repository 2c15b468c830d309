"""What the supervisor and the reporter need from the agent's durable state, as a typed interface.

`JobStore` is the contract; `agent/store.py` (SQLite, the real one) and `agent/memstore.py` (in
memory, and an always-failing twin for error paths) implement it, and one test suite runs over
both (tests/unit/agent/test_store.py), as Nomad's client state does.

What the methods promise, for every implementation:
- Reads never raise for a missing job except `get` (NotFound, message naming the job and attempt);
  `find` answers None instead. Lists are ordered by `created_at`.
- Every write is all or nothing: a refused or failed write changes no record, hold, fence or event.
- `insert` refuses (see `check_insert`) an attempt older than one given before, the same attempt
  after it was acknowledged, a second live attempt of a job, and a GPU another attempt holds.
- `update` validates any state change (agent/states.py) and releases the attempt's GPUs when it
  ends; it returns the new record and the event appended (None when nothing watchers care about
  changed). The `record_*` methods are the supervisor's vocabulary over `update`.
- A write that cannot be stored raises the store's error: `StoreFull` (RESOURCE_EXHAUSTED) when the
  disk is full, which the servicer answers with a clear message; nothing is half-written.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gpufleet.agent.states import JobState

from gpufleet.errors import Aborted, FailedPrecondition, ResourceExhausted

if TYPE_CHECKING:  # the records live beside the SQLite store, which implements this interface
    from gpufleet.agent.store import Event, JobRecord


def check_insert(job: JobRecord, max_attempt: int | None, other_live: tuple[int, str] | None,
                 holds: Mapping[int, tuple[str, int]]) -> None:
    """Raise why `job` may not be inserted, from what the store holds: the job's fence (None when
    never seen), another live attempt of it (attempt, state) and the GPU holds. Pure."""
    if max_attempt is not None and job.attempt < max_attempt:
        raise FailedPrecondition(
            f"job {job.job_id}: attempt {job.attempt} is older than attempt {max_attempt} "
            "already given to this agent (stale attempts are never started)"
        )
    if other_live is not None:
        raise Aborted(
            f"job {job.job_id}: attempt {other_live[0]} is still {other_live[1]}; "
            f"stop it before launching attempt {job.attempt}"
        )
    if max_attempt is not None and job.attempt == max_attempt:
        # Same attempt again after it was acknowledged and dropped: never run it twice.
        raise FailedPrecondition(
            f"job {job.job_id}: attempt {job.attempt} already ran on this agent and was acknowledged"
        )
    for idx in job.gpu_indices:
        held = holds.get(idx)
        if held is not None:
            raise ResourceExhausted(f"gpu_indices: GPU {idx} is held by job {held[0]} attempt {held[1]}")


class JobStore(Protocol):
    """The agent's durable job state (see the module docstring for what every method promises)."""

    @property
    def path(self) -> Path | None:
        """The file the store keeps (its folder is checked for free space before a launch); None in memory."""

    def close(self) -> None: ...
    def ping(self) -> bool: ...

    # -- reads
    def get(self, job_id: str, attempt: int | None = None) -> JobRecord: ...
    def find(self, job_id: str, attempt: int) -> JobRecord | None: ...
    def jobs(self, states: Iterable[JobState] | None = None) -> list[JobRecord]: ...
    def live_jobs(self) -> list[JobRecord]: ...
    def max_attempt(self, job_id: str) -> int: ...
    def gpu_holds(self) -> dict[int, tuple[str, int]]: ...
    def last_seq(self) -> int: ...
    def events_after(self, seq: int, limit: int = 1000) -> list[Event]: ...
    def reported_seq(self) -> int: ...

    # -- writes
    def precheck(self, job: JobRecord) -> None: ...
    def insert(self, job: JobRecord) -> Event: ...
    def update(self, job: JobRecord, kind: str = "state", **changes: Any) -> tuple[JobRecord, Event | None]: ...
    def drop(self, job_id: str, attempt: int) -> bool: ...
    def set_reported_seq(self, seq: int) -> None: ...
    def assign_uid(self, owner: str, pick: Callable[[set[int]], int]) -> int:
        """The owner's uid (agent/owneruids.py); a new owner gets `pick(uids given out)`, kept for good."""
        ...

    # -- the supervisor's vocabulary (Recording implements these over `update`)
    def record_handle(self, job: JobRecord, runtime_id: str, start_marker: str) -> tuple[JobRecord, Event | None]:
        ...

    def record_started(self, job: JobRecord, started_at: float, runtime_id: str | None = None,
                       start_marker: str | None = None) -> tuple[JobRecord, Event | None]: ...

    def record_stop_requested(self, job: JobRecord, deadline: float) -> tuple[JobRecord, Event | None]: ...

    def record_ended(self, job: JobRecord, state: JobState, finished_at: float, message: str,
                     **facts: Any) -> tuple[JobRecord, Event | None]: ...

    def record_progress(self, job: JobRecord, progress: dict[str, Any]) -> tuple[JobRecord, Event | None]: ...


class Recording:
    """The supervisor's named writes, each one `update` (so every implementation shares them)."""

    def update(self, job: JobRecord, kind: str = "state", **changes: Any) -> tuple[JobRecord, Event | None]:
        raise NotImplementedError

    def record_handle(self, job: JobRecord, runtime_id: str, start_marker: str) -> tuple[JobRecord, Event | None]:
        """The runtime object found for a recorded attempt (re-attach after a restart)."""
        return self.update(job, runtime_id=runtime_id, start_marker=start_marker)

    def record_started(self, job: JobRecord, started_at: float, runtime_id: str | None = None,
                       start_marker: str | None = None) -> tuple[JobRecord, Event | None]:
        """The attempt runs (with its handle when it was just started)."""
        handle = {} if runtime_id is None else {"runtime_id": runtime_id, "start_marker": start_marker or ""}
        return self.update(job, state=JobState.RUNNING, started_at=started_at, **handle)

    def record_stop_requested(self, job: JobRecord, deadline: float) -> tuple[JobRecord, Event | None]:
        """Stop was asked for; `deadline` (wall clock) survives a restart so SIGKILL still comes."""
        return self.update(job, kind="stop", stop_requested=True, stop_deadline=deadline)

    def record_ended(self, job: JobRecord, state: JobState, finished_at: float, message: str,
                     **facts: Any) -> tuple[JobRecord, Event | None]:
        """The attempt's end; `facts`: exit_code, signal, probe, log_tail. Its GPUs are released."""
        return self.update(job, state=state, finished_at=finished_at, message=message, **facts)

    def record_progress(self, job: JobRecord, progress: dict[str, Any]) -> tuple[JobRecord, Event | None]:
        """The trainer's latest epoch and metrics (a `progress` event for watchers and the reporter)."""
        return self.update(job, kind="progress", progress=progress)
