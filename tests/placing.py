"""Putting one queued job RUNNING in tests, by the scheduler's own path: the row locked, then the batched
assignment (repo.assign_jobs), which is the only assignment production has."""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from gpufleet.coordinator.db import repo
from gpufleet.coordinator.states import JobStatus
from sqlalchemy import Connection


def assign(conn: Connection, job_id: str, node: str, gpu_indices: Sequence[int], *, actor: str = "scheduler",
           now: datetime | None = None) -> bool:
    """QUEUED -> RUNNING on `node` with these GPUs; False (and nothing written) when the job is not QUEUED."""
    if repo.get_job(conn, job_id, for_update=True).status is not JobStatus.QUEUED:
        return False
    repo.assign_jobs(conn, [(job_id, node, list(gpu_indices))], actor=actor, now=now)
    return True
