"""The coordinator's settings: its options (flags, GPUFLEET_* environment, TOML file) and the typed
`CoordinatorConfig` they become, which is all `build` reads (no argparse Namespace travels further)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gpufleet import config
from gpufleet.daemon import STALE_FLOOR_S

OPTIONS = [
    config.Option("listen", "127.0.0.1:50050", "HOST:PORT to serve gpufleet.v1.Coordinator and Fleet on"),
    config.Option("state-dir", "/var/lib/gpufleet/coordinator", "where the embedded SQLite database lives"),
    config.Option("database-url", "", "SQLAlchemy URL (default: SQLite in --state-dir; "
                  "postgresql+psycopg://user@host/db for production). Keep passwords in the environment"),
    config.Option("node-timeout", 10.0, "seconds without a heartbeat before a node is UNREACHABLE (its jobs keep "
                  "running)", float),
    config.Option("lost-after", 300.0, "seconds a job may stay unheard before it is requeued (default for jobs "
                  "and models that do not set lost_after_seconds)", float),
    config.Option("heartbeat-interval", 2.0, "seconds between agent heartbeats", float),
    config.Option("reconcile-interval", 5.0,
                  "seconds between full reconcile passes (a heartbeat reporting an ended job triggers one at once)",
                  float),
    config.Option("schedule-interval", 2.0, "seconds between scheduling passes (also event-driven)", float),
    config.Option("fair-share-half-life", 3600.0, "seconds after which a user's past GPU time counts half in "
                  "fair share (0: off; jobs of equal priority then go by age)", float),
    config.Option("user-max-priority", 100, "the highest priority a token of role user may give a job "
                  "(admins: any)", int),
    config.Option("on-restart", "keep", "keep: running jobs survive a coordinator restart; stop: stop them"),
    config.Option("tls-cert", "", "the coordinator's certificate (PEM, role coordinator)"),
    config.Option("tls-key", "", "its private key (PEM)"),
    config.Option("tls-ca", "", "the fleet CA (PEM): agents and clients must present certificates it signed"),
    config.Option("auth", "auto", "auto (tokens, and agent certificates with TLS, unless plaintext on "
                  "loopback), on, or off"),
    config.Option("insecure", False, "allow plaintext gRPC on a non-loopback address", bool),
    config.Option("viewers-read-logs", False, "with auth: let viewer tokens read every job's logs and metrics "
                  "(default: only the job's owner and admins)", bool),
    config.Option("metrics-listen", "127.0.0.1:9411", "HOST:PORT for Prometheus /metrics (empty: off)"),
    config.Option("log-level", "info", "debug, info, warning, error"),
]


@dataclass(frozen=True)
class CoordinatorConfig:
    """One field per option in OPTIONS (same name, underscores), with its default."""

    listen: str = "127.0.0.1:50050"
    state_dir: str = "/var/lib/gpufleet/coordinator"
    database_url: str = ""
    node_timeout: float = 10.0
    lost_after: float = 300.0
    heartbeat_interval: float = 2.0
    reconcile_interval: float = 5.0
    schedule_interval: float = 2.0
    fair_share_half_life: float = 3600.0
    user_max_priority: int = 100
    on_restart: str = "keep"
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    auth: str = "auto"
    insecure: bool = False
    viewers_read_logs: bool = False
    metrics_listen: str = "127.0.0.1:9411"
    log_level: str = "info"
    # Not an option: the least time a loop may go without a completed pass before health fails
    # (gpufleet/daemon.py); tests that hang a loop on purpose lower it.
    stale_floor: float = STALE_FLOOR_S


# Handled by coordinator/main.py `run` before these options are parsed; listed in --help.
SUBCOMMANDS = """subcommands (given first):
  gpufleet-coordinator migrate [OPTIONS]      apply the database migrations (--database-url or
                                              --state-dir) and exit
  gpufleet-coordinator tokens create|list|revoke
                                              API tokens on the coordinator host, e.g. the first
                                              admin token (see `gpufleet-coordinator tokens --help`)
"""


def parse(argv: Sequence[str] | None = None) -> CoordinatorConfig:
    ns = config.parse("gpufleet-coordinator", "gpufleet coordinator: fleet state, scheduling, reconciling",
                      OPTIONS, argv, epilog=SUBCOMMANDS)
    return config.typed(CoordinatorConfig, OPTIONS, ns)
