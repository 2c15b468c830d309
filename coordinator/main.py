"""`gpufleet-coordinator`: migrate the database, reconcile, then serve and schedule until SIGTERM.

`gpufleet-coordinator migrate` only applies the migrations and exits.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from gpufleet.coordinator import token_cli
from gpufleet.coordinator import tokens as coord_tokens
from gpufleet.coordinator.agents import AgentPool
from gpufleet.coordinator.capacity import UserCapacityInterceptor
from gpufleet.coordinator.db import engine as dbengine
from gpufleet.coordinator.fleet import Fleet
from gpufleet.coordinator.keeper import Keeper
from gpufleet.coordinator.lifecycle import Lifecycle
from gpufleet.coordinator.metrics import CoordinatorCollector
from gpufleet.coordinator.reconciler import Reconciler
from gpufleet.coordinator.scheduler import Scheduler
from gpufleet.coordinator.service import CoordinatorService, FleetService, add_to_server
from sqlalchemy import exc as sa_exc

from gpufleet import config, startup
from gpufleet import log as flog
from gpufleet import tls as fleet_tls
from gpufleet.daemon import main_wrapper, serve_until_signalled, start_metrics, tune_for_latency
from gpufleet.errors import FailedPrecondition, InvalidArgument
from gpufleet.metrics import RpcMetricsInterceptor, new_registry, stop_http
from gpufleet.server import (
    bind,
    build_server,
    check_listen_security,
    enable_reflection,
    set_health,
)

log = logging.getLogger("gpufleet.coordinator")
SERVICES = ["gpufleet.v1.Coordinator", "gpufleet.v1.Fleet"]

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
    config.Option("metrics-listen", "127.0.0.1:9411", "HOST:PORT for Prometheus /metrics (empty: off)"),
    config.Option("log-level", "info", "debug, info, warning, error"),
]


def run(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "tokens":  # the first admin token, on the coordinator host
        return token_cli.run(argv[1:])
    migrate_only = bool(argv) and argv[0] == "migrate"
    if migrate_only:
        argv = argv[1:]
    opts = config.parse("gpufleet-coordinator", "gpufleet coordinator: fleet state, scheduling, reconciling",
                        OPTIONS, argv)
    flog.setup(opts.log_level)
    if opts.on_restart not in ("keep", "stop"):
        raise InvalidArgument("--on-restart", f"must be keep or stop, got {opts.on_restart!r}")
    if opts.fair_share_half_life < 0:
        raise InvalidArgument("--fair-share-half-life", f"must be >= 0, got {opts.fair_share_half_life}")
    if opts.node_timeout <= 0:
        raise InvalidArgument("--node-timeout", "must be > 0")
    # Before anything is made on disk: a certificate without its key never falls back to plaintext.
    tls = startup.check_tls_flags(opts.tls_cert, opts.tls_key, opts.tls_ca, "coordinator")
    state_dir = config.state_path(opts.state_dir)
    startup.private_dir(state_dir)
    url = opts.database_url or dbengine.default_sqlite_url(state_dir)
    if url.startswith("sqlite:///"):
        db_file = Path(url.removeprefix("sqlite:///").split("?", 1)[0])
        if not db_file.exists():  # created 0600, not 0644: it holds env secrets and log tails
            os.close(os.open(db_file, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))
    engine = dbengine.make_engine(url)
    try:
        startup.check_sqlite_readable(engine)
        status = dbengine.migrate(engine)
    except sa_exc.DatabaseError as exc:
        raise FailedPrecondition(f"the database cannot be used: {str(exc.orig or exc).splitlines()[0][:200]}; "
                                 "restore it from a backup") from None
    startup.private_sqlite(url)
    flog.event(log, "db.migrated", dialect=engine.dialect.name, status=str(status))
    if migrate_only:
        return 0
    check_listen_security(opts.listen, opts.insecure, tls)
    if opts.auth not in ("auto", "on", "off"):
        raise InvalidArgument("--auth", f"must be auto, on or off, got {opts.auth!r}")
    loopback = config.is_loopback(config.split_hostport(opts.listen, "--listen")[0])
    auth_on = opts.auth == "on" or (opts.auth == "auto" and (tls or not loopback))
    if not auth_on and not loopback:
        flog.event(log, "auth.off", logging.WARNING, listen=opts.listen,
                   detail="--auth off on a non-loopback address: anyone who reaches it is admin")
    auth_interceptors = [coord_tokens.CoordinatorAuth(
        engine, agent_certs=tls, user_max_priority=opts.user_max_priority)] if auth_on else []

    tune_for_latency()
    agents = AgentPool(fleet_tls.channel_credentials(opts.tls_ca, opts.tls_cert, opts.tls_key) if tls else None)
    sched_ref: list[Scheduler] = []

    def wake() -> None:
        if sched_ref:
            sched_ref[0].wake()

    def nodes_changed() -> None:  # registered, lost, drained: the scheduler must not use a stale list
        if sched_ref:
            sched_ref[0].invalidate_nodes()
            sched_ref[0].wake()

    reconciler = Reconciler(engine, agents, interval=opts.reconcile_interval, on_restart=opts.on_restart,
                            wake_scheduler=wake)
    fleet = Fleet(engine, reconciler, nodes_changed, node_timeout=opts.node_timeout,
                  heartbeat_interval=opts.heartbeat_interval, lost_after=opts.lost_after)
    scheduler = Scheduler(engine, agents, fleet.fresh_nodes, interval=opts.schedule_interval,
                          node_unreachable=fleet.unreachable, half_life_s=opts.fair_share_half_life)
    sched_ref.append(scheduler)
    life = Lifecycle(engine, agents, reconciler, wake, nodes_changed=nodes_changed)
    keeper = Keeper(life)

    registry = new_registry()
    registry.register(CoordinatorCollector(engine, scheduler, reconciler, fleet))
    server, hs = build_server(interceptors=[RpcMetricsInterceptor(registry), *auth_interceptors,
                                            UserCapacityInterceptor()])
    add_to_server(CoordinatorService(engine, life, agents), FleetService(fleet, agents), server)
    enable_reflection(server, SERVICES)
    creds = fleet_tls.server_credentials(opts.tls_cert, opts.tls_key, opts.tls_ca) if tls else None
    port = bind(server, opts.listen, creds)
    server.start()
    # Reconcile what the database says against the agents before placing anything new.
    reconciler.start()
    fleet.start()
    scheduler.start()
    keeper.start()
    set_health(hs, SERVICES, True)
    host, _ = config.split_hostport(opts.listen, "--listen")
    (state_dir / "coordinator.addr").write_text(f"{host}:{port}\n")
    metrics_server = start_metrics(opts.metrics_listen, registry, state_dir)
    flog.event(log, "coordinator.ready", listen=f"{host}:{port}", database=engine.dialect.name, tls=tls,
               auth=auth_on)

    serve_until_signalled(hs, SERVICES, lambda: _db_ok(engine) and time.monotonic() - reconciler.last_ok < 60)
    server.stop(grace=2).wait()
    stop_http(metrics_server)
    keeper.close()
    scheduler.close()
    fleet.close()
    reconciler.close()
    agents.close()
    engine.dispose()
    flog.event(log, "coordinator.stopped")
    return 0


def _db_ok(engine: object) -> bool:
    try:
        with engine.connect() as conn:  # type: ignore[attr-defined]
            conn.exec_driver_sql("SELECT 1")
        return True
    except Exception:  # noqa: BLE001
        return False


def main() -> None:
    main_wrapper("gpufleet-coordinator", run)


if __name__ == "__main__":
    main()
