"""`gpufleet-agent`: restore state, then serve gpufleet.v1.Agent until SIGTERM.

`build(config)` makes the daemon (gpufleet/daemon.py `Daemon`: server, loops, health checks) and
`serve` runs it. Order matters (Nomad's lesson): the store is restored and every job re-attached
*before* the server accepts a Launch, so a restart can never start a finished job again.
"""
from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from gpufleet.agent import jobuser, owneruids, precheck, settings, statecheck
from gpufleet.agent.control import LocalControl, write_secret
from gpufleet.agent.gpus import GpuMonitor, open_gpu_source
from gpufleet.agent.jobuser import JobUser
from gpufleet.agent.metrics import AgentCollector
from gpufleet.agent.orphans import OrphanReaper
from gpufleet.agent.runtime.base import Runtime
from gpufleet.agent.service import AgentService, add_to_server
from gpufleet.agent.settings import AgentConfig
from gpufleet.agent.spec import Roots
from gpufleet.agent.supervisor import Supervisor

from gpufleet import auth, config, startup
from gpufleet import log as flog
from gpufleet import tls as fleet_tls
from gpufleet.daemon import Daemon, LoopEntry, main_wrapper, serve, tune_for_latency
from gpufleet.errors import InvalidArgument
from gpufleet.metrics import RpcMetricsInterceptor, new_registry
from gpufleet.server import (
    bind,
    build_server,
    enable_reflection,
)

log = logging.getLogger("gpufleet.agent")
SERVICE = "gpufleet.v1.Agent"

OPTIONS = settings.OPTIONS  # re-exported: the README test and the benches read them here


def choose_runtime(name: str, state_dir: Path, node_name: str, docker_host: str, container_user: str = "",
                   job_user: JobUser | None = None, output_root: Path | None = None) -> Runtime:
    from gpufleet.agent.cgroups import JobCgroups
    from gpufleet.agent.runtime.process import ProcessRuntime

    if name not in ("auto", "docker", "process"):
        raise InvalidArgument("--runtime", f"must be docker, process or auto, got {name!r}")
    jobs_root = state_dir / "jobs"
    if name == "process":
        return ProcessRuntime(jobs_root, job_user, output_root, JobCgroups.detect(jobs_root))
    from gpufleet.agent.runtime.docker import DockerRuntime

    url = docker_host or None
    if DockerRuntime.available(url):
        return DockerRuntime(node_name, base_url=url, default_user=container_user, output_root=output_root)
    if name == "docker":
        raise InvalidArgument("--runtime", "docker was asked for but no Docker engine answers")
    log.info("runtime.auto", extra={"fields": {"chosen": "process", "why": "no Docker engine answers"}})
    return ProcessRuntime(jobs_root, job_user, output_root, JobCgroups.detect(jobs_root))


def base_env() -> dict[str, str]:
    """The environment every process-runtime job starts from (never the agent's secrets)."""
    keep = ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "USER")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    return env


