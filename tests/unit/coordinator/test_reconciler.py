"""Table tests of the reconciler's pure decision: `decide(job, observation, startup=...)`,
`judge_missing` and `outputs_complete` (coordinator/reconciler.py).

One table covers every branch of the issue's reconciler rules: the job's own state (status,
desired_state, observed_state) crossed with what the agent said (Observation kind, agent state,
exit code, probe) and whether this is the first pass after a coordinator start. JobRow values are
built directly; nothing here touches a database or the network.
"""
from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest
from gpufleet.coordinator import states
from gpufleet.coordinator.agents import Observation
from gpufleet.coordinator.db.rows import JobRow
from gpufleet.coordinator.reconciler import KEEP, Decision, decide, judge_missing, outputs_complete
from gpufleet.coordinator.states import DesiredState, JobStatus, JobType

from tests.invariants import AgentJob, CoordJob, _check_match

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)

MISSING = "SERVER_RESTART_CONTAINER_MISSING_OUTPUT_INCOMPLETE"
# One reason per event, whichever daemon restarted first (issue 12).
RESTART_NONZERO = "EXIT_NONZERO"

# Probe verdicts as the agent reports them (coordinator.agents.probe_from_pb's shape).
COMPLETE = {"completed": True, "reason": "ok", "val_lines": 3, "expected_lines": 3, "has_result_zip": False,
            "best_epoch": 2, "latest_checkpoint": "epoch_3.pth", "latest_checkpoint_epoch": 3, "metrics": []}
INCOMPLETE = {"completed": False, "reason": "val.csv-lines-mismatch lines=1 expected=3", "val_lines": 1,
              "expected_lines": 3, "has_result_zip": False, "latest_checkpoint": "epoch_1.pth",
              "latest_checkpoint_epoch": 1, "metrics": []}
ZIP = {"completed": True, "reason": "ok", "has_result_zip": True, "metrics": []}
ZIP_ONLY = {"completed": False, "reason": "val.csv-missing", "has_result_zip": True, "metrics": []}
NO_REASON = {"completed": False, "reason": "", "has_result_zip": False, "metrics": []}


def job(status: JobStatus = JobStatus.RUNNING, desired: DesiredState = DesiredState.RUN,
        observed: str | None = "RUNNING", job_type: JobType = JobType.TRAIN, **kw: Any) -> JobRow:
    values: dict[str, Any] = dict(
        id="j1", root_id="j1", model_uuid=None, job_type=job_type, attempt=1, status=status,
        desired_state=desired, observed_state=observed, observed_at=T0 if observed else None,
        exit_code=None, error_message="", node="n1", gpu_indices=(0,), gpus=1, priority=0,
        spec={"command": ["true"], "output_dir": "j1", "total_epoch": 3}, constraints={}, max_retries=0,
        retries_used=0, resume_on_retry=False, name="", superseded_by=None, acked=False, created_at=T0,
        assigned_at=T0, started_at=T0, finished_at=None, row_version=2,
    )
    values.update(kw)
    return JobRow(**values)


def found(state: str, exit_code: int | None = None, message: str = "",
          probe: dict[str, Any] | None = None) -> Observation:
    return Observation(kind="found", state=state, attempt=1, exit_code=exit_code, message=message, probe=probe)


ERROR = Observation(kind="error", error="UNAVAILABLE: connection refused")
NOT_FOUND = Observation(kind="not_found", error="job j1 not found")

RUN, STOP = DesiredState.RUN, DesiredState.STOP
TRAIN, EVAL = JobType.TRAIN, JobType.EVAL


@dataclasses.dataclass(frozen=True)
class Want:
    """An expected Decision: action, and for "finish" the status, exit code, message prefix, probe."""

    action: str
    status: JobStatus | None = None
    exit_code: int | None = None
    prefix: str = ""
    exact: bool = False  # the message must equal `prefix` (not just start with it)
    probe: dict[str, Any] | None = None


KEEPS = Want("keep")


def finish(status: JobStatus, exit_code: int | None, prefix: str = "", *, exact: bool = False,
           probe: dict[str, Any] | None = None) -> Want:
    return Want("finish", status, exit_code, prefix, exact, probe)


