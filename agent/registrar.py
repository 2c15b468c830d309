"""Registers this agent with the coordinator and heartbeats every few seconds; starts the reporter
that pushes the agent's outbox (agent/reporter.py: what happened to each job, at once).

The heartbeat carries the GPU snapshot and a digest of every job the agent holds; the answer
carries fencing orders (attempts that are no longer current: stop them) and acknowledgements
(final states the coordinator stored: the agent may forget them). Losing the coordinator changes
nothing for running jobs; the agent keeps trying every interval.
"""
from __future__ import annotations

import logging
import threading
import time

import grpc
from gpufleet.agent import convert
from gpufleet.agent.control import SECRET_HEADER
from gpufleet.agent.reporter import Reporter
from gpufleet.agent.service import AgentService

from gpufleet.log import event
from gpufleet.server import channel
from gpufleet.v1 import coordinator_pb2 as cpb
from gpufleet.v1 import coordinator_pb2_grpc

log = logging.getLogger("gpufleet.agent.registrar")
FENCE_GRACE_SECONDS = 10


def parse_labels(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise ValueError(f"--labels: expected key=value, got {item!r}")
        out[k.strip()] = v.strip()
    return out


class Registrar:
    def __init__(self, coordinator: str, service: AgentService, advertise: str, labels: str = "",
                 interval: float = 2.0, credentials: grpc.ChannelCredentials | None = None,
                 control_secret: str = "") -> None:
        # Sent with Register so that the coordinator can call this agent's plaintext API (agent/control.py).
        self.register_metadata = [(SECRET_HEADER, control_secret)] if control_secret else None
        self.service = service
        self.advertise = advertise
        self.labels = parse_labels(labels)
        self.interval = interval
        self.channel = channel(coordinator, credentials)
        self.stub = coordinator_pb2_grpc.FleetStub(self.channel)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="registrar", daemon=True)
        self.registered = False
        self.last_ok = 0.0
        self.reporter = Reporter(service.sup, lambda: self.stub, lambda: self.service.node_name,
                                 lambda: self.registered, self._reregister)

    def _reregister(self) -> None:
        self.registered = False

    def start(self) -> None:
        self._thread.start()
        self.reporter.start()

    def close(self) -> None:
        self._stop.set()
        self.reporter.close()
        self._thread.join(timeout=5)
        self.channel.close()

    def _register(self) -> None:
        node = self.service.node_info()
        r = self.stub.Register(cpb.RegisterRequest(
            node_name=node.node_name, address=self.advertise, labels=self.labels,
            agent_version=node.agent_version, runtime=node.runtime, gpus=node.gpus,
        ), timeout=5, metadata=self.register_metadata)
        if r.heartbeat_interval_seconds > 0:
            self.interval = r.heartbeat_interval_seconds
        self.registered = True
        event(log, "registered", node=node.node_name, address=self.advertise)

    def heartbeat_once(self) -> None:
        if not self.registered:
            self._register()
        node = self.service.node_info()
        sup = self.service.sup
        jobs = [cpb.JobDigest(job_id=j.job_id, attempt=j.attempt, state=convert.state_to_pb(j.state))  # type: ignore[arg-type]
                for j in sup.jobs()]
        r = self.stub.Heartbeat(cpb.HeartbeatRequest(node_name=node.node_name, gpus=node.gpus, jobs=jobs,
                                                     last_event_seq=node.last_event_seq), timeout=5)
        if r.reregister:
            self.registered = False
            return
        for d in r.stop:
            event(log, "fence.stop", job_id=d.job_id, attempt=d.attempt)
            try:
                sup.stop(d.job_id, FENCE_GRACE_SECONDS, d.attempt)
            except Exception as exc:  # noqa: BLE001 - unknown or ended: nothing to fence
                event(log, "fence.skip", job_id=d.job_id, attempt=d.attempt, why=str(exc))
        for d in r.acknowledged:
            try:
                sup.acknowledge(d.job_id, d.attempt)
            except Exception as exc:  # noqa: BLE001
                event(log, "ack.skip", job_id=d.job_id, attempt=d.attempt, why=str(exc))
        self.last_ok = time.monotonic()

    def _loop(self) -> None:
        # No growing backoff: a failed heartbeat costs one connection attempt, and a coordinator
        # that comes back must hear from every node well within its node timeout.
        while not self._stop.is_set():
            try:
                self.heartbeat_once()
            except grpc.RpcError as exc:
                self.registered = self.registered and exc.code() != grpc.StatusCode.NOT_FOUND
                event(log, "heartbeat.failed", logging.WARNING, code=str(exc.code()), detail=exc.details())
            except Exception:  # noqa: BLE001 - the loop must survive anything
                log.exception("heartbeat failed")
            self._stop.wait(self.interval)
