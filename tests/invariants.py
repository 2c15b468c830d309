"""The fault matrix's checker: read everything there is, at any moment, and list what is wrong.

`check_invariants(coordinator_db_url, agent_state_dirs, docker_client, settled=...)` reads, read-only:
- the coordinator's database (SQLAlchemy; SQLite opened with `mode=ro`, PostgreSQL with
  `default_transaction_read_only`): jobs, nodes and the job audit events;
- every agent's SQLite store (`<state>/agent.db`, sqlite3 `mode=ro`): jobs, gpu_holds, events;
- what really runs: containers labelled `gpufleet.agent` (`docker ps -a` through the SDK) and
  process-runtime jobs (`<state>/jobs/*/*/handle.json`: the wrapper's pid plus its start marker,
  checked the way agent/runtime/process.py does, so a reused pid is not taken for the job);

and returns one string per violation (empty list: all good). `assert_invariants` raises with all of
them. Invariants checked at any moment (`settled=False`):
- every job is in exactly one known state, and its other columns agree with it (exit code,
  finish time, node) — in the coordinator and in every agent;
- histories never go backwards (agent event log per attempt; coordinator audit events per job);
- no GPU index is held by two live jobs on one agent (agent gpu_holds and live records), and no
  GPU index is given to two RUNNING jobs of one node in the coordinator;
- no job root has two live attempts: in the coordinator at most one QUEUED/RUNNING attempt per
  root_id; across ALL agents at most one PENDING/RUNNING attempt per job id; at most one live
  process/container per job id;
- every terminal coordinator job matches the agent's record of that attempt when the agent still
  has it, by production's rule (coordinator/reconciler.py `decide`, exit code included);

and once the system has had time to settle (`settled=True`), also:
- nothing acknowledged (coordinator jobs.acked) is still held by an agent (record, container or
  runtime files);
- no container/process runs that no coordinator RUNNING job accounts for (without a coordinator:
  that no agent tracks as live), and every live agent record has its container/process;
- nothing is stuck: no agent record PENDING, every coordinator RUNNING job on a checked node is
  live on its agent with the same GPUs.

Agents are matched to coordinator nodes by name: pass `agent_state_dirs` as a mapping
{node_name: state_dir}, or a list of state dirs (names are then found through the coordinator's
nodes table: an agent writes its address to `<state>/agent.addr`, which is what it registers).
Docker containers are only looked at for the checked agents' node names when those are known.
"""
from __future__ import annotations

import json
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from gpufleet.agent.runtime.process import proc_start_marker
from gpufleet.coordinator.agents import Observation
from gpufleet.coordinator.db.rows import JobRow
from gpufleet.coordinator.reconciler import decide, outputs_complete
from gpufleet.coordinator.states import JOB_TERMINAL, DesiredState, JobStatus, JobType
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

AGENT_STATES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "STOPPED", "LOST")
AGENT_LIVE = frozenset({"PENDING", "RUNNING"})
AGENT_TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED", "LOST"})
# Order of an attempt's life on an agent: a state never goes to a lower rank; LOST may still
# become SUCCEEDED/FAILED/STOPPED when the exit code shows up later (agent/states.py).
AGENT_RANK = {"PENDING": 0, "RUNNING": 1, "LOST": 2, "SUCCEEDED": 3, "FAILED": 3, "STOPPED": 3}
COORD_LIVE = frozenset({JobStatus.QUEUED.value, JobStatus.RUNNING.value})
COORD_TERMINAL = frozenset(s.value for s in JOB_TERMINAL)
COORD_STATES = frozenset(s.value for s in JobStatus)
# Verdicts the coordinator reached without the agent's word (node silent, Launch not answered,
# stopped before launch): the agent's later record of that attempt may well differ.
VERDICTS_WITHOUT_AGENT = ("NODE_LOST", "SERVER_RESTART_CONTAINER_INSPECT_ERROR", "LAUNCH_FAILED",
                          "STOPPED_BY_USER: before launch")
