"""In-memory twins of the agent's store (agent/jobstore.py `JobStore`), for tests and fault injection.

- `MemoryStore` keeps the same rules as the SQLite store (fencing, GPU holds, validated state
  changes, the event log) in dicts; each write works on a copy and swaps it in, so a write that
  fails half-way leaves the old state, like a rolled-back transaction.
- `FailingStore` answers reads from what it holds and raises the store's error on every write
  (`StoreFull` unless told otherwise; Nomad's `db_error.go`), so tests can show the supervisor and
  the daemon refuse clearly, lose nothing and keep running when the store cannot be written.
"""
from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gpufleet.agent.jobstore import Recording, check_insert
from gpufleet.agent.states import LIVE, JobState, check
from gpufleet.agent.store import Event, JobRecord, StoreFull

from gpufleet.errors import NotFound

EVENTS_KEPT = 20_000


@dataclass
class _State:
    jobs: dict[tuple[str, int], JobRecord] = field(default_factory=dict)
    holds: dict[int, tuple[str, int]] = field(default_factory=dict)
    fences: dict[str, int] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    seq: int = 0
    reported_seq: int = 0
    owner_uids: dict[str, int] = field(default_factory=dict)


class MemoryStore(Recording):
    """`JobStore` in memory: what the SQLite store keeps, gone when the process ends."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._s = _State()

    @property
    def path(self) -> Path | None:
        return None

    @contextmanager
    def _tx(self) -> Iterator[_State]:
        """All or nothing: the body changes a copy, swapped in only when it returns."""
        with self._lock:
            work = copy.deepcopy(self._s)
            yield work
            self._s = work

    def close(self) -> None:
        pass

    def ping(self) -> bool:
        return True

    # -- reads ---------------------------------------------------------------------------------
    def get(self, job_id: str, attempt: int | None = None) -> JobRecord:
        with self._lock:
            if attempt:
                job = self._s.jobs.get((job_id, attempt))
            else:
                mine = [j for (jid, _), j in self._s.jobs.items() if jid == job_id]
                job = max(mine, key=lambda j: j.attempt) if mine else None
            if job is None:
                what = f"job {job_id!r}" + (f" attempt {attempt}" if attempt else "")
                raise NotFound(f"{what} is not known to this agent")
            return copy.deepcopy(job)

    def find(self, job_id: str, attempt: int) -> JobRecord | None:
        try:
            return self.get(job_id, attempt)
        except NotFound:
            return None

    def jobs(self, states: Iterable[JobState] | None = None) -> list[JobRecord]:
        wanted = set(states) if states else None
        with self._lock:
            found = [j for j in self._s.jobs.values() if wanted is None or j.state in wanted]
            return copy.deepcopy(sorted(found, key=lambda j: j.created_at))

    def live_jobs(self) -> list[JobRecord]:
        return self.jobs(LIVE)

    def max_attempt(self, job_id: str) -> int:
        with self._lock:
            return self._s.fences.get(job_id, 0)

    def gpu_holds(self) -> dict[int, tuple[str, int]]:
        with self._lock:
            return dict(self._s.holds)

    def reported_seq(self) -> int:
        with self._lock:
            return self._s.reported_seq

    def last_seq(self) -> int:
        with self._lock:
            return self._s.seq

    def events_after(self, seq: int, limit: int = 1000) -> list[Event]:
        with self._lock:
            return copy.deepcopy([e for e in self._s.events if e.seq > seq][:limit])

    # -- writes --------------------------------------------------------------------------------
    def set_reported_seq(self, seq: int) -> None:
        with self._tx() as s:
            s.reported_seq = max(s.reported_seq, seq)

    def assign_uid(self, owner: str, pick: Callable[[set[int]], int]) -> int:
        with self._tx() as s:
            if owner not in s.owner_uids:
                s.owner_uids[owner] = pick(set(s.owner_uids.values()))
            return s.owner_uids[owner]

    def precheck(self, job: JobRecord) -> None:
        with self._lock:
            self._check_insert(self._s, job)

    def _check_insert(self, s: _State, job: JobRecord) -> None:
        other = next((j for j in s.jobs.values()
                      if j.job_id == job.job_id and j.attempt != job.attempt and j.state in LIVE), None)
        check_insert(job, s.fences.get(job.job_id), (other.attempt, other.state.value) if other else None,
                     s.holds)

    def insert(self, job: JobRecord) -> Event:
        with self._tx() as s:
            self._check_insert(s, job)
            s.jobs[job.key] = copy.deepcopy(job)
            for idx in job.gpu_indices:
                s.holds[idx] = job.key
            s.fences[job.job_id] = max(s.fences.get(job.job_id, 0), job.attempt)
            return self._append_event(s, "state", job)

    def update(self, job: JobRecord, kind: str = "state", **changes: Any) -> tuple[JobRecord, Event | None]:
        with self._tx() as s:
            cur = s.jobs.get(job.key)
            if cur is None:
                raise NotFound(f"job {job.job_id!r} attempt {job.attempt} is not known to this agent")
            new_state = changes.get("state", cur.state)
            if new_state != cur.state:
                check(job.job_id, cur.state, new_state)
            new = replace(cur, **changes)
            s.jobs[job.key] = new
            if new.state not in LIVE:
                s.holds = {i: h for i, h in s.holds.items() if h != job.key}
            ev = None
            if new_state != cur.state or kind != "state":
                ev = self._append_event(s, kind, new)
            return copy.deepcopy(new), ev

    def drop(self, job_id: str, attempt: int) -> bool:
        with self._tx() as s:
            s.holds = {i: h for i, h in s.holds.items() if h != (job_id, attempt)}
            return s.jobs.pop((job_id, attempt), None) is not None

    def _append_event(self, s: _State, kind: str, job: JobRecord) -> Event:
        s.seq += 1
        ev = Event(s.seq, time.time(), kind, job.job_id, job.attempt, {"state": job.state.value})
        s.events.append(ev)
        if len(s.events) > EVENTS_KEPT:
            del s.events[: len(s.events) - EVENTS_KEPT]
        return copy.deepcopy(ev)


def _full() -> Exception:
    return StoreFull("agent state store cannot be written (injected failure): no new job can be recorded")


class FailingStore(MemoryStore):
    """Reads answer from memory; every write raises `error()` while `failing` (the default)."""

    def __init__(self, error: Callable[[], Exception] = _full) -> None:
        super().__init__()
        self.error = error
        self.failing = True
        self.refused = 0  # writes refused so far (what a test asserts the caller tried)

    @contextmanager
    def _tx(self) -> Iterator[_State]:
        if self.failing:
            self.refused += 1
            raise self.error()
        with super()._tx() as s:
            yield s

    def ping(self) -> bool:
        return not self.failing
