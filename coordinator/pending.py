"""Why a queued job waits, and whether it could ever run: pure functions over a view of the nodes.

Slurm shows a reason beside every pending job (`Resources`, `Priority`, `ReqNodeNotAvail`...); a job
that no node could ever run is refused at submit (`Requested node configuration is not available`)
instead of waiting forever. The reason is computed when a job is read, from the same node view the
scheduler uses, so it is never stale and costs no write per pass.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gpufleet.coordinator.dependencies import DependencyMode, verdict


class PendingCode(StrEnum):
    NO_NODES = "NO_NODES"
    NO_NODE_FITS = "NO_NODE_FITS"
    CONSTRAINT = "CONSTRAINT"
    NODE_UNREACHABLE = "NODE_UNREACHABLE"
    NODE_DRAINING = "NODE_DRAINING"
    GPUS_BUSY = "GPUS_BUSY"
    PRIORITY = "PRIORITY"
    DEPENDENCY = "DEPENDENCY"
    ARRAY_LIMIT = "ARRAY_LIMIT"
    QUOTA = "QUOTA"


@dataclass(frozen=True, slots=True)
class NodeCapacity:
    """What a reason needs of one registered node."""

    name: str
    labels: Mapping[str, str]
    gpus: int  # healthy GPUs the node has
    free: int  # of those, not held by a running job
    schedulable: bool  # READY and heard from recently
    state: str = "READY"
    # False until the node has reported its GPUs (no snapshot and no heartbeat yet): its capacity
    # is unknown, so nothing is refused on its account.
    known: bool = True


@dataclass(frozen=True, slots=True)
class Pending:
    code: PendingCode
    message: str

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"


def _matches(constraints: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in constraints.items())


def _constraint_text(constraints: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(constraints.items()))


def never_fits(gpus: int, constraints: Mapping[str, str], nodes: Sequence[NodeCapacity]) -> Pending | None:
    """Why no registered node could ever run this job, or None when one could (or none is known yet:
    a fleet still starting is not a reason to refuse)."""
    if not nodes or not all(n.known for n in nodes):
        return None
    matching = [n for n in nodes if _matches(constraints, n.labels)]
    if not matching:
        return Pending(PendingCode.CONSTRAINT, f"constraint {_constraint_text(constraints)} matches no node")
    largest = max(matching, key=lambda n: (n.gpus, n.name))
    if largest.gpus < gpus:
        where = f" matching {_constraint_text(constraints)}" if constraints else ""
        return Pending(PendingCode.NO_NODE_FITS,
                       f"needs {gpus} GPUs, largest node{where} has {largest.gpus} ({largest.name})")
    return None


def pending_reason(gpus: int, constraints: Mapping[str, str], nodes: Sequence[NodeCapacity]) -> Pending:
    """Why a QUEUED job is not running now, the most fundamental reason first."""
    if not nodes:
        return Pending(PendingCode.NO_NODES, "no node has registered")
    never = never_fits(gpus, constraints, nodes)
    if never is not None:
        return never
    big_enough = [n for n in nodes if _matches(constraints, n.labels) and n.gpus >= gpus]
    live = [n for n in big_enough if n.schedulable]
    if not live:
        draining = [n.name for n in big_enough if n.state == "DRAINING"]
        if draining and len(draining) == len(big_enough):
            return Pending(PendingCode.NODE_DRAINING, f"every node that fits is draining ({', '.join(draining)})")
        names = ", ".join(n.name for n in big_enough)
        return Pending(PendingCode.NODE_UNREACHABLE, f"every node that fits is unreachable or not ready ({names})")
    if any(n.free >= gpus for n in live):
        # GPUs are free where it fits: the scheduler takes it on its next pass, after jobs ahead of it.
        return Pending(PendingCode.PRIORITY, "waiting for the next scheduling pass behind earlier jobs")
    most = max(n.free for n in live)
    return Pending(PendingCode.GPUS_BUSY, f"needs {gpus} free GPUs, at most {most} free on a node that fits")


def capacities(nodes: Sequence[Any], in_use: Mapping[str, set[int]]) -> list[NodeCapacity]:
    """NodeCapacity of each registered node (repo NodeRow), from its last GPU snapshot and the GPUs its
    running jobs hold. Capacity counts every GPU the node has (an unhealthy one may recover); free
    counts healthy GPUs no job holds."""
    out = []
    for n in nodes:
        healthy = {int(g["index"]) for g in n.gpus or () if g.get("healthy", True)}
        state = n.state.value if hasattr(n.state, "value") else str(n.state)
        out.append(NodeCapacity(n.name, n.labels, len(n.gpus or ()), len(healthy - in_use.get(n.name, set())),
                                schedulable=state == "READY", state=state,
                                known=bool(n.gpus) or n.last_heartbeat is not None))
    return out


def held_by_options(o: Any, statuses: Mapping[str, str | None], running_in_array: int) -> Pending | None:
    """Why a job's options hold it back (dependencies, its array's cap), or None."""
    if o.depends_on:
        v = verdict(DependencyMode(o.dependency_mode), {d: statuses.get(d) for d in o.depends_on})
        if not v.ready:
            return Pending(PendingCode.DEPENDENCY, v.never or v.waiting)
    if o.array_id and o.array_max_running and running_in_array >= o.array_max_running:
        return Pending(PendingCode.ARRAY_LIMIT,
                       f"array {o.array_id} runs its cap of {o.array_max_running} jobs at once")
    return None
