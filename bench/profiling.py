"""Where a bench phase's CPU goes: CPU used by the coordinator, the bench process and PostgreSQL
(`CpuMeter`), and py-spy samples of the coordinator summarised per phase (`Spy`).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import _harness
from bench._harness import BenchError, cpu_seconds


class CpuMeter:
    """CPU used by the coordinator, this bench process (fake agents, client) and PostgreSQL (the
    postmaster and its backends, throwaway cluster only) over a phase, in % of one core; and how
    busy the whole machine was (other work on a 2-core machine moves every figure)."""

    def __init__(self, coordinator_pid: int, postmaster_pid: int | None) -> None:
        self.parties: dict[str, Callable[[], list[int]]] = {
            "coordinator": lambda: [coordinator_pid], "bench": lambda: [os.getpid()]}
        if postmaster_pid:
            self.parties["postgres"] = lambda: [postmaster_pid, *_harness.children_of(postmaster_pid)]

    def sample(self) -> tuple[float, dict[str, dict[int, float]], tuple[float, float]]:
        return (time.perf_counter(), {name: {pid: cpu_seconds(pid) for pid in pids()}
                                      for name, pids in self.parties.items()}, _harness.machine_busy())

    @staticmethod
    def delta(a: tuple[float, dict[str, dict[int, float]], tuple[float, float]],
              b: tuple[float, dict[str, dict[int, float]], tuple[float, float]]) -> dict[str, float]:
        wall = b[0] - a[0]
        out = {}
        for name, after in b[1].items():
            before = a[1].get(name, {})
            used = sum(t - before.get(pid, 0.0) for pid, t in after.items())
            out[name] = round(100 * used / wall, 1)
        busy = (b[2][0] - a[2][0]) / max(1, b[2][1] - a[2][1])
        out["machine_busy"] = round(100 * busy, 1)  # % of all CPUs
        out["loadavg_1m"] = round(os.getloadavg()[0], 2)
        return out


class Spy:
    """`py-spy record` of the coordinator during a phase (--py-spy DIR): raw collapsed stacks."""

    def __init__(self, pid: int, out_dir: Path | None) -> None:
        self.pid = pid
        self.out_dir = out_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.path: Path | None = None

    def start(self, phase: str) -> None:
        if self.out_dir is None:
            return
        exe = shutil.which("py-spy")
        if exe is None:
            raise BenchError("--py-spy needs py-spy on PATH (pip install py-spy)")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / f"{phase}.txt"
        self.proc = subprocess.Popen([exe, "record", "--pid", str(self.pid), "--format", "raw", "--rate", "250",
                                      "--nonblocking", "--threads", "--output", str(self.path)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        # No wait for it to attach: the first tens of ms of the phase may go unsampled, no more.

    def stop(self) -> dict[str, Any] | None:
        if self.proc is None or self.path is None:
            return None
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        return summarise_stacks(self.path)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def summarise_stacks(path: Path, top: int = 20) -> dict[str, Any]:
    """A py-spy raw profile (idle threads left out) summed up: samples per thread kind (the
    coordinator names its threads: rpc_N, launch_N, reconcile_N, scheduler, ...), per function of
    the project (inclusive), and per (innermost project function, what it was doing)."""
    threads: dict[str, int] = {}
    incl: dict[str, int] = {}
    leaves: dict[str, int] = {}
    total = 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {"file": str(path), "error": "no profile written"}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        thread = "?"
        if frames and frames[0].startswith("thread ("):
            thread = frames.pop(0).partition(": ")[2].rstrip("0123456789").rstrip("_-") or "?"
        total += n
        threads[thread] = threads.get(thread, 0) + n
        ours = []
        for fr in frames:
            fn, _, loc = fr.partition(" (")
            path_part = loc.rsplit(":", 1)[0]
            if path_part.startswith(("coordinator/", "gpufleet/", "agent/")):
                ours.append(f"{path_part}:{fn}")
        for nm in set(ours):
            incl[nm] = incl.get(nm, 0) + n
        if ours:
            doing = frames[-1].partition(" (")[0] if frames else "?"
            key = f"{thread}: {ours[-1]} -> {doing}"
            leaves[key] = leaves.get(key, 0) + n

    def pct(d: dict[str, int], k: int) -> list[dict[str, Any]]:
        return [{"what": name, "pct": round(100 * v / total, 1)}
                for name, v in sorted(d.items(), key=lambda kv: -kv[1])[:k]] if total else []

    return {"file": str(path), "samples": total, "threads": pct(threads, 12), "functions": pct(incl, top),
            "innermost": pct(leaves, top)}
