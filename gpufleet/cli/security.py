"""`gpufleet certs ...` and `gpufleet tokens ...`: the fleet CA, mTLS certificates, API tokens."""
from __future__ import annotations

import json
import os
from typing import Annotated, Any

import typer

from gpufleet import tls
from gpufleet.cli.base import (
    CTX,
    _table,
    app,
    as_dict,
    call,
    coord,
    emit_doc,
    err,
    fleet_errors,
    listing,
    out,
)
from gpufleet.v1 import coordinator_pb2 as cpb

# -- security: certificates and tokens -------------------------------------------------------------
certs_app = typer.Typer(no_args_is_help=True,
                        help="The fleet CA and mTLS certificates (run where the CA key is).")
tokens_app = typer.Typer(no_args_is_help=True,
                         help="API tokens (admin, user, viewer), over the Coordinator API with an admin "
                              "token; the first one: `gpufleet-coordinator tokens create NAME --role admin` "
                              "on the coordinator host.")
app.add_typer(certs_app, name="certs")
app.add_typer(tokens_app, name="tokens")
DEFAULT_CA_DIR = "~/.config/gpufleet/ca"


def _cert_dict(path: Any, key: Any = None) -> dict[str, Any]:
    i = tls.describe(path)
    d = {"cert": str(path), "name": i.name, "role": i.role, "dns": i.dns, "ips": i.ips,
         "not_before": i.not_before.isoformat(), "not_after": i.not_after.isoformat(), "issuer": i.issuer,
         "sha256": i.fingerprint_sha256}
    if key is not None:
        d["key"] = str(key)
    return d


@certs_app.command("init")
def certs_init(
    directory: Annotated[str, typer.Argument(help="folder for ca.crt and ca.key (keep ca.key off the fleet)")]
    = DEFAULT_CA_DIR,
    common_name: Annotated[str, typer.Option(help="the CA's name")] = "gpufleet CA",
    days: Annotated[int, typer.Option(help="validity in days")] = 3650,
    force: Annotated[bool, typer.Option(help="replace an existing CA (every certificate it signed stops "
                                             "working)")] = False,
) -> None:
    """Make the fleet's certificate authority."""
    with fleet_errors():
        crt, key = tls.init_ca(os.path.expanduser(directory), common_name=common_name, days=days, force=force)
    d = _cert_dict(crt, key)
    if CTX.output == "json":
        print(json.dumps(d, indent=2))
        return
    out.print(f"CA [bold]{common_name}[/] valid until {d['not_after'][:10]}\n  certificate: {crt}\n  "
              f"private key: {key} (0600; keep it off the fleet's machines)\n"
              "next: gpufleet certs issue NAME --role agent|coordinator|client --host ADDRESS "
              f"--ca-dir {directory}")


@certs_app.command("issue")
def certs_issue(
    name: Annotated[str, typer.Argument(help="node name for agents (must match --node-name), else a host "
                                             "or user name")],
    role: Annotated[str, typer.Option(help="agent, coordinator or client (operators and the CLI)")],
    host: Annotated[list[str] | None, typer.Option(help="address peers dial: IP or DNS (repeat)")] = None,
    ca_dir: Annotated[str, typer.Option(envvar="GPUFLEET_CA_DIR", help="the CA's folder")] = DEFAULT_CA_DIR,
    out_dir: Annotated[str, typer.Option(help="for NAME.crt, NAME.key, ca.crt (default: ./NAME)",
                                         show_default=False)] = "",
    out_to: Annotated[str, typer.Option("--out", help="for ROLE.crt, ROLE.key, ca.crt, the deploy paths: "
                                                   "--out /etc/gpufleet/tls writes agent.crt for role agent")] = "",
    days: Annotated[int, typer.Option(help="validity in days")] = 365,
    force: Annotated[bool, typer.Option("--force", help="replace an existing certificate and key")] = False,
) -> None:
    """Sign a certificate for an agent, the coordinator or a client; refuses to overwrite one without --force."""
    if out_to and out_dir:
        raise typer.BadParameter("give one of --out (ROLE.crt) and --out-dir (NAME.crt)", param_hint="--out")
    with fleet_errors():
        crt, key = tls.issue(os.path.expanduser(ca_dir), out_to or out_dir or name, name, role, host or [],
                             days=days, stem=role if out_to else "", force=force)
    d = _cert_dict(crt, key)
    if CTX.output == "json":
        print(json.dumps(d, indent=2))
        return
    out.print(f"{role} certificate [bold]{name}[/] valid until {d['not_after'][:10]}, "
              f"names {', '.join(d['dns'] + d['ips'])}\n  certificate: {crt}\n  private key: {key} (0600)\n"
              f"  CA: {crt.parent / 'ca.crt'}\n"
              f"use: --tls-cert {crt} --tls-key {key} --tls-ca {crt.parent / 'ca.crt'}")


def _ts(t: Any) -> str:
    return t.ToDatetime().strftime("%Y-%m-%d %H:%M") if t.seconds else "-"


def _token_rows(items: list[cpb.TokenInfo]) -> list[list[Any]]:
    return [[f"gft_{t.id}…", t.name, t.role, _ts(t.created_at), _ts(t.expires_at), _ts(t.revoked_at)]
            for t in items]


TOKEN_COLUMNS = ["id", "name", "role", "created", "expires", "revoked"]


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Argument(help="who the token is for; owner of what it creates")],
    role: Annotated[str, typer.Option(help="admin, user (own models and jobs) or viewer (reads)")] = "user",
    expires_days: Annotated[float, typer.Option(help="expire after this many days (0: never)")] = 0,
) -> None:
    """Make a token (admin token needed); it is printed once, on stdout, and stored only as a salted hash."""
    r = call(coord().CreateToken, cpb.CreateTokenRequest(name=name, role=role,
                                                         expires_in_seconds=round(expires_days * 86400)))
    if CTX.output == "json":
        print(json.dumps({"token": r.token, **as_dict(r.info)}, indent=2))
        return
    err.print(f"token gft_{r.info.id}… for [bold]{name}[/] (role {role}); shown only now. Give it to the CLI "
              "with GPUFLEET_TOKEN or --token-file:")
    print(r.token)


@tokens_app.command("list")
def tokens_list(
    all_: Annotated[bool, typer.Option("--all", help="include revoked tokens")] = False,
) -> None:
    """Tokens by id (their first characters), name and role; never the secret (admin token needed)."""
    r = call(coord().ListTokens, cpb.ListTokensRequest(include_revoked=all_))
    emit_doc(listing(list(r.items)), lambda: _table("tokens", TOKEN_COLUMNS, _token_rows(list(r.items))))


@tokens_app.command("revoke")
def tokens_revoke(
    ident: Annotated[str, typer.Argument(help="token id (as `tokens list` shows it), or a name: all its "
                                              "tokens")],
) -> None:
    """Revoke a token (or every token of a name); the coordinator refuses it at once (admin token needed)."""
    r = call(coord().RevokeToken, cpb.RevokeTokenRequest(ident=ident))
    if CTX.output == "json":
        print(json.dumps({"revoked": list(r.ids)}))
        return
    out.print(f"revoked {', '.join(f'gft_{i}…' for i in r.ids)}")
