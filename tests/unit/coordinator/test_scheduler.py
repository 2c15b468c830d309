"""Table tests of the scheduler's pure placement decision (coordinator/scheduler.py):
`choose(gpus, constraints, nodes)` (best fit, constraints, not enough GPUs, ties) and
`node_views(...)` (which nodes and GPUs are placeable at all) and `hopeless(...)` (which queued jobs a
pass may leave out in SQL)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from gpufleet.coordinator.db import repo
from gpufleet.coordinator.scheduler import NodeView, choose, hopeless, node_views
from gpufleet.coordinator.states import NodeState


def nv(name: str, free: int | set[int], used: set[int] | None = None, **labels: str) -> NodeView:
    healthy = set(range(free)) if isinstance(free, int) else set(free)
    return NodeView(name, f"{name}:1", labels, healthy, set(used or ()))


# (id, gpus, constraints, nodes, expected (node, gpu indices) or None)
CHOOSE: list[tuple[str, int, dict[str, str], list[NodeView], tuple[str, list[int]] | None]] = [
    ("no-nodes", 1, {}, [], None),
    ("one-node-fits", 2, {}, [nv("a", 4)], ("a", [0, 1])),
    ("exact-fit", 4, {}, [nv("a", 4)], ("a", [0, 1, 2, 3])),
    ("not-enough-anywhere", 5, {}, [nv("a", 4), nv("b", 2)], None),
    ("not-enough-on-one-node", 3, {}, [nv("a", 2), nv("b", 2)], None),  # never split a job across nodes
    # best fit: the node left with the fewest free GPUs
    ("best-fit-smaller-node", 2, {}, [nv("a", 8), nv("b", 2), nv("c", 4)], ("b", [0, 1])),
    ("best-fit-order-independent", 2, {}, [nv("c", 4), nv("b", 3), nv("a", 8)], ("b", [0, 1])),
    ("best-fit-skips-too-small", 3, {}, [nv("a", 2), nv("b", 8), nv("c", 4)], ("c", [0, 1, 2])),
    # GPUs in use count against the node
    ("used-gpus", 2, {}, [nv("a", 4, used={0, 1, 2}), nv("b", 4, used={1})], ("b", [0, 2])),
    ("used-makes-it-best-fit", 1, {}, [nv("a", 4), nv("b", 4, used={0, 1, 3})], ("b", [2])),
    ("all-used", 1, {}, [nv("a", 2, used={0, 1})], None),
    # lowest free indices first, even when the healthy set has holes
    ("lowest-indices", 2, {}, [nv("a", {1, 3, 5, 7}, used={3})], ("a", [1, 5])),
    # ties: by node name, whatever the input order
    ("tie-by-name", 1, {}, [nv("b", 2), nv("a", 2), nv("c", 2)], ("a", [0])),
    ("tie-by-name-after-use", 1, {}, [nv("z", 3, used={0}), nv("m", 4, used={0, 1})], ("m", [2])),
    # constraints: every key must match the node's labels exactly
    ("constraint-match", 1, {"zone": "b"}, [nv("a", 1, zone="a"), nv("b", 8, zone="b")], ("b", [0])),
    ("constraint-no-match", 1, {"zone": "c"}, [nv("a", 1, zone="a"), nv("b", 8, zone="b")], None),
    ("constraint-missing-label", 1, {"gpu": "h100"}, [nv("a", 4)], None),
    ("constraint-all-keys", 1, {"zone": "a", "gpu": "h100"},
     [nv("a", 1, zone="a", gpu="a100"), nv("b", 4, zone="a", gpu="h100")], ("b", [0])),
    ("constraint-value-case", 1, {"zone": "A"}, [nv("a", 4, zone="a")], None),
    ("constraint-then-best-fit", 1, {"zone": "a"},
     [nv("a1", 8, zone="a"), nv("a2", 2, zone="a"), nv("b", 1, zone="b")], ("a2", [0])),
    ("no-constraints-any-labels", 1, {}, [nv("a", 2, zone="x")], ("a", [0])),
    # CPU-only jobs (gpus=0) fit anywhere, even on a node without GPUs, and take none
    ("cpu-job", 0, {}, [nv("a", 4), nv("b", 0)], ("b", [])),
    ("cpu-job-full-node", 0, {}, [nv("a", 2, used={0, 1})], ("a", [])),
    ("cpu-job-no-nodes", 0, {}, [], None),
]


@pytest.mark.parametrize(("gpus", "constraints", "nodes", "expected"), [pytest.param(*c[1:], id=c[0]) for c in CHOOSE])
def test_choose(gpus: int, constraints: dict[str, str], nodes: list[NodeView],
                expected: tuple[str, list[int]] | None) -> None:
    before = [(n.name, set(n.used)) for n in nodes]
    pick = choose(gpus, constraints, nodes)
    if expected is None:
        assert pick is None
    else:
        assert pick is not None
        node, indices = pick
        assert (node.name, indices) == expected
        assert node in nodes
        assert len(indices) == gpus and set(indices) <= node.healthy_gpus and not set(indices) & node.used
    # choose() only decides: the caller marks the GPUs used once the assignment is committed
    assert [(n.name, set(n.used)) for n in nodes] == before


def test_choose_then_mark_used_fills_nodes_best_fit_first() -> None:
    """Placing one job after another (as Scheduler.decide does) packs the fuller node first."""
    nodes = [nv("a", 4), nv("b", 2)]
    placed = []
    while (pick := choose(1, {}, nodes)) is not None:
        node, gpus = pick
        node.used.update(gpus)
        placed.append((node.name, gpus[0]))
    assert placed == [("b", 0), ("b", 1), ("a", 0), ("a", 1), ("a", 2), ("a", 3)]


# -- node_views ----------------------------------------------------------------------------------


@dataclass
class FakeNode:
    """A node row with its GPU snapshot; node_views reads its healthy indices as repo.placeable_nodes
    gives them."""

    name: str
    state: NodeState = NodeState.READY
    gpus: list[dict[str, Any]] = field(default_factory=list)
    address: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.address = self.address or f"{self.name}:1"

    @property
    def healthy(self) -> frozenset[int]:
        return repo.healthy_indices(self.gpus)


def gpus(n: int, unhealthy: tuple[int, ...] = (), missing_flag: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        g: dict[str, Any] = {"index": i, "uuid": f"GPU-{i}"}
        if i not in missing_flag:
            g["healthy"] = i not in unhealthy
        out.append(g)
    return out


def test_node_views_filters_nodes_and_gpus() -> None:
    nodes = [
        FakeNode("ready", gpus=gpus(4), labels={"zone": "a"}),
        FakeNode("sick", gpus=gpus(4, unhealthy=(1, 3))),
        FakeNode("draining", NodeState.DRAINING, gpus(4)),
        FakeNode("drained", NodeState.DRAINED, gpus(4)),
        FakeNode("lost", NodeState.LOST, gpus(4)),
        FakeNode("stale", gpus=gpus(4)),  # READY but no fresh heartbeat
        FakeNode("noflag", gpus=gpus(2, missing_flag=(0, 1))),  # no health field: healthy
        FakeNode("cpu", gpus=[]),
    ]
    fresh = {"ready", "sick", "draining", "drained", "lost", "noflag", "cpu"}
    views = {v.name: v for v in node_views(nodes, {"ready": {0, 2}, "gone": {1}}, fresh)}
    assert set(views) == {"ready", "sick", "noflag", "cpu"}
    assert views["ready"].healthy_gpus == {0, 1, 2, 3} and views["ready"].used == {0, 2}
    assert views["ready"].free == [1, 3] and dict(views["ready"].labels) == {"zone": "a"}
    assert views["ready"].address == "ready:1"
    assert views["sick"].healthy_gpus == {0, 2} and views["sick"].free == [0, 2]
    assert views["noflag"].free == [0, 1]
    assert views["cpu"].free == []


def test_node_views_copies_the_in_use_sets() -> None:
    in_use = {"a": {0}}
    (view,) = node_views([FakeNode("a", gpus=gpus(2))], in_use, {"a"})
    view.used.add(1)
    assert in_use == {"a": {0}}


# Whole pipeline: node rows -> views -> choice.
PIPELINE = [
    # (id, gpus wanted, node rows, in use, fresh, expected)
    ("unhealthy-gpus-never-assigned", 2, [FakeNode("a", gpus=gpus(4, unhealthy=(0, 1)))], {}, {"a"}, ("a", [2, 3])),
    ("unhealthy-makes-it-too-small", 3, [FakeNode("a", gpus=gpus(4, unhealthy=(0, 1)))], {}, {"a"}, None),
    ("unhealthy-and-used", 1, [FakeNode("a", gpus=gpus(4, unhealthy=(0,)))], {"a": {1, 2}}, {"a"}, ("a", [3])),
    ("unhealthy-shifts-best-fit", 2,
     [FakeNode("a", gpus=gpus(4, unhealthy=(0, 1))), FakeNode("b", gpus=gpus(3))], {}, {"a", "b"}, ("a", [2, 3])),
    ("drained-node-skipped", 1, [FakeNode("a", NodeState.DRAINING, gpus(1)), FakeNode("b", gpus=gpus(8))], {},
     {"a", "b"}, ("b", [0])),
    ("stale-node-skipped", 1, [FakeNode("a", gpus=gpus(1)), FakeNode("b", gpus=gpus(8))], {}, {"b"}, ("b", [0])),
    ("lost-node-skipped", 1, [FakeNode("a", NodeState.LOST, gpus(1))], {}, {"a"}, None),
    ("nothing-fresh", 0, [FakeNode("a", gpus=gpus(1))], {}, set(), None),
]


@pytest.mark.parametrize(("want", "rows", "in_use", "fresh", "expected"),
                         [pytest.param(*c[1:], id=c[0]) for c in PIPELINE])
def test_views_then_choose(want: int, rows: list[FakeNode], in_use: dict[str, set[int]], fresh: set[str],
                           expected: tuple[str, list[int]] | None) -> None:
    pick = choose(want, {}, node_views(rows, in_use, fresh))
    assert (None if pick is None else (pick[0].name, pick[1])) == expected


# (id, label sets, nodes, room (None: every healthy GPU), ceiling, expected (labels, most GPUs))
HOPELESS: list[tuple[str, list[tuple[tuple[str, str], ...]], list[NodeView], dict[str, int] | None, int,
                     list[tuple[dict[str, str], int]]]] = [
    ("nothing-remembered", [], [nv("a", 4)], None, 4, []),
    ("label-no-node-has", [(("rack", "x"),)], [nv("a", 4, rack="y")], None, 4, [({"rack": "x"}, -1)]),
    ("label-missing-everywhere", [(("gpu", "h100"),)], [nv("a", 4), nv("b", 2)], None, 4, [({"gpu": "h100"}, -1)]),
    # matching nodes exist but are smaller than the largest: jobs above their size are hopeless
    ("matching-nodes-smaller", [(("rack", "x"),)], [nv("a", 8, rack="y"), nv("b", 2, rack="x"), nv("c", 3, rack="x")],
     None, 8, [({"rack": "x"}, 3)]),
    # the largest node matches: the ceiling already bounds every job, no extra term
    ("largest-matches", [(("rack", "x"),)], [nv("a", 8, rack="x"), nv("b", 2)], None, 8, []),
    # every label of a set must match on one node
    ("all-labels-one-node", [(("rack", "x"), ("gpu", "h100"))],
     [nv("a", 8, rack="x", gpu="a100"), nv("b", 8, rack="y", gpu="h100")], None, 8,
     [({"rack": "x", "gpu": "h100"}, -1)]),
    ("all-labels-match", [(("rack", "x"), ("gpu", "h100"))], [nv("a", 8), nv("b", 2, rack="x", gpu="h100")],
     None, 8, [({"rack": "x", "gpu": "h100"}, 2)]),
    # room is what a node can give now (free GPUs after the pass's placements), not its size
    ("room-is-free-now", [(("rack", "x"),)], [nv("a", 8), nv("b", 8, rack="x")], {"a": 5, "b": 1}, 5,
     [({"rack": "x"}, 1)]),
    ("full-matching-node", [(("rack", "x"),)], [nv("a", 8), nv("b", 8, rack="x")], {"a": 5, "b": 0}, 5,
     [({"rack": "x"}, 0)]),
    # a node that came back with the label: the set is no longer hopeless
    ("node-now-matches", [(("rack", "x"),), (("zone", "q"),)], [nv("a", 4, rack="x")], None, 4,
     [({"zone": "q"}, -1)]),
    ("no-views", [(("rack", "x"),)], [], {}, 0, [({"rack": "x"}, -1)]),
]


@pytest.mark.parametrize(("label_sets", "views", "room", "ceiling", "expected"),
                         [pytest.param(*c[1:], id=c[0]) for c in HOPELESS])
def test_hopeless(label_sets: list[tuple[tuple[str, str], ...]], views: list[NodeView], room: dict[str, int] | None,
                  ceiling: int, expected: list[tuple[dict[str, str], int]]) -> None:
    room = room if room is not None else {v.name: len(v.healthy_gpus) for v in views}
    got = hopeless(label_sets, views, room, ceiling)
    assert got == expected
    # What it leaves out is exactly what choose refuses: a job holding a set's labels (and one more)
    # that needs more than the bound finds no node; one that needs the bound finds one.
    for v in views:
        v.used = set(sorted(v.healthy_gpus)[room[v.name]:])
    for labels, most in got:
        for extra in ({}, {"other": "z"}):
            assert choose(most + 1, {**labels, **extra}, views) is None
        if most >= 0:
            assert choose(most, labels, views) is not None
