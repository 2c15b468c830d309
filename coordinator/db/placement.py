"""What placement reads and locks: the placement lock, placeable nodes and their healthy GPUs.

Plain functions over a Connection; the caller owns the transaction (see repo.py for the rules).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from gpufleet.coordinator.db.schema import (
    nodes,
)
from gpufleet.coordinator.states import NodeState
from sqlalchemy import Connection

# Arbitrary constant: the key of the advisory lock that serialises GPU assignment across replicas.
PLACEMENT_LOCK_KEY = 0x6770_7566_7363  # "gpufsc"


def lock_placement(conn: Connection) -> None:
    """Serialise GPU assignment across coordinator replicas until this transaction ends.

    SKIP LOCKED keeps two replicas from claiming the same *job*, but each would read GPU use
    without the other's uncommitted assignments and could pick the same GPU. Taken after the claim
    and before `gpus_in_use`: READ COMMITTED gives every statement a fresh snapshot, so the use read
    under the lock includes every assignment a previous holder committed. SQLite needs nothing: the
    transaction already holds the one writer lock (BEGIN IMMEDIATE)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": PLACEMENT_LOCK_KEY})


@dataclass(frozen=True, slots=True)
class PlaceableNode:
    """What the scheduler needs of a READY node: its healthy GPU indices, not the whole snapshot."""

    name: str
    address: str
    labels: dict[str, str]
    state: NodeState
    healthy: frozenset[int]
    # "docker" or "process": an image job runs only on docker, an argv-only job only on process.
    runtime: str = ""


def healthy_indices(gpus: Sequence[Mapping[str, Any]] | None) -> frozenset[int]:
    """The GPUs of a snapshot that may be assigned (no health field counts as healthy)."""
    return frozenset(int(g["index"]) for g in gpus or () if g.get("healthy", True))


_READY_NODES = sa.select(nodes.c.name, nodes.c.address, nodes.c.labels, nodes.c.gpus, nodes.c.runtime).where(
    nodes.c.state == NodeState.READY.value).order_by(nodes.c.name)
# The same on PostgreSQL, with the snapshot reduced to its healthy indices in the server (the
# Python test above, `healthy` missing counts as healthy): decoding 100 snapshots of dozens of GPUs
# a pass costs more than the placement itself.
_PG_READY_NODES = sa.text(
    "SELECT name, address, labels, runtime, (SELECT coalesce(jsonb_agg(g->'index'), '[]'::jsonb)"
    " FROM jsonb_array_elements(nodes.gpus) AS g"
    " WHERE coalesce((g->'healthy') NOT IN ('false'::jsonb, 'null'::jsonb, '0'::jsonb), true)) AS healthy"
    " FROM nodes WHERE state = :ready ORDER BY name"
).bindparams(ready=NodeState.READY.value)


def placeable_nodes(conn: Connection) -> list[PlaceableNode]:
    """READY nodes with their healthy GPU indices (freshness is the caller's: fleet.fresh_nodes)."""
    if conn.dialect.name == "postgresql":
        return [PlaceableNode(r.name, r.address, r.labels, NodeState.READY, frozenset(int(i) for i in r.healthy),
                              r.runtime) for r in conn.execute(_PG_READY_NODES)]
    return [PlaceableNode(r.name, r.address, r.labels, NodeState.READY, healthy_indices(r.gpus), r.runtime)
            for r in conn.execute(_READY_NODES)]


def node_runtimes(conn: Connection) -> set[str]:
    """The runtimes of every registered node (any state): what a submitted job can ever run on."""
    return {str(r) for r in conn.execute(sa.select(nodes.c.runtime).distinct()).scalars()}