S = JobStatus
# (id, job, observation, startup flags the row holds for, expected)
BOTH = (False, True)
TABLE: list[tuple[str, JobRow, Observation, tuple[bool, ...], Want]] = [
    # -- jobs that are not RUNNING are never touched, whatever the agent says ------------------
    *[(f"not-running-{s.value}", job(status=s, observed=None), obs, BOTH, KEEPS)
      for s in (S.QUEUED, S.SUCCESS, S.FAILED, S.STOPPED, S.CANCELED)
      for obs in (found("SUCCEEDED", 0, probe=COMPLETE),)],
    ("not-running-stopped-sees-failed", job(status=S.STOPPED), found("FAILED", 3), BOTH, KEEPS),
    ("not-running-success-sees-lost", job(status=S.SUCCESS), found("LOST", probe=INCOMPLETE), BOTH, KEEPS),
    # -- the agent cannot be asked: keep (the node's heartbeat timeout decides) ------------------
    ("inspect-error", job(), ERROR, BOTH, KEEPS),
    ("inspect-error-never-confirmed", job(observed=None), ERROR, BOTH, KEEPS),
    ("inspect-error-desired-stop", job(desired=STOP), ERROR, BOTH, KEEPS),
    # -- the agent never heard of the attempt -----------------------------------------------------
    # never confirmed (crash between commit and Launch): Launch is idempotent, send it again
    ("not-found-unconfirmed-run", job(observed=None), NOT_FOUND, BOTH, Want("relaunch")),
    # ... unless the user asked to stop it meanwhile: it never ran
    ("not-found-unconfirmed-stop", job(observed=None, desired=STOP), NOT_FOUND, BOTH,
     finish(S.STOPPED, None, "STOPPED_BY_USER: before launch", exact=True)),
    # confirmed once, then forgotten by the agent: judge its outputs
    ("not-found-confirmed-running", job(observed="RUNNING"), NOT_FOUND, BOTH, Want("probe")),
    ("not-found-confirmed-pending", job(observed="PENDING"), NOT_FOUND, BOTH, Want("probe")),
    ("not-found-confirmed-desired-stop", job(observed="RUNNING", desired=STOP), NOT_FOUND, BOTH, Want("probe")),
    # -- alive on the agent ---------------------------------------------------------------------
    ("running", job(), found("RUNNING"), BOTH, KEEPS),
    ("pending", job(observed=None), found("PENDING"), BOTH, KEEPS),
    ("running-desired-stop", job(desired=STOP), found("RUNNING"), BOTH, Want("stop")),
    ("pending-desired-stop", job(desired=STOP), found("PENDING"), BOTH, Want("stop")),
    # -- ended with exit code 0 -------------------------------------------------------------------
    ("succeeded", job(), found("SUCCEEDED", 0, probe=COMPLETE), BOTH, finish(S.SUCCESS, 0, "", exact=True,
                                                                             probe=COMPLETE)),
    # the exit code decides: outputs the probe calls incomplete do not turn an exit 0 into a stop
    ("succeeded-incomplete-probe", job(), found("SUCCEEDED", 0, probe=INCOMPLETE), BOTH,
     finish(S.SUCCESS, 0, "", exact=True, probe=INCOMPLETE)),
    ("succeeded-no-probe", job(), found("SUCCEEDED", 0), BOTH, finish(S.SUCCESS, 0, "", exact=True)),
    ("succeeded-eval", job(job_type=EVAL), found("SUCCEEDED", 0, probe=ZIP), BOTH,
     finish(S.SUCCESS, 0, "", exact=True, probe=ZIP)),
    # -- ended non-zero: FAILED with the code; the reason depends on when it was discovered -------
    ("failed-live", job(), found("FAILED", 3, probe=INCOMPLETE), (False,),
     finish(S.FAILED, 3, "EXIT_NONZERO: exit code 3", exact=True, probe=INCOMPLETE)),
    ("failed-at-restart", job(), found("FAILED", 3, probe=INCOMPLETE), (True,),
     finish(S.FAILED, 3, f"{RESTART_NONZERO}: exit code 3", exact=True, probe=INCOMPLETE)),
    ("failed-with-message-live", job(), found("FAILED", 137, "killed by signal 9"), (False,),
     finish(S.FAILED, 137, "EXIT_NONZERO: exit code 137; killed by signal 9", exact=True)),
    ("failed-with-message-at-restart", job(), found("FAILED", 137, "killed by signal 9"), (True,),
     finish(S.FAILED, 137, f"{RESTART_NONZERO}: exit code 137; killed by signal 9", exact=True)),
    # a complete-looking output folder does not save a non-zero exit
    ("failed-complete-probe", job(), found("FAILED", 1, probe=COMPLETE), (False,),
     finish(S.FAILED, 1, "EXIT_NONZERO: exit code 1", probe=COMPLETE)),
    ("failed-eval", job(job_type=EVAL), found("FAILED", 2), (True,),
     finish(S.FAILED, 2, f"{RESTART_NONZERO}: exit code 2")),
    # no exit code: the agent could not start it on the host
    ("failed-to-start", job(observed=None), found("FAILED", None, "the process runtime needs spec.command"),
     BOTH, finish(S.FAILED, None, "LAUNCH_FAILED: the process runtime needs spec.command", exact=True)),
    # an exit code the state contradicts: the exit code decides, in the stored convention (0, -1, other)
    ("failed-exit-0", job(), found("FAILED", 0, probe=COMPLETE), BOTH,
     finish(S.SUCCESS, 0, "", exact=True, probe=COMPLETE)),
    ("failed-exit-minus-1", job(), found("FAILED", -1, "killed"), BOTH,
     finish(S.STOPPED, -1, "STOPPED_ON_AGENT: killed", exact=True)),
    ("succeeded-exit-minus-1-desired-stop", job(desired=STOP), found("SUCCEEDED", -1), BOTH,
     finish(S.STOPPED, -1, "STOPPED_BY_USER", exact=True)),
    # -- stopped on the agent ---------------------------------------------------------------------
    ("stopped-by-user", job(desired=STOP), found("STOPPED", 143, "stopped on request"), BOTH,
     finish(S.STOPPED, -1, "STOPPED_BY_USER", exact=True)),
    ("stopped-by-user-exit-0", job(desired=STOP), found("STOPPED", 0, "stopped on request"), BOTH,
     finish(S.STOPPED, -1, "STOPPED_BY_USER", exact=True)),
    # stopped because the coordinator restarted under --on-restart=stop: that reason, not the user
    ("stopped-on-restart", job(desired=STOP, error_message="STOPPED_ON_RESTART: --on-restart=stop"),
     found("STOPPED", 143, "stopped on request"), BOTH,
     finish(S.STOPPED, -1, "STOPPED_ON_RESTART: --on-restart=stop", exact=True)),
    # fenced, or stopped on the host by someone else
    ("stopped-on-agent", job(), found("STOPPED", 143, "fenced"), BOTH,
     finish(S.STOPPED, -1, "STOPPED_ON_AGENT: fenced", exact=True)),
    ("stopped-on-agent-no-reason", job(), found("STOPPED", None), BOTH,
     finish(S.STOPPED, -1, "STOPPED_ON_AGENT: no reason given", exact=True)),
    # -- vanished without an exit code: the probe is the verdict ---------------------------------
    ("lost-complete", job(), found("LOST", probe=COMPLETE), BOTH, finish(S.SUCCESS, 0, "", exact=True,
                                                                         probe=COMPLETE)),
    ("lost-incomplete", job(), found("LOST", probe=INCOMPLETE), BOTH,
     finish(S.STOPPED, -1, f"{MISSING}: val.csv-lines-mismatch lines=1 expected=3", exact=True, probe=INCOMPLETE)),
    ("lost-no-probe", job(), found("LOST"), BOTH, finish(S.STOPPED, -1, f"{MISSING}: probe-error", exact=True)),
    ("lost-probe-without-reason", job(), found("LOST", probe=NO_REASON), BOTH,
     finish(S.STOPPED, -1, f"{MISSING}: probe-error", exact=True)),
    ("lost-desired-stop-complete", job(desired=STOP), found("LOST", probe=COMPLETE), BOTH,
     finish(S.SUCCESS, 0, "", exact=True)),
    ("lost-eval-zip", job(job_type=EVAL), found("LOST", probe=ZIP), BOTH, finish(S.SUCCESS, 0, "", exact=True)),
    ("lost-eval-no-zip", job(job_type=EVAL), found("LOST", probe=COMPLETE), BOTH,
     finish(S.STOPPED, -1, f"{MISSING}: result-zip-missing", exact=True)),
    ("lost-eval-nothing", job(job_type=EVAL), found("LOST", probe=INCOMPLETE), BOTH,
     finish(S.STOPPED, -1, f"{MISSING}: val.csv-lines-mismatch", probe=INCOMPLETE)),
    # -- a state this coordinator does not know: do nothing rather than guess ---------------------
    ("unknown-agent-state", job(), found("UNSPECIFIED"), BOTH, KEEPS),
]


