"""The agent's durable state: one SQLite file (WAL, synchronous=FULL) in the state dir.

Schema (version 3; older files are upgraded in place: 1 lacked jobs.gpu_usage, 2 jobs.owner and
owner_uids):

    meta(key PK, value)                         schema_version; reported_seq (the coordinator's
                                                ack of the outbox, agent/reporter.py)
    jobs(job_id, attempt  PK,                    one row per attempt the agent was given
         state, spec JSON, gpu_indices JSON,     until the coordinator acknowledged its end
         runtime, runtime_id, start_marker,      the handle to re-attach after a restart
         exit_code, signal, message,
         created_at, started_at, finished_at,    wall-clock seconds
         stop_requested, stop_deadline,          a pending SIGKILL survives a restart
         probe JSON, progress JSON, log_tail,
         acknowledged, gpu_usage JSON,           gpu_usage: set when it ended (agent/accounting.py)
         owner)                                  who the coordinator says the job is for ('' = none)
    owner_uids(owner PK, uid UNIQUE)             each owner's own uid, never reused (agent/owneruids.py)
    gpu_holds(gpu_index PK, job_id, attempt)     PK: a GPU is never held twice
    attempts(job_id PK, max_attempt)             fencing: older attempts are refused forever
    events(seq PK AUTOINCREMENT, at, kind,       the WatchEvents log and the outbox the reporter
                                                pushes to the coordinator; seq survives restarts
           job_id, attempt, payload JSON)

Every state change is one transaction that updates the job, its GPU holds and appends its event,
so a SIGKILL at any point leaves either the old or the new state, never half of both.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gpufleet.agent.jobstore import Recording, check_insert
from gpufleet.agent.states import LIVE, JobState, check

from gpufleet.errors import FailedPrecondition, NotFound, ResourceExhausted

SCHEMA_VERSION = 3
EVENTS_KEPT = 20_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT NOT NULL, attempt INTEGER NOT NULL, state TEXT NOT NULL, spec TEXT NOT NULL,
    gpu_indices TEXT NOT NULL, runtime TEXT NOT NULL, runtime_id TEXT NOT NULL DEFAULT '',
    start_marker TEXT NOT NULL DEFAULT '', exit_code INTEGER, signal INTEGER NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL, started_at REAL, finished_at REAL,
    stop_requested INTEGER NOT NULL DEFAULT 0, stop_deadline REAL, probe TEXT, progress TEXT,
    log_tail BLOB, acknowledged INTEGER NOT NULL DEFAULT 0, gpu_usage TEXT, owner TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (job_id, attempt));
CREATE TABLE IF NOT EXISTS owner_uids (owner TEXT PRIMARY KEY, uid INTEGER NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS gpu_holds (
    gpu_index INTEGER PRIMARY KEY, job_id TEXT NOT NULL, attempt INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS attempts (job_id TEXT PRIMARY KEY, max_attempt INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, kind TEXT NOT NULL,
    job_id TEXT NOT NULL, attempt INTEGER NOT NULL, payload TEXT NOT NULL);
"""


@dataclass
class JobRecord:
    job_id: str
    attempt: int
    state: JobState
    spec: dict[str, Any]
    gpu_indices: list[int]
    runtime: str
    created_at: float
    runtime_id: str = ""
    start_marker: str = ""
    exit_code: int | None = None
    signal: int = 0
    message: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    stop_requested: bool = False
    stop_deadline: float | None = None
    probe: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None
    log_tail: bytes = b""
    acknowledged: bool = False
    # The attempt's GPU use, set when it ended (agent/accounting.py as_record).
    gpu_usage: dict[str, Any] | None = None
    # The job's owner as the (authenticated) coordinator sent it; '' without auth.
    owner: str = ""

    @property
    def key(self) -> tuple[str, int]:
        return (self.job_id, self.attempt)

    @property
    def live(self) -> bool:
        return self.state in LIVE


@dataclass
class Event:
    seq: int
    at: float
    kind: str
    job_id: str
    attempt: int
    payload: dict[str, Any] = field(default_factory=dict)


