"""The keeper: a loop that enforces what the scheduler's options promise over time.

- A RUNNING job past its time limit is stopped (with its grace) and ends STOPPED `TIME_LIMIT`.
- A QUEUED job whose afterok dependency ended without success can never start: it is CANCELED
  `DEPENDENCY` (a pipeline's dependants of a failed step are skipped this way).
- A model created with auto_test starts step 2 once step 1 completed, through the same rules as
  RunTest (a refusal is logged and the option cleared, so it is tried once).
Every action goes through the lifecycle; this module only decides when.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from gpufleet.coordinator.db import options
from gpufleet.coordinator.dependencies import DependencyMode, verdict
from gpufleet.coordinator.lifecycle import Lifecycle
from gpufleet.coordinator.states import DesiredState, TerminationReason

from gpufleet.errors import FleetError
from gpufleet.log import event
from gpufleet.loop import Loop

log = logging.getLogger("gpufleet.coordinator.keeper")


def past_limit(started_at: datetime | None, limit_s: int, now: datetime) -> bool:
    return started_at is not None and (now - started_at).total_seconds() >= limit_s


class Keeper:
    def __init__(self, life: Lifecycle, *, interval: float = 1.0,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.life = life
        self.clock = clock
        self.loop = Loop("keeper", self.run_once, interval)

    @property
    def last_ok(self) -> float:
        return self.loop.last_ok

    def start(self) -> None:
        self.loop.start()

    def close(self) -> None:
        self.loop.close()

    def run_once(self) -> bool:
        now = self.clock()
        with self.life.engine.connect() as conn:
            timed = options.running_with_time_limits(conn)
            waiting = options.queued_with_dependencies(conn)
            statuses = options.latest_status(conn, {d for _, o in waiting for d in o.depends_on})
            due = options.models_due_for_auto_test(conn)
        for job, limit in timed:
            if job.desired_state is DesiredState.RUN and past_limit(job.started_at, limit, now):
                event(log, "job.time_limit", job_id=job.id, node=job.node, limit_s=limit)
                self.life.stop_job(job, "time limit", TerminationReason.TIME_LIMIT.message(
                    f"ran longer than its time limit of {limit} s"))
        for job, o in waiting:
            v = verdict(DependencyMode(o.dependency_mode), {d: statuses.get(d) for d in o.depends_on})
            if v.never:
                event(log, "job.dependency_failed", job_id=job.id, why=v.never)
                self.life.stop_job(job, "dependency", TerminationReason.DEPENDENCY.message(v.never))
        for uuid, auto in due:
            self._auto_test(uuid, auto)
        return False

    def _auto_test(self, uuid: str, auto: str) -> None:
        model = self.life.get_model(uuid)
        epoch = (model.best_epoch or 0) if auto == "best" else int(auto)
        try:
            if epoch < 1:
                raise FleetError(f"no best epoch recorded for model {uuid}")
            self.life.run_test(uuid, epoch)
            event(log, "model.auto_test", model=uuid, epoch=epoch)
        except FleetError as exc:
            event(log, "model.auto_test_refused", logging.WARNING, model=uuid, why=str(exc))
            with self.life.engine.begin() as conn:
                opts = options.get_model_options(conn, [uuid]).get(uuid)
                options.save_model_options(conn, uuid, auto_test="", time_limit_s=opts.time_limit_s if opts else None)
