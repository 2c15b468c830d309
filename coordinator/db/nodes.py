"""Nodes: registration, heartbeats, state and drain.

Plain functions over a Connection; the caller owns the transaction (see repo.py for the rules).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from gpufleet.coordinator import states
from gpufleet.coordinator.db.common import _NODE_NAME, _ROWCOUNT, _insert, _now
from gpufleet.coordinator.db.events import record_event
from gpufleet.coordinator.db.rows import NodeRow
from gpufleet.coordinator.db.schema import (
    jobs,
    nodes,
)
from gpufleet.coordinator.states import NodeState
from sqlalchemy import Connection

from gpufleet.errors import InvalidArgument, NotFound


def get_node(conn: Connection, name: str) -> NodeRow:
    row = conn.execute(sa.select(nodes).where(nodes.c.name == name)).mappings().first()
    if row is None:
        raise NotFound(f"node {name} not found")
    return NodeRow.from_row(row)


def list_nodes(conn: Connection) -> list[NodeRow]:
    return [NodeRow.from_row(r) for r in conn.execute(sa.select(nodes).order_by(nodes.c.name)).mappings()]


def upsert_node(
    conn: Connection,
    name: str,
    *,
    address: str,
    labels: Mapping[str, str],
    agent_version: str,
    runtime: str,
    gpus: Sequence[Mapping[str, Any]],
    actor: str = "agent",
    now: datetime | None = None,
) -> NodeRow:
    """Register (idempotent, by name): insert a READY node, or refresh a known one; a LOST node
    comes back READY (DRAINED when an operator drain is pending: its jobs were stopped on loss)."""
    if not _NODE_NAME.fullmatch(name):
        raise InvalidArgument("node_name", f"must match [A-Za-z0-9._-]{{1,128}}, got {name!r}")
    if not address or len(address) > 256:
        raise InvalidArgument("address", "must be host:port, at most 256 characters")
    at = _now(now)
    facts = {
        "address": address,
        "labels": dict(labels),
        "agent_version": agent_version,
        "runtime": runtime,
        "gpus": [dict(g) for g in gpus],
        "last_heartbeat": at,
    }
    inserted = conn.execute(
        _insert(conn, nodes)
        .values(
            name=name,
            state=NodeState.READY.value,
            drain_requested=False,
            registered_at=at,
            row_version=1,
            **facts,
        )
        .on_conflict_do_nothing(index_elements=["name"]),
        execution_options=_ROWCOUNT,
    )
    if inserted.rowcount == 1:
        record_event(conn, "node", name, None, NodeState.READY, reason="registered", actor=actor, now=at)
        return get_node(conn, name)
    cur = NodeRow.from_row(
        conn.execute(sa.select(nodes).where(nodes.c.name == name).with_for_update()).mappings().one()
    )
    values: dict[str, Any] = dict(facts, row_version=nodes.c.row_version + 1)
    if cur.state is NodeState.LOST:
        back = states.node_state_on_return(cur.drain_requested)
        states.check_node(cur.state, back, name)
        values["state"] = back.value
        record_event(conn, "node", name, cur.state, back, reason="registered again", actor=actor, now=at)
    conn.execute(sa.update(nodes).where(nodes.c.name == name).values(values))
    return get_node(conn, name)


_HEARTBEAT = (
    sa.update(nodes)
    .where(nodes.c.name == sa.bindparam("b_name"))
    .values(gpus=sa.bindparam("b_gpus", type_=nodes.c.gpus.type),
            last_heartbeat=sa.bindparam("b_at", type_=nodes.c.last_heartbeat.type))
    .returning(nodes.c.state)
)


def heartbeat_node(
    conn: Connection, name: str, gpus: Sequence[Mapping[str, Any]], now: datetime | None = None
) -> NodeState | None:
    """Store a heartbeat's GPU snapshot and time; the node's state, or None when the node is unknown
    (re-register). Does not revive a LOST node: that is Register's job (it carries the fencing).
    One prepared statement that returns only the state: this runs 50 times a second in a big fleet."""
    state = conn.execute(_HEARTBEAT, {"b_name": name, "b_gpus": list(gpus), "b_at": _now(now)}).scalar()
    return None if state is None else NodeState(state)


def mark_unreachable(conn: Connection, name: str, *, reason: str, actor: str,
                     now: datetime | None = None) -> bool:
    """The node has been silent past --node-timeout: stamp it and its RUNNING attempts ("node
    unreachable since T"). Nothing is stopped. False when it was already marked."""
    at = _now(now)
    result = conn.execute(
        sa.update(nodes).where(nodes.c.name == name, nodes.c.unreachable_since.is_(None))
        .values(unreachable_since=at, row_version=nodes.c.row_version + 1)
    )
    if result.rowcount != 1:
        return False
    conn.execute(
        sa.update(jobs).where(jobs.c.node == name, jobs.c.status == states.JobStatus.RUNNING.value)
        .values(node_unreachable_since=at)
    )
    cur = get_node(conn, name)
    record_event(conn, "node", name, cur.state, NodeState.UNREACHABLE, reason=reason, actor=actor, now=at)
    return True


_CLEAR_UNREACHABLE = (
    sa.update(nodes)
    .where(nodes.c.name == sa.bindparam("b_name"), nodes.c.unreachable_since.is_not(None))
    .values(unreachable_since=None, row_version=nodes.c.row_version + 1)
    .returning(nodes.c.state)
)


def clear_unreachable(conn: Connection, name: str, *, actor: str, now: datetime | None = None) -> bool:
    """The node was heard again: clear the stamps (its own and its attempts'). False when it was
    not marked (the common case: one indexed no-op UPDATE per heartbeat)."""
    state = conn.execute(_CLEAR_UNREACHABLE, {"b_name": name}).scalar()
    if state is None:
        return False
    conn.execute(
        sa.update(jobs).where(jobs.c.node == name, jobs.c.node_unreachable_since.is_not(None))
        .values(node_unreachable_since=None)
    )
    record_event(conn, "node", name, NodeState.UNREACHABLE, NodeState(state), reason="heard again", actor=actor,
                 now=now)
    return True


def set_node_state(
    conn: Connection, name: str, to: NodeState, *, reason: str, actor: str, now: datetime | None = None
) -> bool:
    """Move a node (checked). DRAINING/DRAINED record an operator drain, READY clears it, LOST
    keeps it so that the node comes back drained."""
    to = NodeState(to)
    cur = get_node(conn, name)
    if not states.check_node(cur.state, to, name):
        return False
    values: dict[str, Any] = {"state": to.value, "row_version": nodes.c.row_version + 1}
    if to in (NodeState.DRAINING, NodeState.DRAINED):
        values["drain_requested"] = True
    elif to is NodeState.READY:
        values["drain_requested"] = False
    result = conn.execute(
        sa.update(nodes).where(nodes.c.name == name, nodes.c.state == cur.state.value).values(values)
    )
    if result.rowcount != 1:
        return False
    record_event(conn, "node", name, cur.state, to, reason=reason, actor=actor, now=now)
    return True


def set_drain_requested(conn: Connection, name: str, drain: bool) -> bool:
    """Record an operator's drain wish without a state move (for a LOST node, which keeps LOST)."""
    result = conn.execute(
        sa.update(nodes)
        .where(nodes.c.name == name, nodes.c.drain_requested.is_not(drain))
        .values(drain_requested=drain, row_version=nodes.c.row_version + 1)
    )
    return result.rowcount == 1
