"""Helpers shared by the repository modules: clock, paging, inserts that report their rowcount, id rules.

Plain functions over a Connection; the caller owns the transaction (see repo.py for the rules).
"""
from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite

from gpufleet.errors import InvalidArgument

MAX_PAGE_SIZE = 500
# SQLAlchemy reads an INSERT's rowcount only when asked to.
_ROWCOUNT = {"preserve_rowcount": True}
_MODEL_NO = re.compile(r"[A-Za-z0-9_-]{1,32}")
# Dots are reserved: attempt n >= 2 of job R is "R.n".
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,48}")
_NODE_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")


def _now(now: datetime | None) -> datetime:
    return now if now is not None else datetime.now(UTC)


def _insert(conn: Connection, table: sa.Table) -> Any:
    """The dialect's INSERT, which has on_conflict_do_nothing/do_update."""
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


def _page_bounds(page: int, size: int) -> None:
    if page < 0:
        raise InvalidArgument("page", f"must be >= 0, got {page}")
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise InvalidArgument("size", f"must be 1..{MAX_PAGE_SIZE}, got {size}")


def _paged(conn: Connection, query: sa.Select[Any], count: sa.Select[Any], page: int, size: int) -> tuple[
    list[Any], int, int
]:
    _page_bounds(page, size)
    total = int(conn.execute(count).scalar_one())
    rows = conn.execute(query.limit(size).offset(page * size)).mappings().all()
    return list(rows), total, (total + size - 1) // size


def _non_negative(field: str, value: int) -> None:
    if value < 0:
        raise InvalidArgument(field, f"must be >= 0, got {value}")