def build(cfg: AgentConfig) -> Daemon:
    """Check the settings, open the store, restore every recorded job, and make the server (bound, not
    started) with the agent's loops. Nothing is served before `serve`: a restart never starts a
    finished job again because restore is done before a Launch can arrive."""
    tls = precheck.check(cfg)  # every flag judged before anything is made on disk
    state_dir = config.state_path(cfg.state_dir)
    roots = Roots(config.state_path(cfg.output_root), config.state_path(cfg.data_root), state_dir / "jobs")
    # Refuses root and a missing account (a docker-only node never runs host processes).
    job_user = None if cfg.runtime == "docker" else jobuser.for_agent(cfg.job_user, cfg.allow_root_jobs)
    uid_range = owneruids.parse_range(cfg.owner_uids)
    for p in (state_dir, roots.output_root, roots.data_root, roots.jobs_root):
        p.mkdir(parents=True, exist_ok=True)
    for p in (state_dir, roots.jobs_root):
        startup.private_dir(p)  # the agent's files (database, job records, logs): no one else's business
    # With TLS the node is the certificate's name (precheck refused a different --node-name).
    node_name = fleet_tls.describe(cfg.tls_cert).name if tls else cfg.node_name or socket.gethostname()

    warn_only, reaper = exclusivity_policy(cfg.gpu_exclusivity, cfg.orphan_grace)
    store = statecheck.open_store(state_dir, cfg.adopt)  # refuses a missing or corrupt agent.db
    monitor = GpuMonitor(open_gpu_source(cfg.gpus), interval=cfg.gpu_sample_interval)
    monitor.warn_only, monitor.reaper = warn_only, reaper
    monitor.start()  # before restore: a resumed launch checks its GPUs against a first sample
    runtime = choose_runtime(cfg.runtime, state_dir, node_name, cfg.docker_host, cfg.container_user,
                             job_user, roots.output_root)
    if runtime.name == "process" and job_user is not None:
        flog.event(log, "agent.job_user", user=job_user.name, uid=job_user.uid, gid=job_user.gid)
        blocked = jobuser.blocked_on_the_way(roots.output_root.resolve(), job_user.uid, job_user.gid)
        if blocked is not None:
            flog.event(log, "agent.output_root_unreachable", logging.WARNING, output_root=str(roots.output_root),
                       blocked_at=str(blocked), user=job_user.name,
                       hint=f"jobs run as {job_user.name} cannot pass {blocked} by name (programs that cd to "
                            "their working directory again, like pyenv shims, fail): give that account search "
                            "permission on it (chmod o+x, or its group) or choose an --output-root it can reach")
    owner_users = owner_accounts(store, uid_range, runtime.name, job_user, cfg)
    if owner_users is not None:
        flog.event(log, "agent.owner_uids", range=str(owner_users.rng), gid=owner_users.base.gid)
    sup = Supervisor(store, runtime, monitor, roots, base_env=base_env(), poll_interval=cfg.poll_interval,
                     log_max_bytes=cfg.log_max_bytes, owner_users=owner_users)
    sup.restore()
    if cfg.adopt:
        statecheck.kill_orphans(runtime, store, roots.jobs_root)

    registry = new_registry()
    registry.register(AgentCollector(sup, monitor, node_name))
    # Plaintext (loopback or --insecure): only root, the agent's user or the secret's holder controls it.
    local_control = None if tls else LocalControl(write_secret(state_dir), allow_remote=cfg.insecure)
    server, hs = build_server(interceptors=[RpcMetricsInterceptor(registry), *auth.interceptors_for_agent(tls),
                                            *([local_control] if local_control else [])])
    service = AgentService(sup, monitor, node_name)
    add_to_server(service, server)
    enable_reflection(server, [SERVICE])
    creds = fleet_tls.server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_ca) if tls else None
    port = bind(server, cfg.listen, creds)
    if local_control is not None:
        local_control.server_port = port
    host, _ = config.split_hostport(cfg.listen, "--listen")

    # The agent's loops, in start order (closed in reverse); jobs keep running when they stop.
    loops = [
        LoopEntry("gpu-monitor", monitor.interval, None, monitor.stop, lambda: monitor.last_pass),
        LoopEntry("supervisor", sup.poll_interval, sup.start, sup.close, lambda: sup.last_tick_ok),
    ]
    if cfg.coordinator:
        from gpufleet.agent.registrar import Registrar

        dial_creds = fleet_tls.channel_credentials(cfg.tls_ca, cfg.tls_cert, cfg.tls_key) if tls else None
        registrar = Registrar(cfg.coordinator, service, advertise=cfg.advertise or f"{host}:{port}",
                              labels=cfg.labels, credentials=dial_creds,
                              control_secret=local_control.secret if local_control else "")
        # Not watched: its passes wait on the coordinator, whose absence leaves this agent healthy.
        loops.append(LoopEntry("registrar", registrar.interval, registrar.start, registrar.close, None))

    return Daemon(
        name="agent", logger=log, server=server, health=hs, services=[SERVICE], port=port, host=host,
        state_dir=state_dir, loops=loops,
        checks={"store": store.ping, "runtime": lambda: sup.runtime_ok},
        registry=registry, metrics_listen=cfg.metrics_listen, closers=[runtime.close, store.close],
        ready_fields=lambda: {"runtime": runtime.name, "gpus": monitor.source.kind, "node": node_name,
                              "jobs": len(store.live_jobs())},
        stale_floor=cfg.stale_floor,
    )


def run(argv: list[str] | None = None) -> int:
    cfg = settings.parse(argv)
    flog.setup(cfg.log_level)
    tune_for_latency()
    return serve(build(cfg))


def owner_accounts(store: owneruids.UidStore, rng: owneruids.UidRange | None, runtime: str,
                   job_user: JobUser | None, cfg: AgentConfig) -> owneruids.OwnerUsers | None:
    """Each owner's own uid (--owner-uids), with the job user's group and home. None when off, when
    the agent is not root (it cannot switch users) or when process jobs run as root by the admin's
    choice (--allow-root-jobs with a root --job-user: every job is trusted there)."""
    if rng is None or os.geteuid() != 0:
        return None
    if runtime == "docker":
        # A docker-only node may have no job account: the owner's uid is then its group too.
        try:
            job_user = jobuser.resolve(cfg.job_user, allow_root=False)
        except InvalidArgument:
            job_user = None
        base = job_user or JobUser("", 0, rng.first, "/")
        return owneruids.OwnerUsers(store, rng, base, gid_is_uid=job_user is None)
    if job_user is None or job_user.is_root:
        return None
    return owneruids.OwnerUsers(store, rng, job_user)


def exclusivity_policy(mode: str, grace: float) -> tuple[bool, OrphanReaper]:
    """(warn_only, reaper) for --gpu-exclusivity and --orphan-grace."""
    if mode not in ("enforce", "warn"):
        raise InvalidArgument("--gpu-exclusivity", f"must be enforce or warn, got {mode!r}")
    if not grace >= 0:  # also refuses NaN
        raise InvalidArgument("--orphan-grace", f"must be >= 0 seconds (0: never kill), got {grace}")
    return mode == "warn", OrphanReaper(grace)


def main() -> None:
    main_wrapper("gpufleet-agent", run)


if __name__ == "__main__":
    main()
