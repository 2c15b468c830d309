"""Live updates: one poller per web process watches the coordinator; every browser's SSE stream
waits on it, so a hundred open tabs cost the coordinator what one does."""
from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import AsyncIterator

import grpc

from gpufleet.v1 import coordinator_pb2 as cpb
from gpufleet.v1 import coordinator_pb2_grpc

INTERVAL = 0.3


def fingerprint(stub: coordinator_pb2_grpc.CoordinatorStub) -> str:
    """A digest of what the console shows that moves: the newest models and jobs, and the nodes."""
    h = hashlib.sha256()
    for msg in (stub.ListModels(cpb.ListModelsRequest(size=100), timeout=5),
                stub.ListJobs(cpb.ListJobsQuery(size=100), timeout=5),
                stub.ListNodes(cpb.ListNodesRequest(), timeout=5)):
        h.update(msg.SerializeToString(deterministic=True))
    return h.hexdigest()


class Poller:
    """Bumps `version` and wakes the waiters whenever the fingerprint changes."""

    def __init__(self, stub: coordinator_pb2_grpc.CoordinatorStub) -> None:
        self.stub = stub
        self.version = 0
        self.changed = asyncio.Condition()
        self.task: asyncio.Task[None] | None = None

    def ensure_started(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self.run())

    async def run(self) -> None:
        last = ""
        while True:
            try:
                now = await asyncio.to_thread(fingerprint, self.stub)
            except grpc.RpcError:
                now = last  # coordinator away or the poller's token refused: keep the streams open
            if now != last:
                last = now
                async with self.changed:
                    self.version += 1
                    self.changed.notify_all()
            await asyncio.sleep(INTERVAL)

    def moved_since(self, seen: int) -> bool:
        return self.version != seen

    async def stream(self) -> AsyncIterator[str]:
        self.ensure_started()
        seen = self.version
        yield f"data: {seen}\n\n"
        while True:
            async with self.changed:
                try:
                    await asyncio.wait_for(self.changed.wait_for(functools.partial(self.moved_since, seen)), 15)
                except TimeoutError:
                    yield ": keep-alive\n\n"  # comments keep proxies from closing an idle stream
                    continue
                seen = self.version
            yield f"data: {seen}\n\n"
