"""The coordinator's settings judged before anything is made on disk: a bad flag exits 2 with one line
and leaves no state dir or database behind (issue 17). What needs the database is checked once it is
open."""
from __future__ import annotations

from gpufleet.coordinator.settings import CoordinatorConfig

from gpufleet import config, startup
from gpufleet import log as flog
from gpufleet.errors import InvalidArgument
from gpufleet.server import check_listen_security


def check(cfg: CoordinatorConfig) -> bool:
    """Raise InvalidArgument naming the first bad setting; return whether TLS is on."""
    flog.check_level(cfg.log_level)
    if cfg.on_restart not in ("keep", "stop"):
        raise InvalidArgument("--on-restart", f"must be keep or stop, got {cfg.on_restart!r}")
    if cfg.auth not in ("auto", "on", "off"):
        raise InvalidArgument("--auth", f"must be auto, on or off, got {cfg.auth!r}")
    if not cfg.fair_share_half_life >= 0:
        raise InvalidArgument("--fair-share-half-life", f"must be >= 0, got {cfg.fair_share_half_life}")
    for name, value in (("--node-timeout", cfg.node_timeout), ("--heartbeat-interval", cfg.heartbeat_interval),
                        ("--reconcile-interval", cfg.reconcile_interval),
                        ("--schedule-interval", cfg.schedule_interval)):
        if not value > 0:
            raise InvalidArgument(name, f"must be > 0, got {value}")
    if cfg.metrics_listen:
        config.split_hostport(cfg.metrics_listen, "--metrics-listen")
    # A certificate without its key never falls back to plaintext.
    tls = startup.check_tls_flags(cfg.tls_cert, cfg.tls_key, cfg.tls_ca, "coordinator")
    check_listen_security(cfg.listen, cfg.insecure, tls)
    return tls
