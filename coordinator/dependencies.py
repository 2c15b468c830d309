"""Dependencies between jobs and the order of a pipeline's steps: pure decisions.

Slurm's `--dependency=afterok:ID` (start when every listed job succeeded; never, when one of them
ended otherwise) and `afterany:ID` (start when every listed job ended, whatever its outcome). A
pipeline is a DAG of named steps whose edges are afterok dependencies; a cycle is refused at
submit, naming it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

TERMINAL = frozenset({"SUCCESS", "FAILED", "STOPPED", "CANCELED"})


class DependencyMode(StrEnum):
    AFTEROK = "afterok"
    AFTERANY = "afterany"


@dataclass(frozen=True, slots=True)
class Verdict:
    """ready: may be placed now; never: why it can never start (it is canceled); else it waits."""

    ready: bool
    never: str = ""
    waiting: str = ""


def verdict(mode: DependencyMode, statuses: Mapping[str, str | None]) -> Verdict:
    """`statuses`: each dependency's root id -> the status of its latest attempt (None: no such job)."""
    waiting = []
    for dep, status in sorted(statuses.items()):
        if status is None:
            return Verdict(False, never=f"dependency {dep} does not exist")
        if status not in TERMINAL:
            waiting.append(f"{dep} ({status})")
        elif mode is DependencyMode.AFTEROK and status != "SUCCESS":
            return Verdict(False, never=f"dependency {dep} ended {status}")
    if waiting:
        return Verdict(False, waiting="waiting for " + ", ".join(waiting))
    return Verdict(True)


class CycleError(ValueError):
    def __init__(self, cycle: Sequence[str]) -> None:
        self.cycle = list(cycle)
        super().__init__(" -> ".join(self.cycle))


def topological_order(after: Mapping[str, Sequence[str]]) -> list[str]:
    """The steps in an order where each comes after everything it names (ties by name, so the order
    is stable); raises KeyError naming an unknown step, CycleError with the cycle's path."""
    for step, deps in after.items():
        for d in deps:
            if d not in after:
                raise KeyError(f"step {step!r} comes after {d!r}, which is not a step")
    order: list[str] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(step: str) -> None:
        if state.get(step) == 2:
            return
        if state.get(step) == 1:
            raise CycleError([*path[path.index(step):], step])
        state[step] = 1
        path.append(step)
        for d in sorted(after[step]):
            visit(d)
        path.pop()
        state[step] = 2
        order.append(step)

    for step in sorted(after):
        visit(step)
    return order


def pipeline_state(statuses: Sequence[str]) -> str:
    """A pipeline's state from its steps' statuses (shadow steps left out by the caller): RUNNING
    while any step may still run, else SUCCESS when all succeeded, else the worst outcome."""
    if any(s not in TERMINAL for s in statuses):
        return "RUNNING" if any(s == "RUNNING" for s in statuses) else "QUEUED"
    for worst in ("FAILED", "STOPPED", "CANCELED"):
        if worst in statuses:
            return worst
    return "SUCCESS"
