"""pytest plugin: a real PostgreSQL 15 server for the tests, one per session.

Load it with `pytest_plugins = ["tests.postgres"]` in tests/conftest.py (or `-p tests.postgres`).

Why not pytest-postgresql's `postgresql_proc`: it runs initdb/pg_ctl as the current user, and
everything here runs as root, which PostgreSQL refuses. `PgServer` does the same few steps itself,
through `runuser -u postgres --` when running as root: initdb into a temp dir owned by that user,
`pg_ctl start` on a free port with its unix socket in the same dir, `pg_ctl stop -m fast` at the
end. `restart()` (`pg_ctl restart -m fast`) is there for fault tests (connections drop, the
coordinator must reconnect).

Fixtures:
- `pg_server` (session): the running server (`.host`, `.port`, `.user`, `.url(db)`, `.restart()`).
- `pg_url` (function): a fresh, empty database per test, as a `postgresql+psycopg://` URL; dropped
  afterwards.
- `db_url` (function, parametrised "sqlite" / "postgres"): one test body runs on both databases.

No binaries: the postgres tests skip, unless CI=true, where they fail (CI must not silently skip).
Environment: GPUFLEET_PG_BINDIR overrides the binaries' folder.
"""
from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DEFAULT_BINDIRS = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin")
OS_USER = "postgres"  # the unprivileged account the server runs as when we are root
DB_USER = "postgres"


def find_bindir() -> Path | None:
    env = os.environ.get("GPUFLEET_PG_BINDIR")
    # An explicit choice is the only candidate: a wrong path must not silently pick another server.
    candidates = [env] if env else list(DEFAULT_BINDIRS)
    for cand in candidates:
        if cand and (Path(cand) / "pg_ctl").is_file() and (Path(cand) / "initdb").is_file():
            return Path(cand)
    on_path = shutil.which("pg_ctl")
    if not env and on_path and shutil.which("initdb"):
        return Path(on_path).parent
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PgServer:
    """A throwaway PostgreSQL cluster in `base` (created by `start`, removed by `stop`)."""

    bindir: Path
    base: Path
    host: str = "127.0.0.1"
    port: int = 0
    user: str = DB_USER
    # fsync off: the tests do not survive power cuts and need not pay for them; benchmarks that
    # report durable throughput pass fsync=True.
    fsync: bool = False
    _as_user: list[str] = field(default_factory=list)

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    @property
    def sockdir(self) -> Path:
        return self.base / "sock"

    @property
    def logfile(self) -> Path:
        return self.base / "server.log"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{dbname}"

    def dsn(self, dbname: str = "postgres") -> str:
        """libpq form, for psycopg.connect."""
        return f"host={self.host} port={self.port} user={self.user} dbname={dbname}"

    def _run(self, *argv: str) -> None:
        cmd = [*self._as_user, *argv]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0:
            log = self.logfile.read_text(errors="replace")[-4000:] if self.logfile.exists() else ""
            output = f"{proc.stdout}\n{proc.stderr}\n--- server log ---\n{log}"
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output}")

    def _pg_ctl(self, action: str, *extra: str) -> None:
        self._run(str(self.bindir / "pg_ctl"), action, "-D", str(self.datadir), "-w", "-t", "60", *extra)

    def start(self) -> PgServer:
        if os.geteuid() == 0:
            self._as_user = ["runuser", "-u", OS_USER, "--"]
            shutil.chown(self.base, OS_USER, OS_USER)
        self.sockdir.mkdir()
        if self._as_user:
            shutil.chown(self.sockdir, OS_USER, OS_USER)
        self._run(
            str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", DB_USER, "--auth=trust",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )
        settings = [
            "-c listen_addresses=127.0.0.1",
            f"-k {self.sockdir}",
            "-c max_connections=200",
            f"-c fsync={'on' if self.fsync else 'off'}",
            f"-c synchronous_commit={'on' if self.fsync else 'off'}",
            f"-c full_page_writes={'on' if self.fsync else 'off'}",
        ]
        # The port is free when picked; another process may grab it before the server binds.
        last: Exception | None = None
        for _ in range(3):
            self.port = _free_port()
            try:
                opts = " ".join([f"-p {self.port}", *settings])
                self._pg_ctl("start", "-l", str(self.logfile), "-o", opts)
                return self
            except RuntimeError as exc:
                last = exc
        raise RuntimeError(f"could not start PostgreSQL: {last}")

    def restart(self) -> None:
        """Fast restart (open connections are cut); pg_ctl reuses the options of the last start."""
        self._pg_ctl("restart", "-m", "fast", "-l", str(self.logfile))

    def stop(self) -> None:
        try:
            if (self.datadir / "postmaster.pid").exists():
                self._pg_ctl("stop", "-m", "fast")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


def start_server(fsync: bool = False) -> PgServer:
    """Start a throwaway server (for scripts too: remember to call .stop())."""
    bindir = find_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL binaries not found (set GPUFLEET_PG_BINDIR)")
    base = Path(tempfile.mkdtemp(prefix="gpufleet-pg-"))
    server = PgServer(bindir=bindir, base=base, fsync=fsync)
    try:
        return server.start()
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    if find_bindir() is None:
        message = "PostgreSQL binaries not found (install postgresql-15 or set GPUFLEET_PG_BINDIR)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    server = start_server()
    try:
        yield server
    finally:
        server.stop()


_db_numbers = itertools.count(1)


def _admin(server: PgServer, sql: str) -> None:
    import psycopg

    with psycopg.connect(server.dsn(), autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql)


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh database for one test (dropped afterwards, whatever connections are left)."""
    name = f"test_{os.getpid()}_{next(_db_numbers)}"
    _admin(pg_server, f'CREATE DATABASE "{name}"')
    try:
        yield pg_server.url(name)
    finally:
        _admin(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on SQLite (a file in tmp_path) and on PostgreSQL (a fresh database)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'coordinator.db'}"
    return str(request.getfixturevalue("pg_url"))
