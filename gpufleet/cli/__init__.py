"""`gpufleet`: the command line for ML engineers and operators (a thin gRPC client).

One module per command group (models, jobs, nodes, datasets, pipelines, security, contexts);
base.py holds the apps and the connection, settings.py the global options (accepted anywhere) and
their resolution, config.py the config file, output.py tables and typed JSON. Exit codes: 0 ok,
1 error (the server's message, never a traceback), 2 usage (one line).
"""
from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
import typer.main

# Each command group registers itself on import: one line per group.
from gpufleet.cli import (
    contexts,  # noqa: F401
    datasets,  # noqa: F401
    downloads,  # noqa: F401
    jobs,  # noqa: F401
    models,  # noqa: F401
    nodes,  # noqa: F401
    pipelines,  # noqa: F401
    quotas,  # noqa: F401
    security,  # noqa: F401
    settings,
    usage,  # noqa: F401
)
from gpufleet.cli.base import app, err, out


@app.command()
def demo(
    keep: Annotated[bool, typer.Option(help="leave the services running and say how to reach them")] = False,
    epochs: Annotated[int, typer.Option(help="epochs the sample trainer runs")] = 6,
    epoch_seconds: Annotated[float, typer.Option(help="seconds per simulated epoch")] = 0.5,
    state_dir: Annotated[str, typer.Option(help="where the demo keeps its state (default: a temp dir)",
                                            show_default=False)] = "",
) -> None:
    """Start an embedded coordinator and a local agent, train and test a sample model."""
    from gpufleet.demo import run_demo

    raise typer.Exit(run_demo(out, keep=keep, epochs=epochs, epoch_seconds=epoch_seconds, state_dir=state_dir))


def _exception_class(name: str) -> type[BaseException]:
    """click's exception classes, found from typer's public BadParameter (typer builds on its own
    copy of click, so `import click` would name other classes)."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


USAGE_ERROR = _exception_class("UsageError")
CLICK_EXCEPTION = _exception_class("ClickException")


GLOBAL_EPILOG = ("Global options go here too: -o/--output table|wide|json, --coordinator, --context, --tls-ca, "
                 "--tls-cert, --tls-key, --token-file, --timeout (see gpufleet --help).")


def _say_where_global_options_go(cmd: Any) -> None:
    for sub in getattr(cmd, "commands", {}).values():
        sub.epilog = sub.epilog or GLOBAL_EPILOG
        _say_where_global_options_go(sub)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI. A usage error (unknown option, bad value) is one line on stderr and exit 2."""
    cmd = typer.main.get_command(app)
    _say_where_global_options_go(cmd)
    args = settings.hoist(sys.argv[1:] if argv is None else argv, cmd)
    try:
        rc = cmd.main(args=args, prog_name="gpufleet", standalone_mode=False)
    except USAGE_ERROR as exc:
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            print(ctx.get_help())
            sys.exit(2)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        err.print(f"[red]error:[/] {exc.format_message()}{hint}", highlight=False, markup=True)  # type: ignore[attr-defined]
        sys.exit(2)
    except CLICK_EXCEPTION as exc:
        err.print(f"[red]error:[/] {exc.format_message()}", highlight=False)  # type: ignore[attr-defined]
        sys.exit(getattr(exc, "exit_code", 1))
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    sys.exit(rc if isinstance(rc, int) else 0)