DOCKER_RUNNING = frozenset({"running", "paused", "restarting"})


# -- snapshots -----------------------------------------------------------------------------------


@dataclass
class CoordJob:
    id: str
    root_id: str
    attempt: int
    status: str
    desired_state: str
    exit_code: int | None
    error_message: str
    node: str | None
    gpu_indices: list[int]
    acked: bool
    finished_at: Any
    job_type: str


@dataclass
class AgentJob:
    job_id: str
    attempt: int
    state: str
    gpu_indices: list[int]
    runtime: str
    runtime_id: str
    exit_code: int | None
    finished_at: float | None
    stop_requested: bool
    probe: dict[str, Any] | None


@dataclass
class AgentSnapshot:
    state_dir: Path
    node: str | None
    jobs: dict[tuple[str, int], AgentJob] = field(default_factory=dict)
    holds: dict[int, tuple[str, int]] = field(default_factory=dict)
    history: dict[tuple[str, int], list[str]] = field(default_factory=dict)
    addr: str = ""


@dataclass(frozen=True)
class RuntimeObject:
    """A container or process-runtime job seen on the host."""

    kind: str  # "container" | "process"
    job_id: str
    attempt: int
    node: str | None
    live: bool
    ref: str  # container name/id or pid


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def _coord_engine(url: str) -> sa.Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database or ""
        return sa.create_engine("sqlite://", poolclass=NullPool,
                                creator=lambda: sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                                                check_same_thread=False))
    return sa.create_engine(url, poolclass=NullPool,
                            connect_args={"options": "-c default_transaction_read_only=on",
                                          "connect_timeout": 10})


def read_coordinator(url: str) -> tuple[list[CoordJob], dict[str, str], list[tuple[str, str | None, str | None]]]:
    """(jobs, node name -> address, job audit events (job id, from, to) in order)."""
    engine = _coord_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT id, root_id, attempt, status, desired_state, exit_code, error_message, node, gpu_indices, "
                "acked, finished_at, job_type FROM jobs ORDER BY id")).mappings().all()
            nodes = {r.name: r.address for r in conn.execute(sa.text("SELECT name, address FROM nodes"))}
            evs = [(r.entity_id, r.from_state, r.to_state) for r in conn.execute(sa.text(
                "SELECT entity_id, from_state, to_state FROM events WHERE entity = 'job' ORDER BY id"))]
    finally:
        engine.dispose()
    jobs = [CoordJob(r["id"], r["root_id"], int(r["attempt"]), r["status"], r["desired_state"], r["exit_code"],
                     r["error_message"] or "", r["node"], [int(i) for i in (_json(r["gpu_indices"]) or [])],
                     bool(r["acked"]), r["finished_at"], r["job_type"]) for r in rows]
    return jobs, nodes, evs


def read_agent(state_dir: Path, node: str | None) -> AgentSnapshot | None:
    db_path = state_dir / "agent.db"
    if not db_path.exists():
        return None
    snap = AgentSnapshot(state_dir, node)
    try:
        snap.addr = (state_dir / "agent.addr").read_text().strip()
    except OSError:
        pass
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    db.row_factory = sqlite3.Row
    try:
        db.execute("BEGIN")  # one read transaction: jobs, holds and events from the same instant
        for r in db.execute("SELECT job_id, attempt, state, gpu_indices, runtime, runtime_id, exit_code, "
                            "finished_at, stop_requested, probe FROM jobs"):
            j = AgentJob(r["job_id"], int(r["attempt"]), r["state"], [int(i) for i in json.loads(r["gpu_indices"])],
                         r["runtime"], r["runtime_id"] or "", r["exit_code"], r["finished_at"],
                         bool(r["stop_requested"]), json.loads(r["probe"]) if r["probe"] else None)
            snap.jobs[(j.job_id, j.attempt)] = j
        snap.holds = {int(r["gpu_index"]): (r["job_id"], int(r["attempt"]))
                      for r in db.execute("SELECT gpu_index, job_id, attempt FROM gpu_holds")}
        for r in db.execute("SELECT job_id, attempt, payload FROM events ORDER BY seq"):
            state = json.loads(r["payload"]).get("state")
            if state:
                snap.history.setdefault((r["job_id"], int(r["attempt"])), []).append(state)
        db.execute("COMMIT")
    finally:
        db.close()
    return snap


