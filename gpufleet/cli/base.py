"""`gpufleet`: the command line for ML engineers and operators (a thin gRPC client).

The apps, the root callback taking the global options (settings.py resolves them), the connection
and the error mapping. Tables for people, `--output json` for scripts (output.py). Exit codes: 0 ok,
1 error (the server's message, never a traceback), 2 usage.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from typing import Annotated, Any, TypeVar

import grpc
import typer
from google.protobuf.message import Message

from gpufleet import auth, tls
from gpufleet.cli import settings
from gpufleet.cli.output import _table, as_dict, emit, emit_doc, err, listing, out, print_json, watch, wide
from gpufleet.cli.reach import is_connection_failure, unreachable
from gpufleet.cli.settings import CTX, DEFAULT_COORDINATOR, OUTPUTS
from gpufleet.errors import FleetError
from gpufleet.v1 import coordinator_pb2_grpc

T = TypeVar("T")

app = typer.Typer(no_args_is_help=True, add_completion=True,
                  help="The command line for ML engineers and operators: a thin gRPC client of the coordinator.")
models_app = typer.Typer(no_args_is_help=True, help="Models: train (step 1) and test (step 2).")
jobs_app = typer.Typer(no_args_is_help=True, help="Plain jobs and every job attempt.")
nodes_app = typer.Typer(no_args_is_help=True, help="The fleet's GPU servers.")
agent_app = typer.Typer(no_args_is_help=True, help="Talk to one agent directly (operators).")
app.add_typer(models_app, name="models")
app.add_typer(jobs_app, name="jobs")
app.add_typer(nodes_app, name="nodes")
app.add_typer(agent_app, name="agent")
NO_CONNECTION = {"login", "context", "certs", "demo"}  # commands that resolve (or need) no connection settings


def _version(value: bool) -> None:
    if value:
        try:
            v = metadata.version("gpufleet")
        except metadata.PackageNotFoundError:
            v = "unknown"
        print(f"gpufleet {v}")
        raise typer.Exit(0)


@app.callback()
def global_options(
    ctx: typer.Context,
    output: Annotated[str, typer.Option("--output", "-o", help="table, wide (more columns) or json (typed, for "
                                                                "scripts: see README)", show_default=False)] = "",
    coordinator: Annotated[str, typer.Option(envvar="GPUFLEET_COORDINATOR", show_default=False,
                                             help=f"coordinator HOST:PORT (default: the config file's context, else "
                                                  f"{DEFAULT_COORDINATOR}; port 50050 if left out)")] = "",
    context: Annotated[str, typer.Option(envvar="GPUFLEET_CONTEXT", show_default=False,
                                         help="config file context to use (default: the current one; "
                                              "`gpufleet context list`)")] = "",
    tls_ca: Annotated[str, typer.Option(envvar="GPUFLEET_TLS_CA", show_default=False,
                                        help="fleet CA (PEM): enables mTLS")] = "",
    tls_cert: Annotated[str, typer.Option(envvar="GPUFLEET_TLS_CERT", show_default=False,
                                          help="client certificate (PEM; `gpufleet certs issue NAME --role "
                                               "client`)")] = "",
    tls_key: Annotated[str, typer.Option(envvar="GPUFLEET_TLS_KEY", show_default=False,
                                         help="client key (PEM)")] = "",
    token_file: Annotated[str, typer.Option(show_default=False, help="file holding the API token (default: "
                                            "GPUFLEET_TOKEN, GPUFLEET_TOKEN_FILE, else the context's)")] = "",
    timeout: Annotated[float, typer.Option(help="seconds per call")] = 30.0,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """Global options go before or after the subcommand (`gpufleet jobs list -o json`)."""
    if output and output not in OUTPUTS:
        raise typer.BadParameter(f"{output!r} is not one of {', '.join(OUTPUTS)}", param_hint="'--output' / '-o'")
    settings.store(output=output, coordinator=coordinator, context=context, tls_ca=tls_ca, tls_cert=tls_cert,
                   tls_key=tls_key, token_file=token_file, timeout=timeout)
    if ctx.invoked_subcommand not in NO_CONNECTION:
        settings.resolve()
    else:
        CTX.output = output or "table"


@contextmanager
def rpc_errors() -> Iterator[None]:
    """Print the server's message and exit 1; never a traceback."""
    try:
        yield
    except grpc.RpcError as exc:
        code = exc.code()
        name = code.name if code else "UNKNOWN"
        if code == grpc.StatusCode.UNAVAILABLE and is_connection_failure(exc.details() or ""):
            err.print(f"[red]error:[/] {unreachable(CTX.coordinator, exc.details() or '', CTX.tls_ca, CTX.tls_cert)}",
                      highlight=False)
        else:
            err.print(f"[red]error ({name}):[/] {exc.details()}")
        raise typer.Exit(1) from None


def dial(address: str) -> grpc.Channel:
    """mTLS when --tls-ca is given, plaintext otherwise."""
    with fleet_errors():
        return tls.dial(address, CTX.tls_ca, CTX.tls_cert, CTX.tls_key)


def coord() -> coordinator_pb2_grpc.CoordinatorStub:
    return coordinator_pb2_grpc.CoordinatorStub(auth.with_token(dial(CTX.coordinator), CTX.token))


def call(fn: Callable[..., T], req: Message) -> T:
    with rpc_errors():
        return fn(req, timeout=CTX.timeout)


RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def call_idempotent(fn: Callable[..., T], req: Message, tries: int = 3) -> T:
    """`call` with retries for a request that carries an idempotency key: an answer lost on the way
    (a coordinator restarting, a reset connection) is asked for again, never acted on twice."""
    with rpc_errors():
        for n in range(tries):
            try:
                return fn(req, timeout=CTX.timeout)
            except grpc.RpcError as exc:
                if exc.code() not in RETRYABLE or n == tries - 1:
                    raise
                time.sleep(0.5 * 2**n)
    raise AssertionError("unreachable")


def enum_value(enum: Any, prefix: str, value: str, hint: str) -> int:
    """A proto enum member from its short name (`queued` -> JOB_STATUS_CODE_QUEUED); 0 for ""; a
    usage error (exit 2) naming the choices otherwise."""
    if not value:
        return 0
    names = [n.removeprefix(prefix) for n in enum.keys() if not n.endswith("_UNSPECIFIED")]
    if value.upper() not in names:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(n.lower() for n in names)}", param_hint=hint)
    return int(enum.Value(prefix + value.upper()))


@contextmanager
def fleet_errors() -> Iterator[None]:
    """A domain error (bad input, missing CA, unknown token) prints its message and exits 1."""
    try:
        yield
    except FleetError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None


def poll(fetch: Callable[[], T | None], timeout: float, what: str, interval: float = 0.5) -> T:
    """`fetch()` until it returns something, for up to `timeout` seconds; an unreachable coordinator
    (not started yet) counts as "not yet". Exit 1 naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            found = fetch()
            if found is not None:
                return found
        except grpc.RpcError as exc:
            if exc.code() not in RETRYABLE:
                raise
            last = f" (last: {exc.details()})"
        if time.monotonic() >= deadline:
            err.print(f"[red]error:[/] timed out after {timeout:g}s waiting for {what}{last}")
            raise typer.Exit(1)
        time.sleep(interval)


__all__ = ["CTX", "DEFAULT_COORDINATOR", "_table", "agent_app", "app", "as_dict", "call", "call_idempotent", "coord",
           "dial", "emit", "emit_doc", "enum_value", "err", "fleet_errors", "jobs_app", "listing", "models_app",
           "nodes_app", "out", "poll", "print_json", "rpc_errors", "watch", "wide"]
