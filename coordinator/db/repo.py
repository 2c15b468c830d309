"""The coordinator's database operations: plain functions over a Connection.

The caller owns the transaction (`with engine.begin() as conn:`) and makes no agent RPC inside it.
Rules every function here keeps:
- Every status write is validated by coordinator.states (check_*) and writes an `events` row in
  the same transaction; a refused move raises InvalidTransition and changes nothing.
- Writers that can race another replica are guarded (`WHERE ... AND status = :expected` or
  `AND row_version = :v`) and return True when they changed the row, False when they changed
  nothing: an allowed no-op (already in that state; the first reason is kept) or a lost race.
  A caller that must tell the two apart reads the row again.
- Core statements only, parameterised; batched where the volume is (metrics).
- Time comes from the `now` argument (injected clock), defaulting to the wall clock in UTC.
"""
from __future__ import annotations

# The operations live in one module per aggregate; this module re-exports them so callers keep
# writing `repo.create_job(...)`.
from gpufleet.coordinator.db.common import (  # noqa: F401
    MAX_PAGE_SIZE,
)
from gpufleet.coordinator.db.events import (  # noqa: F401
    record_event,
)
from gpufleet.coordinator.db.jobs import (  # noqa: F401
    JobBrief,
    add_job_warnings,
    assign_jobs,
    claim_queued,
    create_job,
    get_job,
    gpus_in_use,
    job_briefs,
    jobs_on_node,
    list_jobs,
    mark_acked,
    requeue_job,
    running_jobs,
    set_desired_state,
    set_job_status,
    set_observed_many,
    set_observed_state,
)
from gpufleet.coordinator.db.metrics import (  # noqa: F401
    get_dataset_counts,
    get_job_metrics,
    get_log_tail,
    get_progress,
    ingest_metrics,
    save_log_tail,
    set_dataset_counts,
    upsert_progress,
)
from gpufleet.coordinator.db.models import (  # noqa: F401
    MODEL_FIELDS,
    create_model,
    get_model,
    list_models,
    update_model_states,
)
from gpufleet.coordinator.db.nodes import (  # noqa: F401
    clear_unreachable,
    get_node,
    heartbeat_node,
    list_nodes,
    mark_unreachable,
    set_drain_requested,
    set_node_state,
    upsert_node,
)
from gpufleet.coordinator.db.placement import (  # noqa: F401
    PLACEMENT_LOCK_KEY,
    PlaceableNode,
    healthy_indices,
    lock_placement,
    node_runtimes,
    placeable_nodes,
)
from gpufleet.coordinator.db.submit_keys import (  # noqa: F401
    claim_submit_key,
    find_submit_key,
)
