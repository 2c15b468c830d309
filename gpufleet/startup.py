"""Start-up refusals both daemons share: settings or files that would run unsafely stop the daemon
with one line (exit 2) instead of starting half-protected (issue 13)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gpufleet.errors import FailedPrecondition, InvalidArgument


def check_tls_flags(cert: str, key: str, ca: str, who: str) -> bool:
    """True when TLS is on. Any of the three flags without the other two is an error: a certificate
    without its key must never fall back to plaintext without authentication."""
    given = {"--tls-cert": cert, "--tls-key": key, "--tls-ca": ca}
    if not any(given.values()):
        return False
    missing = [name for name, value in given.items() if not value]
    if missing:
        raise InvalidArgument(missing[0], f"TLS on the {who} needs --tls-cert, --tls-key and --tls-ca together "
                              f"(mutual TLS); missing {', '.join(missing)}")
    return True


def private_dir(path: Path) -> None:
    """The daemon's state dir: made if needed, 0700 (databases, secrets and job files live in it)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def private_sqlite(url: str) -> None:
    """An embedded SQLite database (and its WAL/SHM files) readable by the daemon only: 0600."""
    if not url.startswith("sqlite:///"):
        return
    path = Path(url.removeprefix("sqlite:///").split("?", 1)[0])
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            os.chmod(p, 0o600)
        except FileNotFoundError:
            pass


def check_sqlite_readable(engine: Any) -> None:
    """A SQLite file that is damaged past its header answers queries until it hits a bad page: check
    it once at start (quick_check reads every page) and refuse to serve from it."""
    if engine.dialect.name != "sqlite":
        return
    import sqlalchemy as sa

    with engine.connect() as conn:
        rows = [str(r[0]) for r in conn.execute(sa.text("PRAGMA quick_check")).fetchmany(3)]
    if rows != ["ok"]:
        raise FailedPrecondition(f"the database {engine.url.database} is corrupt ({'; '.join(rows)[:200]}); "
                                 "restore it from a backup")
