"""`gpufleet-agent`: restore state, then serve gpufleet.v1.Agent until SIGTERM.

Order matters (Nomad's lesson): the store is restored and every job re-attached *before* the
server accepts a Launch, so a restart can never start a finished job again.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

from gpufleet.agent import jobuser, statecheck
from gpufleet.agent.control import LocalControl, write_secret
from gpufleet.agent.gpus import GpuMonitor, open_gpu_source
from gpufleet.agent.jobuser import JobUser
from gpufleet.agent.metrics import AgentCollector
from gpufleet.agent.orphans import OrphanReaper
from gpufleet.agent.runtime.base import Runtime
from gpufleet.agent.service import AgentService, add_to_server
from gpufleet.agent.spec import Roots
from gpufleet.agent.supervisor import Supervisor

from gpufleet import auth, config, startup
from gpufleet import log as flog
from gpufleet import tls as fleet_tls
from gpufleet.daemon import main_wrapper, serve_until_signalled, start_metrics, tune_for_latency
from gpufleet.errors import InvalidArgument
from gpufleet.metrics import RpcMetricsInterceptor, new_registry, stop_http
from gpufleet.server import (
    bind,
    build_server,
    check_listen_security,
    enable_reflection,
    set_health,
)

log = logging.getLogger("gpufleet.agent")
SERVICE = "gpufleet.v1.Agent"

OPTIONS = [
    config.Option("listen", "127.0.0.1:50051", "HOST:PORT to serve gpufleet.v1.Agent on"),
    config.Option("state-dir", "/var/lib/gpufleet/agent", "where the agent keeps its SQLite store and job files"),
    config.Option("runtime", "auto", "docker, process, or auto (docker when the engine answers)"),
    config.Option("docker-host", "", "Docker engine URL (default: DOCKER_HOST or the local socket)"),
    config.Option("container-user", "", "user (name or uid:gid) containers run as unless the spec names one "
                  "(default: the image's user)"),
    config.Option("job-user", "gpufleet-job", "local account process-runtime jobs run as (name, uid or uid:gid); "
                  "never root unless --allow-root-jobs"),
    config.Option("allow-root-jobs", False, "let process-runtime jobs run as root (only if every job on this node "
                  "is trusted)", bool),
    config.Option("adopt", False, "start with a fresh store when agent.db is missing or corrupt, killing the "
                  "jobs it cannot account for (otherwise the agent refuses to start)", bool),
    config.Option("gpus", "auto", "auto (NVML when present, else none), none, nvml, or fake:N"),
    config.Option("gpu-sample-interval", 5.0, "seconds between GPU samples", float),
    config.Option("gpu-exclusivity", "enforce", "enforce (a GPU with a foreign or orphan process is not offered "
                  "until free) or warn (it stays offered; the GPU's reason says why)"),
    config.Option("orphan-grace", 60.0, "seconds an ended job's process may hold a GPU before it is killed "
                  "(0: never kill, only report)", float),
    config.Option("output-root", "/var/lib/gpufleet/output", "the only host folder jobs may write to"),
    config.Option("data-root", "/var/lib/gpufleet/data", "the only host folder jobs may read data from"),
    config.Option("coordinator", "", "HOST:PORT of the coordinator to register with (optional)"),
    config.Option("node-name", "", "name of this node in the fleet (default: host name)"),
    config.Option("advertise", "", "HOST:PORT the coordinator should dial (default: --listen)"),
    config.Option("labels", "", "node labels, key=value,key=value"),
    config.Option("poll-interval", 0.5, "seconds between job observations", float),
    config.Option("log-max-bytes", 64 * 1024 * 1024, "rotate a job's captured output at this size", int),
    config.Option("tls-cert", "", "this agent's certificate (PEM, role agent, CN = node name)"),
    config.Option("tls-key", "", "its private key (PEM)"),
    config.Option("tls-ca", "", "the fleet CA (PEM): only the coordinator's certificate may call the agent"),
    config.Option("insecure", False, "allow plaintext gRPC on a non-loopback address", bool),
    config.Option("metrics-listen", "127.0.0.1:9410",
                  "HOST:PORT for Prometheus /metrics (empty: off; not 9400, dcgm-exporter's port)"),
    config.Option("log-level", "info", "debug, info, warning, error"),
]


def choose_runtime(name: str, state_dir: Path, node_name: str, docker_host: str, container_user: str = "",
                   job_user: JobUser | None = None, output_root: Path | None = None) -> Runtime:
    from gpufleet.agent.runtime.process import ProcessRuntime

    if name not in ("auto", "docker", "process"):
        raise InvalidArgument("--runtime", f"must be docker, process or auto, got {name!r}")
    jobs_root = state_dir / "jobs"
    if name == "process":
        return ProcessRuntime(jobs_root, job_user, output_root)
    from gpufleet.agent.runtime.docker import DockerRuntime

    url = docker_host or None
    if DockerRuntime.available(url):
        return DockerRuntime(node_name, base_url=url, default_user=container_user)
    if name == "docker":
        raise InvalidArgument("--runtime", "docker was asked for but no Docker engine answers")
    log.info("runtime.auto", extra={"fields": {"chosen": "process", "why": "no Docker engine answers"}})
    return ProcessRuntime(jobs_root, job_user, output_root)


def base_env() -> dict[str, str]:
    """The environment every process-runtime job starts from (never the agent's secrets)."""
    keep = ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "USER")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    return env


