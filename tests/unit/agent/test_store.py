"""The agent's store: records, GPU holds, fencing, the event log, schema guard, crash safety.

One suite for every `JobStore`: the `store` fixture runs each contract test against the SQLite store
and its in-memory twin (Nomad's db_test.go); what only a file can show (schema guard, WAL, SIGKILL,
a full disk) uses `sqlite_store` or the file itself. The always-failing store's tests are below."""
from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gpufleet.agent.store as store_mod
import pytest
from gpufleet.agent.jobstore import JobStore
from gpufleet.agent.memstore import FailingStore, MemoryStore
from gpufleet.agent.states import InvalidTransition, JobState
from gpufleet.agent.store import JobRecord, Store, StoreFull

from gpufleet.errors import Aborted, FailedPrecondition, NotFound, ResourceExhausted

P, R, S, F, T, L = (JobState.PENDING, JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED,
                    JobState.STOPPED, JobState.LOST)


def rec(job_id: str = "j1", attempt: int = 1, gpus: tuple[int, ...] = (), **kw: Any) -> JobRecord:
    return JobRecord(job_id=job_id, attempt=attempt, state=P, spec={"output_dir": job_id},
                     gpu_indices=list(gpus), runtime="process", created_at=1000.0 + attempt, **kw)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "agent.db"


@pytest.fixture
def sqlite_store(db_path: Path) -> Iterator[Store]:
    s = Store(db_path)
    yield s
    s.close()


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, db_path: Path) -> Iterator[JobStore]:
    s: JobStore = Store(db_path) if request.param == "sqlite" else MemoryStore()
    yield s
    s.close()


