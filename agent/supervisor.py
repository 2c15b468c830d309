"""The agent's job supervisor: launches, watches, stops and forgets jobs; restores after a crash.

Invariants:
- A job is recorded durably (PENDING, GPUs held) before its container/process is created, and its
  end (exit code, probe verdict, log tail) is stored before anyone is told it ended.
- `restore()` runs before the agent serves: every recorded live job is re-attached or judged.
- A finished attempt is never started again; an attempt older than one seen is refused.
- Nothing is removed (container, runtime files, record) until the coordinator acknowledged it.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gpufleet.agent import accounting, exclusivity
from gpufleet.agent import probe as probe_mod
from gpufleet.agent.ending import ALIVE, decide_end
from gpufleet.agent.exits import ExitWatcher
from gpufleet.agent.gpus import GpuMonitor
from gpufleet.agent.jobstore import JobStore
from gpufleet.agent.jobuser import JobUser
from gpufleet.agent.owneruids import OwnerUsers, check_owner
from gpufleet.agent.progress import ProgressState, ProgressTracker
from gpufleet.agent.runtime.base import Handle, Observation, Runtime, RuntimeError_, Seen
from gpufleet.agent.spec import JobSpec, Roots, check_job_id, validate
from gpufleet.agent.states import LIVE, JobState
from gpufleet.agent.store import Event, JobRecord, StoreFull

from gpufleet import failpoints
from gpufleet.errors import Aborted, FailedPrecondition, InvalidArgument, ResourceExhausted
from gpufleet.log import event

log = logging.getLogger("gpufleet.agent")

LOG_TAIL_BYTES = 64 * 1024
MAX_GRACE = 3600
# A new job needs room in the state dir: its record (SQLite may still take writes into WAL pages
# it already has, so it cannot be relied on to notice a full disk) and, on the process runtime,
# its runtime files. Below this much free space a Launch is refused before anything is written.
MIN_FREE_BYTES = 1024 * 1024


@dataclasses.dataclass
class _Watch:
    """In-memory helpers for one live job (rebuilt after a restart)."""

    tracker: ProgressTracker
    cursor: str = ""
    # Monotonic times (the wall clock may jump): last output read, last progress event.
    last_read: float | None = None
    last_emit: float | None = None
    killed: bool = False
    # Monotonic time at which a stopped job gets SIGKILL (None: not yet derived).
    kill_at: float | None = None


class Supervisor:
    def __init__(
        self,
        store: JobStore,
        runtime: Runtime,
        gpus: GpuMonitor,
        roots: Roots,
        *,
        base_env: dict[str, str] | None = None,
        poll_interval: float = 0.5,
        progress_interval: float = 1.0,
        log_max_bytes: int = 64 * 1024 * 1024,
        owner_users: OwnerUsers | None = None,
        clock: Any = time.time,
        mono: Any = time.monotonic,
    ) -> None:
        self.store = store
        self.runtime = runtime
        self.gpus = gpus
        gpus.held = self.held_gpus  # fake GPUs read idle unless a job holds them; per-job accounting
        gpus.owners = lambda: exclusivity.owners_from(self.jobs())  # who may own GPU processes
        self.roots = roots
        self.base_env = base_env or {}
        self.poll_interval = poll_interval
        self.progress_interval = progress_interval
        self.log_max_bytes = log_max_bytes
        # Each owner's own uid (--owner-uids); None: every job runs as the runtime's default user.
        self.owner_users = owner_users
        # Wall time for what is stored and shown (created/finished, the persisted stop deadline);
        # monotonic time for every interval and timeout decided in memory, so that a wall-clock
        # jump (NTP step, manual change) neither delays a SIGKILL nor cuts a grace period short.
        self.clock = clock
        self.mono = mono
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._job_locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._watches: dict[tuple[str, int], _Watch] = {}
        self._thread: threading.Thread | None = None
        self.last_tick_ok = time.monotonic()
        self.runtime_ok = True
        self.exits = ExitWatcher(self._wake.set)

    # -- lifecycle -----------------------------------------------------------------------------
    def restore(self) -> None:
        """Re-attach to every live job in the store, finish interrupted launches, judge the rest."""
        for job in self.store.live_jobs():
            try:
                self._restore_one(job)
            except Exception:  # noqa: BLE001 - one bad record must not stop the others
                log.exception("restore failed", extra={"fields": {"job_id": job.job_id, "attempt": job.attempt}})
        try:
            self.tick()
        except Exception:  # noqa: BLE001
            log.exception("first tick after restore failed")
        self._report_untracked()

    def _restore_one(self, job: JobRecord) -> None:
        if job.runtime_id:
            event(log, "job.reattach", job_id=job.job_id, attempt=job.attempt, runtime_id=job.runtime_id)
            return  # the monitor observes it like any running job
        handle = self.runtime.find(job.job_id, job.attempt, self._job_dir(job))
        if handle is not None:
            event(log, "job.reattach", job_id=job.job_id, attempt=job.attempt, runtime_id=handle.runtime_id)
            if job.stop_requested:
                self._notified(self.store.record_handle(job, handle.runtime_id, handle.start_marker))
                return
            # The agent died after creating the container/process but before recording it: the
            # launch was accepted, so finish it. runtime.start finds the existing object (never a
            # second one) and starts a container that was created but never started (a crash
            # between create and start), which would otherwise stay PENDING forever.
            self._start(job, found=handle)
            return
        if job.stop_requested:
            self._notified(self.store.record_ended(job, JobState.STOPPED, self.clock(), "stopped before start"))
            return
        # The agent died between recording the job and creating it: the launch was accepted, finish it.
        event(log, "job.launch.resume", job_id=job.job_id, attempt=job.attempt)
        self._start(job)

    def _report_untracked(self) -> None:
        try:
            found = self.runtime.list_labelled()
        except Exception:  # noqa: BLE001
            return
        for f in found:
            rec = self.store.find(f.job_id, f.attempt)
            if rec is None:
                fenced = f.attempt <= self.store.max_attempt(f.job_id)
                event(log, "job.untracked", logging.WARNING, job_id=f.job_id, attempt=f.attempt,
                      runtime_id=f.handle.runtime_id, acknowledged_before=fenced)
                if fenced:
                    # Its record was acknowledged and dropped, so only the leftover object remains.
                    self._cleanup(f.handle, self.roots.jobs_root / f.job_id / str(f.attempt))

    def start(self) -> None:
        self.exits.start()
        watch = getattr(self.runtime, "watch_exits", None)
        if watch is not None:  # docker: the engine's event stream tells us of each container's death
            watch(self._wake.set)
        self._thread = threading.Thread(target=self._loop, name="supervisor", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=5)
        self.exits.close()
        with self._cond:
            self._cond.notify_all()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                failpoints.hit("loop.supervisor")  # fault tests hang a pass here (delay=MS)
                self.tick()
                self.last_tick_ok = time.monotonic()
            except Exception:  # noqa: BLE001 - the loop must survive anything
                log.exception("supervisor tick failed")
            self._wake.wait(self.poll_interval)
            self._wake.clear()

    # -- API used by the servicer --------------------------------------------------------------
    def launch(self, job_id: str, attempt: int, spec: JobSpec, gpu_indices: list[int], owner: str = "") -> JobRecord:
        check_job_id(job_id)
        check_owner(owner)
        with self._job_lock(job_id):
            existing = self.store.find(job_id, attempt) if attempt >= 1 else None
            if existing is not None:
                return existing  # idempotent: same (job_id, attempt) never makes a second container
            samples, _ = self.gpus.latest()
            plan = validate(
                job_id, attempt, spec, gpu_indices, runtime=self.runtime.name, roots=self.roots,
                known_gpus={s.index for s in samples}, real_gpus=self.gpus.source.real,
                base_env=self.base_env, log_max_bytes=self.log_max_bytes,
                gpu_uuids={s.index: s.uuid for s in samples},
            )
            # Before anything is recorded: a range with no uid left refuses the Launch itself.
            plan = dataclasses.replace(plan, owner=owner, run_as=self._run_as(owner))
            unhealthy = [s for s in samples if s.index in gpu_indices and not s.healthy]
            if unhealthy:
                # ABORTED, like a held GPU: the coordinator placed on a snapshot taken before this GPU
                # went bad (a foreign process, an XID), so it requeues the job without using a retry.
                s = unhealthy[0]
                raise Aborted(
                    f"gpu_indices: GPU {s.index} is unhealthy ({s.health_reason or 'unknown'}); it is never assigned"
                )
            job = JobRecord(
                job_id=job_id, attempt=attempt, state=JobState.PENDING, spec=spec.to_dict(),
                gpu_indices=list(gpu_indices), runtime=self.runtime.name, created_at=self.clock(), owner=owner,
            )
            self.store.precheck(job)  # fencing, live attempts, GPU holds: refuse before touching disk
            self._check_space()
            try:
                # Before anything is recorded: a folder that cannot be made must leave no record.
                plan.output_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise InvalidArgument("spec.output_dir", f"cannot be created: {exc.strerror}") from None
            ev = self.store.insert(job)
            self._notify(ev)
            event(log, "job.recorded", job_id=job_id, attempt=attempt, gpus=gpu_indices)
            failpoints.hit("agent.launch.after_insert")
            return self._start(job, plan)

    def _run_as(self, owner: str) -> JobUser | None:
        """The owner's own account (agent/owneruids.py); None without an owner or the mapping."""
        if not owner or self.owner_users is None:
            return None
        return self.owner_users.user_for(owner)

    def _check_space(self) -> None:
        """Refuse a new job (RESOURCE_EXHAUSTED) when the state dir's filesystem is (nearly) full.

        Running jobs are not affected: they stay tracked and record their end once space returns.
        """
        seen: set[int] = set()
        kept = self.store.path  # None: an in-memory store, only the jobs' folder needs room
        for folder in ([kept.parent] if kept else []) + [self.roots.jobs_root]:
            try:
                dev = os.stat(folder).st_dev
                st = os.statvfs(folder)
            except OSError:
                continue  # a folder that is not there is the runtime's problem, reported as such
            if dev in seen:
                continue
            seen.add(dev)
            free = st.f_bavail * st.f_frsize
            if free < MIN_FREE_BYTES:
                raise StoreFull(
                    f"agent state dir {folder} is full ({free} bytes free, a new job needs at least "
                    f"{MIN_FREE_BYTES}): no new job is started until disk space is freed; running jobs "
                    "are still tracked"
                )

    def _start(self, job: JobRecord, plan: Any = None, found: Handle | None = None) -> JobRecord:
        if plan is None:
            try:
                samples, _ = self.gpus.latest()
                plan = validate(
                    job.job_id, job.attempt, JobSpec.from_dict(job.spec), job.gpu_indices,
                    runtime=self.runtime.name, roots=self.roots, known_gpus={s.index for s in samples},
                    real_gpus=self.gpus.source.real, base_env=self.base_env, log_max_bytes=self.log_max_bytes,
                    gpu_uuids={s.index: s.uuid for s in samples},
                )
                plan = dataclasses.replace(plan, owner=job.owner, run_as=self._run_as(job.owner))
                plan.output_dir.mkdir(parents=True, exist_ok=True)
            except (InvalidArgument, FailedPrecondition, ResourceExhausted, OSError) as exc:
                if found is not None:
                    # It exists already: never judge it from the spec, the monitor observes it.
                    return self._notified(self.store.record_handle(job, found.runtime_id, found.start_marker))
                return self._notified(self.store.record_ended(job, JobState.FAILED, self.clock(),
                                                              f"cannot start after restart: {exc}"))
        try:
            handle = self.runtime.start(plan)
        except (RuntimeError_, OSError) as exc:
            event(log, "job.start_failed", logging.WARNING, job_id=job.job_id, attempt=job.attempt, error=str(exc))
            return self._notified(self.store.record_ended(job, JobState.FAILED, self.clock(), str(exc)))
        failpoints.hit("agent.launch.after_start")
        now = self.clock()
        job = self._notified(self.store.record_started(job, now, handle.runtime_id, handle.start_marker))
        event(log, "job.started", job_id=job.job_id, attempt=job.attempt, runtime=self.runtime.name,
              runtime_id=handle.runtime_id)
        if self.runtime.name == "process" and handle.runtime_id.isdigit():
            self.exits.watch(int(handle.runtime_id))
        self._wake.set()
        return job

    def stop(self, job_id: str, grace_seconds: int, attempt: int = 0, wait: float = 0.0) -> JobRecord:
        check_job_id(job_id)
        if attempt < 0:
            raise InvalidArgument("attempt", f"must be >= 0, got {attempt}")
        if grace_seconds < 0 or grace_seconds > MAX_GRACE:
            raise InvalidArgument("grace_seconds", f"must be between 0 and {MAX_GRACE}, got {grace_seconds}")
        with self._job_lock(job_id):
            job = self.store.get(job_id, attempt or None)
            if job.state not in LIVE:
                return job  # stopping an ended job is a no-op
            if not job.stop_requested:
                job = self._notified(self.store.record_stop_requested(job, self.clock() + grace_seconds))
                event(log, "job.stop", job_id=job_id, attempt=job.attempt, grace_seconds=grace_seconds)
                if job.runtime_id:
                    self._watch(job).kill_at = self.mono() + grace_seconds
                    self._signal(job, signal.SIGTERM if grace_seconds > 0 else signal.SIGKILL)
                else:
                    job = self._notified(self.store.record_ended(job, JobState.STOPPED, self.clock(),
                                                                 "stopped before it started"))
        self._wake.set()
        if wait > 0:
            return self._wait_ended(job, min(wait, grace_seconds + 5.0))
        return job

    def _wait_ended(self, job: JobRecord, timeout: float) -> JobRecord:
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                cur = self.store.get(job.job_id, job.attempt)
                left = end - time.monotonic()
                if cur.state not in LIVE or left <= 0:
                    return cur
                self._cond.wait(min(left, 0.2))

    def inspect(self, job_id: str, attempt: int = 0) -> JobRecord:
        check_job_id(job_id)
        if attempt < 0:
            raise InvalidArgument("attempt", f"must be >= 0, got {attempt}")
        return self.store.get(job_id, attempt or None)

    def jobs(self, states: list[JobState] | None = None) -> list[JobRecord]:
        return self.store.jobs(states)

    def acknowledge(self, job_id: str, attempt: int) -> bool:
        check_job_id(job_id)
        if attempt < 1:
            raise InvalidArgument("attempt", f"must be >= 1, got {attempt}")
        with self._job_lock(job_id):
            job = self.store.find(job_id, attempt)
            if job is None:
                return False
            if job.state in LIVE:
                raise FailedPrecondition(
                    f"job {job_id} attempt {attempt} is still {job.state.value}; only a final state is acknowledged"
                )
            failpoints.hit("agent.ack.before_drop")
            if job.runtime_id:
                self._cleanup(Handle(job.runtime_id, job.start_marker), self._job_dir(job))
            self._watches.pop(job.key, None)
            dropped = self.store.drop(job_id, attempt)
            event(log, "job.acknowledged", job_id=job_id, attempt=attempt)
            return dropped

    def probe_job(self, job_id: str, best_key: str = "", best_mode: str = "") -> dict[str, Any]:
        job = self.inspect(job_id)
        return self._probe(job, best_key, best_mode)

    def probe_dir(self, output_dir: str, total_epoch: int, val_interval: int, params_json: str,
                  best_key: str = "", best_mode: str = "") -> dict[str, Any]:
        from gpufleet.paths import relative_under

        folder = relative_under(self.roots.output_root, output_dir, "output_dir")
        if total_epoch < 0 or val_interval < 0:
            raise InvalidArgument("total_epoch" if total_epoch < 0 else "val_interval", "must be >= 0")
        verdict = probe_mod.probe_outputs(folder, total_epoch, val_interval, params_json, best_key, best_mode)
        return dataclasses.asdict(verdict)

    def logs(self, job_id: str, follow: bool, tail_lines: int, attempt: int = 0) -> Iterator[bytes]:
        job = self.inspect(job_id, attempt)
        if tail_lines < 0:
            raise InvalidArgument("tail_lines", f"must be >= 0, got {tail_lines}")
        if not job.runtime_id:
            if job.log_tail:
                yield _tail(job.log_tail, tail_lines)
            return
        handle, job_dir = Handle(job.runtime_id, job.start_marker), self._job_dir(job)
        if follow and job.state in LIVE:
            yield from self.runtime.follow(handle, job_dir, tail_lines)
            return
        try:
            data = self.runtime.logs(handle, job_dir, tail_lines)
        except RuntimeError_:
            data = b""
        yield data or _tail(job.log_tail, tail_lines)

    def events_after(self, seq: int, timeout: float) -> list[Event]:
        """Events with seq > `seq`; waits up to `timeout` for the first one."""
        # Checked under the condition's lock: an event appended after the check notifies only once
        # we wait (_notify takes the lock), so no wake-up is lost and a pusher never sleeps on news.
        with self._cond:
            evs = self.store.events_after(seq)
            if evs or timeout <= 0:
                return evs
            self._cond.wait(timeout)
        return self.store.events_after(seq)

    # -- the monitor ---------------------------------------------------------------------------
    def tick(self) -> None:
        """One pass: observe live jobs, record ends, escalate stops, parse progress."""
        live = [j for j in self.store.live_jobs() if j.runtime_id]
        if self.runtime.name == "process":
            for j in live:  # learn of each wrapper's exit when it happens (also after a re-attach)
                if j.runtime_id.isdigit():
                    self.exits.watch(int(j.runtime_id))
        if not live:
            self.runtime_ok = self.runtime.healthy() if self.runtime.name == "docker" else True
            return
        items = [(Handle(j.runtime_id, j.start_marker), self._job_dir(j)) for j in live]
        try:
            observations = self.runtime.observe_many(items)
            self.runtime_ok = True
        except RuntimeError_ as exc:
            # Engine unreachable: keep every job's last known state rather than calling it lost.
            self.runtime_ok = False
            event(log, "runtime.unreachable", logging.WARNING, error=str(exc))
            return
        now = self.clock()
        for job, obs, (handle, job_dir) in zip(live, observations, items, strict=True):
            try:
                self._observe_one(job, obs, handle, job_dir, now)
            except Exception:  # noqa: BLE001
                log.exception("observe failed", extra={"fields": {"job_id": job.job_id, "attempt": job.attempt}})

    def _observe_one(self, job: JobRecord, obs: Observation, handle: Handle, job_dir: Path, now: float) -> None:
        if obs.seen in ALIVE:
            if job.state == JobState.PENDING and obs.seen == Seen.RUNNING:
                job = self._notified(self.store.record_started(job, obs.started_at or now))
            if job.stop_requested and self._kill_due(job):
                w = self._watch(job)
                if not w.killed:
                    event(log, "job.kill", job_id=job.job_id, attempt=job.attempt, reason="grace expired")
                    self._signal(job, signal.SIGKILL)
                    w.killed = True
            self._progress(job, handle, job_dir, now)
            return
        with self._job_lock(job.job_id):
            cur = self.store.find(job.job_id, job.attempt)
            if cur is None or cur.state not in LIVE:
                return
            self._progress(cur, handle, job_dir, now, final=True)
            self._finish(cur, obs, handle, job_dir, now)

    def _finish(self, job: JobRecord, obs: Observation, handle: Handle, job_dir: Path, now: float) -> None:
        verdict = self._probe(job)
        try:
            tail = self.runtime.logs(handle, job_dir, 200)[-LOG_TAIL_BYTES:]
        except Exception:  # noqa: BLE001 - the tail is a courtesy; the exit code is what matters
            tail = b""
        ending = decide_end(obs.seen, obs.exit_code, job.stop_requested, runtime_message=obs.message,
                            probe_reason=verdict.get("reason", ""))
        if ending is None:
            return  # alive after all: _observe_one only calls this for an attempt that is gone
        state, message = ending.state, ending.message
        finished = obs.finished_at or now
        usage = accounting.as_record(self.gpus.accounting.usage(job.job_id), len(job.gpu_indices),
                                     job.started_at or obs.started_at, finished)
        job = self._notified(self.store.record_ended(
            job, state, finished, message, exit_code=obs.exit_code, signal=obs.signal,
            probe=verdict, log_tail=tail, gpu_usage=usage,
        ))
        self._watches.pop(job.key, None)
        self.gpus.accounting.close(job.job_id)  # its GPUs are released: a next attempt starts from nothing
        event(log, "job.ended", job_id=job.job_id, attempt=job.attempt, state=state.value,
              exit_code=obs.exit_code, probe=verdict.get("reason"))
        failpoints.hit("agent.exit.after_record")

    def _kill_due(self, job: JobRecord) -> bool:
        """Whether a stopped job's grace period is over, by the monotonic clock."""
        w = self._watch(job)
        if w.kill_at is None:
            # Stop was requested before this agent process started: only the persisted wall
            # deadline is known. What is left of it is taken once, bounded by the longest grace.
            left = (job.stop_deadline if job.stop_deadline is not None else 0.0) - self.clock()
            w.kill_at = self.mono() + min(max(left, 0.0), float(MAX_GRACE))
        return self.mono() >= w.kill_at

    def _probe(self, job: JobRecord, best_key: str = "", best_mode: str = "") -> dict[str, Any]:
        spec = JobSpec.from_dict(job.spec)
        folder = self.roots.output_root / spec.output_dir
        verdict = probe_mod.probe_outputs(
            folder, spec.total_epoch, spec.val_interval, spec.params_json, best_key, best_mode
        )
        return dataclasses.asdict(verdict)

    def _progress(self, job: JobRecord, handle: Handle, job_dir: Path, now: float, final: bool = False) -> None:
        w = self._watch(job)
        mono = self.mono()
        if not final and w.last_read is not None and mono - w.last_read < self.progress_interval:
            return
        w.last_read = mono
        try:
            data, w.cursor = self.runtime.read_since(handle, job_dir, w.cursor)
        except Exception:  # noqa: BLE001
            return
        if not data or not w.tracker.feed(data, now):
            return
        if final or w.last_emit is None or mono - w.last_emit >= self.progress_interval:
            w.last_emit = mono
            st = w.tracker.state
            prog = {"current_epoch": st.current_epoch, "total_epoch": st.total_epoch,
                    "metrics": dict(st.metrics), "updated_at": st.updated_at}
            self._notified(self.store.record_progress(job, prog))

    def _watch(self, job: JobRecord) -> _Watch:
        w = self._watches.get(job.key)
        if w is None:
            st = ProgressState()
            if job.progress:
                st = ProgressState(job.progress.get("current_epoch", 0), job.progress.get("total_epoch", 0),
                                   dict(job.progress.get("metrics", {})), job.progress.get("updated_at", 0.0))
            w = self._watches[job.key] = _Watch(ProgressTracker(st))
        return w

    # -- helpers -------------------------------------------------------------------------------
    def _signal(self, job: JobRecord, sig: int) -> None:
        try:
            self.runtime.signal(Handle(job.runtime_id, job.start_marker), self._job_dir(job), sig)
        except RuntimeError_ as exc:
            event(log, "job.signal_failed", logging.WARNING, job_id=job.job_id, attempt=job.attempt, error=str(exc))

    def _cleanup(self, handle: Handle, job_dir: Path) -> None:
        try:
            self.runtime.remove(handle, job_dir)
        except Exception:  # noqa: BLE001 - a leftover is reported on the next restore, not fatal
            log.exception("cleanup failed", extra={"fields": {"runtime_id": handle.runtime_id}})

    def _notified(self, written: tuple[JobRecord, Event | None]) -> JobRecord:
        """The record a store write returned, after waking whoever waits for its event."""
        new, ev = written
        self._notify(ev)
        return new

    def _notify(self, ev: Event | None) -> None:
        if ev is not None:
            with self._cond:
                self._cond.notify_all()

    def _job_dir(self, job: JobRecord) -> Path:
        return self.roots.jobs_root / job.job_id / str(job.attempt)

    def _job_lock(self, job_id: str) -> threading.Lock:
        with self._locks_guard:
            lock = self._job_locks.get(job_id)
            if lock is None:
                lock = self._job_locks[job_id] = threading.Lock()
            return lock

    def held_gpus(self) -> dict[int, str]:
        return {idx: job_id for idx, (job_id, _) in self.store.gpu_holds().items()}


def _tail(data: bytes, lines: int) -> bytes:
    if lines <= 0:
        return data
    return b"".join(data.splitlines(keepends=True)[-lines:])