def _process_alive(job_dir: Path, handle: Mapping[str, Any]) -> bool:
    """The job's wrapper (pid + start marker), or the job's own process, is still alive."""
    pid, marker = int(handle["pid"]), str(handle.get("start_marker", ""))
    now = proc_start_marker(pid)
    if now is not None and (not marker or now == marker):
        return True
    try:
        child = int((job_dir / "child.pid").read_text())
    except (OSError, ValueError):
        return False
    child_marker = proc_start_marker(child)
    # The child started after the wrapper (a pid reused by an older process would be earlier).
    return child_marker is not None and (not marker or int(child_marker) >= int(marker))


def read_processes(snap: AgentSnapshot) -> list[RuntimeObject]:
    out = []
    for hp in sorted(snap.state_dir.glob("jobs/*/*/handle.json")):
        try:
            data = json.loads(hp.read_text())
        except (OSError, ValueError):
            continue
        out.append(RuntimeObject("process", str(data["job_id"]), int(data["attempt"]), snap.node,
                                 _process_alive(hp.parent, data), str(data["pid"])))
    return out


def read_containers(docker_client: Any, node_names: set[str] | None) -> list[RuntimeObject]:
    out = []
    # The low-level list: one call, no per-container inspect racing a concurrent removal.
    for row in docker_client.api.containers(all=True, filters={"label": "gpufleet.agent"}):
        labels = row.get("Labels") or {}
        node = labels.get("gpufleet.agent")
        if node_names is not None and node not in node_names:
            continue
        try:
            attempt = int(labels.get("gpufleet.attempt", "0"))
        except ValueError:
            attempt = 0
        name = (row.get("Names") or [row["Id"][:12]])[0].lstrip("/")
        out.append(RuntimeObject("container", labels.get("gpufleet.job_id", ""), attempt, node,
                                 str(row.get("State", "")) in DOCKER_RUNNING, name))
    return out


# -- the checks ----------------------------------------------------------------------------------


def _check_coord_rows(jobs: list[CoordJob], v: list[str]) -> None:
    ids = Counter(j.id for j in jobs)
    v += [f"coordinator: job id {i} appears {n} times" for i, n in ids.items() if n > 1]
    keys = Counter((j.root_id, j.attempt) for j in jobs)
    v += [f"coordinator: {k[0]} attempt {k[1]} appears {n} times" for k, n in keys.items() if n > 1]
    for j in jobs:
        where = f"coordinator: job {j.id} ({j.status})"
        if j.status not in COORD_STATES:
            v.append(f"{where}: unknown status")
            continue
        if j.status in COORD_LIVE:
            if j.exit_code is not None or j.finished_at is not None:
                v.append(f"{where}: live but has exit code {j.exit_code} / finished_at {j.finished_at}")
            if j.acked:
                v.append(f"{where}: acknowledged while not ended")
            if j.status == JobStatus.RUNNING.value and not j.node:
                v.append(f"{where}: RUNNING without a node")
        else:
            if j.finished_at is None:
                v.append(f"{where}: ended without finished_at")
            expected = {"SUCCESS": 0, "STOPPED": -1}.get(j.status)
            if j.status in ("SUCCESS", "STOPPED") and j.exit_code != expected:
                v.append(f"{where}: exit code {j.exit_code}, expected {expected}")
            if j.status == "FAILED" and j.exit_code in (0, -1):
                v.append(f"{where}: FAILED with exit code {j.exit_code}")
            if j.status == "CANCELED" and j.exit_code is not None:
                v.append(f"{where}: CANCELED with exit code {j.exit_code}")


