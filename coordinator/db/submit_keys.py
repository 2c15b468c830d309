"""SubmitJob idempotency keys.

Plain functions over a Connection; the caller owns the transaction (see repo.py for the rules).
"""
from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from gpufleet.coordinator.db.common import _insert, _now
from gpufleet.coordinator.db.schema import (
    submit_keys,
)
from sqlalchemy import Connection


def claim_submit_key(conn: Connection, request_id: str, job_id: str, fingerprint: str,
                     now: datetime | None = None) -> bool:
    """Bind `request_id` to `job_id` (created in this transaction). False when the key is taken:
    the caller must roll back. On PostgreSQL a concurrent claim of the same key waits for the first
    to commit (the primary key), then finds it taken."""
    result = conn.execute(
        _insert(conn, submit_keys).values(request_id=request_id, job_id=job_id, fingerprint=fingerprint,
                                          created_at=_now(now))
        .on_conflict_do_nothing(index_elements=["request_id"]).returning(submit_keys.c.request_id)
    )
    return result.first() is not None


def find_submit_key(conn: Connection, request_id: str) -> tuple[str, str] | None:
    """(job_id, fingerprint) of the job a request_id created, or None."""
    row = conn.execute(sa.select(submit_keys.c.job_id, submit_keys.c.fingerprint)
                       .where(submit_keys.c.request_id == request_id)).first()
    return None if row is None else (row[0], row[1])
