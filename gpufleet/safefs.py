"""Files opened, not trusted: paths below a root that a job controls, read without following links.

Every path a job can write to (its output folder, the data root, the agent's own job folders,
which a job cannot write but whose names come from requests) is opened here:

- each component is resolved with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` when the kernel
  has it (Linux >= 5.6), else walked one component at a time with `O_NOFOLLOW`, so a symlink the
  job planted anywhere in the path is refused (ELOOP), never followed, and ".." cannot climb out;
- a file must be a regular file (no FIFO that blocks, no device), checked on the opened descriptor;
- reads are capped in bytes; tails are read from the end of the file (never the whole file).

Errors are OSError (ELOOP for a link, EXDEV for an escape, ENOENT, EINVAL for "not a regular file").
"""
from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_SYS_OPENAT2 = 437  # the same number on x86_64 and aarch64 (asm-generic)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_have_openat2: bool | None = None


def _openat2(dirfd: int, rel: str, flags: int, mode: int) -> int:
    # openat2 refuses a mode without O_CREAT/O_TMPFILE (EINVAL).
    tmpfile = getattr(os, "O_TMPFILE", 0)  # includes O_DIRECTORY's bit: compare the whole mask
    mode = mode if flags & os.O_CREAT or (tmpfile and flags & tmpfile == tmpfile) else 0
    how = _OpenHow(flags | os.O_CLOEXEC, mode, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
    fd = _libc.syscall(_SYS_OPENAT2, dirfd, os.fsencode(rel), ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), rel)
    return int(fd)


def _parts(rel: str) -> list[str]:
    if "\x00" in rel:
        raise OSError(errno.EINVAL, "path contains a NUL byte", rel)
    if rel.startswith("/"):
        raise OSError(errno.EXDEV, "absolute path where a relative one is required", rel)
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise OSError(errno.EXDEV, "'..' in a path that must stay below its root", rel)
    return parts


def _walk(dirfd: int, parts: list[str], flags: int, mode: int) -> int:
    """O_NOFOLLOW one component at a time (kernels without openat2)."""
    cur = os.dup(dirfd)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            f = flags if last else os.O_RDONLY | os.O_DIRECTORY
            nxt = os.open(part, f | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=cur)
            os.close(cur)
            cur = nxt
        if not parts:
            nxt = os.open(".", flags | os.O_CLOEXEC, dir_fd=cur)
            os.close(cur)
            cur = nxt
        return cur
    except BaseException:
        os.close(cur)
        raise


def open_beneath(root: Path | str | int, rel: str, flags: int = os.O_RDONLY, mode: int = 0o600) -> int:
    """A descriptor for `rel` below `root` (a path or an open directory fd), no link followed."""
    global _have_openat2
    parts = _parts(rel)
    own = not isinstance(root, int)
    dirfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if own else int(root)  # type: ignore[arg-type]
    try:
        if _have_openat2 is not False:
            try:
                return _openat2(dirfd, "/".join(parts) or ".", flags, mode)
            except OSError as exc:
                if exc.errno not in (errno.ENOSYS, errno.EPERM) or _have_openat2:
                    _have_openat2 = True
                    raise
                _have_openat2 = False  # no openat2 (old kernel, seccomp): walk instead
        return _walk(dirfd, parts, flags, mode)
    finally:
        if own:
            os.close(dirfd)


def open_regular(root: Path | str | int, rel: str) -> int:
    """A read-only descriptor for a regular file below `root` (EINVAL when it is anything else)."""
    fd = open_beneath(root, rel, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", rel)
        return fd
    except BaseException:
        os.close(fd)
        raise


@contextmanager
def opened(root: Path | str | int, rel: str) -> Iterator[int]:
    fd = open_regular(root, rel)
    try:
        yield fd
    finally:
        os.close(fd)


def read_capped(root: Path | str | int, rel: str, cap: int) -> bytes:
    """At most `cap` bytes from the start of a regular file below `root`."""
    with opened(root, rel) as fd:
        return read_fd(fd, cap)


def read_fd(fd: int, cap: int, offset: int = 0) -> bytes:
    out = bytearray()
    while len(out) < cap:
        chunk = os.pread(fd, min(1 << 20, cap - len(out)), offset + len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def exists_dir(root: Path | str | int, rel: str) -> bool:
    """Whether `rel` is a directory below `root` reached without links."""
    try:
        fd = open_beneath(root, rel, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    os.close(fd)
    return True


def tail_fd(fd: int, max_bytes: int, lines: int = 0) -> bytes:
    """The end of an open file: its last `lines` lines (all when 0), never more than `max_bytes`.

    Reads backwards from the end in blocks, so the cost is bounded by what is returned, not by the
    size of the file."""
    size = os.fstat(fd).st_size
    if lines <= 0:
        start = max(0, size - max_bytes)
        return read_fd(fd, size - start, start)
    block = 64 * 1024
    pos = size
    buf = b""
    while pos > 0 and len(buf) < max_bytes:
        step = min(block, pos, max_bytes - len(buf))
        pos -= step
        buf = os.pread(fd, step, pos) + buf
        # A trailing newline ends the last line; it does not start a new one.
        body = buf[:-1] if buf.endswith(b"\n") else buf
        if body.count(b"\n") >= lines:
            break
    body = buf[:-1] if buf.endswith(b"\n") else buf
    cut = body.split(b"\n")
    if len(cut) > lines:
        buf = b"\n".join(cut[-lines:]) + (b"\n" if buf.endswith(b"\n") else b"")
    return buf[-max_bytes:] if len(buf) > max_bytes else buf


def tail_file(root: Path | str | int, rel: str, max_bytes: int, lines: int = 0) -> bytes:
    """tail_fd of a regular file below `root`; b"" when it does not exist."""
    try:
        with opened(root, rel) as fd:
            return tail_fd(fd, max_bytes, lines)
    except FileNotFoundError:
        return b""


def make_dirs(root: Path | str | int, rel: str, mode: int = 0o755) -> int:
    """Create `rel` below `root` one component at a time, no link followed; returns the leaf's fd."""
    parts = _parts(rel)
    own = not isinstance(root, int)
    cur = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if own else os.dup(int(root))  # type: ignore[arg-type]
    try:
        for part in parts:
            try:
                os.mkdir(part, mode, dir_fd=cur)
            except FileExistsError:
                pass
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cur)
            os.close(cur)
            cur = nxt
        return cur
    except BaseException:
        os.close(cur)
        raise
