"""Table tests of dependency verdicts, pipeline order (cycles named) and pipeline state."""
from __future__ import annotations

import pytest
from gpufleet.coordinator.dependencies import (
    CycleError,
    DependencyMode,
    pipeline_state,
    topological_order,
    verdict,
)

OK, ANY = DependencyMode.AFTEROK, DependencyMode.AFTERANY
VERDICTS = [
    ("afterok-all-success", OK, {"a": "SUCCESS", "b": "SUCCESS"}, (True, "", "")),
    ("afterok-one-running", OK, {"a": "SUCCESS", "b": "RUNNING"}, (False, "", "waiting for b (RUNNING)")),
    ("afterok-one-failed", OK, {"a": "FAILED", "b": "RUNNING"}, (False, "dependency a ended FAILED", "")),
    ("afterok-canceled", OK, {"a": "CANCELED"}, (False, "dependency a ended CANCELED", "")),
    ("afterany-failed-is-fine", ANY, {"a": "FAILED", "b": "SUCCESS"}, (True, "", "")),
    ("afterany-waits", ANY, {"a": "FAILED", "b": "QUEUED"}, (False, "", "waiting for b (QUEUED)")),
    ("missing", OK, {"a": None}, (False, "dependency a does not exist", "")),
    ("none", OK, {}, (True, "", "")),
]


@pytest.mark.parametrize(("mode", "statuses", "expected"), [pytest.param(*v[1:], id=v[0]) for v in VERDICTS])
def test_verdict(mode: DependencyMode, statuses: dict[str, str | None], expected: tuple[bool, str, str]) -> None:
    v = verdict(mode, statuses)
    assert (v.ready, v.never, v.waiting) == expected


def test_topological_order_puts_every_step_after_what_it_names() -> None:
    order = topological_order({"test": ["train"], "train": ["prep"], "prep": [], "report": ["test", "train"]})
    assert order == ["prep", "train", "test", "report"]


def test_a_cycle_is_named() -> None:
    with pytest.raises(CycleError) as err:
        topological_order({"a": ["c"], "b": ["a"], "c": ["b"], "d": []})
    assert str(err.value) == "a -> c -> b -> a"


def test_an_unknown_step_is_named() -> None:
    with pytest.raises(KeyError, match="'b' comes after 'x'"):
        topological_order({"a": [], "b": ["x"]})


@pytest.mark.parametrize(("statuses", "state"), [
    (["SUCCESS", "SUCCESS"], "SUCCESS"), (["SUCCESS", "RUNNING"], "RUNNING"), (["QUEUED", "QUEUED"], "QUEUED"),
    (["SUCCESS", "FAILED", "CANCELED"], "FAILED"), (["SUCCESS", "CANCELED"], "CANCELED"), (["STOPPED"], "STOPPED"),
])
def test_pipeline_state(statuses: list[str], state: str) -> None:
    assert pipeline_state(statuses) == state
