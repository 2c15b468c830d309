"""Models: create, read, list, and the guarded update of their three states.

Plain functions over a Connection; the caller owns the transaction (see repo.py for the rules).
"""
from __future__ import annotations

import json
import uuid as uuidlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from gpufleet.coordinator import states
from gpufleet.coordinator.db.common import _MODEL_NO, _non_negative, _now, _paged
from gpufleet.coordinator.db.events import record_event
from gpufleet.coordinator.db.rows import ModelRow, Page
from gpufleet.coordinator.db.schema import (
    models,
)
from gpufleet.coordinator.states import ModelStates, ModelStatus, Step
from sqlalchemy import Connection

from gpufleet.errors import InvalidArgument, NotFound


def create_model(
    conn: Connection,
    *,
    model_no: str,
    version: str = "",
    train_type: str = "",
    memo: str = "",
    params_json: str = "{}",
    spec: Mapping[str, Any] | None = None,
    gpus: int = 1,
    priority: int = 0,
    constraints: Mapping[str, str] | None = None,
    max_retries: int = 0,
    lost_after_seconds: int | None = None,
    uuid: str | None = None,
    actor: str = "api",
    now: datetime | None = None,
) -> ModelRow:
    """Insert a READY model; validates model_no, params_json (a JSON object) and the counts."""
    if not _MODEL_NO.fullmatch(model_no):
        raise InvalidArgument("model_no", f"must match [A-Za-z0-9_-]{{1,32}}, got {model_no!r}")
    for field, value in (("version", version), ("train_type", train_type)):
        if len(value) > 64:
            raise InvalidArgument(field, "must be at most 64 characters")
    try:
        params = json.loads(params_json or "{}")
    except json.JSONDecodeError as exc:
        raise InvalidArgument("params_json", f"is not valid JSON ({exc.msg} at {exc.pos})") from None
    if not isinstance(params, dict):
        raise InvalidArgument("params_json", "must be a JSON object")
    _non_negative("gpus", gpus)
    _non_negative("max_retries", max_retries)
    if lost_after_seconds is not None:
        _non_negative("lost_after_seconds", lost_after_seconds)
    at = _now(now)
    model_uuid = uuid or str(uuidlib.uuid4())
    row = {
        "uuid": model_uuid,
        "model_no": model_no,
        "version": version,
        "train_type": train_type,
        "memo": memo,
        "params_json": params_json or "{}",
        "spec": dict(spec or {}),
        "gpus": gpus,
        "priority": priority,
        "constraints": dict(constraints or {}),
        "max_retries": max_retries,
        "status": ModelStatus.READY.value,
        "step1_state": ModelStatus.READY.value,
        "step2_state": ModelStatus.READY.value,
        "step1_started_at": None,
        "step1_finished_at": None,
        "step2_started_at": None,
        "step2_finished_at": None,
        "step1_metric_saved": False,
        "step2_metric_saved": False,
        "current_attempt_id": None,
        "best_epoch": None,
        "test_epoch": None,
        "last_error": "",
        "created_at": at,
        "updated_at": at,
        "row_version": 1,
        "lost_after_seconds": lost_after_seconds,
    }
    conn.execute(sa.insert(models).values(row))
    record_event(conn, "model", model_uuid, None, ModelStatus.READY, reason="created", actor=actor, now=at)
    return ModelRow.from_row(row)


def get_model(conn: Connection, uuid: str, *, for_update: bool = False) -> ModelRow:
    """The model, or NotFound. `for_update` locks the row on PostgreSQL until the transaction ends,
    so a read-check-write (an action) waits for a concurrent one instead of losing to it."""
    query = sa.select(models).where(models.c.uuid == uuid)
    if for_update:
        query = query.with_for_update()
    row = conn.execute(query).mappings().first()
    if row is None:
        raise NotFound(f"model {uuid} not found")
    return ModelRow.from_row(row)


def list_models(
    conn: Connection,
    *,
    status: ModelStatus | None = None,
    model_no: str | None = None,
    page: int = 0,
    size: int = 20,
) -> Page[ModelRow]:
    """Models newest first, filtered by status and/or model_no."""
    where: list[sa.ColumnElement[bool]] = []
    if status is not None:
        where.append(models.c.status == ModelStatus(status).value)
    if model_no:
        where.append(models.c.model_no == model_no)
    query = sa.select(models).where(*where).order_by(models.c.created_at.desc(), models.c.uuid.desc())
    count = sa.select(sa.func.count()).select_from(models).where(*where)
    rows, total, pages = _paged(conn, query, count, page, size)
    return Page([ModelRow.from_row(r) for r in rows], total, pages, page, size)


# Columns update_model_states may set besides the three states.
MODEL_FIELDS = frozenset(
    {
        "step1_started_at",
        "step1_finished_at",
        "step2_started_at",
        "step2_finished_at",
        "step1_metric_saved",
        "step2_metric_saved",
        "current_attempt_id",
        "best_epoch",
        "test_epoch",
        "last_error",
        "params_json",
    }
)


def _step_stamps(step: Step, new: ModelStatus, at: datetime) -> dict[str, Any]:
    """Times and flags that follow from a step's move (explicit fields override them):
    entering IN_PROGRESS starts the clock afresh and clears the metric flag, entering COMPLETED,
    STOPPED or ERROR stops it (READY -> COMPLETED too: the zip shortcut has an end time but no
    start), and READY clears everything."""
    n = step.value
    if new is ModelStatus.IN_PROGRESS:
        return {f"step{n}_started_at": at, f"step{n}_finished_at": None, f"step{n}_metric_saved": False}
    if new is ModelStatus.READY:
        return {f"step{n}_started_at": None, f"step{n}_finished_at": None, f"step{n}_metric_saved": False}
    return {f"step{n}_finished_at": at}


def update_model_states(
    conn: Connection,
    uuid: str,
    *,
    new: ModelStates | None = None,
    expect_version: int | None = None,
    reason: str,
    actor: str,
    now: datetime | None = None,
    **fields: Any,
) -> bool:
    """Move a model's status/step1/step2 to `new` (each move checked) and set `fields`.

    Guarded on the row_version read here (or `expect_version`, the one the caller based its
    decision on). One event per state column that changed. Returns False when nothing changed
    (all no-ops and no fields, or the guard lost).
    """
    unknown = set(fields) - MODEL_FIELDS
    if unknown:
        raise TypeError(f"update_model_states: unknown fields {sorted(unknown)}")
    cur = get_model(conn, uuid)
    if expect_version is not None and cur.row_version != expect_version:
        return False
    at = _now(now)
    values: dict[str, Any] = {}
    changes: list[tuple[str, ModelStatus, ModelStatus]] = []
    if new is not None:
        if states.check_model(cur.status, new.status, uuid):
            values["status"] = new.status.value
            changes.append(("status", cur.status, new.status))
        for step in Step:
            old, to = cur.states.step(step), new.step(step)
            if states.check_step(old, to, uuid, step):
                values[step.column] = to.value
                values.update(_step_stamps(step, to, at))
                changes.append((step.column, old, to))
    values.update(fields)
    if not values:
        return False
    values.update(updated_at=at, row_version=models.c.row_version + 1)
    result = conn.execute(
        sa.update(models)
        .where(models.c.uuid == uuid, models.c.row_version == cur.row_version)
        .values(values)
    )
    if result.rowcount != 1:
        return False
    for column, old, to in changes:
        detail = {"field": column}
        record_event(conn, "model", uuid, old, to, reason=reason, actor=actor, detail=detail, now=at)
    return True
