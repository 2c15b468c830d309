"""Reading the coordinator's audit trail (the `events` table) in tests: production only appends to it
(repo.record_event), so the reader lives here."""
from __future__ import annotations

import sqlalchemy as sa
from gpufleet.coordinator.db.rows import EventRow
from gpufleet.coordinator.db.schema import events
from sqlalchemy import Connection


def list_events(conn: Connection, entity: str | None = None, entity_id: str | None = None) -> list[EventRow]:
    """Events oldest first, optionally for one entity."""
    query = sa.select(events).order_by(events.c.id)
    if entity is not None:
        query = query.where(events.c.entity == entity)
    if entity_id is not None:
        query = query.where(events.c.entity_id == entity_id)
    return [EventRow.from_row(r) for r in conn.execute(query).mappings()]
