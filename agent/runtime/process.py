"""Process runtime: jobs as plain processes, for hosts without Docker.

Each job runs under `wrapper.py` in its own session; the handle is the wrapper's pid plus its
start time from /proc, so a reused pid is never mistaken for the job. The wrapper writes
exit.json when the job ends, which is how an exit is known even if the agent was down then.

Privileges: the wrapper stays the agent's user and keeps the job's files (handle, child.pid,
exit.json, output.log) in the agent's job folder (0700, inside the 0700 state dir); the job's own
process runs as its owner's own uid (`--owner-uids`, agent/owneruids.py) or, without an owner, as
the job user (`--job-user`, agent/jobuser.py), owns only its output folder (agent/outputdirs.py),
and so can neither forge its exit record, read the agent's database, nor signal or read another
owner's jobs. Wrappers the agent
started are reaped as soon as they end (no zombies). Files the job could have touched are opened
through gpufleet.safefs (no links followed, regular files only, bounded reads from the end).
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
from typing import Any

from gpufleet.agent import outputdirs
from gpufleet.agent.cgroups import JobCgroups
from gpufleet.agent.jobuser import JobUser
from gpufleet.agent.runtime import wrapper
from gpufleet.agent.runtime.base import Found, Handle, LaunchPlan, Observation, RuntimeError_, Seen

from gpufleet import safefs

_CLK_TCK = os.sysconf("SC_CLK_TCK")
# The most a log read returns at once (a tail, one follow chunk): the agent's memory stays bounded
# however much a job prints, and a reply stays under gRPC's 4 MiB message limit.
MAX_LOG_READ = 2 * 1024 * 1024
# exit.json and handle.json are tiny; anything bigger is not ours.
_MAX_RECORD = 64 * 1024


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

    def __init__(self, jobs_root: Path, job_user: JobUser | None = None, output_root: Path | None = None,
                 cgroups: JobCgroups | None = None) -> None:
        """`job_user` None: jobs run as the agent's own user (in-process tests). `cgroups`: one
        cgroup v2 per job (agent/cgroups.py), None where the host has none to give."""
        self.jobs_root = jobs_root
        self.cgroups = cgroups
        self.job_user = job_user if job_user is not None and os.geteuid() == 0 else None
        self.output_root = output_root
        # Wrappers we spawned ourselves are our children: reap them so they don't stay zombies.
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def _reap(self) -> None:
        """Collect every wrapper of ours that has ended (cheap: one waitpid(WNOHANG) each)."""
        for pid, child in list(self._children.items()):
            if child.poll() is not None:
                self._children.pop(pid, None)

    def _run_as(self, plan: LaunchPlan) -> JobUser | None:
        """The owner's own account when it has one, else the job user (None: the agent's own user)."""
        if self.job_user is None:
            return None  # not root: the agent cannot switch users, jobs run as itself
        return plan.run_as or self.job_user

    def _give_output_dir(self, plan: LaunchPlan, user: JobUser | None) -> None:
        """The job's output folder (and an owner's prefix) to the job's account (agent/outputdirs.py)."""
        if user is None or user.is_root:
            return
        own_uid = plan.run_as is not None
        outputdirs.give_output_dir(self.output_root, plan.output_dir, user, plan.owner, own_uid=own_uid,
                                shared_uid=self.job_user.uid if own_uid and self.job_user is not None else None)

    # -- start ---------------------------------------------------------------------------------
    def start(self, plan: LaunchPlan) -> Handle:
        existing = self.find(plan.job_id, plan.attempt, plan.job_dir)
        if existing is not None:
            return existing
        self._reap()
        # The agent's own files for the job: out of the job's reach (0700, owned by the agent).
        self.jobs_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        plan.job_dir.parent.mkdir(mode=0o700, exist_ok=True)
        plan.job_dir.mkdir(mode=0o700, exist_ok=True)
        if not plan.argv:
            raise RuntimeError_("the process runtime needs spec.command")
        user = self._run_as(plan)
        self._give_output_dir(plan, user)
        cwd = str(plan.output_dir / plan.workdir) if plan.workdir else str(plan.output_dir)
        env = dict(plan.env)
        user_args: list[str] = []
        if user is not None:
            env.update(user.env())
            if not user.is_root:
                user_args = [f"{user.uid}:{user.gid}"]
        if self.cgroups is not None:
            try:
                self.cgroups.make(plan.job_id, plan.attempt, plan.cpu_millis, plan.memory_bytes)
                env.update(self.cgroups.wrapper_env(plan.job_id, plan.attempt))
            except OSError as exc:
                raise RuntimeError_(f"cannot make the job's cgroup: {exc.strerror}") from exc
        args = [sys.executable, "-I", wrapper.__file__, str(plan.job_dir), str(plan.log_max_bytes), cwd,
                *user_args, "--", *plan.argv]
        try:
            with open(plan.job_dir / "wrapper.err", "ab") as err:
                p = subprocess.Popen(
                    args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
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

    @staticmethod
    def _read_json(job_dir: Path, name: str) -> dict[str, Any]:
        data = json.loads(safefs.read_capped(job_dir, name, _MAX_RECORD))
        if not isinstance(data, dict):
            raise ValueError(f"{name} is not a JSON object")
        return data

    def find(self, job_id: str, attempt: int, job_dir: Path) -> Handle | None:
        try:
            data = self._read_json(job_dir, "handle.json")
            return Handle(runtime_id=str(int(data["pid"])), start_marker=str(data.get("start_marker", "")))
        except (OSError, ValueError, KeyError, TypeError):
            return None

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
            self._reap_ended(handle)
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

    def _reap_ended(self, handle: Handle) -> None:
        """The wrapper wrote exit.json and is about to exit: wait for it (briefly) so it is reaped
        now, not left a zombie until the agent restarts; one still busy is reaped on a later call."""
        child = self._children.get(int(handle.runtime_id))
        if child is None:
            self._reap()
            return
        try:
            child.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            pass
        self._reap()

    def observe_many(self, items: list[tuple[Handle, Path]]) -> list[Observation]:
        self._reap()
        return [self.observe(h, d) for h, d in items]

    @classmethod
    def _read_exit(cls, job_dir: Path) -> Observation | None:
        try:
            data = cls._read_json(job_dir, "exit.json")
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            return Observation(Seen.MISSING, message=f"exit file unreadable: {exc}")
        try:
            return Observation(
                Seen.EXITED, exit_code=int(data["exit_code"]), signal=int(data.get("signal", 0)),
                started_at=data.get("started_at"), finished_at=data.get("finished_at"),
                message=str(data.get("message", ""))[:4096],
            )
        except (KeyError, TypeError, ValueError) as exc:
            return Observation(Seen.MISSING, message=f"exit file unreadable: {exc}")

    # -- control -------------------------------------------------------------------------------
    def signal(self, handle: Handle, job_dir: Path, sig: int) -> None:
        try:
            child_pid = int(safefs.read_capped(job_dir, "child.pid", 64))
        except (OSError, ValueError):
            child_pid = 0
        if sig == signal.SIGKILL and self.cgroups is not None:
            # The end of a stop: everything the job started, in whatever process group.
            if job_dir.name.isdigit():
                self.cgroups.kill(job_dir.parent.name, int(job_dir.name))
        if child_pid > 1 and self._alive(handle):
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
        self._reap()
        for name in ("exit.json", "child.pid", "handle.json", "wrapper.err", "output.log", "output.log.1"):
            try:
                (job_dir / name).unlink()
            except FileNotFoundError:
                pass
        if self.cgroups is not None and job_dir.name.isdigit():
            self.cgroups.remove(job_dir.parent.name, int(job_dir.name))
        try:
            job_dir.rmdir()
            job_dir.parent.rmdir()
        except OSError:
            pass

    # -- logs ----------------------------------------------------------------------------------
    @staticmethod
    def _tail(job_dir: Path, tail_lines: int, max_bytes: int = MAX_LOG_READ) -> bytes:
        """The last `tail_lines` lines (all when 0) of output.log.1 + output.log, read from the end
        and never more than `max_bytes`: the cost follows what is returned, not the log's size."""
        data = safefs.tail_file(job_dir, "output.log", max_bytes, tail_lines)
        have = data.count(b"\n") if tail_lines > 0 else 0
        if len(data) < max_bytes and (tail_lines <= 0 or have < tail_lines):
            more = tail_lines - have if tail_lines > 0 else 0
            older = safefs.tail_file(job_dir, "output.log.1", max_bytes - len(data), more)
            data = older + data
        return data

    def logs(self, handle: Handle, job_dir: Path, tail_lines: int = 0) -> bytes:
        return self._tail(job_dir, tail_lines)

    def follow(self, handle: Handle, job_dir: Path, tail_lines: int = 0) -> Iterator[bytes]:
        """The tail, then new output until the job ends. The log stays open between reads, so its
        last lines are delivered even when the job's folder is removed (acknowledged) meanwhile."""
        path = job_dir / "output.log"
        while True:
            try:
                f = os.fdopen(safefs.open_regular(job_dir, "output.log"), "rb")  # noqa: SIM115 - closed below
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
            # The tail so far, read from the end (bounded); reading goes on from the end.
            end = os.fstat(f.fileno()).st_size
            first = safefs.tail_fd(f.fileno(), MAX_LOG_READ, tail_lines)
            if len(first) < MAX_LOG_READ and (tail_lines <= 0 or first.count(b"\n") < tail_lines):
                more = tail_lines - first.count(b"\n") if tail_lines > 0 else 0
                first = safefs.tail_file(job_dir, "output.log.1", MAX_LOG_READ - len(first), more) + first
            f.seek(end)
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
                    try:
                        f = os.fdopen(safefs.open_regular(job_dir, "output.log"), "rb")  # noqa: SIM115
                    except FileNotFoundError:
                        return
                    continue
                if ended:
                    return
                time.sleep(0.2)
        finally:
            f.close()

    def read_since(self, handle: Handle, job_dir: Path, cursor: str) -> tuple[bytes, str]:
        try:
            f = os.fdopen(safefs.open_regular(job_dir, "output.log"), "rb")
        except FileNotFoundError:
            return b"", cursor
        with f:
            st = os.fstat(f.fileno())
            ino, off = (int(x) for x in cursor.split(":")) if cursor else (st.st_ino, 0)
            data = b""
            if ino != st.st_ino:
                # Rotated since the last read: finish the old file (now output.log.1), then start over.
                try:
                    with safefs.opened(job_dir, "output.log.1") as old:
                        data = safefs.read_fd(old, 4 * 1024 * 1024, off)
                except FileNotFoundError:
                    pass
                off = 0
            f.seek(off)
            data += f.read(4 * 1024 * 1024)
            return data, f"{st.st_ino}:{f.tell()}"

    def list_labelled(self) -> list[Found]:
        found: list[Found] = []
        self._reap()
        for hp in self.jobs_root.glob("*/*/handle.json"):
            try:
                data = self._read_json(hp.parent, "handle.json")
                handle = Handle(str(int(data["pid"])), str(data.get("start_marker", "")))
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if self._alive(handle):
                found.append(Found(str(data["job_id"]), int(data["attempt"]), handle))
        return found

    def healthy(self) -> bool:
        return True

    def close(self) -> None:
        if self.cgroups is not None:
            self.cgroups.tidy()
