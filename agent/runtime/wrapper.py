"""Runs one process-runtime job and writes its exit code durably, even when the agent is down.

Started by the agent as `python -I wrapper.py JOB_DIR LOG_MAX_BYTES CWD -- ARGV...` in its own
session, so killing the agent (or its process group) leaves the job alone. The job runs in a
process group of its own; SIGTERM/SIGINT/SIGHUP sent to the wrapper are forwarded to that group.
Stdout and stderr go to JOB_DIR/output.log, rotated to output.log.1 at LOG_MAX_BYTES.
When the job ends the wrapper writes JOB_DIR/exit.json atomically (write, fsync, rename, fsync dir).

Standard library only: it must start fast and must not depend on the agent's imports.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time


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


def _pump(src: int, log_path: str, max_bytes: int) -> None:
    """Copy the job's output into the log file, rotating it at max_bytes."""
    out = open(log_path, "ab", buffering=0)
    size = out.tell()
    while True:
        try:
            chunk = os.read(src, 65536)
        except OSError:
            break
        if not chunk:
            break
        if size + len(chunk) > max_bytes and size > 0:
            out.close()
            os.replace(log_path, log_path + ".1")
            out = open(log_path, "ab", buffering=0)
            size = 0
        out.write(chunk)
        size += len(chunk)
    out.close()


def main(argv: list[str]) -> int:
    job_dir, max_bytes, cwd = argv[0], int(argv[1]), argv[2]
    assert argv[3] == "--"
    cmd = argv[4:]
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

    started = time.time()
    try:
        child = subprocess.Popen(
            cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
        )
    except OSError as exc:
        with open(log_path, "ab") as f:
            f.write(f"gpufleet: cannot start {cmd[0]!r}: {exc.strerror}\n".encode())
        _write_atomic(exit_path, json.dumps({
            "exit_code": 127, "signal": 0, "started_at": started, "finished_at": time.time(),
            "message": f"cannot start {cmd[0]!r}: {exc.strerror}",
        }).encode())
        return 127
    _write_atomic(os.path.join(job_dir, "child.pid"), str(child.pid).encode())
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
    # A grandchild may keep the pipe open; don't wait for it forever.
    pump.join(timeout=2.0)
    sig = -rc if rc < 0 else 0
    code = 128 + sig if sig else rc
    _write_atomic(exit_path, json.dumps({
        "exit_code": code, "signal": sig, "started_at": started, "finished_at": time.time(),
        "message": f"killed by signal {sig}" if sig else "",
    }).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
