"""`gpufleet`: the command line for ML engineers and operators (a thin gRPC client).

One module per command group (models, jobs, nodes, security); base.py holds the global options,
the connection and the output helpers. Exit codes: 0 ok, 1 error (the server's message, never a
traceback), 2 usage.
"""
from __future__ import annotations

import sys
from typing import Annotated

import typer

from gpufleet.cli import jobs, models, nodes, pipelines, quotas, security  # noqa: F401 - they register their commands
from gpufleet.cli.base import app, out


@app.command()
def demo(
    keep: Annotated[bool, typer.Option(help="leave the services running and say how to reach them")] = False,
    epochs: Annotated[int, typer.Option(help="epochs the sample trainer runs")] = 6,
    epoch_seconds: Annotated[float, typer.Option(help="seconds per simulated epoch")] = 0.5,
    state_dir: Annotated[str, typer.Option(help="where the demo keeps its state (default: a temp dir)")] = "",
) -> None:
    """Start an embedded coordinator and a local agent, train and test a sample model."""
    from gpufleet.demo import run_demo

    raise typer.Exit(run_demo(out, keep=keep, epochs=epochs, epoch_seconds=epoch_seconds, state_dir=state_dir))


def main() -> None:
    try:
        app(prog_name="gpufleet")
    except KeyboardInterrupt:
        sys.exit(130)
