"""`gpufleet-coordinator tokens create|list|revoke`: token management on the coordinator host.

The bootstrap path: before any admin token exists, the operator mints the first one here, against
the coordinator's own database (`--state-dir` for the embedded SQLite, or `--database-url`). Every
later change goes through the Coordinator API (`gpufleet tokens ...`, admin role). This never
creates a database: a missing SQLite file is an error naming the path, not a fresh empty fleet.
A revocation made here reaches running coordinators within their verifier's TTL (10 s); through
the API it takes effect at once on the coordinator that revoked.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

from gpufleet.coordinator import tokens
from gpufleet.coordinator.db import engine as dbengine
from sqlalchemy import Engine

from gpufleet.errors import InvalidArgument

DEFAULT_STATE_DIR = "/var/lib/gpufleet/coordinator"


def parser(env: Mapping[str, str] = os.environ) -> argparse.ArgumentParser:
    """Where the database is comes from the flags, else GPUFLEET_DATABASE_URL / GPUFLEET_STATE_DIR, as for
    the coordinator itself and `gpufleet-coordinator migrate` (the same unit environment serves all)."""
    p = argparse.ArgumentParser(prog="gpufleet-coordinator tokens",
                                description="API tokens on the coordinator host (the first admin token)")
    p.add_argument("--state-dir", default=env.get("GPUFLEET_STATE_DIR") or DEFAULT_STATE_DIR,
                   help="the coordinator's --state-dir, holding coordinator.db (default: %(default)s) "
                        "[env GPUFLEET_STATE_DIR]")
    p.add_argument("--database-url", default=env.get("GPUFLEET_DATABASE_URL", ""),
                   help="the coordinator's --database-url (instead of --state-dir) [env GPUFLEET_DATABASE_URL]")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table", help="table or json")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("create", help="make a token; printed once on stdout")
    c.add_argument("name", help="who the token is for; owner of what it creates")
    c.add_argument("--role", choices=tokens.TOKEN_ROLES, default="user", help="admin, user or viewer")
    c.add_argument("--expires-days", type=float, default=0, help="expire after this many days (0: never)")
    ls = sub.add_parser("list", help="tokens by id, name and role; never the secret")
    ls.add_argument("--all", action="store_true", help="include revoked tokens")
    r = sub.add_parser("revoke", help="revoke a token id, or every live token of a name")
    r.add_argument("ident", help="token id (as `list` shows it) or a name")
    for s in (c, ls, r):  # accepted after the subcommand too
        s.add_argument("--state-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        s.add_argument("--database-url", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        s.add_argument("-o", "--output", choices=("table", "json"), default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


def open_engine(state_dir: str, database_url: str) -> Engine:
    if not database_url:
        db = Path(state_dir).expanduser().resolve() / dbengine.SQLITE_FILE
        if not db.is_file():
            raise InvalidArgument("--state-dir", f"no coordinator database at {db}: give the coordinator's "
                                                 "--state-dir or --database-url (run the coordinator or "
                                                 "`gpufleet-coordinator migrate` first)")
        database_url = dbengine.default_sqlite_url(db.parent)
    elif database_url.startswith("sqlite:///"):  # never a fresh, empty fleet database
        db = Path(database_url.removeprefix("sqlite:///").split("?", 1)[0])
        if not db.is_file():
            raise InvalidArgument("--database-url", f"no coordinator database at {db} (run the coordinator or "
                                                    "`gpufleet-coordinator migrate` with this URL first)")
    eng = dbengine.make_engine(database_url)
    dbengine.migrate(eng)
    return eng


def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    eng = open_engine(args.state_dir, args.database_url)
    try:
        result: object
        if args.command == "create":
            days = args.expires_days
            token = tokens.create_token(eng, args.name, args.role,
                                        expires_in=timedelta(days=days) if days > 0 else None)
            info = tokens.get_token_info(eng, token)
            if args.output == "json":
                print(json.dumps({"token": token, **info.as_dict()}, indent=2))
            else:
                print(f"token {info.display} for {info.name} (role {info.role}); shown only now:", file=sys.stderr)
                print(token)
            return 0
        if args.command == "list":
            items = tokens.list_tokens(eng, include_revoked=args.all)
            result = {"items": [t.as_dict() for t in items]}
            if args.output == "table":
                for t in items:
                    print(f"{t.display}\t{t.name}\t{t.role}\t{t.created_at:%Y-%m-%d %H:%M}")
                return 0
        else:
            ids = tokens.revoke_token(eng, args.ident)
            result = {"revoked": ids}
            if args.output == "table":
                print("revoked " + ", ".join(ids))
                return 0
        print(json.dumps(result, indent=2))
        return 0
    finally:
        eng.dispose()
