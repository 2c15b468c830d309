"""The CLI's global options, accepted before or after the subcommand, and how they resolve.

`gpufleet -o json jobs list` and `gpufleet jobs list -o json` mean the same: `hoist` moves global
options before the subcommand, where the root callback takes them (a later one wins). Precedence,
highest first: a flag, its GPUFLEET_* variable, the config file's context (`gpufleet login`), the
default.
"""
from __future__ import annotations

import os
from typing import Any

import typer

from gpufleet import auth
from gpufleet.cli import config
from gpufleet.cli.reach import with_default_port
from gpufleet.errors import FleetError

__all__ = ["CTX", "DEFAULT_COORDINATOR", "GLOBAL_OPTIONS", "hoist", "resolve"]

DEFAULT_COORDINATOR = "127.0.0.1:50050"
OUTPUTS = ("table", "wide", "json")


class Ctx:
    """Settings for this invocation: raw from flags/env while parsing, then resolved once."""

    coordinator: str = DEFAULT_COORDINATOR
    output: str = "table"
    timeout: float = 30.0
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    token: str | None = None
    token_file: str = ""
    context: str = ""
    given: dict[str, Any]

    def __init__(self) -> None:
        self.given = {}


CTX = Ctx()


# Every global option takes a value; `hoist` moves them (and their values) before the subcommand.
GLOBAL_OPTIONS = ("-o", "--output", "--coordinator", "--context", "--tls-ca", "--tls-cert", "--tls-key",
                  "--token-file", "--timeout")


def _takes_value(cmd: Any, opt: str) -> bool:
    """Whether `opt` of click command `cmd` (read duck-typed: typer builds on its own copy of
    click) consumes the next word."""
    for p in getattr(cmd, "params", []):
        if opt in getattr(p, "opts", ()) or opt in getattr(p, "secondary_opts", ()):
            return not getattr(p, "is_flag", False) and not getattr(p, "count", False)
    return False


def hoist(argv: list[str], root: Any) -> list[str]:
    """Move the global options to the front, so `gpufleet jobs list -o json` parses as
    `gpufleet -o json jobs list`. Words after `--`, and after the first argument of a command that
    takes the rest verbatim (`jobs submit ... python -o x`), are left alone."""
    front: list[str] = []
    rest: list[str] = []
    cmd, i, verbatim = root, 0, False
    while i < len(argv):
        word = argv[i]
        if verbatim or word == "--":
            rest.extend(argv[i:])
            break
        name = word.partition("=")[0]
        if name in GLOBAL_OPTIONS or (word.startswith("-o") and not word.startswith("--") and len(word) > 2):
            take = 1 if "=" in word or name not in GLOBAL_OPTIONS else 2
            front.extend(argv[i:i + take])
            i += take
            continue
        rest.append(word)
        i += 1
        if word.startswith("-"):
            if "=" not in word and _takes_value(cmd, word) and i < len(argv):
                rest.append(argv[i])
                i += 1
            continue
        sub = getattr(cmd, "commands", {}).get(word)
        if sub is not None:
            cmd = sub
        elif not (getattr(cmd, "context_settings", None) or {}).get("allow_interspersed_args", True):
            verbatim = True
    return front + rest


def store(**given: Any) -> None:
    """The root callback's values (flags and GPUFLEET_* variables); None/"" = not given."""
    CTX.given = {k: v for k, v in given.items() if v not in (None, "")}


def resolve(env: dict[str, str] | None = None) -> Ctx:
    """Fill CTX: flag or GPUFLEET_* variable (`given`), then the config file's context, then the
    default. Raises typer.BadParameter (exit 2) for settings that do not fit together."""
    env = dict(os.environ) if env is None else env
    given = CTX.given
    CTX.output = given.get("output", "table")
    CTX.timeout = float(given.get("timeout", 30.0))
    CTX.context = given.get("context", "")
    try:
        ctx = config.load().context(CTX.context) or config.Context()
    except FleetError as exc:
        raise typer.BadParameter(str(exc), param_hint="--context / config file") from None
    CTX.coordinator = with_default_port(given.get("coordinator") or ctx.coordinator or DEFAULT_COORDINATOR)
    CTX.tls_ca = given.get("tls_ca") or ctx.tls_ca
    CTX.tls_cert = given.get("tls_cert") or ctx.tls_cert
    CTX.tls_key = given.get("tls_key") or ctx.tls_key
    if bool(CTX.tls_cert) != bool(CTX.tls_key):
        raise typer.BadParameter("give both or neither", param_hint="--tls-cert/--tls-key")
    CTX.token_file = given.get("token_file", "")
    try:
        CTX.token = auth.load_token(CTX.token_file, env)
        if CTX.token is None and (ctx.token or ctx.token_file):
            CTX.token = ctx.token or auth.load_token(ctx.token_file, {})
    except FleetError as exc:
        raise typer.BadParameter(str(exc), param_hint="--token-file") from None
    return CTX
