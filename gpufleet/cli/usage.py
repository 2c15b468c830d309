"""`gpufleet usage`: GPU-hours and energy of ended jobs, per user, node or in all (like Slurm's sacct).

    gpufleet usage                     # per user, the last 7 days
    gpufleet usage --since 30d --by node
    gpufleet usage --since all -o json

Also `usage_line`, the one-line account of an attempt that `jobs show` prints.
"""
from __future__ import annotations

import re
from typing import Annotated

import typer

from gpufleet.cli.base import _table, app, as_dict, call, coord, emit_doc, err, listing, out
from gpufleet.v1 import common_pb2 as pb
from gpufleet.v1 import coordinator_pb2 as cpb

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SINCE = re.compile(r"(\d{1,6})([smhdw])")


def since_seconds(text: str) -> int:
    """`7d`, `12h`, `90m`, `2w`, `3600s`, or `all` (0: no bound). ValueError names the rule."""
    text = text.strip().lower()
    if text == "all":
        return 0
    m = _SINCE.fullmatch(text)
    if m is None or int(m.group(1)) == 0:
        raise ValueError(f"--since: expected a positive number with a unit s, m, h, d or w (e.g. 7d), "
                         f"or all; got {text!r}")
    return int(m.group(1)) * _UNITS[m.group(2)]


def gpu_hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f}"


def kwh(joules: float) -> str:
    return f"{joules / 3.6e6:.3f}"


def usage_line(u: pb.GpuUsage) -> str:
    return (f"GPU use: {gpu_hours(u.gpu_seconds)} GPU-hours, {kwh(u.energy_joules)} kWh, peak memory "
            f"{u.peak_memory_bytes / 2**30:.1f} GiB, mean utilisation {u.mean_utilization:.0f} % "
            f"({u.samples} samples)")


@app.command("usage")
def usage(
    since: Annotated[str, typer.Option(help="window: 7d, 24h, 2w ... or all")] = "7d",
    by: Annotated[str, typer.Option(help="user, node or all")] = "user",
) -> None:
    """GPU-hours and energy of the jobs that ended in a window, per user (or node)."""
    try:
        seconds = since_seconds(since)
    except ValueError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    r = call(coord().GetUsage, cpb.UsageQuery(since_seconds=seconds, by=by))

    def table() -> None:
        window = f"since {r.since.ToDatetime():%Y-%m-%d %H:%M} UTC" if r.HasField("since") else "all time"
        rows = [*r.rows, r.total] if len(r.rows) != 1 else list(r.rows)
        _table(f"GPU usage by {r.by}, {window}", [r.by, "jobs", "GPU-hours", "energy kWh", "peak mem GiB",
                                                  "mean util %"],
               [[x.key, x.jobs, gpu_hours(x.gpu_seconds), kwh(x.energy_joules),
                 f"{x.peak_memory_bytes / 2**30:.1f}", f"{x.mean_utilization:.0f}"] for x in rows])
        if not r.rows:
            out.print("no ended jobs with GPU usage in this window")

    doc = listing(list(r.rows), by=r.by, total=as_dict(r.total),
                  since=as_dict(r).get("since"))  # the CLI's one list shape: {"items": [...], ...}
    emit_doc(doc, table)