def run(argv: list[str] | None = None) -> int:
    opts = config.parse("gpufleet-agent", "gpufleet agent: runs jobs on this GPU host", OPTIONS, argv)
    flog.setup(opts.log_level)
    tls = startup.check_tls_flags(opts.tls_cert, opts.tls_key, opts.tls_ca, "agent")
    check_listen_security(opts.listen, opts.insecure, tls)
    if tls and opts.coordinator:  # the coordinator verifies the certificate against the address it dials
        fleet_tls.check_names_address(opts.tls_cert, opts.advertise or opts.listen)
    state_dir = config.state_path(opts.state_dir)
    roots = Roots(config.state_path(opts.output_root), config.state_path(opts.data_root), state_dir / "jobs")
    # Refuses root and a missing account (a docker-only node never runs host processes).
    job_user = None if opts.runtime == "docker" else jobuser.for_agent(opts.job_user, opts.allow_root_jobs)
    for p in (state_dir, roots.output_root, roots.data_root, roots.jobs_root):
        p.mkdir(parents=True, exist_ok=True)
    for p in (state_dir, roots.jobs_root):
        startup.private_dir(p)  # the agent's files (database, job records, logs): no one else's business
    node_name = opts.node_name or socket.gethostname()
    if tls:
        # The coordinator accepts heartbeats only for the name in the agent's certificate.
        cert_name = fleet_tls.describe(opts.tls_cert).name
        if opts.node_name and opts.node_name != cert_name:
            raise InvalidArgument("--node-name", f"{opts.node_name!r}, but --tls-cert is for {cert_name!r}: "
                                  "the coordinator would refuse every heartbeat (issue a certificate for "
                                  "this name)")
        node_name = cert_name

    warn_only, reaper = exclusivity_policy(opts.gpu_exclusivity, opts.orphan_grace)

    tune_for_latency()
    store = statecheck.open_store(state_dir, opts.adopt)  # refuses a missing or corrupt agent.db
    monitor = GpuMonitor(open_gpu_source(opts.gpus), interval=opts.gpu_sample_interval)
    monitor.warn_only, monitor.reaper = warn_only, reaper
    monitor.start()
    runtime = choose_runtime(opts.runtime, state_dir, node_name, opts.docker_host, opts.container_user,
                             job_user, roots.output_root)
    if runtime.name == "process" and job_user is not None:
        flog.event(log, "agent.job_user", user=job_user.name, uid=job_user.uid, gid=job_user.gid)
    sup = Supervisor(store, runtime, monitor, roots, base_env=base_env(), poll_interval=opts.poll_interval,
                     log_max_bytes=opts.log_max_bytes)
    sup.restore()
    if opts.adopt:
        statecheck.kill_orphans(runtime, store, roots.jobs_root)

    registry = new_registry()
    registry.register(AgentCollector(sup, monitor, node_name))
    # Plaintext (loopback or --insecure): only root, the agent's user or the secret's holder controls it.
    local_control = None if tls else LocalControl(write_secret(state_dir), allow_remote=opts.insecure)
    server, hs = build_server(interceptors=[RpcMetricsInterceptor(registry), *auth.interceptors_for_agent(tls),
                                            *([local_control] if local_control else [])])
    service = AgentService(sup, monitor, node_name)
    add_to_server(service, server)
    enable_reflection(server, [SERVICE])
    creds = fleet_tls.server_credentials(opts.tls_cert, opts.tls_key, opts.tls_ca) if tls else None
    port = bind(server, opts.listen, creds)
    if local_control is not None:
        local_control.server_port = port
    server.start()
    sup.start()
    set_health(hs, [SERVICE], True)
    host, _ = config.split_hostport(opts.listen, "--listen")
    (state_dir / "agent.addr").write_text(f"{host}:{port}\n")
    metrics_server = start_metrics(opts.metrics_listen, registry, state_dir)
    flog.event(log, "agent.ready", listen=f"{host}:{port}", runtime=runtime.name, gpus=monitor.source.kind,
               node=node_name, jobs=len(store.live_jobs()))

    registrar = None
    if opts.coordinator:
        from gpufleet.agent.registrar import Registrar

        dial_creds = fleet_tls.channel_credentials(opts.tls_ca, opts.tls_cert, opts.tls_key) if tls else None
        registrar = Registrar(opts.coordinator, service, advertise=opts.advertise or f"{host}:{port}",
                              labels=opts.labels, credentials=dial_creds,
                              control_secret=local_control.secret if local_control else "")
        registrar.start()

    serve_until_signalled(
        hs, [SERVICE], lambda: store.ping() and sup.runtime_ok and time.monotonic() - sup.last_tick_ok < 30)
    # Jobs keep running: only the agent stops. They are re-attached on the next start.
    if registrar:
        registrar.close()
    server.stop(grace=2).wait()
    stop_http(metrics_server)
    sup.close()
    monitor.stop()
    store.close()
    flog.event(log, "agent.stopped")
    return 0


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
