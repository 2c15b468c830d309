"""`gpufleet login` and `gpufleet context ...`: where the coordinator is and who I am, saved once.

login writes a context into the config file (config.py) and makes it current, so a user does not
export five variables; flags and GPUFLEET_* variables still override it for one command.
"""
from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from gpufleet.cli import config
from gpufleet.cli.base import CTX, app, emit_doc, err, fleet_errors, out
from gpufleet.cli.output import _table
from gpufleet.cli.reach import with_default_port

context_app = typer.Typer(no_args_is_help=True, help="Saved contexts: coordinator address and credentials "
                                                     "(`gpufleet login` makes one).")
app.add_typer(context_app, name="context")


def _abs(p: str) -> str:
    return os.path.abspath(os.path.expanduser(p)) if p else ""


@app.command("login")
def login(
    token: Annotated[str, typer.Option(help="the API token itself, stored in the 0600 config file ('-': read it "
                                            "from stdin; prefer the global --token-file, which stores the path)",
                                       show_default=False)] = "",
) -> None:
    """Save the coordinator address and credentials as a context and make it current:
    gpufleet login --coordinator HOST:PORT --tls-ca CA --tls-cert CRT --tls-key KEY --token-file FILE
    [--context NAME]. Takes the global options (flags or GPUFLEET_* variables) as they are given."""
    g = CTX.given
    if token == "-":
        token = sys.stdin.readline().strip()
    if bool(g.get("tls_cert")) != bool(g.get("tls_key")):
        raise typer.BadParameter("give both or neither", param_hint="--tls-cert/--tls-key")
    if token and g.get("token_file"):
        raise typer.BadParameter("give one of --token and --token-file", param_hint="--token")
    for opt in ("tls_ca", "tls_cert", "tls_key", "token_file"):
        if g.get(opt) and not os.path.isfile(os.path.expanduser(g[opt])):
            raise typer.BadParameter(f"no such file: {g[opt]}", param_hint="--" + opt.replace("_", "-"))
    name = g.get("context") or "default"
    ctx = config.Context(coordinator=with_default_port(g.get("coordinator", "")), tls_ca=_abs(g.get("tls_ca", "")),
                         tls_cert=_abs(g.get("tls_cert", "")), tls_key=_abs(g.get("tls_key", "")),
                         token_file=_abs(g.get("token_file", "")), token=token)
    if not ctx.coordinator:
        raise typer.BadParameter("the coordinator's HOST:PORT is needed", param_hint="--coordinator")
    with fleet_errors():
        cfg = config.load()
        cfg.contexts[name] = ctx
        cfg.current_context = name
        path = config.save(cfg)
    emit_doc({"context": name, "coordinator": ctx.coordinator, "config": str(path)},
             lambda: out.print(f"context [bold]{name}[/] ({ctx.coordinator}) saved in {path} and made current"))


@context_app.command("list")
def context_list() -> None:
    """The saved contexts; * marks the current one. JSON: {"current_context", "items": [...]}."""
    with fleet_errors():
        cfg = config.load()
    items = [{"name": n, "current": n == cfg.current_context, "coordinator": c.coordinator,
              "tls": bool(c.tls_ca), "token": "token" if c.token else c.token_file or ""}
             for n, c in sorted(cfg.contexts.items())]
    emit_doc({"current_context": cfg.current_context, "config": str(config.path()), "items": items},
             lambda: _table(f"contexts ({config.path()})", ["", "name", "coordinator", "mTLS", "token"],
                            [["*" if i["current"] else "", i["name"], i["coordinator"], "yes" if i["tls"] else "no",
                              i["token"] or "-"] for i in items]))


@context_app.command("use")
def context_use(name: Annotated[str, typer.Argument(help="a context `gpufleet context list` shows")]) -> None:
    """Make a saved context the current one."""
    with fleet_errors():
        cfg = config.load()
        if name not in cfg.contexts:
            err.print(f"[red]error:[/] no context {name!r} (have: {', '.join(sorted(cfg.contexts)) or 'none'}); "
                      "`gpufleet login --context NAME ...` makes one")
            raise typer.Exit(1)
        cfg.current_context = name
        config.save(cfg)
    emit_doc({"current_context": name}, lambda: out.print(f"current context: [bold]{name}[/]"))
