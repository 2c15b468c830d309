"""Who is on each node's GPUs besides its jobs, as the coordinator learns it (issue 15).

Agents attribute every GPU process (agent/exclusivity.py) and send the list with each heartbeat's
GPU snapshot. `Watch.heard` compares a node's flagged processes (escaped, orphan, foreign) with its
previous heartbeat's and returns one node event per change ("GPU 0: foreign process pid 4242
(8192 MiB) appeared" / "... gone"), which Fleet.heartbeat records in the events table. The
comparison is kept in memory, so a heartbeat costs no extra query; after a coordinator restart the
processes still there are recorded once more.

`ExclusivityCollector` counts the flagged processes per node and kind on /metrics from the same
memory (the nodes this coordinator process heard from).
"""
from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

FLAGGED = ("escaped", "orphan", "foreign")
MAX_EVENTS_PER_HEARTBEAT = 16  # a fork bomb on a GPU must not write thousands of rows per beat


class Flagged(NamedTuple):
    gpu: int
    kind: str
    pid: int
    job_id: str
    used_bytes: int

    def describe(self) -> str:
        of = f" of job {self.job_id}" if self.job_id else ""
        return f"GPU {self.gpu}: {self.kind} process pid {self.pid}{of} ({self.used_bytes // (1024 * 1024)} MiB)"


def flagged(gpus: Iterable[Mapping[str, Any]]) -> dict[tuple[int, str, int], Flagged]:
    """The processes of a GPU snapshot (coordinator/convert.py gpu_from_pb dicts) that are not a
    job's own on its own GPU, keyed by (gpu, kind, pid)."""
    out = {}
    for g in gpus:
        for p in g.get("processes") or ():
            kind = str(p.get("kind", ""))
            if kind in FLAGGED:
                f = Flagged(int(g.get("index", 0)), kind, int(p.get("pid", 0)), str(p.get("job_id", "")),
                            int(p.get("used_bytes", 0)))
                out[(f.gpu, f.kind, f.pid)] = f
    return out


def changes(old: Mapping[tuple[int, str, int], Flagged], new: Mapping[tuple[int, str, int], Flagged]) -> list[str]:
    """Node event reasons, appeared first, in a stable order; at most MAX_EVENTS_PER_HEARTBEAT."""
    out = [f"{new[k].describe()} appeared" for k in sorted(new.keys() - old.keys())]
    out += [f"{old[k].describe()} gone" for k in sorted(old.keys() - new.keys())]
    if len(out) > MAX_EVENTS_PER_HEARTBEAT:
        out = [*out[:MAX_EVENTS_PER_HEARTBEAT - 1], f"and {len(out) - MAX_EVENTS_PER_HEARTBEAT + 1} more changes"]
    return out


class Watch:
    """The last flagged processes per node (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_node: dict[str, dict[tuple[int, str, int], Flagged]] = {}

    def heard(self, node: str, gpus: Sequence[Mapping[str, Any]]) -> list[str]:
        new = flagged(gpus)
        with self._lock:
            old = self._by_node.get(node, {})
            if new.keys() == old.keys():
                return []
            self._by_node[node] = new
        return changes(old, new)

    def counts(self) -> dict[tuple[str, str], int]:
        with self._lock:
            snapshot = {node: list(f.values()) for node, f in self._by_node.items()}
        out: dict[tuple[str, str], int] = {}
        for node, procs in snapshot.items():
            for kind in FLAGGED:
                out[(node, kind)] = sum(1 for p in procs if p.kind == kind)
        return out


class ExclusivityCollector(Collector):
    def __init__(self, watch: Watch) -> None:
        self.watch = watch

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily("gpufleet_node_gpu_processes", "Processes on a node's GPUs that are not a job's own "
                                 "on its own GPU, by kind (escaped, orphan, foreign), from the last heartbeat.",
                                 labels=["node", "kind"])

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        fam = self._family()
        for (node, kind), n in sorted(self.watch.counts().items()):
            fam.add_metric([node, kind], n)
        yield fam