def _cases() -> list[Any]:
    out = []
    for name, row, obs, flags, want in TABLE:
        for startup in flags:
            out.append(pytest.param(row, obs, startup, want, id=f"{name}-{'startup' if startup else 'live'}"))
    return out


@pytest.mark.parametrize(("row", "obs", "startup", "want"), _cases())
def test_decide(row: JobRow, obs: Observation, startup: bool, want: Want) -> None:
    d = decide(row, obs, startup=startup)
    assert isinstance(d, Decision)
    assert d.action == want.action, d
    if want.action != "finish":
        assert d.status is None and d.exit_code is None and d.message == "", d
        if want.action == "keep":
            assert d == KEEP
        return
    assert d.status is want.status, d
    assert d.exit_code == want.exit_code, d
    if want.exact:
        assert d.message == want.prefix, d
    else:
        assert d.message.startswith(want.prefix), d
    if want.probe is not None:
        assert d.probe == want.probe, d


def test_decide_table_covers_every_action_and_status() -> None:
    """The table above must exercise each kind of decision and each final status decide() gives."""
    actions = {w.action for *_, w in TABLE}
    assert actions == {"keep", "relaunch", "stop", "probe", "finish"}
    statuses = {w.status for *_, w in TABLE if w.action == "finish"}
    assert statuses == {JobStatus.SUCCESS, JobStatus.FAILED, JobStatus.STOPPED}
    agent_states = {obs.state for _, _, obs, _, _ in TABLE if obs.kind == "found"}
    assert {"PENDING", "RUNNING", "SUCCEEDED", "FAILED", "STOPPED", "LOST"} <= agent_states


