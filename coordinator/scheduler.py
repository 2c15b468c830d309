"""Places queued jobs on nodes with free GPUs.

Decision (`choose`) is pure: READY node, fresh heartbeat, labels match the job's constraints,
enough healthy free GPUs on one node, best fit (fewest free GPUs left). The assignment (node,
GPUs, attempt) is committed *before* Agent.Launch; Launch is idempotent on (job_id, attempt), so a
retry after a crash is safe and the reconciler re-sends it when the agent never heard of the job.
"""
from __future__ import annotations

import heapq
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from gpufleet.coordinator import convert, fairshare
from gpufleet.coordinator.agents import UNREACHABLE, AgentPool
from gpufleet.coordinator.db import options, quotas, repo
from gpufleet.coordinator.db.rows import JobRow
from gpufleet.coordinator.dependencies import DependencyMode, verdict
from gpufleet.coordinator.ending import end_refused_launch
from gpufleet.coordinator.metrics import PLACEMENT_SECONDS, QUEUE_WAIT_SECONDS
from gpufleet.coordinator.states import NodeState
from sqlalchemy.engine import Engine

from gpufleet import failpoints
from gpufleet.log import event
from gpufleet.loop import Loop

log = logging.getLogger("gpufleet.coordinator.scheduler")

CLAIM_BATCH = 200
STREAM_MIN_BATCH = 20
NODE_CACHE_S = 0.5
LAUNCH_RETRIES = 3
# How long a pass waits for its Launch answers before leaving the slow ones to callbacks: long
# enough for a healthy agent (docker create+start), short enough that a partitioned node's
# 30 s deadline never holds up the placements after it.
LAUNCH_WAIT_S = 1.0
# A submit wakes the scheduler; gathering the wakes of 10 ms into one pass costs a job at most 10 ms
# and spares a pass (claim, GPU use, assignment, Launch) per submit when submits come in bursts.
WAKE_BATCH_S = 0.01
DEFAULT_HALF_LIFE_S = 3600.0
# Constraint label sets remembered from jobs that did not fit (Scheduler._skip): enough for the
# distinct shapes of a real queue; each one costs a term in the claim query.
HOPELESS_KEEP = 32

Labels = tuple[tuple[str, str], ...]


@dataclass
class NodeView:
    name: str
    address: str
    labels: Mapping[str, str]
    healthy_gpus: set[int]
    used: set[int] = field(default_factory=set)
    runtime: str = ""

    @property
    def free(self) -> list[int]:
        return sorted(self.healthy_gpus - self.used)


def choose(gpus: int, constraints: Mapping[str, str], nodes: Sequence[NodeView],
           free_counts: Mapping[str, int] | None = None) -> tuple[NodeView, list[int]] | None:
    """Best fit: the eligible node left with the fewest free GPUs; ties by name for determinism.

    `free_counts` (node name -> free GPUs), kept by a caller placing many jobs in one pass, spares
    recomputing every node's free set for every job (that dominated a pass of hundreds of jobs)."""
    best: NodeView | None = None
    best_key: tuple[int, str] | None = None
    for n in nodes:
        left = (free_counts[n.name] if free_counts is not None else len(n.healthy_gpus - n.used)) - gpus
        if left < 0:
            continue
        if constraints and any(n.labels.get(k) != v for k, v in constraints.items()):
            continue
        key = (left, n.name)
        if best_key is None or key < best_key:
            best, best_key = n, key
    if best is None:
        return None
    return best, best.free[:gpus]


def hopeless(label_sets: Iterable[Labels], views: Sequence[NodeView], room: Mapping[str, int],
             ceiling: int) -> list[tuple[dict[str, str], int]]:
    """The queued jobs a pass need not read: for each set of constraint labels, the most GPUs a job
    holding them could get on one node (`room`: node name -> GPUs it can give now), -1 when no node
    carries them all. Only sets below `ceiling` (the most any node can give, which already bounds
    every job) are kept. A job whose constraints include a set and that needs more than its bound
    fails `choose` on these views, so leaving it out in SQL places exactly the same jobs."""
    out = []
    for labels in label_sets:
        most = max((room[v.name] for v in views if all(v.labels.get(k) == val for k, val in labels)), default=-1)
        if most < ceiling:
            out.append((dict(labels), most))
    return out


