"""DownloadOutput over the Coordinator API: one file of a job's output folder, relayed in chunks from
Agent.ReadOutput on the node the job ran on. A mixin of CoordinatorService.

Who may call it is CoordinatorAuth's business (gpufleet/auth.py OWNER_READ_METHODS: the job's owner
and admins, as for its logs). The agent opens the file without following links and caps its size
(agent/outputs.py); its refusals (NOT_FOUND, a link, over the cap) reach the caller with their code.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
from gpufleet.coordinator.agents import AgentPool
from gpufleet.coordinator.db import repo
from gpufleet.coordinator.lifecycle import Lifecycle, check_job_id
from sqlalchemy.engine import Engine

from gpufleet.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable, Upstream, rpc_stream
from gpufleet.v1 import agent_pb2 as apb
from gpufleet.v1 import coordinator_pb2 as cpb

# The agent's own refusals, passed on as they are; anything else means the node could not answer.
PASSED_ON = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
             grpc.StatusCode.RESOURCE_EXHAUSTED)


class OutputDownloads:
    engine: Engine
    life: Lifecycle
    agents: AgentPool

    @rpc_stream
    def DownloadOutput(self, request: cpb.DownloadOutputRequest, context: Any) -> Iterator[apb.OutputChunk]:
        check_job_id(request.job_id)
        if not request.path:
            raise InvalidArgument("path", "must name a file in the job's output folder (e.g. result.zip)")
        job = self.life.get_job(request.job_id)
        output_dir = str(job.spec.get("output_dir") or "")
        if not job.node or not output_dir:
            raise FailedPrecondition(f"job {job.id} has no outputs yet: it has not started on a node"
                                     if not job.node else f"job {job.id} has no output folder")
        with self.engine.connect() as conn:
            try:
                address = repo.get_node(conn, job.node).address
            except NotFound:
                raise FailedPrecondition(f"job {job.id} ran on node {job.node}, which is no longer "
                                         "registered: its outputs are on that host only") from None
        stream = self.agents.stub(address).ReadOutput(
            apb.ReadOutputRequest(output_dir=output_dir, path=request.path), timeout=None)
        context.add_callback(stream.cancel)  # the caller went away: stop reading on the agent too
        try:
            yield from stream
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            if code in PASSED_ON:
                raise Upstream(code, f"job {job.id} on {job.node}: {exc.details()}") from None  # type: ignore[attr-defined]
            raise Unavailable(f"job {job.id}: cannot read its outputs from the agent on {job.node}: "
                              f"{code.name}") from None