_COLS = (
    "job_id, attempt, state, spec, gpu_indices, runtime, runtime_id, start_marker, exit_code, signal, "
    "message, created_at, started_at, finished_at, stop_requested, stop_deadline, probe, progress, "
    "log_tail, acknowledged, gpu_usage, owner"
)
_NCOLS = _COLS.count(",") + 1


def _row_to_job(r: sqlite3.Row) -> JobRecord:
    return JobRecord(
        job_id=r["job_id"],
        attempt=r["attempt"],
        state=JobState(r["state"]),
        spec=json.loads(r["spec"]),
        gpu_indices=json.loads(r["gpu_indices"]),
        runtime=r["runtime"],
        runtime_id=r["runtime_id"],
        start_marker=r["start_marker"],
        exit_code=r["exit_code"],
        signal=r["signal"],
        message=r["message"],
        created_at=r["created_at"],
        started_at=r["started_at"],
        finished_at=r["finished_at"],
        stop_requested=bool(r["stop_requested"]),
        stop_deadline=r["stop_deadline"],
        probe=json.loads(r["probe"]) if r["probe"] else None,
        progress=json.loads(r["progress"]) if r["progress"] else None,
        log_tail=bytes(r["log_tail"] or b""),
        acknowledged=bool(r["acknowledged"]),
        gpu_usage=json.loads(r["gpu_usage"]) if r["gpu_usage"] else None,
        owner=r["owner"],
    )


class StoreFull(ResourceExhausted):
    """The state dir's filesystem is full: new launches are refused, running jobs stay tracked."""


