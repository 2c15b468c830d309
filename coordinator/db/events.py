"""The `events` table: every status change and node event, written in the caller's transaction.

Plain functions over a Connection; the caller owns the transaction (see repo.py for the rules).
"""
from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from gpufleet.coordinator.db.common import _now
from gpufleet.coordinator.db.schema import (
    events,
)
from sqlalchemy import Connection


def record_event(
    conn: Connection,
    entity: str,
    entity_id: str,
    from_state: str | None,
    to_state: str | None,
    *,
    reason: str,
    actor: str,
    detail: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> None:
    """Append one audit row: who (`actor`) moved what from where to where, and why."""
    conn.execute(
        sa.insert(events).values(
            at=_now(now),
            entity=entity,
            entity_id=entity_id,
            from_state=None if from_state is None else str(from_state),
            to_state=None if to_state is None else str(to_state),
            reason=reason,
            actor=actor,
            detail=dict(detail) if detail is not None else None,
        )
    )