def test_decide_is_pure() -> None:
    """Same inputs, same decision; the inputs are not modified."""
    row, probe = job(), dict(INCOMPLETE)
    obs = found("LOST", probe=probe)
    first = decide(row, obs, startup=True)
    assert decide(row, obs, startup=True) == first
    assert probe == INCOMPLETE and row == job()


@pytest.mark.parametrize("startup", BOTH)
def test_exit_code_decides_over_a_succeeded_label(startup: bool) -> None:
    d = decide(job(), found("SUCCEEDED", 137, probe=COMPLETE), startup=startup)
    assert d.action == "finish" and d.status is JobStatus.FAILED and d.exit_code == 137


AGENT_REPORTS = [(state, code) for state in ("SUCCEEDED", "FAILED", "STOPPED", "LOST")
                 for code in (None, 0, -1, 1, 3, 137, 143)]


@pytest.mark.parametrize(("state", "exit_code"), AGENT_REPORTS)
@pytest.mark.parametrize("desired", [RUN, STOP])
@pytest.mark.parametrize("job_type", [TRAIN, EVAL])
def test_every_final_report_is_a_status_the_repository_stores(state: str, exit_code: int | None,
                                                              desired: DesiredState, job_type: JobType) -> None:
    """decide() is the one rule turning an agent's report into a job status; the repository's guard
    (states.exit_code_for, run by repo.set_job_status) accepts every verdict it gives, so no report can
    leave a job RUNNING because its status and exit code disagree."""
    for probe in (None, COMPLETE, INCOMPLETE, ZIP):
        for startup in BOTH:
            d = decide(job(desired=desired, job_type=job_type), found(state, exit_code, probe=probe),
                       startup=startup)
            assert d.action == "finish" and d.status is not None, d
            assert states.exit_code_for(d.status, d.exit_code, "j1") == (
                d.exit_code if d.exit_code is not None else states.exit_code_for(d.status, None)), d
            if exit_code is not None and state != "LOST":  # a known exit code decides
                want = {0: S.SUCCESS, -1: S.STOPPED}.get(exit_code, S.FAILED)
                assert d.status is (S.STOPPED if state == "STOPPED" else want), d


# -- judge_missing / outputs_complete ----------------------------------------------------------

