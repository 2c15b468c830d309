"""Matrix 12: a hypothesis RuleBasedStateMachine drives a small real fleet — one coordinator
(SQLite, --node-timeout 3) and two agents (process runtime, fake:2 GPUs) — through random
sequences of submit / release / cancel / SIGKILL agent / restart agent / SIGKILL+restart
coordinator / wait for node loss, with tests/invariants.py as the invariant.

After every step, once the fleet has had a moment to settle (polled with a deadline):
- the checker (`check_invariants(settled=False)`) finds nothing wrong: every job in exactly one
  state, no GPU held twice (on an agent, or given twice in the coordinator), at most one live
  attempt per job in the coordinator, and no job RUNNING on two live agents at once. Agents that
  are down are checked on their own (their records are frozen while the job may still run on the
  host: that is the partition case, where two attempts may run until the node is fenced);
- the coordinator answers GetJob for every job id it acknowledged.

At the end of each example (teardown): everything down is started again, every flag released,
every job must reach a final state within 60 s, and each job's last attempt must be SUCCESS unless
it was canceled or stopped by node loss; then the settled invariants hold. Every process is killed
at teardown whatever happened (and again by the fixture's finalizer, should teardown itself fail).
"""
from __future__ import annotations

import functools
import itertools
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from gpufleet.v1 import common_pb2 as pb
from gpufleet.v1 import coordinator_pb2 as cpb
from tests.faults import GATED, PY, dead, release, settle, sqlite_url
from tests.harness import AgentProc, CoordinatorProc, wait_for
from tests.invariants import assert_invariants, check_invariants

pytestmark = pytest.mark.slow

NODE_TIMEOUT = 3.0
SHORT = [PY, "-c", "import time; time.sleep(0.3)"]
TERMINAL = frozenset({"SUCCESS", "FAILED", "STOPPED", "CANCELED"})
NODE_LOSS = ("NODE_LOST", "SERVER_RESTART_CONTAINER_INSPECT_ERROR")  # the node's silence decided
BY_USER = ("CANCELED_BY_USER", "STOPPED_BY_USER")
STEP_SETTLE_S = 20.0  # how long a step may take to look right again (fencing, a heartbeat or two)
FINAL_S = 60.0
# More examples for a longer hunt: GPUFLEET_STATEFUL_EXAMPLES=50 pytest tests/faults/test_stateful_fleet.py
EXAMPLES = int(os.environ.get("GPUFLEET_STATEFUL_EXAMPLES", "4"))


# What the examples did, printed at the end (pytest -s shows it): steps run, and final outcomes.
STEPS: Counter[str] = Counter()
OUTCOMES: Counter[str] = Counter()