def _check_coord_history(events: list[tuple[str, str | None, str | None]], v: list[str]) -> None:
    last: dict[str, str] = {}
    for job_id, frm, to in events:
        if to not in COORD_STATES or (frm is not None and frm not in COORD_STATES):
            continue  # desired-state (RUN/STOP) events
        prev = last.get(job_id)
        if prev is not None and frm != prev:
            v.append(f"coordinator: job {job_id} history jumps: last {prev}, then an event from {frm} to {to}")
        # The one move out of a terminal status (coordinator/states.py LATE_TRUTH): an attempt given up
        # for lost whose node returned and reported that it ended during the silence.
        if frm in COORD_TERMINAL and to != frm and (frm, to) not in (("STOPPED", "SUCCESS"), ("STOPPED", "FAILED")):
            v.append(f"coordinator: job {job_id} went backwards from {frm} to {to}")
        last[job_id] = to


def _check_agent_rows(snap: AgentSnapshot, v: list[str]) -> None:
    name = snap.node or str(snap.state_dir)
    used: dict[int, tuple[str, int]] = {}
    for key, j in snap.jobs.items():
        where = f"agent {name}: {j.job_id} attempt {j.attempt} ({j.state})"
        if j.state not in AGENT_STATES:
            v.append(f"{where}: unknown state")
            continue
        if j.state in AGENT_LIVE:
            if j.exit_code is not None or j.finished_at is not None:
                v.append(f"{where}: live but has exit code {j.exit_code} / finished_at {j.finished_at}")
            if j.state == "RUNNING" and not j.runtime_id:
                v.append(f"{where}: RUNNING without a runtime id")
            for g in j.gpu_indices:
                if g in used:
                    v.append(f"agent {name}: GPU {g} used by live {used[g]} and {key}")
                used[g] = key
                if snap.holds.get(g) != key:
                    v.append(f"{where}: GPU {g} not held for it in gpu_holds (held by {snap.holds.get(g)})")
        else:
            if j.finished_at is None:
                v.append(f"{where}: ended without finished_at")
            if j.state == "SUCCEEDED" and j.exit_code != 0:
                v.append(f"{where}: SUCCEEDED with exit code {j.exit_code}")
            if j.state == "FAILED" and j.exit_code == 0:
                v.append(f"{where}: FAILED with exit code 0")
            if j.state == "LOST" and j.exit_code is not None:
                v.append(f"{where}: LOST with a known exit code {j.exit_code}")
    for g, key in snap.holds.items():
        holder = snap.jobs.get(key)
        if holder is None or holder.state not in AGENT_LIVE:
            v.append(f"agent {name}: GPU {g} held by {key}, which is {holder.state if holder else 'not recorded'}")
    for key, states in snap.history.items():
        for a, b in zip(states, states[1:], strict=False):
            if AGENT_RANK.get(b, -1) < AGENT_RANK.get(a, -1) or (a != b and AGENT_RANK.get(a) == 3):
                v.append(f"agent {name}: {key[0]} attempt {key[1]} went backwards: {a} -> {b} (history {states})")
                break
        cur = snap.jobs.get(key)
        if cur is not None and states and states[-1] != cur.state:
            v.append(f"agent {name}: {key} is {cur.state} but its last event says {states[-1]}")


