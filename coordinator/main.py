"""`gpufleet-coordinator`: migrate the database, reconcile, then serve and schedule until SIGTERM.

`gpufleet-coordinator migrate` only applies the migrations and exits. `build(config)` makes the
daemon (gpufleet/daemon.py `Daemon`: server, loops, health checks) and `serve` runs it.
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from gpufleet.coordinator import precheck, settings, token_cli
from gpufleet.coordinator import tokens as coord_tokens
from gpufleet.coordinator.agents import AgentPool
from gpufleet.coordinator.capacity import UserCapacityInterceptor
from gpufleet.coordinator.db import engine as dbengine
from gpufleet.coordinator.exclusivity import ExclusivityCollector
from gpufleet.coordinator.fleet import Fleet
from gpufleet.coordinator.keeper import Keeper
from gpufleet.coordinator.lifecycle import Lifecycle
from gpufleet.coordinator.metrics import CoordinatorCollector
from gpufleet.coordinator.nudges import SchedulerNudges
from gpufleet.coordinator.reconciler import Reconciler
from gpufleet.coordinator.scheduler import Scheduler
from gpufleet.coordinator.service import CoordinatorService, FleetService, add_to_server
from gpufleet.coordinator.settings import CoordinatorConfig
from gpufleet.coordinator.usage import UsageCollector
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from gpufleet import config, startup
from gpufleet import log as flog
from gpufleet import tls as fleet_tls
from gpufleet.daemon import Daemon, LoopEntry, main_wrapper, serve, tune_for_latency
from gpufleet.errors import FailedPrecondition
from gpufleet.metrics import RpcMetricsInterceptor, new_registry
from gpufleet.server import (
    bind,
    build_server,
    enable_reflection,
)

log = logging.getLogger("gpufleet.coordinator")
SERVICES = ["gpufleet.v1.Coordinator", "gpufleet.v1.Fleet"]

OPTIONS = settings.OPTIONS  # re-exported: the README test and the benches read them here


@dataclass
class Database:
    """The coordinator's database, opened and migrated, and the settings checked on the way there."""

    engine: Engine
    state_dir: Path
    tls: bool


def open_database(cfg: CoordinatorConfig) -> Database:
    """Check the settings that need no database, then open it and apply every migration."""
    tls = precheck.check(cfg)  # every flag judged before anything is made on disk
    state_dir = config.state_path(cfg.state_dir)
    startup.private_dir(state_dir)
    url = cfg.database_url or dbengine.default_sqlite_url(state_dir)
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
    return Database(engine, state_dir, tls)


def build(cfg: CoordinatorConfig, db: Database | None = None) -> Daemon:
    """Open (or take) the database and make the server (bound, not started) with the coordinator's
    loops. Nothing is scheduled or reconciled before `serve` starts the loops."""
    db = db or open_database(cfg)
    engine, state_dir, tls = db.engine, db.state_dir, db.tls
    loopback = config.is_loopback(config.split_hostport(cfg.listen, "--listen")[0])
    auth_on = cfg.auth == "on" or (cfg.auth == "auto" and (tls or not loopback))
    if not auth_on and not loopback:
        flog.event(log, "auth.off", logging.WARNING, listen=cfg.listen,
                   detail="--auth off on a non-loopback address: anyone who reaches it is admin")
    auth_interceptors = [coord_tokens.CoordinatorAuth(
        engine, agent_certs=tls, viewers_read_logs=cfg.viewers_read_logs,
        user_max_priority=cfg.user_max_priority)] if auth_on else []

    agents = AgentPool(fleet_tls.channel_credentials(cfg.tls_ca, cfg.tls_cert, cfg.tls_key) if tls else None)
    nudges = SchedulerNudges()  # the parts below tell the scheduler of work; it listens once built
    reconciler = Reconciler(engine, agents, interval=cfg.reconcile_interval, on_restart=cfg.on_restart,
                            wake_scheduler=nudges.wake)
    fleet = Fleet(engine, reconciler, nudges.nodes_changed, node_timeout=cfg.node_timeout,
                  heartbeat_interval=cfg.heartbeat_interval, lost_after=cfg.lost_after)
    scheduler = Scheduler(engine, agents, fleet.fresh_nodes, interval=cfg.schedule_interval,
                          node_unreachable=fleet.unreachable, half_life_s=cfg.fair_share_half_life)
    nudges.listen(scheduler.wake, scheduler.invalidate_nodes)
    life = Lifecycle(engine, agents, reconciler, nudges.wake, nodes_changed=nudges.nodes_changed)
    keeper = Keeper(life)

    registry = new_registry()
    registry.register(CoordinatorCollector(engine, scheduler, reconciler, fleet))
    registry.register(UsageCollector(engine))
    registry.register(ExclusivityCollector(fleet.gpu_watch))
    server, hs = build_server(interceptors=[RpcMetricsInterceptor(registry), *auth_interceptors,
                                            UserCapacityInterceptor()])
    add_to_server(CoordinatorService(engine, life, agents), FleetService(fleet, agents), server)
    enable_reflection(server, SERVICES)
    creds = fleet_tls.server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_ca) if tls else None
    port = bind(server, cfg.listen, creds)
    host, _ = config.split_hostport(cfg.listen, "--listen")

    # The coordinator's loops, in start order (closed in reverse): reconcile what the database says
    # against the agents before placing anything new.
    loops = [
        LoopEntry("reconciler", reconciler.loop.interval, reconciler.start, reconciler.close,
                  lambda: reconciler.last_ok),
        LoopEntry("node-sweep", fleet.loop.interval, fleet.start, fleet.close, lambda: fleet.last_ok),
        LoopEntry("scheduler", scheduler.loop.interval, scheduler.start, scheduler.close,
                  lambda: scheduler.last_ok),
        LoopEntry("keeper", keeper.loop.interval, keeper.start, keeper.close, lambda: keeper.last_ok),
    ]
    return Daemon(
        name="coordinator", logger=log, server=server, health=hs, services=SERVICES, port=port, host=host,
        state_dir=state_dir, loops=loops, checks={"database": lambda: _db_ok(engine)},
        registry=registry, metrics_listen=cfg.metrics_listen, closers=[agents.close, engine.dispose],
        ready_fields=lambda: {"database": engine.dialect.name, "tls": tls, "auth": auth_on},
        stale_floor=cfg.stale_floor,
    )


def run(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "tokens":  # the first admin token, on the coordinator host
        return token_cli.run(argv[1:])
    migrate_only = bool(argv) and argv[0] == "migrate"
    if migrate_only:
        argv = argv[1:]
    cfg = settings.parse(argv)
    flog.setup(cfg.log_level)
    db = open_database(cfg)
    if migrate_only:
        return 0
    tune_for_latency()
    return serve(build(cfg, db))


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