JUDGE = [
    # (id, job type, probe, status, exit, message)
    ("train-complete", TRAIN, COMPLETE, S.SUCCESS, 0, ""),
    ("train-complete-with-zip", TRAIN, ZIP, S.SUCCESS, 0, ""),
    ("train-incomplete", TRAIN, INCOMPLETE, S.STOPPED, -1, f"{MISSING}: val.csv-lines-mismatch lines=1 expected=3"),
    ("train-zip-but-val-missing", TRAIN, ZIP_ONLY, S.STOPPED, -1, f"{MISSING}: val.csv-missing"),
    ("train-no-probe", TRAIN, None, S.STOPPED, -1, f"{MISSING}: probe-error"),
    ("train-empty-probe", TRAIN, {}, S.STOPPED, -1, f"{MISSING}: probe-error"),
    ("train-dir-missing", TRAIN, {"completed": False, "reason": "output-dir-missing"}, S.STOPPED, -1,
     f"{MISSING}: output-dir-missing"),
    ("eval-zip", EVAL, ZIP, S.SUCCESS, 0, ""),
    # an EVAL run is judged by its result zip alone (it shares the training run's folder)
    ("eval-zip-val-incomplete", EVAL, ZIP_ONLY, S.SUCCESS, 0, ""),
    ("eval-train-complete-no-zip", EVAL, COMPLETE, S.STOPPED, -1, f"{MISSING}: result-zip-missing"),
    ("eval-incomplete-no-zip", EVAL, INCOMPLETE, S.STOPPED, -1,
     f"{MISSING}: val.csv-lines-mismatch lines=1 expected=3"),
    ("eval-no-probe", EVAL, None, S.STOPPED, -1, f"{MISSING}: probe-error"),
]


@pytest.mark.parametrize(("job_type", "probe", "status", "exit_code", "message"),
                         [pytest.param(*c[1:], id=c[0]) for c in JUDGE])
def test_judge_missing(job_type: JobType, probe: dict[str, Any] | None, status: JobStatus, exit_code: int,
                       message: str) -> None:
    for row in (job(job_type=job_type), job(job_type=job_type, desired=STOP), job(job_type=job_type, observed=None)):
        d = judge_missing(row, probe)
        assert d == Decision("finish", status, exit_code, message, probe), d


OUTPUTS = [
    (TRAIN, None, False), (TRAIN, {}, False), (TRAIN, COMPLETE, True), (TRAIN, INCOMPLETE, False),
    (TRAIN, ZIP, True), (TRAIN, ZIP_ONLY, False),
    (EVAL, None, False), (EVAL, {}, False), (EVAL, COMPLETE, False), (EVAL, INCOMPLETE, False),
    (EVAL, ZIP, True), (EVAL, ZIP_ONLY, True),
    # truthiness, as the probe dict may come from JSON
    (TRAIN, {"completed": 1}, True), (EVAL, {"has_result_zip": 0, "completed": True}, False),
]


@pytest.mark.parametrize(("job_type", "probe", "expected"), OUTPUTS)
def test_outputs_complete(job_type: JobType, probe: dict[str, Any] | None, expected: bool) -> None:
    assert outputs_complete(job_type, probe) is expected


# -- the fault matrix's checker accepts only this rule --------------------------------------------

@pytest.mark.parametrize(("agent_state", "exit_code", "probe", "coordinator", "ok"), [
    ("SUCCEEDED", 0, COMPLETE, "SUCCESS", True),
    ("FAILED", 3, None, "FAILED", True),
    ("FAILED", 3, None, "SUCCESS", False),
    ("STOPPED", 143, None, "STOPPED", True),
    ("STOPPED", 0, None, "STOPPED", True),  # a stop is a stop, whatever it exited with
    ("STOPPED", 0, None, "SUCCESS", False),  # the reading tests once accepted beside production's
    ("LOST", None, COMPLETE, "SUCCESS", True),
    ("LOST", None, INCOMPLETE, "STOPPED", True),
    ("LOST", None, INCOMPLETE, "SUCCESS", False),
])
def test_invariants_accept_only_the_production_rule(agent_state: str, exit_code: int | None,
                                                     probe: dict[str, Any] | None, coordinator: str,
                                                     ok: bool) -> None:
    cj = CoordJob(id="j1", root_id="j1", attempt=1, status=coordinator, desired_state="RUN",
                  exit_code={"SUCCESS": 0, "STOPPED": -1}.get(coordinator, exit_code), error_message="", node="n1",
                  gpu_indices=[0], acked=False, finished_at=T0, job_type="TRAIN")
    aj = AgentJob(job_id="j1", attempt=1, state=agent_state, gpu_indices=[0], runtime="process", runtime_id="1",
                  exit_code=exit_code, finished_at=0.0, stop_requested=False, probe=probe)
    violations: list[str] = []
    _check_match(cj, aj, "n1", violations)
    assert (violations == []) is ok, violations
