"""Quotas over the Coordinator API: SetQuota (admin only: CoordinatorAuth lets no other role through)
and ListQuotas (every role). A mixin of CoordinatorService: decode, one call, encode."""
from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any

from gpufleet.coordinator.caller import caller_name
from gpufleet.coordinator.convert import ts
from gpufleet.coordinator.db import quotas
from sqlalchemy.engine import Engine

from gpufleet.errors import InvalidArgument, NotFound, rpc
from gpufleet.log import event
from gpufleet.v1 import coordinator_pb2 as cpb

log = logging.getLogger("gpufleet.coordinator.quotas")
MAX_QUOTA_GPUS = 4096
_OWNER = re.compile(r"[A-Za-z0-9._@-]{1,128}")


def check_quota(owner: str, gpus: int) -> None:
    if not _OWNER.fullmatch(owner):
        raise InvalidArgument("owner", "must be a token name: 1-128 letters, digits, '.', '_', '@', '-', "
                                       f"got {owner!r}")
    if not 0 <= gpus <= MAX_QUOTA_GPUS:
        raise InvalidArgument("gpus", f"must be between 0 and {MAX_QUOTA_GPUS}, got {gpus}")


def set_quota(engine: Engine, owner: str, gpus: int, *, clear: bool, actor: str) -> cpb.Quota:
    check_quota(owner, 0 if clear else gpus)
    with engine.begin() as conn:
        if clear:
            if not quotas.delete_quota(conn, owner):
                raise NotFound(f"{owner} has no quota")
            q = None
        else:
            q = quotas.set_quota(conn, owner, gpus, actor=actor, now=datetime.now(UTC))
        used = quotas.held_gpus(conn).get(owner, 0)
    event(log, "quota.cleared" if clear else "quota.set", owner=owner, gpus=None if clear else gpus, actor=actor)
    if q is None:
        return cpb.Quota(owner=owner, used=used)
    return cpb.Quota(owner=q.owner, gpus=q.gpus, used=used, updated_at=ts(q.updated_at), updated_by=q.updated_by)


class QuotaAdmin:
    """The quota RPCs of gpufleet.v1.Coordinator."""

    engine: Engine

    @rpc
    def SetQuota(self, request: cpb.SetQuotaRequest, context: Any) -> cpb.Quota:
        return set_quota(self.engine, request.owner, request.gpus, clear=request.clear,
                         actor=caller_name() or "local")

    @rpc
    def ListQuotas(self, request: cpb.ListQuotasRequest, context: Any) -> cpb.ListQuotasResponse:
        with self.engine.connect() as conn:
            items = quotas.list_quotas(conn)
            used = quotas.held_gpus(conn) if items else {}
        return cpb.ListQuotasResponse(items=[
            cpb.Quota(owner=q.owner, gpus=q.gpus, used=used.get(q.owner, 0), updated_at=ts(q.updated_at),
                      updated_by=q.updated_by) for q in items])
