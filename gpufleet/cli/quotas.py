"""`gpufleet quotas ...`: per-user GPU quotas (setting one needs an admin token)."""
from __future__ import annotations

from typing import Annotated

import typer

from gpufleet.cli.base import _table, app, call, coord, emit
from gpufleet.v1 import coordinator_pb2 as cpb

quotas_app = typer.Typer(no_args_is_help=True,
                         help="Per-user GPU quotas: at most N GPUs held at once by a user's running jobs; "
                              "jobs beyond it wait with pending reason QUOTA.")
app.add_typer(quotas_app, name="quotas")
COLUMNS = ["user", "gpus", "in use", "set by"]


def _row(q: cpb.Quota) -> list[object]:
    return [q.owner, q.gpus, q.used, q.updated_by]


@quotas_app.command("set")
def quotas_set(
    user: Annotated[str, typer.Argument(help="the token name whose jobs it limits")],
    gpus: Annotated[int, typer.Option("--gpus", help="GPUs the user's running jobs may hold at once (0..4096)")],
) -> None:
    """Set (or replace) a user's GPU quota (admin token needed)."""
    r = call(coord().SetQuota, cpb.SetQuotaRequest(owner=user, gpus=gpus))
    emit(r, lambda: _table("quota", COLUMNS, [_row(r)]))


@quotas_app.command("clear")
def quotas_clear(user: Annotated[str, typer.Argument(help="the token name")]) -> None:
    """Remove a user's quota: no limit (admin token needed)."""
    r = call(coord().SetQuota, cpb.SetQuotaRequest(owner=user, clear=True))
    emit(r, lambda: _table("quota cleared", ["user", "in use"], [[r.owner, r.used]]))


@quotas_app.command("list")
def quotas_list() -> None:
    """Every quota, with the GPUs each user's running jobs hold now."""
    r = call(coord().ListQuotas, cpb.ListQuotasRequest())
    emit(r, lambda: _table("quotas", COLUMNS, [_row(q) for q in r.items]))
