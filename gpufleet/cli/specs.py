"""Turning repeated command-line items into job spec fields: KEY=VALUE pairs and data mounts."""
from __future__ import annotations

import typer

from gpufleet.v1 import common_pb2 as pb


def pairs(items: list[str] | None, hint: str) -> dict[str, str]:
    """`KEY=VALUE` items -> a dict; a usage error (exit 2) naming the option for anything else."""
    out: dict[str, str] = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=hint)
        out[k] = v
    return out


def mounts(items: list[str] | None) -> list[pb.Mount]:
    """`SOURCE[:TARGET]` items: SOURCE below the agents' --data-root, TARGET the path in the container
    (docker runtime; default /data/SOURCE)."""
    made = []
    for item in items or []:
        source, _, target = item.partition(":")
        if not source:
            raise typer.BadParameter(f"expected SOURCE[:TARGET], got {item!r}", param_hint="--mount")
        made.append(pb.Mount(source=source, target=target))
    return made
