"""Process runtime: jobs as plain processes, for hosts without Docker.

Each job runs under `wrapper.py` in its own session; the handle is the wrapper's pid plus its
start time from /proc, so a reused pid is never mistaken for the job. The wrapper writes
exit.json when the job ends, which is how an exit is known even if the agent was down then.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from gpufleet.agent.runtime import wrapper
from gpufleet.agent.runtime.base import Found, Handle, LaunchPlan, Observation, RuntimeError_, Seen

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_start_marker(pid: int) -> str | None:
    """Start time of `pid` in clock ticks since boot, or None when no such (live) process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):  # zombie/dead: the process has ended
        return None
    return fields[19].decode()


def _boot_time() -> float:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    return 0.0


class ProcessRuntime:
    name = "process"

    def __init__(self, jobs_root: Path) -> None:
        self.jobs_root = jobs_root
        # Wrappers we spawned ourselves are our children: poll them so they don't stay zombies.
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    # -- start ---------------------------------------------------------------------------------
    def start(self, plan: LaunchPlan) -> Handle:
        existing = self.find(plan.job_id, plan.attempt, plan.job_dir)
        if existing is not None:
            return existing
        plan.job_dir.mkdir(parents=True, exist_ok=True)
        if not plan.argv:
            raise RuntimeError_("the process runtime needs spec.command")
        cwd = str(plan.output_dir / plan.workdir) if plan.workdir else str(plan.output_dir)
        args = [sys.executable, "-I", wrapper.__file__, str(plan.job_dir), str(plan.log_max_bytes), cwd, "--",
                *plan.argv]
        try:
            with open(plan.job_dir / "wrapper.err", "ab") as err:
                p = subprocess.Popen(
                    args, env=plan.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                    start_new_session=True, close_fds=True,
                )
        except OSError as exc:
            raise RuntimeError_(f"cannot start the job wrapper: {exc.strerror}") from exc
        self._children[p.pid] = p
        marker = proc_start_marker(p.pid) or ""
        handle = Handle(runtime_id=str(p.pid), start_marker=marker)
        # Not "handle.json.tmp": the wrapper writes the same handle through that name (wrapper.
        # _write_handle), and a shared temp name let its rename take ours (issue 12: 1 in ~200 trivial
        # jobs ended LAUNCH_FAILED "No such file ... handle.json.tmp" while running fine).
        tmp = plan.job_dir / "handle.json.agent.tmp"
        tmp.write_text(json.dumps({"pid": p.pid, "start_marker": marker, "job_id": plan.job_id,
                                   "attempt": plan.attempt}))
        os.replace(tmp, plan.job_dir / "handle.json")
        return handle

    def find(self, job_id: str, attempt: int, job_dir: Path) -> Handle | None:
        try:
            data = json.loads((job_dir / "handle.json").read_text())
        except (OSError, ValueError):
            return None
        return Handle(runtime_id=str(data["pid"]), start_marker=str(data.get("start_marker", "")))

    # -- observe -------------------------------------------------------------------------------
    def _alive(self, handle: Handle) -> bool:
        pid = int(handle.runtime_id)
        child = self._children.get(pid)
        if child is not None and child.poll() is not None:
            del self._children[pid]
            return False
        marker = proc_start_marker(pid)
        return marker is not None and (not handle.start_marker or marker == handle.start_marker)

    def observe(self, handle: Handle, job_dir: Path) -> Observation:
        ended = self._read_exit(job_dir)
        if ended is not None:
            return ended
        if self._alive(handle):
            started = None
            if handle.start_marker:
                started = _boot_time() + int(handle.start_marker) / _CLK_TCK
            return Observation(Seen.RUNNING, started_at=started)
        # The wrapper may have written exit.json between the two looks.
        ended = self._read_exit(job_dir)
        if ended is not None:
            return ended
        return Observation(Seen.MISSING, message="the job's process is gone and left no exit code")

    def observe_many(self, items: list[tuple[Handle, Path]]) -> list[Observation]:
        return [self.observe(h, d) for h, d in items]

    @staticmethod
    def _read_exit(job_dir: Path) -> Observation | None:
        try:
            data = json.loads((job_dir / "exit.json").read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            return Observation(Seen.MISSING, message=f"exit file unreadable: {exc}")
        return Observation(
            Seen.EXITED, exit_code=int(data["exit_code"]), signal=int(data.get("signal", 0)),
            started_at=data.get("started_at"), finished_at=data.get("finished_at"),
            message=str(data.get("message", "")),
        )

    # -- control -------------------------------------------------------------------------------
    def signal(self, handle: Handle, job_dir: Path, sig: int) -> None:
        try:
            child_pid = int((job_dir / "child.pid").read_text())
        except (OSError, ValueError):
            child_pid = 0
        if child_pid and self._alive(handle):
            # The job's own process group: reaches every process the job started.
            try:
                os.killpg(child_pid, sig)
                return
            except ProcessLookupError:
                return
        if self._alive(handle):
            # Not started yet: the wrapper forwards the signal once the child exists.
            try:
                os.kill(int(handle.runtime_id), sig if sig != signal.SIGKILL else signal.SIGTERM)
            except ProcessLookupError:
                pass

    def remove(self, handle: Handle, job_dir: Path) -> None:
        # Only called after the coordinator stored the final state (and the log tail is in the store).
        for name in ("exit.json", "child.pid", "handle.json", "wrapper.err", "output.log", "output.log.1"):
            try:
                (job_dir / name).unlink()
            except FileNotFoundError:
                pass
        try:
            job_dir.rmdir()
            job_dir.parent.rmdir()
        except OSError:
            pass

    # -- logs ----------------------------------------------------------------------------------
    def logs(self, handle: Handle, job_dir: Path, tail_lines: int = 0) -> bytes:
        data = b""
        for name in ("output.log.1", "output.log"):
            try:
                data += (job_dir / name).read_bytes()
            except FileNotFoundError:
                pass
        if tail_lines > 0:
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-tail_lines:])
        return data

    def follow(self, handle: Handle, job_dir: Path, tail_lines: int = 0) -> Iterator[bytes]:
        """The tail, then new output until the job ends. The log stays open between reads, so its
        last lines are delivered even when the job's folder is removed (acknowledged) meanwhile."""
        path = job_dir / "output.log"
        while True:
            try:
                f = open(path, "rb")  # noqa: SIM115 - closed in the finally below (it may be reopened)
                break
            except FileNotFoundError:
                # A job launched a moment ago: its wrapper has not made the log yet.
                if self.observe(handle, job_dir).seen in (Seen.EXITED, Seen.MISSING):
                    first = self.logs(handle, job_dir, tail_lines)
                    if first:
                        yield first
                    return
                time.sleep(0.05)
        try:
            try:
                old = (job_dir / "output.log.1").read_bytes()
            except FileNotFoundError:
                old = b""
            first = old + f.read()  # everything so far; reading goes on from here
            if tail_lines > 0:
                first = b"".join(first.splitlines(keepends=True)[-tail_lines:])
            if first:
                yield first
            while True:
                ended = self.observe(handle, job_dir).seen in (Seen.EXITED, Seen.MISSING)
                data = f.read(1 << 20)
                if data:
                    yield data
                    continue
                try:
                    rotated = os.stat(path).st_ino != os.fstat(f.fileno()).st_ino
                except FileNotFoundError:
                    rotated = False  # removed: what is left in our open file is all there is
                if rotated:
                    f.close()
                    f = open(path, "rb")  # noqa: SIM115
                    continue
                if ended:
                    return
                time.sleep(0.2)
        finally:
            f.close()

    def read_since(self, handle: Handle, job_dir: Path, cursor: str) -> tuple[bytes, str]:
        path = job_dir / "output.log"
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            return b"", cursor
        with f:
            st = os.fstat(f.fileno())
            ino, off = (int(x) for x in cursor.split(":")) if cursor else (st.st_ino, 0)
            data = b""
            if ino != st.st_ino:
                # Rotated since the last read: finish the old file (now output.log.1), then start over.
                try:
                    with open(job_dir / "output.log.1", "rb") as old:
                        old.seek(off)
                        data = old.read()
                except FileNotFoundError:
                    pass
                off = 0
            f.seek(off)
            data += f.read(4 * 1024 * 1024)
            return data, f"{st.st_ino}:{f.tell()}"

    def list_labelled(self) -> list[Found]:
        found: list[Found] = []
        for hp in self.jobs_root.glob("*/*/handle.json"):
            try:
                data = json.loads(hp.read_text())
            except (OSError, ValueError):
                continue
            handle = Handle(str(data["pid"]), str(data.get("start_marker", "")))
            if self._alive(handle):
                found.append(Found(str(data["job_id"]), int(data["attempt"]), handle))
        return found

    def healthy(self) -> bool:
        return True

    def close(self) -> None:
        pass
