"""Refuse to start on a state dir that lost its database, instead of forgetting running jobs.

An agent that starts with an empty store does not know the jobs that still run on its host: the
coordinator would mark them STOPPED and hand their GPUs to new jobs while the orphans run on. So:

- a state dir that was used (it holds the `agent.initialized` marker or job folders) but has no
  agent.db stops the agent with one line, and so does an agent.db that SQLite cannot read;
- `--adopt` is the explicit way out: a fresh store is made and every job this agent's runtime
  still finds (labelled containers, wrappers with a handle) that the store does not know is
  killed and cleaned up, so nothing runs that nobody accounts for.

The database and the state dir are the agent's alone: 0600 and 0700.
"""
from __future__ import annotations

import logging
import os
import signal
import sqlite3
import time
from pathlib import Path

from gpufleet.agent.runtime.base import Runtime, Seen
from gpufleet.agent.store import Store

from gpufleet.errors import FailedPrecondition
from gpufleet.log import event

log = logging.getLogger("gpufleet.agent")

MARKER = "agent.initialized"


def _used(state_dir: Path) -> bool:
    if (state_dir / MARKER).exists():
        return True
    jobs = state_dir / "jobs"
    try:
        return any(jobs.iterdir())
    except OSError:
        return False


def open_store(state_dir: Path, adopt: bool) -> Store:
    """The agent's store, or FailedPrecondition (one line) when it is missing or unreadable."""
    path = state_dir / "agent.db"
    if not path.exists() and _used(state_dir) and not adopt:
        raise FailedPrecondition(
            f"{path} is missing but {state_dir} was in use: jobs may still run that the agent no longer "
            "knows; restore the file, or start once with --adopt to kill and clean up what it cannot account for")
    if adopt and path.exists():
        # --adopt after a corrupt store: keep the bad file for inspection, start fresh.
        try:
            _probe(path)
        except FailedPrecondition:
            kept = path.with_name(f"agent.db.corrupt-{int(time.time())}")
            os.replace(path, kept)
            for extra in ("agent.db-wal", "agent.db-shm"):
                try:
                    os.replace(state_dir / extra, kept.with_name(kept.name + extra.removeprefix("agent.db")))
                except FileNotFoundError:
                    pass
            event(log, "store.corrupt_moved", logging.WARNING, kept=str(kept))
    elif path.exists():
        _probe(path)
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))
    os.chmod(path, 0o600)  # job env values and log tails live in it
    try:
        store = Store(path)
    except sqlite3.DatabaseError as exc:
        raise FailedPrecondition(f"{path} cannot be read as the agent's database ({exc}); move it away and "
                                 "start once with --adopt") from None
    for extra in ("agent.db-wal", "agent.db-shm"):
        try:
            os.chmod(state_dir / extra, 0o600)
        except FileNotFoundError:
            pass
    marker = state_dir / MARKER
    if not marker.exists():
        marker.write_text("this state dir belongs to a gpufleet agent; do not delete agent.db\n")
    return store


def _probe(path: Path) -> None:
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            db.execute("PRAGMA schema_version").fetchone()
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise FailedPrecondition(f"{path} cannot be read as the agent's database ({exc}); move it away and "
                                 "start once with --adopt") from None


def kill_orphans(runtime: Runtime, store: Store, jobs_root: Path, timeout: float = 30.0) -> int:
    """--adopt: kill and clean up every job object the runtime finds that the store does not know."""
    killed = 0
    for found in runtime.list_labelled():
        if store.find(found.job_id, found.attempt) is not None:
            continue
        job_dir = jobs_root / found.job_id / str(found.attempt)
        event(log, "job.orphan_killed", logging.WARNING, job_id=found.job_id, attempt=found.attempt,
              runtime_id=found.handle.runtime_id)
        runtime.signal(found.handle, job_dir, signal.SIGKILL)
        end = time.monotonic() + timeout
        while time.monotonic() < end and runtime.observe(found.handle, job_dir).seen in (Seen.RUNNING, Seen.CREATED):
            time.sleep(0.1)
        runtime.remove(found.handle, job_dir)
        killed += 1
    return killed