def node_views(nodes: Sequence[Any], in_use: Mapping[str, set[int]], fresh_names: set[str]) -> list[NodeView]:
    """Placeable views of nodes (repo.PlaceableNode: healthy GPU indices in `healthy`): READY and fresh."""
    return [NodeView(n.name, n.address, n.labels, set(n.healthy), set(in_use.get(n.name, set())),
                     getattr(n, "runtime", ""))
            for n in nodes if n.state is NodeState.READY and n.name in fresh_names]


class Gate:
    """What holds a queued job back besides GPUs: dependencies not yet met (dependencies.verdict) and
    an array already running its cap. Read once per claimed batch; counts what the pass places."""

    def __init__(self) -> None:
        self.opts: dict[str, options.JobOptions] = {}
        self.statuses: dict[str, str] = {}
        self.running: dict[str, int] = {}

    def read(self, conn: Any, batch: Sequence[JobRow]) -> None:
        found = options.get_job_options(conn, [j.root_id for j in batch])
        self.opts.update(found)
        deps = {d for o in found.values() for d in o.depends_on} - set(self.statuses)
        self.statuses.update(options.latest_status(conn, deps))
        arrays = {o.array_id for o in found.values() if o.array_id and o.array_max_running} - set(self.running)
        self.running.update({a: 0 for a in arrays} | options.running_in_arrays(conn, arrays))

    def admits(self, job: JobRow) -> bool:
        o = self.opts.get(job.root_id)
        if o is None:
            return True
        if o.depends_on and not verdict(DependencyMode(o.dependency_mode),
                                        {d: self.statuses.get(d) for d in o.depends_on}).ready:
            return False
        return not (o.array_id and o.array_max_running and self.running[o.array_id] >= o.array_max_running)

    def placed(self, job: JobRow) -> None:
        o = self.opts.get(job.root_id)
        if o is not None and o.array_id and o.array_max_running:
            self.running[o.array_id] += 1


def runtime_for(spec: Mapping[str, Any]) -> str:
    """The runtime a job needs: an image runs only in a container, never as a host process."""
    return "docker" if spec.get("image") else "process"


@dataclass
class Placement:
    job: JobRow
    node: str
    address: str
    gpus: list[int]


class _Stream:
    """One owner's queued jobs (key None: everyone's, when nobody owns anything), read in keyset
    batches as the pass consumes them."""

    def __init__(self, owner: str | None, size: int = CLAIM_BATCH) -> None:
        self.owner = owner
        self.size = size
        self.key = owner or ""
        self.buf: deque[JobRow] = deque()
        self.last: tuple[int, datetime, str] | None = None
        self.done = False

    def refill(self, conn: Any, gate: Gate, max_gpus: int | None,
               skip: Sequence[tuple[Mapping[str, str], int]] = ()) -> bool:
        """Read the next batch, leaving out what cannot fit (claim_queued's max_gpus and skip);
        False when nothing is left."""
        if self.done:
            return False
        batch = repo.claim_queued(conn, self.size, after=self.last, max_gpus=max_gpus, owner=self.owner,
                                  skip=skip)
        self.done = len(batch) < self.size
        if batch:
            self.last = (batch[-1].priority, batch[-1].created_at, batch[-1].id)
            gate.read(conn, batch)
            self.buf.extend(batch)
        return bool(batch)