def _step(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark the machine as failed while a rule or invariant runs: teardown then only cleans up
    (the step's own error is the one to report), and judges the example only when all went well."""

    @functools.wraps(fn)
    def wrapper(self: FleetMachine, *args: Any, **kwargs: Any) -> Any:
        self.ok = False
        result = fn(self, *args, **kwargs)
        self.ok = True
        STEPS[fn.__name__] += 1
        return result

    return wrapper


class FleetMachine(RuleBasedStateMachine):
    # Set by the test: where examples make their folders, and the list the fixture kills at the end.
    tmp_factory: pytest.TempPathFactory
    owned: list[AgentProc | CoordinatorProc]

    def __init__(self) -> None:
        super().__init__()
        self.ok = True
        self.started = False
        self.c: CoordinatorProc
        self.agents: list[AgentProc] = []
        self.jobs: dict[str, str] = {}  # root job id -> "short" | "flag"
        self.outputs: dict[str, str] = {}  # root job id -> output dir
        self.flags: list[str] = []  # flag jobs not yet released
        self.canceled: set[str] = set()
        self.killed: set[str] = set()  # agents this test took down (any other that is down crashed)
        self.names = itertools.count()

    # -- the fleet ---------------------------------------------------------------------------------
    @initialize()
    @_step
    def start_fleet(self) -> None:
        root = self.tmp_factory.mktemp("fleet")  # a fresh folder for every example
        # lost_after 0: a silent node's jobs are given up (and requeued) as soon as it is UNREACHABLE,
        # so the machine explores requeues and fencing within its budget.
        self.c = CoordinatorProc(root / "c", node_timeout=NODE_TIMEOUT, lost_after=0)
        self.owned.append(self.c)
        self.started = True
        self.c.start()
        for name in ("A", "B"):
            a = AgentProc(root / name, gpus="fake:2", node_name=f"st-{name}", extra=["--coordinator", self.c.addr])
            self.owned.append(a)
            self.agents.append(a)
            a.start(wait=False)
        for a in self.agents:
            a.wait_ready()
        wait_for(lambda: sorted((n.name, n.state_name) for n in self.nodes())
                 == [("st-A", "READY"), ("st-B", "READY")], 30, "both agents registered")

    def nodes(self) -> list[Any]:
        return list(self.c.stub.ListNodes(cpb.ListNodesRequest(), timeout=10).nodes)

    def alive(self) -> list[AgentProc]:
        return [a for a in self.agents if not self.down(a)]

    def down(self, a: AgentProc) -> bool:
        return a.daemon.proc is None or dead(a)

    def get(self, job_id: str) -> cpb.Job:
        return self.c.stub.GetJob(cpb.JobRef(job_id=job_id), timeout=10)

    def last_attempt(self, root: str) -> cpb.Job:
        job = self.get(root)
        while job.superseded_by:
            job = self.get(job.superseded_by)
        return job

    def submit(self, command: list[str], kind: str) -> str:
        out = f"{kind}{next(self.names)}"
        job = self.c.stub.SubmitJob(cpb.SubmitJobRequest(spec=pb.JobSpec(command=command, output_dir=out), gpus=1,
                                                         max_retries=1, name=out), timeout=10)
        self.jobs[job.job_id] = kind
        self.outputs[job.job_id] = out
        return str(job.job_id)

    def release_flag(self, root: str) -> None:
        for a in self.agents:  # whichever agent runs (or will run) an attempt of it
            release(a, self.outputs[root])

    # -- rules -------------------------------------------------------------------------------------
    @rule()
    @_step
    def submit_short_job(self) -> None:
        self.submit(SHORT, "short")

    @precondition(lambda self: len(self.flags) < 3)  # leave GPUs for the short jobs
    @rule()
    @_step
    def submit_flag_job(self) -> None:
        self.flags.append(self.submit(GATED, "flag"))

    @precondition(lambda self: self.flags)
    @rule(pick=st.integers(0, 100))
    @_step
    def release_a_flag(self, pick: int) -> None:
        self.release_flag(self.flags.pop(pick % len(self.flags)))

    @precondition(lambda self: self.jobs)
    @rule(pick=st.integers(0, 100))
    @_step
    def cancel_a_job(self, pick: int) -> None:
        root = sorted(self.jobs)[pick % len(self.jobs)]
        # The attempt that is current now (a requeue after node loss made a new one).
        current = self.last_attempt(root)
        got = self.c.stub.CancelJob(cpb.JobRef(job_id=current.job_id), timeout=30)
        self.canceled.add(root)
        assert got.job_id == current.job_id

    def busiest_first(self, agents: list[AgentProc]) -> list[AgentProc]:
        """Agents holding the most RUNNING jobs (as the coordinator sees it) first: killing one of
        those is what makes node loss, requeue and fencing happen."""
        running = [j.node for j in self.c.stub.ListJobs(cpb.ListJobsQuery(status=cpb.JOB_STATUS_CODE_RUNNING, size=500),
                                                         timeout=10).jobs]
        return sorted(agents, key=lambda a: -running.count(a.node_name))

    @precondition(lambda self: self.alive())
    @rule(pick=st.integers(0, 1))
    @_step
    def sigkill_an_agent(self, pick: int) -> None:
        alive = self.busiest_first(self.alive())
        a = alive[pick % len(alive)]
        a.kill()
        self.killed.add(a.node_name)

    @precondition(lambda self: len(self.alive()) < len(self.agents))
    @rule(pick=st.integers(0, 1))
    @_step
    def restart_a_killed_agent(self, pick: int) -> None:
        down = [a for a in self.agents if self.down(a)]
        a = down[pick % len(down)]
        a.start()
        self.killed.discard(a.node_name)

    @precondition(lambda self: self.alive())
    @rule(pick=st.integers(0, 1), graceful=st.booleans())
    @_step
    def restart_an_agent(self, pick: int, graceful: bool) -> None:
        alive = self.alive()
        a = alive[pick % len(alive)]
        if graceful:
            a.stop()  # SIGTERM: the agent stops, its jobs keep running
        else:
            a.kill()
        a.start()

    @rule()
    @_step
    def sigkill_and_restart_the_coordinator(self) -> None:
        self.c.restart()

    @precondition(lambda self: len(self.alive()) < len(self.agents))
    @rule()
    @_step
    def wait_for_node_loss(self) -> None:
        """Let --node-timeout pass for the agents that are down (their jobs are requeued)."""
        names = {a.node_name for a in self.agents if self.down(a)}
        wait_for(lambda: all(n.state_name == "UNREACHABLE" for n in self.nodes() if n.name in names),
                 NODE_TIMEOUT + 15, f"{sorted(names)} UNREACHABLE")

    # -- invariants --------------------------------------------------------------------------------
    def violations(self) -> list[str]:
        url = sqlite_url(self.c)
        live = {a.node_name: a.state_dir for a in self.alive()}
        found = check_invariants(url, live, None, settled=False)
        for a in self.agents:
            if self.down(a):  # its own records only: frozen, while its jobs may still run
                found += [f"(down) {v}" for v in check_invariants(None, {a.node_name: a.state_dir}, None,
                                                                   settled=False)]
        return found

    @invariant()
    @_step
    def fleet_is_consistent(self) -> None:
        if not self.started:
            return
        assert not dead(self.c), f"the coordinator died:\n{self.c.daemon.log_tail(20)}"
        for a in self.agents:
            assert a.node_name in self.killed or not self.down(a), \
                f"agent {a.node_name} died on its own:\n{a.daemon.log_tail(20)}"
        last: list[str] = []

        def clean() -> bool:
            nonlocal last
            last = self.violations()
            return not last

        try:
            wait_for(clean, STEP_SETTLE_S, "invariants", interval=0.2)
        except AssertionError:
            raise AssertionError(f"{len(last)} invariant violation(s) for {STEP_SETTLE_S}s:\n  "
                                 + "\n  ".join(last)) from None
        for root in self.jobs:  # every job the coordinator acknowledged is still known to it
            assert self.get(root).job_id == root

    # -- the end of an example -----------------------------------------------------------------------
    def teardown(self) -> None:
        try:
            if self.started and self.ok:
                self.finish()
        finally:
            for a in self.agents:
                a.kill()
                a.cleanup_jobs()
            if self.started:
                self.c.kill()

    def finish(self) -> None:
        if dead(self.c):
            self.c.start()
        for a in self.agents:
            if self.down(a):
                a.start()
        self.killed.clear()
        for root in self.flags:
            self.release_flag(root)
        self.flags.clear()

        def all_final() -> tuple[list[cpb.Job]] | None:
            last = [self.last_attempt(root) for root in sorted(self.jobs)]
            return (last,) if all(j.status_name in TERMINAL for j in last) else None

        try:
            (finals,) = wait_for(all_final, FINAL_S, "every job final", interval=0.2)
        except AssertionError:
            stuck = [(j.job_id, j.status_name, j.node) for root in sorted(self.jobs)
                     if (j := self.last_attempt(root)).status_name not in TERMINAL]
            raise AssertionError(f"jobs not final after {FINAL_S}s: {stuck}\ncoordinator log:\n"
                                 f"{self.c.daemon.log_tail(20)}") from None
        wrong = []
        for root, job in zip(sorted(self.jobs), finals, strict=True):
            reason = job.error_message
            OUTCOMES[f"{self.jobs[root]} {job.status_name} {reason.split(':')[0]} attempt {job.attempt}"
                     + (" (canceled)" if root in self.canceled else "")] += 1
            if job.status_name == "SUCCESS":
                continue
            if job.status_name == "STOPPED" and reason.startswith(NODE_LOSS):
                continue
            if root in self.canceled and job.status_name in ("CANCELED", "STOPPED") and reason.startswith(BY_USER):
                continue
            wrong.append(f"{root} ({self.jobs[root]}): last attempt {job.job_id} {job.status_name} "
                         f"exit {job.exit_code if job.HasField('exit_code') else None} on {job.node or '-'}: "
                         f"{reason}")
        assert not wrong, "jobs that should have succeeded:\n  " + "\n  ".join(wrong)
        mapping = {a.node_name: a.state_dir for a in self.agents}
        settle(sqlite_url(self.c), mapping, timeout=30)
        assert_invariants(sqlite_url(self.c), mapping, settled=True)


@pytest.fixture
def owned() -> Iterator[list[AgentProc | CoordinatorProc]]:
    """Everything any example started; killed here too, should an example's teardown fail."""
    procs: list[AgentProc | CoordinatorProc] = []
    yield procs
    for p in procs:
        p.kill()
        if isinstance(p, AgentProc):
            p.cleanup_jobs()


def test_fleet_under_random_faults(tmp_path_factory: pytest.TempPathFactory,
                                   owned: list[AgentProc | CoordinatorProc]) -> None:
    machine = type("Fleet", (FleetMachine,), {"tmp_factory": tmp_path_factory, "owned": owned})
    started = time.monotonic()
    run_state_machine_as_test(machine, settings=settings(
        max_examples=EXAMPLES, stateful_step_count=10, deadline=None, database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: each example costs seconds of real fleet
        suppress_health_check=list(HealthCheck)))
    print(f"\nstateful fleet: {EXAMPLES} examples in {time.monotonic() - started:.0f}s; steps {dict(STEPS)}; "
          f"final attempts {dict(OUTCOMES)}")
    assert time.monotonic() - started < 60 * EXAMPLES
