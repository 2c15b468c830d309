"""Runs one process-runtime job and writes its exit code durably, even when the agent is down.

Started by the agent as `python -I wrapper.py JOB_DIR LOG_MAX_BYTES CWD [UID:GID] -- ARGV...` in its
own session, so killing the agent (or its process group) leaves the job alone. With UID:GID the
job's process runs as that user (no supplementary groups) while the wrapper keeps the agent's
identity, so the files below JOB_DIR (exit record, handle, log) stay out of the job's reach. The job runs in a
process group of its own; SIGTERM/SIGINT/SIGHUP sent to the wrapper are forwarded to that group.
Stdout and stderr go to JOB_DIR/output.log, rotated to output.log.1 at LOG_MAX_BYTES.
When the job ends the wrapper writes JOB_DIR/exit.json atomically (write, fsync, rename, fsync dir).

With GPUFLEET_CGROUP and GPUFLEET_CGROUP_PARK in its environment (agent/cgroups.py), the wrapper
enters the job's cgroup just before starting the job (so the job is born inside it), parks itself
in the wrappers' cgroup, and once the job's main process has ended kills whatever it left behind.

A full disk (ENOSPC/EDQUOT) never costs the job or its exit code: output that cannot be logged is
dropped (and the loss noted in the log once writing works again) while the pipe keeps being
drained, so the job never blocks on its own output; child.pid and exit.json are retried until
they can be written, and the wrapper stays alive (the job shows RUNNING) until its exit code is
down on disk, instead of dying and leaving the job to be judged LOST.

Standard library only: it must start fast and must not depend on the agent's imports.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any


def _write_atomic(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# Errors that mean "no room now": wait for space instead of giving up on what must be recorded.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_RETRY_MAX_S = 1.0


def _write_retrying(path: str, data: bytes) -> None:
    """_write_atomic, retried for as long as the disk is full (any other error is raised)."""
    delay = 0.05
    while True:
        try:
            _write_atomic(path, data)
            return
        except OSError as exc:
            if exc.errno not in _NO_SPACE:
                raise
        time.sleep(delay)
        delay = min(delay * 2, _RETRY_MAX_S)


def _write_handle(job_dir: str) -> None:
    """Record our own pid and start time first thing: if the agent dies before it writes the
    handle, a retried launch still finds this wrapper instead of starting a second one."""
    path = os.path.join(job_dir, "handle.json")
    if os.path.exists(path):
        return
    with open("/proc/self/stat", "rb") as f:
        data = f.read()
    marker = data[data.rfind(b")") + 2 :].split()[19].decode()
    job_id = os.path.basename(os.path.dirname(os.path.abspath(job_dir)))
    attempt = int(os.path.basename(os.path.abspath(job_dir)))
    _write_atomic(path, json.dumps({"pid": os.getpid(), "start_marker": marker, "job_id": job_id,
                                    "attempt": attempt}).encode())


class _Partial(OSError):
    """An OSError after `written` bytes went out."""

    def __init__(self, exc: OSError, written: int) -> None:
        super().__init__(exc.errno, exc.strerror)
        self.written = written


def _write_all(out: Any, data: bytes) -> int:
    """Write all of `data` to an unbuffered file (raises _Partial, saying how much went out)."""
    done = 0
    view = memoryview(data)
    while done < len(data):
        try:
            done += out.write(view[done:]) or 0
        except OSError as exc:
            raise _Partial(exc, done) from exc
    return done


def _pump(src: int, log_path: str, max_bytes: int) -> None:
    """Copy the job's output into the log file, rotating it at max_bytes.

    The pipe is always drained, whatever happens to the log: a job blocked on a full pipe
    would stop. Output that cannot be written (disk full) is dropped and counted, and a line
    saying so goes into the log as soon as writing works again.
    """
    out: Any = None
    size = 0
    dropped = 0
    why = ""
    try:
        out = open(log_path, "ab", buffering=0)  # at once: followers expect the file from the start
        size = out.tell()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__  # no room even for the file: opened again later
    while True:
        try:
            chunk = os.read(src, 65536)
        except OSError:
            break
        if not chunk:
            break
        note = (f"\ngpufleet: {dropped} bytes of output dropped: cannot write the log ({why})\n".encode()
                if dropped else b"")
        data = note + chunk
        try:
            if out is None:
                out = open(log_path, "ab", buffering=0)
                size = out.tell()
            if size + len(data) > max_bytes and size > 0:
                out.close()
                out = None
                os.replace(log_path, log_path + ".1")
                out = open(log_path, "ab", buffering=0)
                size = 0
            size += _write_all(out, data)
            dropped = 0
        except OSError as exc:
            written = exc.written if isinstance(exc, _Partial) else 0
            size += written
            if note and written >= len(note):
                dropped = 0  # the note made it; what follows is a new loss
            dropped += len(chunk) - max(0, written - len(note))
            why = exc.strerror or type(exc).__name__
    if out is not None:
        out.close()


def _enter(cgroup: str) -> bool:
    """Move this process into `cgroup` (its children are born there)."""
    try:
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
        return True
    except OSError:
        return False


def _kill_cgroup(cgroup: str) -> None:
    """SIGKILL everything left in the job's cgroup (the job's main process has ended)."""
    try:
        with open(os.path.join(cgroup, "cgroup.kill"), "w") as f:
            f.write("1")
        return
    except OSError:
        pass
    end = time.monotonic() + 5
    while time.monotonic() < end:
        try:
            with open(os.path.join(cgroup, "cgroup.procs")) as f:
                pids = [int(p) for p in f.read().split()]
        except OSError:
            return
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)


def main(argv: list[str]) -> int:
    job_dir, max_bytes, cwd = argv[0], int(argv[1]), argv[2]
    drop: dict[str, Any] = {}
    rest = argv[3:]
    if rest[0] != "--":
        uid, gid = (int(x) for x in rest[0].split(":"))
        drop = {"user": uid, "group": gid, "extra_groups": []}
        rest = rest[1:]
    assert rest[0] == "--"
    cmd = rest[1:]
    exit_path = os.path.join(job_dir, "exit.json")
    log_path = os.path.join(job_dir, "output.log")
    _write_handle(job_dir)
    child: subprocess.Popen[bytes] | None = None
    pending: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if child is None:
            pending.append(signum)
            return
        try:
            os.killpg(child.pid, signum)
        except ProcessLookupError:
            pass

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, forward)

    # Not the job's business: popped before the job inherits the environment.
    cgroup = os.environ.pop("GPUFLEET_CGROUP", "")
    park = os.environ.pop("GPUFLEET_CGROUP_PARK", "")
    contained = bool(cgroup and park) and _enter(cgroup)
    started = time.time()
    try:
        child = subprocess.Popen(
            cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, umask=0o022, **drop,
        )
    except OSError as exc:
        if contained:
            _enter(park)
        try:
            with open(log_path, "ab") as f:
                f.write(f"gpufleet: cannot start {cmd[0]!r}: {exc.strerror}\n".encode())
        except OSError:
            pass  # the message is in exit.json too
        _write_retrying(exit_path, json.dumps({
            "exit_code": 127, "signal": 0, "started_at": started, "finished_at": time.time(),
            "message": f"cannot start {cmd[0]!r}: {exc.strerror}",
        }).encode())
        return 127
    if contained and not _enter(park):
        contained = False  # still in the job's cgroup: killing it would kill us before exit.json
    pid_path = os.path.join(job_dir, "child.pid")
    try:
        _write_atomic(pid_path, str(child.pid).encode())
    except OSError as exc:
        if exc.errno not in _NO_SPACE:
            raise
        # The job runs already: signals still reach it through this wrapper (forward); the
        # pid file follows as soon as there is room.
        threading.Thread(target=_write_retrying, args=(pid_path, str(child.pid).encode()), daemon=True).start()
    for signum in pending:
        forward(signum, None)
    assert child.stdout is not None
    pump = threading.Thread(target=_pump, args=(child.stdout.fileno(), log_path, max_bytes), daemon=True)
    pump.start()
    while True:
        try:
            rc = child.wait()
            break
        except InterruptedError:
            continue
    if contained:
        _kill_cgroup(cgroup)  # what the job left behind (daemons, other sessions) ends with it
    # A grandchild may keep the pipe open; don't wait for it forever.
    pump.join(timeout=2.0)
    sig = -rc if rc < 0 else 0
    code = 128 + sig if sig else rc
    # Retried while the disk is full: the job's end is known here and nowhere else.
    _write_retrying(exit_path, json.dumps({
        "exit_code": code, "signal": sig, "started_at": started, "finished_at": time.time(),
        "message": f"killed by signal {sig}" if sig else "",
    }).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