class Scheduler:
    def __init__(self, engine: Engine, agents: AgentPool, fresh_nodes: Callable[[], set[str]],
                 *, interval: float = 2.0, actor: str = "scheduler",
                 node_unreachable: Callable[[str], None] = lambda name: None,
                 half_life_s: float = DEFAULT_HALF_LIFE_S) -> None:
        # Fair share's half-life (fairshare.py); 0 turns fair share off (priority, then age).
        self.half_life_s = half_life_s
        self.engine = engine
        self.agents = agents
        self.fresh_nodes = fresh_nodes
        self.node_unreachable = node_unreachable
        self.interval = interval
        self.actor = actor
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="launch")
        self.loop = Loop("scheduler", self.run_once, interval, batch=WAKE_BATCH_S)
        self.placements = 0
        self._node_cache: tuple[float, list[Any]] | None = None
        # Constraint label sets of jobs that did not fit, newest last (hopeless, HOPELESS_KEEP): each
        # pass re-judges them against its own views, so a change of nodes never hides a job.
        self._hopeless: dict[Labels, None] = {}

    @property
    def last_ok(self) -> float:
        return self.loop.last_ok

    def wake(self) -> None:
        self.loop.wake()

    def start(self) -> None:
        self.loop.start()

    def close(self) -> None:
        self.loop.close()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _nodes(self, conn: Any) -> list[Any]:
        """READY nodes with their healthy GPUs, read at most every NODE_CACHE_S: heartbeats refresh
        them only every few seconds, and reading them on every submit would cost more than the
        placement. GPU *use* is always read fresh, under the placement lock (it decides double
        booking)."""
        now = time.monotonic()
        if self._node_cache is None or now - self._node_cache[0] > NODE_CACHE_S:
            self._node_cache = (now, repo.placeable_nodes(conn))
        return self._node_cache[1]

    def invalidate_nodes(self) -> None:
        self._node_cache = None

    def decide(self) -> list[Placement]:
        """Claim queued jobs and commit their assignments, in one transaction.

        Every queued job is considered, by priority, then fair share, then age, until the free GPUs
        run out or a full batch is placed: jobs that cannot be placed (too big for any free slot, a
        constraint no free node meets, their owner's quota reached) never keep the ones behind them
        waiting while GPUs sit idle. Each owner's queue is read as its own stream (keyset batches)
        and the streams are merged (fairshare.next_owner), so one owner's long queue or full quota
        never hides another's jobs. Strict priority without reservations: a big job waits while
        smaller ones behind it fill the free GPUs (the pending reason says GPUS_BUSY); that keeps
        GPUs busy, which is what this fleet is for."""
        fresh = self.fresh_nodes()
        placed: list[Placement] = []
        with self.engine.begin() as conn:
            views = node_views(self._nodes(conn), {}, fresh)
            if not views:
                return []
            # Before GPU use is read (it is read under the placement lock, after the claim), a node
            # can give at most its healthy GPUs: jobs beyond that are never read.
            room = {v.name: len(v.healthy_gpus) for v in views}
            ceiling = max(room.values())
            skip = self._skip(views, room, ceiling)
            # Without any owner (tokens never used) there is one stream, read without the joins.
            owned = quotas.any_owner(conn)
            keys: list[str | None] = list(quotas.queued_owners(conn)) if owned else [None]
            # Many owners: smaller batches each, so a pass never reads the whole queue up front.
            size = min(CLAIM_BATCH, max(STREAM_MIN_BATCH, CLAIM_BATCH // max(1, len(keys))))
            streams = [_Stream(o, size) for o in keys]
            gate = Gate()
            for st in streams:
                st.refill(conn, gate, ceiling, skip)
            streams = [st for st in streams if st.buf]
            if not streams:
                return []
            # Another replica may be assigning GPUs right now: wait for it, then read the use.
            repo.lock_placement(conn)
            in_use = repo.gpus_in_use(conn)
            for v in views:
                v.used = set(in_use.get(v.name, ()))
            free = {v.name: len(v.healthy_gpus - v.used) for v in views}
            by_runtime = {rt: [v for v in views if v.runtime in (rt, "")] for rt in ("docker", "process")}
            now = datetime.now(UTC)
            caps = quotas.quota_map(conn) if owned else {}
            held = quotas.held_gpus(conn) if caps else {}
            usage = self._usage(conn, now) if len(streams) > 1 else {}
            failed: set[tuple[int, tuple[tuple[str, str], ...]]] = set()
            by_key = {st.key: st for st in streams}
            # Streams by their head's order_key; only the stream just served changes key (its head,
            # its owner's charge), so a heap keeps the merge exact at O(log owners) a job.
            heap = [(self._key(st, usage), st.key) for st in streams]
            heapq.heapify(heap)
            while heap and len(placed) < CLAIM_BATCH:
                _, key = heapq.heappop(heap)
                st = by_key[key]
                job = st.buf.popleft()
                tried = len(failed)
                p = self._place(job, key, gate, held, caps, failed, by_runtime, free)
                if len(failed) > tried and job.constraints:
                    self._remember(job.constraints)
                if p is not None:
                    placed.append(p)
                    gate.placed(job)
                    held[key] = held.get(key, 0) + job.gpus
                    if self.half_life_s > 0:
                        usage[key] = usage.get(key, 0.0) + job.gpus * fairshare.PLACED_CHARGE_S
                    if len(placed) >= CLAIM_BATCH:
                        break  # a full pass: reading (and locking) a batch it will not place costs
                if not st.buf:
                    # After this job took its GPUs: what is left free bounds what the next batch
                    # may need, exactly (free only shrinks within a pass).
                    most = max(free.values())  # 0 still admits CPU-only jobs
                    st.refill(conn, gate, most, self._skip(views, free, most))
                if st.buf:
                    heapq.heappush(heap, (self._key(st, usage), key))
            repo.assign_jobs(conn, [(p.job.id, p.node, p.gpus) for p in placed], actor=self.actor, now=now)
        failpoints.hit("coordinator.assign.after_commit")
        return placed

    def _skip(self, views: Sequence[NodeView], room: Mapping[str, int],
              ceiling: int) -> list[tuple[dict[str, str], int]]:
        return hopeless(self._hopeless, views, room, ceiling) if self._hopeless else []

    def _remember(self, constraints: Mapping[str, str]) -> None:
        """A job with these constraints found no node: later reads leave out its like (hopeless)."""
        labels = tuple(sorted(constraints.items()))
        self._hopeless.pop(labels, None)
        self._hopeless[labels] = None
        if len(self._hopeless) > HOPELESS_KEEP:
            del self._hopeless[next(iter(self._hopeless))]

    @staticmethod
    def _key(st: _Stream, usage: Mapping[str, float]) -> tuple[int, float, datetime, str]:
        j = st.buf[0]
        return fairshare.order_key(j.priority, usage.get(st.key, 0.0), j.created_at, j.id)

    @staticmethod
    def _place(job: JobRow, owner: str, gate: Gate, held: Mapping[str, int], caps: Mapping[str, int],
               failed: set[tuple[int, tuple[tuple[str, str], ...]]], by_runtime: Mapping[str, list[NodeView]],
               free: dict[str, int]) -> Placement | None:
        """Where one job goes in this pass, or None (it waits); takes its GPUs from the views."""
        if not gate.admits(job):
            return None  # waits for its dependencies, or its array runs its cap
        if fairshare.over_quota(owner, job.gpus, held, caps) is not None:
            return None  # waits for its owner's running jobs (QUOTA); other owners go on
        runtime = runtime_for(job.spec)
        shape = (job.gpus, (*sorted(job.constraints.items()), ("", runtime)))
        if shape in failed or any(f[1] == shape[1] and f[0] <= job.gpus for f in failed):
            return None  # a job of this shape, or a smaller one, did not fit in this pass
        pick = choose(job.gpus, job.constraints, by_runtime[runtime], free)
        if pick is None:
            failed.add(shape)
            return None
        node, gpus = pick
        node.used.update(gpus)
        free[node.name] -= job.gpus
        return Placement(job, node.name, node.address, gpus)

    def _usage(self, conn: Any, now: datetime) -> dict[str, float]:
        """Each owner's recent GPU time (fairshare.usage_by_owner); nothing when fair share is off."""
        if self.half_life_s <= 0:
            return {}
        since = now - timedelta(seconds=self.half_life_s * fairshare.HORIZON_HALF_LIVES)
        rows = quotas.usage_rows(conn, since)
        return fairshare.usage_by_owner((fairshare.Use(r.owner, r.gpus, r.start, r.end) for r in rows), now,
                                        self.half_life_s)

    def run_once(self) -> bool:
        """One pass; True when a full batch was placed (call again)."""
        started = time.perf_counter()
        placed = self.decide()
        if not placed:
            return False
        now = datetime.now(UTC)
        for p in placed:
            QUEUE_WAIT_SECONDS.observe(max(0.0, (now - p.job.created_at).total_seconds()))
        self.launch_all(placed)
        self.placements += len(placed)
        PLACEMENT_SECONDS.observe(time.perf_counter() - started)
        return len(placed) >= CLAIM_BATCH

    def launch_all(self, placed: list[Placement]) -> None:
        """Send every Launch at once (gRPC futures) and store the answers that come within
        LAUNCH_WAIT_S in one statement; the rest finish on callbacks, so a node that does not answer
        delays nobody else. The assignments are committed already: nothing here can double-book."""
        futures = [(p, self.agents.launch_future(p.address, p.job.root_id, p.job.attempt,
                                                 convert.spec_to_pb(p.job.spec), p.gpus, p.job.owner))
                   for p in placed]
        deadline = time.monotonic() + LAUNCH_WAIT_S
        ok: dict[str, list[str]] = {}
        for p, fut in futures:
            try:
                st = fut.result(timeout=max(0.0, deadline - time.monotonic()))
            except grpc.FutureTimeoutError:
                fut.add_done_callback(lambda f, p=p: self._submit(self._answered, p, f))
                continue
            except grpc.RpcError as exc:
                self._submit(self._not_launched, p, exc)
                continue
            ok.setdefault(convert.agent_state_name(st.state), []).append(p.job.id)
        failpoints.hit("coordinator.launch.after_ack")
        if ok:
            with self.engine.begin() as conn:
                at = datetime.now(UTC)
                for state, ids in ok.items():
                    repo.set_observed_many(conn, ids, state, at)
        for state, ids in ok.items():
            event(log, "jobs.launched", count=len(ids), state=state, first=ids[0])

    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            self._pool.submit(fn, *args)
        except RuntimeError:  # shutting down: the reconciler re-sends Launch after the restart
            pass

    def _answered(self, p: Placement, fut: grpc.Future) -> None:
        """A Launch answer that came after the pass moved on."""
        try:
            st = fut.result()
        except grpc.RpcError as exc:
            self._not_launched(p, exc)
            return
        self._launched(p, st)

    def _not_launched(self, p: Placement, exc: grpc.RpcError) -> None:
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            # It waited out a 30 s deadline: retrying here only repeats that. The reconciler re-sends
            # the idempotent Launch while the node lives; node loss ends the attempt otherwise.
            self.node_unreachable(p.node)
            self._launch_failed(p, exc)
            return
        self.launch(p)

    def _launched(self, p: Placement, st: Any) -> None:
        failpoints.hit("coordinator.launch.after_ack")
        with self.engine.begin() as conn:
            repo.set_observed_state(conn, p.job.id, convert.agent_state_name(st.state), datetime.now(UTC))
        event(log, "job.launched", job_id=p.job.id, attempt=p.job.attempt, node=p.node, gpus=p.gpus)

    def launch(self, p: Placement) -> None:
        spec = convert.spec_to_pb(p.job.spec)
        last: grpc.RpcError | None = None
        for attempt_no in range(LAUNCH_RETRIES):
            try:
                st = self.agents.launch(p.address, p.job.root_id, p.job.attempt, spec, p.gpus, p.job.owner)
            except grpc.RpcError as exc:
                last = exc
                if exc.code() in UNREACHABLE:
                    time.sleep(0.2 * (2**attempt_no))  # back off; Launch is idempotent
                    continue
                break
            self._launched(p, st)
            return
        assert last is not None
        if last.code() in UNREACHABLE:
            self.node_unreachable(p.node)
        self._launch_failed(p, last)

    def _launch_failed(self, p: Placement, exc: grpc.RpcError) -> None:
        code = exc.code()
        if code in UNREACHABLE:
            event(log, "job.launch_failed", logging.WARNING, job_id=p.job.id, attempt=p.job.attempt, node=p.node,
                  code=code.name, detail=exc.details())
            # The agent may have recorded it and be restarting: the attempt stays RUNNING (never
            # confirmed), the reconciler re-sends the idempotent Launch, and only the node's
            # heartbeat timeout may end it.
            return
        end_refused_launch(self.engine, p.job, p.node, code, exc.details() or "", actor=self.actor)
        self.wake()