class Store(Recording):
    """The agent's SQLite file, implementing `JobStore`. Thread-safe (one connection, one lock)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def _migrate(self) -> None:
        with self._lock:
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is not None and int(row["value"]) > SCHEMA_VERSION:
                raise FailedPrecondition(
                    f"state store {self.path} has schema version {row['value']}, newer than this agent "
                    f"knows ({SCHEMA_VERSION}); upgrade the agent or move the state dir away"
                )
        # executescript commits on its own, so schema creation runs outside _tx.
        with self._lock:
            if row is not None and int(row["value"]) < SCHEMA_VERSION:
                # 1 -> 2: ended attempts carry their GPU use (issue 15); 2 -> 3: jobs carry their owner
                # (issue 13; owner_uids is made below). Idempotent: a crash after an ALTER and before
                # the version bump finds the column there.
                cols = {c["name"] for c in self._db.execute("PRAGMA table_info(jobs)").fetchall()}
                if cols and "gpu_usage" not in cols:
                    self._db.execute("ALTER TABLE jobs ADD COLUMN gpu_usage TEXT")
                if cols and "owner" not in cols:
                    self._db.execute("ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
                self._db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))
            self._db.executescript(_SCHEMA)
            self._db.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db
                self._db.execute("COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError):
                    raise _translate(exc, self.path) from exc
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def ping(self) -> bool:
        try:
            with self._lock:
                self._db.execute("SELECT 1").fetchone()
            return True
        except sqlite3.Error:
            return False

    # -- reads ---------------------------------------------------------------------------------
    def get(self, job_id: str, attempt: int | None = None) -> JobRecord:
        """The given attempt, or the newest attempt of the job. NotFound when unknown."""
        with self._lock:
            if attempt:
                r = self._db.execute(
                    f"SELECT {_COLS} FROM jobs WHERE job_id=? AND attempt=?", (job_id, attempt)
                ).fetchone()
            else:
                r = self._db.execute(
                    f"SELECT {_COLS} FROM jobs WHERE job_id=? ORDER BY attempt DESC LIMIT 1", (job_id,)
                ).fetchone()
        if r is None:
            what = f"job {job_id!r}" + (f" attempt {attempt}" if attempt else "")
            raise NotFound(f"{what} is not known to this agent")
        return _row_to_job(r)

    def find(self, job_id: str, attempt: int) -> JobRecord | None:
        try:
            return self.get(job_id, attempt)
        except NotFound:
            return None

    def jobs(self, states: Iterable[JobState] | None = None) -> list[JobRecord]:
        with self._lock:
            if states:
                names = [s.value for s in states]
                q = f"SELECT {_COLS} FROM jobs WHERE state IN ({','.join('?' * len(names))}) ORDER BY created_at"
                rows = self._db.execute(q, names).fetchall()
            else:
                rows = self._db.execute(f"SELECT {_COLS} FROM jobs ORDER BY created_at").fetchall()
        return [_row_to_job(r) for r in rows]

    def live_jobs(self) -> list[JobRecord]:
        return self.jobs(LIVE)

    def max_attempt(self, job_id: str) -> int:
        with self._lock:
            r = self._db.execute("SELECT max_attempt FROM attempts WHERE job_id=?", (job_id,)).fetchone()
        return int(r["max_attempt"]) if r else 0

    def gpu_holds(self) -> dict[int, tuple[str, int]]:
        with self._lock:
            rows = self._db.execute("SELECT gpu_index, job_id, attempt FROM gpu_holds").fetchall()
        return {r["gpu_index"]: (r["job_id"], r["attempt"]) for r in rows}

    def reported_seq(self) -> int:
        """The highest event seq the coordinator acknowledged (agent/reporter.py); 0 when none."""
        with self._lock:
            r = self._db.execute("SELECT value FROM meta WHERE key='reported_seq'").fetchone()
        return int(r["value"]) if r else 0

    def set_reported_seq(self, seq: int) -> None:
        """Record the coordinator's ack (never moves back)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO meta(key, value) VALUES ('reported_seq', ?) ON CONFLICT(key) DO UPDATE SET "
                "value = excluded.value WHERE CAST(meta.value AS INTEGER) < CAST(excluded.value AS INTEGER)",
                (str(seq),),
            )

    def last_seq(self) -> int:
        with self._lock:
            r = self._db.execute("SELECT MAX(seq) AS m FROM events").fetchone()
            if r["m"] is not None:
                return int(r["m"])
            # Events may all have been pruned; the AUTOINCREMENT counter still knows the last seq.
            r = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name='events'").fetchone()
        return int(r["seq"]) if r else 0

    def events_after(self, seq: int, limit: int = 1000) -> list[Event]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, at, kind, job_id, attempt, payload FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit),
            ).fetchall()
        return [
            Event(r["seq"], r["at"], r["kind"], r["job_id"], r["attempt"], json.loads(r["payload"]))
            for r in rows
        ]

    # -- writes --------------------------------------------------------------------------------
    def assign_uid(self, owner: str, pick: Callable[[set[int]], int]) -> int:
        """The uid stored for `owner`; a new owner gets `pick(every uid given out)`, stored in the same
        transaction (so two launches never give one uid to two owners). `pick`'s error is raised as is."""
        with self._tx() as db:
            r = db.execute("SELECT uid FROM owner_uids WHERE owner=?", (owner,)).fetchone()
            if r is not None:
                return int(r["uid"])
            uid = pick({int(t["uid"]) for t in db.execute("SELECT uid FROM owner_uids").fetchall()})
            db.execute("INSERT INTO owner_uids (owner, uid) VALUES (?, ?)", (owner, uid))
            return uid

    def insert(self, job: JobRecord) -> Event:
        """Record a new PENDING attempt and hold its GPUs, atomically.

        Raises ResourceExhausted when a GPU is held by another live attempt, FailedPrecondition when
        the attempt is older than one already run (fencing) or another attempt is still live.
        """
        with self._tx() as db:
            self._check_insert(db, job)
            db.execute(
                f"INSERT INTO jobs ({_COLS}) VALUES ({','.join('?' * _NCOLS)})", _job_params(job)
            )
            db.executemany(
                "INSERT INTO gpu_holds (gpu_index, job_id, attempt) VALUES (?, ?, ?)",
                [(i, job.job_id, job.attempt) for i in job.gpu_indices],
            )
            db.execute(
                "INSERT INTO attempts (job_id, max_attempt) VALUES (?, ?) "
                "ON CONFLICT(job_id) DO UPDATE SET max_attempt=MAX(max_attempt, excluded.max_attempt)",
                (job.job_id, job.attempt),
            )
            return self._append_event(db, "state", job)

    def precheck(self, job: JobRecord) -> None:
        """Raise what `insert` would raise, without writing (so a refused launch creates nothing)."""
        with self._lock:
            self._check_insert(self._db, job)

    def _check_insert(self, db: sqlite3.Connection, job: JobRecord) -> None:
        r = db.execute("SELECT max_attempt FROM attempts WHERE job_id=?", (job.job_id,)).fetchone()
        live = db.execute(
            "SELECT attempt, state FROM jobs WHERE job_id=? AND attempt<>? AND state IN ('PENDING','RUNNING')",
            (job.job_id, job.attempt),
        ).fetchone()
        holds: dict[int, tuple[str, int]] = {}
        for idx in job.gpu_indices:
            held = db.execute("SELECT job_id, attempt FROM gpu_holds WHERE gpu_index=?", (idx,)).fetchone()
            if held is not None:
                holds[idx] = (held["job_id"], held["attempt"])
        check_insert(job, r["max_attempt"] if r is not None else None,
                     (live["attempt"], live["state"]) if live is not None else None, holds)

    def update(self, job: JobRecord, kind: str = "state", **changes: Any) -> tuple[JobRecord, Event | None]:
        """Apply `changes` to the stored attempt in one transaction; validate any state change.

        Ending a job releases its GPUs in the same transaction. Returns the new record and the
        event appended (None when nothing changed that watchers care about).
        """
        with self._tx() as db:
            r = db.execute(
                f"SELECT {_COLS} FROM jobs WHERE job_id=? AND attempt=?", (job.job_id, job.attempt)
            ).fetchone()
            if r is None:
                raise NotFound(f"job {job.job_id!r} attempt {job.attempt} is not known to this agent")
            cur = _row_to_job(r)
            new_state = changes.get("state", cur.state)
            if new_state != cur.state:
                check(job.job_id, cur.state, new_state)
            new = replace(cur, **changes)
            db.execute(
                f"UPDATE jobs SET ({_COLS}) = ({','.join('?' * _NCOLS)}) WHERE job_id=? AND attempt=?",
                (*_job_params(new), job.job_id, job.attempt),
            )
            if new.state not in LIVE:
                db.execute("DELETE FROM gpu_holds WHERE job_id=? AND attempt=?", (job.job_id, job.attempt))
            ev = None
            if new_state != cur.state or kind != "state":
                ev = self._append_event(db, kind, new)
            return new, ev

    def drop(self, job_id: str, attempt: int) -> bool:
        """Forget an acknowledged attempt (its `attempts` fence stays)."""
        with self._tx() as db:
            cur = db.execute("DELETE FROM jobs WHERE job_id=? AND attempt=?", (job_id, attempt))
            db.execute("DELETE FROM gpu_holds WHERE job_id=? AND attempt=?", (job_id, attempt))
            return cur.rowcount > 0

    def _append_event(self, db: sqlite3.Connection, kind: str, job: JobRecord) -> Event:
        now = time.time()
        payload = {"state": job.state.value}
        cur = db.execute(
            "INSERT INTO events (at, kind, job_id, attempt, payload) VALUES (?, ?, ?, ?, ?)",
            (now, kind, job.job_id, job.attempt, json.dumps(payload)),
        )
        seq = int(cur.lastrowid or 0)
        if seq % 1000 == 0:
            db.execute("DELETE FROM events WHERE seq <= ?", (seq - EVENTS_KEPT,))
        return Event(seq, now, kind, job.job_id, job.attempt, payload)


def _job_params(j: JobRecord) -> tuple[Any, ...]:
    return (
        j.job_id,
        j.attempt,
        j.state.value,
        json.dumps(j.spec),
        json.dumps(j.gpu_indices),
        j.runtime,
        j.runtime_id,
        j.start_marker,
        j.exit_code,
        j.signal,
        j.message,
        j.created_at,
        j.started_at,
        j.finished_at,
        int(j.stop_requested),
        j.stop_deadline,
        json.dumps(j.probe) if j.probe is not None else None,
        json.dumps(j.progress) if j.progress is not None else None,
        j.log_tail,
        int(j.acknowledged),
        json.dumps(j.gpu_usage) if j.gpu_usage is not None else None,
        j.owner,
    )


def _translate(exc: sqlite3.OperationalError, path: Path) -> Exception:
    if "full" in str(exc).lower():
        return StoreFull(f"agent state dir {path.parent} is full: no new job can be recorded (free disk space)")
    return exc
