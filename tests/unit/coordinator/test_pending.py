"""Table test of why a queued job waits and of the submit-time refusal (coordinator/pending.py)."""
from __future__ import annotations

import pytest
from gpufleet.coordinator.pending import NodeCapacity, PendingCode, never_fits, pending_reason


def n(name: str, gpus: int, free: int | None = None, *, up: bool = True, state: str = "READY",
      **labels: str) -> NodeCapacity:
    return NodeCapacity(name, labels, gpus, gpus if free is None else free, schedulable=up, state=state)


# (id, gpus, constraints, nodes, expected code, words the message must hold)
REASONS = [
    ("no-nodes", 1, {}, [], PendingCode.NO_NODES, "no node has registered"),
    ("too-big", 3, {}, [n("a", 2), n("b", 1)], PendingCode.NO_NODE_FITS, "needs 3 GPUs, largest node has 2 (a)"),
    ("too-big-among-matching", 4, {"rack": "x"}, [n("a", 2, rack="x"), n("b", 8, rack="y")],
     PendingCode.NO_NODE_FITS, "largest node matching rack=x has 2 (a)"),
    ("constraint", 1, {"rack": "x"}, [n("a", 2, rack="y")], PendingCode.CONSTRAINT, "rack=x matches no node"),
    ("busy", 2, {}, [n("a", 4, 1), n("b", 2, 0)], PendingCode.GPUS_BUSY, "needs 2 free GPUs, at most 1 free"),
    ("unreachable", 1, {}, [n("a", 2, up=False, state="UNREACHABLE")], PendingCode.NODE_UNREACHABLE, "(a)"),
    ("draining", 1, {}, [n("a", 2, up=False, state="DRAINING")], PendingCode.NODE_DRAINING, "draining (a)"),
    ("free-now", 1, {}, [n("a", 2, 2)], PendingCode.PRIORITY, "next scheduling pass"),
    ("fits-only-on-down-node", 4, {}, [n("a", 2), n("b", 4, up=False, state="UNREACHABLE")],
     PendingCode.NODE_UNREACHABLE, "(b)"),
]


@pytest.mark.parametrize(("gpus", "constraints", "nodes", "code", "words"),
                         [pytest.param(*r[1:], id=r[0]) for r in REASONS])
def test_pending_reason(gpus: int, constraints: dict[str, str], nodes: list[NodeCapacity], code: PendingCode,
                        words: str) -> None:
    why = pending_reason(gpus, constraints, nodes)
    assert why.code is code and words in why.message, why


def test_never_fits_refuses_only_what_no_registered_node_could_run() -> None:
    assert never_fits(1, {}, []) is None  # a fleet still starting refuses nothing
    assert never_fits(2, {}, [n("a", 2, 0, up=False)]) is None  # busy or down now is not never
    refused = never_fits(64, {}, [n("a", 2), n("b", 4)])
    assert refused is not None and refused.code is PendingCode.NO_NODE_FITS and "has 4 (b)" in refused.message
    assert never_fits(0, {}, [n("a", 0)]) is None  # CPU-only jobs fit a node without GPUs
    unknown = NodeCapacity("new", {}, 0, 0, schedulable=True, known=False)  # registered, nothing reported yet
    assert never_fits(64, {}, [n("a", 2), unknown]) is None
