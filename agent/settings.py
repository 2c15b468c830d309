"""The agent's settings: its options (flags, GPUFLEET_* environment, TOML file) and the typed
`AgentConfig` they become, which is all `build` reads (no argparse Namespace travels further)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gpufleet import config
from gpufleet.daemon import STALE_FLOOR_S

OPTIONS = [
    config.Option("listen", "127.0.0.1:50051", "HOST:PORT to serve gpufleet.v1.Agent on"),
    config.Option("state-dir", "/var/lib/gpufleet/agent", "where the agent keeps its SQLite store and job files"),
    config.Option("runtime", "auto", "docker, process, or auto (docker when the engine answers)"),
    config.Option("docker-host", "", "Docker engine URL (default: DOCKER_HOST or the local socket)"),
    config.Option("container-user", "", "user (name or uid:gid) containers run as unless the spec names one "
                  "(default: the image's user)"),
    config.Option("job-user", "gpufleet-job", "local account process-runtime jobs run as (name, uid or uid:gid); "
                  "never root unless --allow-root-jobs"),
    config.Option("owner-uids", "62000-62999", "uids FIRST-LAST given one per job owner (auth on), kept in the "
                  "agent's store, never a local account's uid; each owner's jobs run as its own uid (group: "
                  "--job-user's) in a 0700 users/<owner>/ folder; none: every job runs as --job-user"),
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


@dataclass(frozen=True)
class AgentConfig:
    """One field per option in OPTIONS (same name, underscores), with its default."""

    listen: str = "127.0.0.1:50051"
    state_dir: str = "/var/lib/gpufleet/agent"
    runtime: str = "auto"
    docker_host: str = ""
    container_user: str = ""
    job_user: str = "gpufleet-job"
    owner_uids: str = "62000-62999"
    allow_root_jobs: bool = False
    adopt: bool = False
    gpus: str = "auto"
    gpu_sample_interval: float = 5.0
    gpu_exclusivity: str = "enforce"
    orphan_grace: float = 60.0
    output_root: str = "/var/lib/gpufleet/output"
    data_root: str = "/var/lib/gpufleet/data"
    coordinator: str = ""
    node_name: str = ""
    advertise: str = ""
    labels: str = ""
    poll_interval: float = 0.5
    log_max_bytes: int = 64 * 1024 * 1024
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    insecure: bool = False
    metrics_listen: str = "127.0.0.1:9410"
    log_level: str = "info"
    # Not an option: the least time a loop may go without a completed pass before health fails
    # (gpufleet/daemon.py); tests that hang a loop on purpose lower it.
    stale_floor: float = STALE_FLOOR_S


def parse(argv: Sequence[str] | None = None) -> AgentConfig:
    ns = config.parse("gpufleet-agent", "gpufleet agent: runs jobs on this GPU host", OPTIONS, argv)
    return config.typed(AgentConfig, OPTIONS, ns)