def _check_match(job: CoordJob, aj: AgentJob, node: str, v: list[str]) -> None:
    """A terminal coordinator job against the agent's terminal record of the same attempt: the status must be
    the one production's rule (coordinator/reconciler.py `decide`) gives for that record, exit code included."""
    if any(job.error_message.startswith(p) for p in VERDICTS_WITHOUT_AGENT):
        return
    try:
        job_type = JobType(job.job_type)
    except ValueError:
        job_type = JobType.TRAIN
    try:
        desired = DesiredState(job.desired_state)
    except ValueError:
        desired = DesiredState.RUN
    running = JobRow(
        id=job.id, root_id=job.root_id, model_uuid=None, job_type=job_type, attempt=job.attempt,
        status=JobStatus.RUNNING, desired_state=desired, observed_state="RUNNING", observed_at=None, exit_code=None,
        error_message="", node=node, gpu_indices=tuple(job.gpu_indices), gpus=len(job.gpu_indices), priority=0,
        spec={}, constraints={}, max_retries=0, retries_used=0, resume_on_retry=False, name="", superseded_by=None,
        acked=False, created_at=datetime.now(UTC), assigned_at=None, started_at=None, finished_at=None,
        row_version=0)
    report = Observation(kind="found", state=aj.state, attempt=aj.attempt, exit_code=aj.exit_code, probe=aj.probe)
    d = decide(running, report, startup=False)
    want = d.status.value if d.status is not None else f"no verdict ({d.action})"
    where = f"job {job.id}: coordinator {job.status} (exit {job.exit_code})"
    if job.status != want:
        v.append(f"{where} but agent {node} says {aj.state} (exit {aj.exit_code}, probe completed "
                 f"{outputs_complete(job_type, aj.probe)}): expected {want}")
    elif job.status == JobStatus.FAILED.value and aj.exit_code is not None and job.exit_code != aj.exit_code:
        v.append(f"{where} but agent {node} recorded exit code {aj.exit_code}")