def raw(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run SQL on the file through a connection of our own (what another process would see)."""
    con = sqlite3.connect(str(path), isolation_level=None)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def seqs(store: JobStore) -> list[int]:
    return [e.seq for e in store.events_after(0)]


# -- reads -------------------------------------------------------------------------------------
def test_insert_then_get_and_find_return_the_same_record(store: JobStore) -> None:
    job = rec("j1", 1, gpus=(0, 2), probe={"completed": False, "reason": "x"}, progress={"current_epoch": 1},
              log_tail=b"\x00bytes\xff", message="m")
    ev = store.insert(job)
    assert (ev.seq, ev.kind, ev.job_id, ev.attempt, ev.payload) == (1, "state", "j1", 1, {"state": "PENDING"})
    assert store.get("j1", 1) == job
    assert store.get("j1") == job
    assert store.find("j1", 1) == job
    assert store.gpu_holds() == {0: ("j1", 1), 2: ("j1", 1)}
    assert store.max_attempt("j1") == 1


def test_get_without_attempt_returns_the_newest_attempt(store: JobStore) -> None:
    store.insert(rec("j", 1))
    store.update(store.get("j", 1), state=F, exit_code=1)
    store.insert(rec("j", 2))
    assert store.get("j").attempt == 2
    assert store.get("j", 1).state is F and store.get("j", 1).exit_code == 1


@pytest.mark.parametrize(
    ("job_id", "attempt", "message"),
    [
        ("ghost", None, "job 'ghost' is not known to this agent"),
        ("j", 9, "job 'j' attempt 9 is not known to this agent"),
    ],
)
def test_unknown_job_is_not_found_with_a_message_naming_it(store: JobStore, job_id: str, attempt: int | None,
                                                            message: str) -> None:
    store.insert(rec("j", 1))
    with pytest.raises(NotFound) as e:
        store.get(job_id, attempt)
    assert str(e.value) == message
    assert store.find(job_id, attempt or 1) is None


def test_jobs_filter_by_state(store: JobStore) -> None:
    for name in ("a", "b", "c"):
        store.insert(rec(name))
    store.update(store.get("b"), state=R)
    store.update(store.get("c"), state=F)
    assert [j.job_id for j in store.jobs()] == ["a", "b", "c"]
    assert [j.job_id for j in store.live_jobs()] == ["a", "b"]
    assert [j.job_id for j in store.jobs([F, S])] == ["c"]


# -- insert refusals ---------------------------------------------------------------------------
def test_gpu_held_twice_is_refused_and_nothing_is_written(store: JobStore) -> None:
    store.insert(rec("a", 1, gpus=(0, 1)))
    last = store.last_seq()
    with pytest.raises(ResourceExhausted) as e:
        store.insert(rec("b", 1, gpus=(2, 1)))
    assert str(e.value) == "gpu_indices: GPU 1 is held by job a attempt 1"
    assert store.find("b", 1) is None
    assert store.last_seq() == last and store.events_after(last) == []
    assert store.gpu_holds() == {0: ("a", 1), 1: ("a", 1)}  # GPU 2 was not taken half-way
    assert store.max_attempt("b") == 0  # no fence written either: attempt 1 may still come


def test_older_attempt_is_fenced_also_after_the_newer_one_was_dropped(store: JobStore) -> None:
    store.insert(rec("j", 3))
    store.update(store.get("j", 3), state=S, exit_code=0)
    with pytest.raises(FailedPrecondition) as e:
        store.insert(rec("j", 2))
    assert "attempt 2 is older than attempt 3" in str(e.value)
    assert store.drop("j", 3) is True
    with pytest.raises(NotFound):
        store.get("j")
    with pytest.raises(FailedPrecondition) as e:
        store.insert(rec("j", 2))
    assert "attempt 2 is older than attempt 3" in str(e.value)
    with pytest.raises(FailedPrecondition) as e:
        store.insert(rec("j", 3))  # the acknowledged attempt itself never runs twice
    assert "attempt 3 already ran" in str(e.value)
    store.insert(rec("j", 4))
    assert store.get("j").attempt == 4 and store.max_attempt("j") == 4


def test_a_new_attempt_is_refused_while_another_is_live(store: JobStore) -> None:
    store.insert(rec("j", 1, gpus=(0,)))
    last = store.last_seq()
    with pytest.raises(Aborted) as e:
        store.insert(rec("j", 2, gpus=(1,)))
    assert str(e.value) == "job j: attempt 1 is still PENDING; stop it before launching attempt 2"
    assert store.find("j", 2) is None and store.last_seq() == last and store.max_attempt("j") == 1
    store.update(store.get("j", 1), state=T)
    store.insert(rec("j", 2, gpus=(0,)))  # the stopped attempt's GPU is free again
    assert store.gpu_holds() == {0: ("j", 2)}


# -- updates -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "illegal"),
    [
        ([R], P),
        ([S], R),
        ([R, S], P),
        ([R, T], F),
        ([F], L),
        ([R, L, S], L),
    ],
    ids=lambda v: "-".join(s.value for s in v) if isinstance(v, list) else v.value,
)
def test_update_refuses_an_illegal_transition_and_changes_nothing(store: JobStore, path: list[JobState],
                                                                  illegal: JobState) -> None:
    store.insert(rec("j", 1, gpus=(0,)))
    job = store.get("j", 1)
    for state in path:
        job, _ = store.update(job, state=state)
    before, holds, last = store.get("j", 1), store.gpu_holds(), store.last_seq()
    with pytest.raises(InvalidTransition) as e:
        store.update(job, state=illegal, message="should not stick", exit_code=3)
    assert str(e.value) == f"job j: cannot go from {path[-1].value} to {illegal.value}"
    assert store.get("j", 1) == before
    assert store.gpu_holds() == holds and store.last_seq() == last


@pytest.mark.parametrize("end", [S, F, T, L], ids=lambda s: s.value)
def test_ending_a_job_releases_its_gpus_in_the_same_transaction(store: JobStore, end: JobState) -> None:
    store.insert(rec("a", 1, gpus=(0, 1)))
    store.insert(rec("other", 1, gpus=(2,)))
    job, ev = store.update(store.get("a", 1), state=R)
    assert store.gpu_holds() == {0: ("a", 1), 1: ("a", 1), 2: ("other", 1)}  # RUNNING keeps them
    job, ev = store.update(job, state=end, exit_code=0 if end is S else None)
    assert ev is not None and ev.payload == {"state": end.value}
    assert store.gpu_holds() == {2: ("other", 1)}
    store.insert(rec("b", 1, gpus=(0, 1)))  # at once free for the next job
    assert store.get("a").gpu_indices == [0, 1]  # the record still says which GPUs it had


def test_update_without_a_state_change_appends_no_state_event(store: JobStore) -> None:
    store.insert(rec("j"))
    last = store.last_seq()
    job, ev = store.update(store.get("j"), message="hello")
    assert ev is None and store.last_seq() == last and job.message == "hello"
    job, ev = store.update(job, kind="progress", progress={"current_epoch": 2})
    assert ev is not None and ev.kind == "progress" and store.last_seq() == last + 1
    assert store.get("j").progress == {"current_epoch": 2}


def test_update_of_an_unknown_attempt_is_not_found(store: JobStore) -> None:
    with pytest.raises(NotFound):
        store.update(rec("nobody"), state=R)
    assert store.last_seq() == 0


def test_drop_forgets_the_record_and_its_holds_but_keeps_the_fence(store: JobStore) -> None:
    store.insert(rec("j", 2, gpus=(3,)))
    store.update(store.get("j"), state=L)
    assert store.drop("j", 2) is True
    assert store.drop("j", 2) is False
    assert store.jobs() == [] and store.gpu_holds() == {} and store.max_attempt("j") == 2


# -- the event log -----------------------------------------------------------------------------
def test_event_seq_strictly_increases_and_survives_reopening(db_path: Path) -> None:
    s = Store(db_path)
    s.insert(rec("a"))
    s.update(s.get("a"), state=R)
    s.update(s.get("a"), state=S, exit_code=0)
    first = s.events_after(0)
    s.close()
    s = Store(db_path)
    try:
        assert s.events_after(0) == first
        assert s.last_seq() == first[-1].seq
        s.insert(rec("b"))
        s.update(s.get("b"), state=F, exit_code=2)
        all_seqs = seqs(s)
        assert all(x < y for x, y in zip(all_seqs, all_seqs[1:], strict=False))
        assert [(e.job_id, e.payload["state"]) for e in s.events_after(first[-1].seq)] == [
            ("b", "PENDING"), ("b", "FAILED")]
        assert [e.seq for e in s.events_after(first[0].seq, limit=2)] == all_seqs[1:3]
    finally:
        s.close()


@pytest.mark.parametrize(("kept", "left"), [(0, []), (1, [1000])])
def test_last_seq_after_pruning(sqlite_store: Store, db_path: Path, monkeypatch: pytest.MonkeyPatch, kept: int,
                                left: list[int]) -> None:
    store = sqlite_store
    monkeypatch.setattr(store_mod, "EVENTS_KEPT", kept)
    store.insert(rec("j"))
    # Pretend 997 more events happened (and were pruned), so that the next ones reach seq 1000.
    raw(db_path, "UPDATE sqlite_sequence SET seq=998 WHERE name='events'")
    job, _ = store.update(store.get("j"), state=R)  # seq 999
    job, ev = store.update(job, state=S)  # seq 1000: the log is pruned to the last `kept`
    assert ev is not None and ev.seq == 1000
    assert seqs(store) == left
    assert store.last_seq() == 1000  # never goes back, even with no event left
    _, ev = store.update(job, kind="ack")
    assert ev is not None and ev.seq == 1001 and store.last_seq() == 1001


# -- schema and durability ---------------------------------------------------------------------
def test_a_newer_schema_version_is_refused_on_open(db_path: Path) -> None:
    Store(db_path).close()
    raw(db_path, "UPDATE meta SET value='4' WHERE key='schema_version'")
    with pytest.raises(FailedPrecondition) as e:
        Store(db_path)
    assert "schema version 4, newer than this agent knows (3)" in str(e.value)
    assert raw(db_path, "SELECT value FROM meta WHERE key='schema_version'") == [("4",)]  # left alone


def test_a_version_1_file_is_upgraded_and_keeps_its_jobs(db_path: Path) -> None:
    s = Store(db_path)
    s.insert(JobRecord("old", 1, JobState.PENDING, {}, [0], "process", created_at=1.0))
    s.close()
    # What an agent before issue 15 left: no gpu_usage column, no owner, version 1.
    raw(db_path, "ALTER TABLE jobs DROP COLUMN gpu_usage")
    raw(db_path, "ALTER TABLE jobs DROP COLUMN owner")
    raw(db_path, "DROP TABLE owner_uids")
    raw(db_path, "UPDATE meta SET value='1' WHERE key='schema_version'")
    s = Store(db_path)
    try:
        assert s.get("old").gpu_usage is None and s.get("old").gpu_indices == [0]
        job, _ = s.update(s.get("old"), state=JobState.FAILED, gpu_usage={"gpu_seconds": 2.0})
        assert s.get("old").gpu_usage == {"gpu_seconds": 2.0}
        assert s.get("old").owner == ""
        assert s.assign_uid("alice", lambda taken: 62000) == 62000
    finally:
        s.close()
    assert raw(db_path, "SELECT value FROM meta WHERE key='schema_version'") == [("3",)]


def test_a_version_2_file_is_upgraded_its_jobs_without_an_owner(db_path: Path) -> None:
    s = Store(db_path)
    s.insert(JobRecord("old", 1, JobState.PENDING, {}, [0], "process", created_at=1.0))
    s.close()
    # What an agent before owners had uids left (issue 13): no jobs.owner, no owner_uids, version 2.
    raw(db_path, "ALTER TABLE jobs DROP COLUMN owner")
    raw(db_path, "DROP TABLE owner_uids")
    raw(db_path, "UPDATE meta SET value='2' WHERE key='schema_version'")
    s = Store(db_path)
    try:
        assert s.get("old").owner == "" and s.get("old").state == JobState.PENDING
        s.insert(JobRecord("new", 1, JobState.PENDING, {}, [1], "process", created_at=2.0, owner="bob"))
        assert s.get("new").owner == "bob"
        assert s.assign_uid("bob", lambda taken: 62001) == 62001
    finally:
        s.close()
    assert raw(db_path, "SELECT value FROM meta WHERE key='schema_version'") == [("3",)]
    assert raw(db_path, "SELECT owner, uid FROM owner_uids") == [("bob", 62001)]


# -- owners' uids (agent/owneruids.py keeps the rules; the store keeps the answers) ---------------
def test_an_owner_keeps_its_uid_and_two_owners_never_share_one(store: JobStore) -> None:
    seen: list[set[int]] = []

    def lowest_free(taken: set[int]) -> int:
        seen.append(set(taken))
        return min(set(range(62000, 62010)) - taken)

    assert store.assign_uid("alice", lowest_free) == 62000
    assert store.assign_uid("bob", lowest_free) == 62001
    assert store.assign_uid("alice", lowest_free) == 62000  # stored: not picked again
    assert seen == [set(), {62000}]


def test_a_refused_uid_pick_stores_nothing(store: JobStore) -> None:
    def none_left(taken: set[int]) -> int:
        raise ResourceExhausted("--owner-uids 1-1: every uid of the range is given")

    with pytest.raises(ResourceExhausted):
        store.assign_uid("carol", none_left)
    assert store.assign_uid("carol", lambda taken: 7) == 7


def test_owner_uids_survive_reopening(db_path: Path) -> None:
    s = Store(db_path)
    s.assign_uid("alice", lambda taken: 62005)
    s.insert(rec("j1", owner="alice"))
    s.close()
    s = Store(db_path)
    try:
        assert s.assign_uid("alice", lambda taken: 1 / 0) == 62005  # type: ignore[arg-type,return-value]
        assert s.get("j1").owner == "alice"
    finally:
        s.close()


def test_schema_version_is_recorded_on_a_new_file(sqlite_store: Store, db_path: Path) -> None:
    version = raw(db_path, "SELECT value FROM meta WHERE key='schema_version'")
    assert version == [(str(store_mod.SCHEMA_VERSION),)]
    assert raw(db_path, "PRAGMA journal_mode") == [("wal",)]


CRASHER = """
import os, signal, sys
from pathlib import Path
from gpufleet.agent.states import JobState
from gpufleet.agent.store import JobRecord, Store

def rec(job_id, gpus):
    return JobRecord(job_id=job_id, attempt=1, state=JobState.PENDING, spec={}, gpu_indices=gpus,
                     runtime="process", created_at=1.0)

s = Store(Path(sys.argv[1]))
s.insert(rec("j1", [0]))
s.update(s.get("j1"), state=JobState.RUNNING, runtime_id="123", start_marker="456")
s.insert(rec("j2", [1]))
# Die by SIGKILL in the middle of the next transaction: its job row and GPU hold are written, not committed.
s._append_event = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
s.insert(rec("j3", [2]))
print("not reached")
"""


def test_sigkill_mid_transaction_keeps_every_committed_change_and_none_of_the_rest(db_path: Path) -> None:
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(CRASHER), str(db_path)], capture_output=True,
                       timeout=60)
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()
    s = Store(db_path)
    try:
        j1 = s.get("j1")
        assert (j1.state, j1.runtime_id, j1.start_marker) == (R, "123", "456")
        assert s.get("j2").state is P
        assert s.find("j3", 1) is None and s.max_attempt("j3") == 0
        assert s.gpu_holds() == {0: ("j1", 1), 1: ("j2", 1)}
        assert [(e.job_id, e.payload["state"]) for e in s.events_after(0)] == [
            ("j1", "PENDING"), ("j1", "RUNNING"), ("j2", "PENDING")]
        s.insert(rec("j3", 1, gpus=(2,)))  # the GPU the dead transaction wanted is free
    finally:
        s.close()


def test_reopening_without_close_keeps_everything(db_path: Path) -> None:
    s = Store(db_path)
    s.insert(rec("j", 1, gpus=(1,)))
    s.update(s.get("j"), state=R, runtime_id="42")
    # No close(): a second Store on the same file, as after the agent was killed.
    again = Store(db_path)
    try:
        assert again.get("j") == s.get("j")
        assert again.gpu_holds() == {1: ("j", 1)} and again.last_seq() == 2
    finally:
        again.close()
        s.close()


class Boom(Exception):
    pass


def _boom(*_a: Any, **_k: Any) -> None:
    raise Boom("disk went away")


def test_a_writer_failing_mid_update_leaves_the_old_state(store: JobStore,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    store.insert(rec("j", 1, gpus=(0,)))
    job, _ = store.update(store.get("j"), state=R)
    before, last = store.get("j"), store.last_seq()
    monkeypatch.setattr(store, "_append_event", _boom)
    with pytest.raises(Boom):
        store.update(job, state=S, exit_code=0, finished_at=5.0)
    assert store.get("j") == before
    assert store.gpu_holds() == {0: ("j", 1)} and store.last_seq() == last
    monkeypatch.undo()
    job, ev = store.update(job, state=S, exit_code=0)  # the store is still usable
    assert ev is not None and store.get("j").exit_code == 0 and store.gpu_holds() == {}


def test_a_writer_failing_mid_insert_writes_nothing(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "_append_event", _boom)
    with pytest.raises(Boom):
        store.insert(rec("j", 1, gpus=(0,)))
    assert store.jobs() == [] and store.gpu_holds() == {} and store.max_attempt("j") == 0
    assert store.last_seq() == 0


def test_a_full_store_refuses_new_jobs_and_keeps_the_old(sqlite_store: Store) -> None:
    store = sqlite_store
    store.insert(rec("old", 1, gpus=(0,)))
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count={pages + 1}")  # as if the disk filled up now
    with pytest.raises(StoreFull) as e:
        store.insert(rec("new", 1, gpus=(1,), message="x" * 200_000))
    assert isinstance(e.value, ResourceExhausted) and "full" in str(e.value)
    assert store.find("new", 1) is None and store.gpu_holds() == {0: ("old", 1)}
    assert store.get("old").state is P and store.ping()


# -- the supervisor's vocabulary (every JobStore) ------------------------------------------------
def test_record_methods_write_what_the_supervisor_means(store: JobStore) -> None:
    store.insert(rec("j", 1, gpus=(0,)))
    job, ev = store.record_started(store.get("j"), 10.0, runtime_id="42", start_marker="7")
    assert (job.state, job.started_at, job.runtime_id, job.start_marker) == (R, 10.0, "42", "7")
    assert ev is not None and ev.payload == {"state": "RUNNING"}
    job, ev = store.record_progress(job, {"current_epoch": 3})
    assert ev is not None and ev.kind == "progress" and store.get("j").progress == {"current_epoch": 3}
    job, ev = store.record_stop_requested(job, 99.0)
    assert ev is not None and ev.kind == "stop" and (job.stop_requested, job.stop_deadline) == (True, 99.0)
    job, ev = store.record_ended(job, T, 20.0, "stopped on request", exit_code=143, log_tail=b"bye")
    assert ev is not None and ev.payload == {"state": "STOPPED"}
    assert store.get("j") == job and (job.finished_at, job.exit_code, job.log_tail) == (20.0, 143, b"bye")
    assert store.gpu_holds() == {}
    assert [e.kind for e in store.events_after(0)] == ["state", "state", "progress", "stop", "state"]


def test_record_handle_keeps_the_state(store: JobStore) -> None:
    store.insert(rec("j", 1))
    job, ev = store.record_handle(store.get("j"), "c0ffee", "")
    assert ev is None and job.state is P and store.get("j").runtime_id == "c0ffee"


def test_reported_seq_never_moves_back(store: JobStore) -> None:
    assert store.reported_seq() == 0
    store.set_reported_seq(5)
    store.set_reported_seq(3)
    assert store.reported_seq() == 5


def test_records_handed_out_are_copies(store: JobStore) -> None:
    store.insert(rec("j", 1, gpus=(0,)))
    got = store.get("j")
    got.gpu_indices.append(9)
    got.spec["output_dir"] = "elsewhere"
    assert store.get("j").gpu_indices == [0] and store.get("j").spec == {"output_dir": "j"}


# -- the always-failing store --------------------------------------------------------------------
WRITES: list[tuple[str, Any]] = [
    ("insert", lambda s: s.insert(rec("new", 1, gpus=(1,)))),
    ("update", lambda s: s.update(s.get("old"), state=R)),
    ("record_started", lambda s: s.record_started(s.get("old"), 1.0)),
    ("record_stop_requested", lambda s: s.record_stop_requested(s.get("old"), 1.0)),
    ("record_ended", lambda s: s.record_ended(s.get("old"), F, 1.0, "x", exit_code=1)),
    ("record_progress", lambda s: s.record_progress(s.get("old"), {"current_epoch": 1})),
    ("drop", lambda s: s.drop("old", 1)),
    ("set_reported_seq", lambda s: s.set_reported_seq(7)),
    ("assign_uid", lambda s: s.assign_uid("alice", lambda taken: 62000)),
]


@pytest.mark.parametrize("write", [w[1] for w in WRITES], ids=[w[0] for w in WRITES])
def test_the_failing_store_refuses_every_write_with_the_stores_error_and_changes_nothing(write: Any) -> None:
    s = FailingStore()
    s.failing = False
    s.insert(rec("old", 1, gpus=(0,)))
    before, holds, last = s.jobs(), s.gpu_holds(), s.last_seq()
    s.failing = True
    with pytest.raises(StoreFull) as e:
        write(s)
    assert isinstance(e.value, ResourceExhausted) and "cannot be written" in str(e.value)
    assert s.jobs() == before and s.gpu_holds() == holds and s.last_seq() == last
    assert s.reported_seq() == 0 and s.refused == 1 and not s.ping()
