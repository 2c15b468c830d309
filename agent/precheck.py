"""The agent's settings judged before anything is made on disk: a bad flag exits 2 with one line and
leaves no state dir, store or folders behind (issue 17). What needs the disk or the node (the job
account, the store, a Docker engine, NVML) is checked later, in `build`."""
from __future__ import annotations

from gpufleet.agent import owneruids
from gpufleet.agent.gpus import open_gpu_source
from gpufleet.agent.settings import AgentConfig

from gpufleet import config, startup
from gpufleet import log as flog
from gpufleet import tls as fleet_tls
from gpufleet.errors import InvalidArgument
from gpufleet.server import check_listen_security

RUNTIMES = ("auto", "docker", "process")
EXCLUSIVITY = ("enforce", "warn")


def check(cfg: AgentConfig) -> bool:
    """Raise InvalidArgument naming the first bad setting; return whether TLS is on."""
    flog.check_level(cfg.log_level)
    if cfg.runtime not in RUNTIMES:
        raise InvalidArgument("--runtime", f"must be docker, process or auto, got {cfg.runtime!r}")
    if cfg.gpus.strip().lower() not in ("auto", "nvml", "none"):
        open_gpu_source(cfg.gpus)  # fake:N is judged (and made, in memory) without touching the node
    if cfg.gpu_exclusivity not in EXCLUSIVITY:
        raise InvalidArgument("--gpu-exclusivity", f"must be enforce or warn, got {cfg.gpu_exclusivity!r}")
    if not cfg.orphan_grace >= 0:  # also refuses NaN
        raise InvalidArgument("--orphan-grace", f"must be >= 0 seconds (0: never kill), got {cfg.orphan_grace}")
    for name, value in (("--poll-interval", cfg.poll_interval), ("--gpu-sample-interval", cfg.gpu_sample_interval),
                        ("--log-max-bytes", cfg.log_max_bytes)):
        if not value > 0:
            raise InvalidArgument(name, f"must be > 0, got {value}")
    for name, addr in (("--advertise", cfg.advertise), ("--coordinator", cfg.coordinator),
                       ("--metrics-listen", cfg.metrics_listen)):
        if addr:
            config.split_hostport(addr, name)
    owneruids.parse_range(cfg.owner_uids)
    tls = startup.check_tls_flags(cfg.tls_cert, cfg.tls_key, cfg.tls_ca, "agent")
    check_listen_security(cfg.listen, cfg.insecure, tls)
    if tls:
        if cfg.coordinator:  # the coordinator verifies the certificate against the address it dials
            fleet_tls.check_names_address(cfg.tls_cert, cfg.advertise or cfg.listen)
        # The coordinator accepts heartbeats only for the name in the agent's certificate.
        cert_name = fleet_tls.describe(cfg.tls_cert).name
        if cfg.node_name and cfg.node_name != cert_name:
            raise InvalidArgument("--node-name", f"{cfg.node_name!r}, but --tls-cert is for {cert_name!r}: "
                                  "the coordinator would refuse every heartbeat (issue a certificate for "
                                  "this name)")
    return tls