def check_invariants(coordinator_db_url: str | None, agent_state_dirs: Iterable[Path] | Mapping[str, Path],
                     docker_client: Any | None, *, settled: bool) -> list[str]:
    v: list[str] = []
    jobs: list[CoordJob] = []
    node_addr: dict[str, str] = {}
    if coordinator_db_url:
        jobs, node_addr, events = read_coordinator(coordinator_db_url)
        _check_coord_rows(jobs, v)
        _check_coord_history(events, v)

    if isinstance(agent_state_dirs, Mapping):
        named: list[tuple[str | None, Path]] = [(n, Path(p)) for n, p in agent_state_dirs.items()]
    else:
        by_addr = {a: n for n, a in node_addr.items()}
        named = []
        for p in agent_state_dirs:
            try:
                addr = (Path(p) / "agent.addr").read_text().strip()
            except OSError:
                addr = ""
            named.append((by_addr.get(addr), Path(p)))
    agents = [s for n, p in named if (s := read_agent(p, n)) is not None]
    by_node = {s.node: s for s in agents if s.node}

    # -- per source -------------------------------------------------------------------------
    for s in agents:
        _check_agent_rows(s, v)

    live_per_root = Counter(j.root_id for j in jobs if j.status in COORD_LIVE)
    v += [f"coordinator: job root {r} has {n} live (QUEUED/RUNNING) attempts" for r, n in live_per_root.items()
          if n > 1]
    running_by_node: dict[str, list[CoordJob]] = defaultdict(list)
    for j in jobs:
        if j.status == JobStatus.RUNNING.value and j.node:
            running_by_node[j.node].append(j)
    for node, rs in running_by_node.items():
        seen: dict[int, str] = {}
        for j in rs:
            for g in j.gpu_indices:
                if g in seen:
                    v.append(f"coordinator: GPU {g} of node {node} given to RUNNING {seen[g]} and {j.id}")
                seen[g] = j.id

    agent_live: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for s in agents:
        for (job_id, attempt), rec in s.jobs.items():
            if rec.state in AGENT_LIVE:
                agent_live[job_id].append((s.node or str(s.state_dir), attempt))
    v += [f"agents: job {k} has {len(lst)} live attempts across agents: {sorted(lst)}"
          for k, lst in agent_live.items() if len(lst) > 1]

    # -- what really runs -------------------------------------------------------------------
    objects: list[RuntimeObject] = []
    for s in agents:
        objects += read_processes(s)
    if docker_client is not None:
        names: set[str] | None = {s.node for s in agents if s.node} or None
        if names is None and node_addr:
            names = set(node_addr)
        objects += read_containers(docker_client, names)
    live_objects = Counter(o.job_id for o in objects if o.live)
    v += [f"host: job {k} has {n} live containers/processes: "
          f"{[o.ref for o in objects if o.live and o.job_id == k]}" for k, n in live_objects.items() if n > 1]

    # -- coordinator against agents ----------------------------------------------------------
    agent_record: dict[tuple[str, int], tuple[AgentSnapshot, AgentJob]] = {}
    for s in agents:
        for key, rec in s.jobs.items():
            agent_record[key] = (s, rec)
    for j in jobs:
        found = agent_record.get((j.root_id, j.attempt))
        if found is None:
            continue
        s, aj = found
        if j.status in COORD_TERMINAL and aj.state in AGENT_TERMINAL:
            _check_match(j, aj, s.node or str(s.state_dir), v)

    if not settled:
        return v

    # -- settled only ------------------------------------------------------------------------
    by_key = {(j.root_id, j.attempt): j for j in jobs}
    for j in jobs:
        key = (j.root_id, j.attempt)
        if j.acked:
            if key in agent_record:
                s, aj = agent_record[key]
                v.append(f"job {j.id}: acknowledged but agent {s.node or s.state_dir} still holds it ({aj.state})")
            for o in objects:
                if (o.job_id, o.attempt) == key:
                    v.append(f"job {j.id}: acknowledged but its {o.kind} {o.ref} is still there")
        if j.status in COORD_TERMINAL and key in agent_record and agent_record[key][1].state in AGENT_LIVE:
            s, aj = agent_record[key]
            v.append(f"job {j.id}: coordinator {j.status} but agent {s.node or s.state_dir} still runs it ({aj.state})")
        if j.status == JobStatus.RUNNING.value and j.node in by_node:
            held = by_node[j.node].jobs.get(key)
            if held is None or held.state not in AGENT_LIVE:
                v.append(f"job {j.id}: coordinator RUNNING on {j.node} but the agent has "
                         f"{held.state if held else 'no record'}")
            elif sorted(held.gpu_indices) != sorted(j.gpu_indices):
                v.append(f"job {j.id}: coordinator GPUs {j.gpu_indices} but agent {j.node} holds {held.gpu_indices}")

    for s in agents:
        name = s.node or str(s.state_dir)
        for key, rec in s.jobs.items():
            if rec.state == "PENDING":
                v.append(f"agent {name}: {key[0]} attempt {key[1]} stuck PENDING")
            if rec.state == "RUNNING" and not any(o.live and (o.job_id, o.attempt) == key for o in objects):
                v.append(f"agent {name}: {key[0]} attempt {key[1]} RUNNING but no live container/process")

    for o in objects:
        if not o.live:
            continue
        key = (o.job_id, o.attempt)
        if coordinator_db_url:
            cj = by_key.get(key)
            if cj is None or cj.status != JobStatus.RUNNING.value:
                v.append(f"host: {o.kind} {o.ref} of {key[0]} attempt {key[1]} runs but the coordinator has "
                         f"{cj.status if cj else 'no such job'}")
            elif o.node and cj.node != o.node:
                v.append(f"host: {o.kind} {o.ref} of {cj.id} runs on {o.node}, coordinator says {cj.node}")
        tracked = [s for s in agents if (live := s.jobs.get(key)) is not None and live.state in AGENT_LIVE
                   and (o.node is None or s.node is None or s.node == o.node)]
        if not tracked:
            v.append(f"host: {o.kind} {o.ref} of {key[0]} attempt {key[1]} runs but no agent tracks it as live")
    return v


def assert_invariants(coordinator_db_url: str | None, agent_state_dirs: Iterable[Path] | Mapping[str, Path],
                      docker_client: Any | None = None, *, settled: bool) -> None:
    violations = check_invariants(coordinator_db_url, agent_state_dirs, docker_client, settled=settled)
    if violations:
        raise AssertionError(f"{len(violations)} invariant violation(s):\n  " + "\n  ".join(violations))
