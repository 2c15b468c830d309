"""What the benchmarks (bench/agent.py, bench/coordinator.py, bench/soak.py) share: the error a bench
fails with, polling, percentiles, CPU figures from /proc, a daemon of this repository run as a
process, and `run_main`, the part of every bench's main that comes after its arguments are parsed
(SIGTERM as Ctrl-C, a temp dir, the report, and a cleanup that runs whatever happened).

Import it as `bench._harness`, after the script has put the repository root first on sys.path (see
the top of each bench): imported under two names, BenchError would be two classes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import grpc

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
RPC_TIMEOUT = 30.0
READY_TIMEOUT = 60.0
T = TypeVar("T")
Cleanup = list[Callable[[], object]]  # run in reverse order at the end, also after a failure or Ctrl-C


class BenchError(Exception):
    """The bench itself failed (exit status 2): a timeout, a daemon that did not come up, a wrong answer."""


def poll(fn: Callable[[], T | None], timeout: float, what: str, interval: float = 0.005) -> T:
    """Call `fn` until it returns something truthy; BenchError after `timeout` seconds."""
    end = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > end:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    s = sorted(samples)
    k = max(0, min(len(s) - 1, -(-len(s) * p // 100) - 1))
    return s[int(k)]


def summary(samples_ms: list[float], percentiles: Iterable[int] = (50, 99)) -> dict[str, Any]:
    """n, the given percentiles (p50_ms, ...), max and mean of a non-empty list of milliseconds."""
    return {"n": len(samples_ms), **{f"p{p}_ms": round(percentile(samples_ms, p), 3) for p in percentiles},
            "max_ms": round(max(samples_ms), 3), "mean_ms": round(sum(samples_ms) / len(samples_ms), 3)}


def machine_info() -> dict[str, Any]:
    """What the report's header says about this machine (other work on it moves every figure)."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release(),
            "loadavg_at_start": round(os.getloadavg()[0], 2)}


def progress_printer(quiet: bool) -> Callable[[str], None]:
    """Progress lines on stderr, or nothing with -q."""
    if quiet:
        return lambda msg: None
    return lambda msg: print(msg, file=sys.stderr, flush=True)


# ---- /proc -----------------------------------------------------------------------------------------


def proc_stat_fields(pid: int) -> list[bytes] | None:
    """Fields of /proc/<pid>/stat after the command name (index 0 is the state), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2 :].split()


def cpu_seconds(pid: int, required: bool = False) -> float:
    """utime + stime of every thread of `pid` in seconds; 0.0 when it is gone, or BenchError when
    `required`."""
    f = proc_stat_fields(pid)
    if f is None:
        if required:
            raise BenchError(f"process {pid} is gone")
        return 0.0
    return (int(f[11]) + int(f[12])) / CLK_TCK


def children_of(ppid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            f = proc_stat_fields(int(d))
            if f is not None and int(f[1]) == ppid:
                out.append(int(d))
    return out


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + vals[4]  # idle + iowait
    return sum(vals) - idle, sum(vals)


# ---- a daemon of this repository -------------------------------------------------------------------


class ServiceProcess:
    """`argv` (a `python -m` daemon of this repository) run from the repository root in its own
    session, its output appended to root/<log_name>, with a gRPC channel to it once it is up.
    stop() is SIGTERM, then SIGKILL of its process group when it lingers past `stop_timeout`."""

    log_name = "service.log"
    stop_timeout = 10.0

    def __init__(self, root: Path, argv: list[str]) -> None:
        self.root = root
        self.argv = argv
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: grpc.Channel | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def spawn(self, env: dict[str, str] | None = None) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / self.log_name, "ab") as log:
            # Own session: a Ctrl-C in the terminal reaches the bench, which then cleans up in order.
            self.proc = subprocess.Popen(self.argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True, env=env)

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join((self.root / self.log_name).read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


# ---- main ------------------------------------------------------------------------------------------


def run_main(args: argparse.Namespace, run: Callable[[argparse.Namespace, Path, Cleanup], dict[str, Any]],
             print_table: Callable[[dict[str, Any]], None], passed: Callable[[dict[str, Any]], bool], *,
             tmp_prefix: str, name: str = "bench",
             errors: tuple[type[BaseException], ...] = (BenchError, grpc.RpcError),
             describe: Callable[[Exception], str] = str) -> int:
    """`run(args, temp dir, cleanup)` and its results as a table (`print_table`) or, with --json, as
    JSON; then every cleanup step, last added first, whatever happened (a second Ctrl-C or a SIGTERM
    is ignored meanwhile), and the temp dir removed unless --keep. `errors` are failures of the bench,
    said in one line (`describe` says what a failed cleanup step raised); anything else is a bug of
    the bench and prints its traceback. Exit status: 0 `passed(results)`, 1 not, 2 the bench failed,
    130 interrupted (Ctrl-C or SIGTERM)."""

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    root = Path(tempfile.mkdtemp(prefix=tmp_prefix))
    cleanup: Cleanup = []
    code = 2
    try:
        res = run(args, root, cleanup)
        if args.json:
            print(json.dumps(res, indent=2, default=str))
        else:
            print_table(res)
        code = 0 if passed(res) else 1
    except KeyboardInterrupt:
        print(f"{name}: interrupted, cleaning up", file=sys.stderr)
        code = 130
    except errors as exc:
        print(f"{name}: failed: {exc}", file=sys.stderr)
    except Exception:  # noqa: BLE001 - a bug in the bench: say where, still clean up
        traceback.print_exc()
    finally:
        # A second Ctrl-C must not leave processes, containers or a cluster behind: finish the cleanup.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for fn in reversed(cleanup):
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - keep cleaning
                try:
                    print(f"{name}: cleanup step failed: {describe(exc)}", file=sys.stderr)
                except OSError:
                    pass  # stderr gone (a closed pipe): the cleanup goes on regardless
        if args.keep:
            print(f"{name}: kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return code
