"""Pytest plugin: a real Docker engine and a tiny local image for the docker tests.

Load it with `pytest_plugins = ["tests.dockerd"]` in tests/conftest.py (or `-p tests.dockerd`).

- `dockerd` (session): an engine that already answers at DOCKER_HOST or /var/run/docker.sock,
  else a private `dockerd` started here with its own data root, exec root and socket, and
  without touching the host's network (`--iptables=false --bridge=none --ip-masq=false`).
- `tiny_image` (session): "gpufleet-tiny:latest", a busybox-static rootfs imported with the
  engine's import API (no registry is reachable from the test machines).

When no engine can be had the docker tests are skipped with the reason, except under CI=true,
where they fail: CI must really exercise docker.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import docker
import docker.errors
import pytest

TINY_REPOSITORY = "gpufleet-tiny"
TINY_IMAGE = f"{TINY_REPOSITORY}:latest"
BUSYBOX = Path("/bin/busybox")
# Enough of a userland for test jobs written as `sh -c '...'`.
APPLETS = (
    "sh", "ash", "sleep", "echo", "cat", "true", "false", "ls", "mkdir", "kill", "touch", "printf",
    "env", "id", "pwd", "test", "[", "rm", "seq", "wc", "head", "tail", "date", "grep", "dd",
    "stat", "usleep", "yes",
)  # fmt: skip
START_DEADLINE_S = 60.0
CLIENT_TIMEOUT_S = 30


@dataclass
class Dockerd:
    base_url: str
    client: docker.DockerClient
    # Set when this plugin started the engine (None: an engine that was already running).
    process: subprocess.Popen[bytes] | None = None
    root: Path | None = None
    log_path: Path | None = None
    storage_driver: str = ""


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"docker engine required under CI=true: {reason}", pytrace=False)
    pytest.skip(f"no docker engine: {reason}")


def _answers(base_url: str) -> docker.DockerClient | None:
    try:
        client = docker.DockerClient(base_url=base_url, timeout=CLIENT_TIMEOUT_S)
    except Exception:  # noqa: BLE001 - any failure means "not this one"
        return None
    try:
        if client.ping():
            return client
    except Exception:  # noqa: BLE001
        pass
    client.close()
    return None


def _existing_engine() -> tuple[str, docker.DockerClient] | None:
    candidates = []
    if os.environ.get("DOCKER_HOST"):
        candidates.append(os.environ["DOCKER_HOST"])
    if Path("/var/run/docker.sock").exists():
        candidates.append("unix:///var/run/docker.sock")
    for url in candidates:
        client = _answers(url)
        if client is not None:
            return url, client
    return None


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def _start_dockerd(
    binary: str, root: Path, storage_driver: str
) -> tuple[subprocess.Popen[bytes], docker.DockerClient | None, Path]:
    """Start dockerd under `root`; return it and a client once it answers (None if it never did)."""
    sock = root / "docker.sock"
    log_path = root / f"dockerd-{storage_driver or 'default'}.log"
    data = root / f"data-{storage_driver or 'default'}"
    argv = [
        binary,
        "--iptables=false",
        "--bridge=none",
        "--ip-masq=false",
        "--data-root", str(data),
        "--exec-root", str(root / "exec"),
        "--pidfile", str(root / "dockerd.pid"),
        "-H", f"unix://{sock}",
    ]  # fmt: skip
    if storage_driver:
        argv += ["--storage-driver", storage_driver]
    env = dict(os.environ)
    # dockerd finds runc, containerd and docker-init on PATH; CI shells may lack the sbin dirs.
    env["PATH"] = env.get("PATH", "") + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env.pop("DOCKER_HOST", None)
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        if sock.exists():
            client = _answers(f"unix://{sock}")
            if client is not None:
                return proc, client, log_path
        try:
            proc.wait(timeout=0.05)  # the short wait that also notices an early exit
            break
        except subprocess.TimeoutExpired:
            pass
    return proc, None, log_path


def _unmount_under(root: Path) -> None:
    """Best effort: undo mounts a dockerd that died early left under root (its data root
    bind-mounts itself), so the temp dir can be removed."""
    try:
        with open("/proc/self/mounts") as f:
            points = [line.split()[1] for line in f]
    except OSError:
        return
    prefix = str(root) + "/"
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def dockerd() -> Iterator[Dockerd]:
    found = _existing_engine()
    if found is not None:
        url, client = found
        yield Dockerd(base_url=url, client=client, storage_driver=str(client.info().get("Driver", "")))
        client.close()
        return

    binary = shutil.which("dockerd") or next(
        (p for p in ("/usr/sbin/dockerd", "/usr/bin/dockerd") if Path(p).exists()), None
    )
    if binary is None:
        _unavailable("dockerd is not installed (apt-get install docker.io)")
    if os.geteuid() != 0:
        _unavailable("dockerd needs root and these tests do not run as root")
    # A short path under /tmp: the socket path must stay under the 108-byte sun_path limit,
    # and containerd nests its own sockets under the exec root.
    root = Path(tempfile.mkdtemp(prefix="gfd-", dir="/tmp"))
    failures: list[str] = []
    started: tuple[subprocess.Popen[bytes], docker.DockerClient, Path, str] | None = None
    # The default driver first (overlay2 where the kernel allows it); vfs works everywhere,
    # only slower, for sandboxes whose filesystem refuses overlay mounts.
    for driver in ("", "vfs"):
        proc, client, log_path = _start_dockerd(binary, root, driver)
        if client is not None:
            started = (proc, client, log_path, driver)
            break
        _stop(proc)
        failures.append(
            f"dockerd (storage driver {driver or 'default'}) did not answer within "
            f"{START_DEADLINE_S:.0f}s (exit code {proc.returncode}); log tail:\n{_tail(log_path)}"
        )
    if started is None:
        _unmount_under(root)
        shutil.rmtree(root, ignore_errors=True)
        _unavailable("\n\n".join(failures))
    proc, client, log_path, driver = started
    engine = Dockerd(
        base_url=f"unix://{root / 'docker.sock'}",
        client=client,
        process=proc,
        root=root,
        log_path=log_path,
        storage_driver=str(client.info().get("Driver", driver)),
    )
    try:
        yield engine
    finally:
        client.close()
        _stop(proc)
        # A cleanly stopped dockerd has unmounted everything; a failed first try may not have.
        _unmount_under(root)
        shutil.rmtree(root, ignore_errors=True)


def _tiny_rootfs_tar() -> bytes:
    """A tar of a minimal rootfs: static busybox, applet links, /tmp, /output, /etc/passwd."""
    buf = io.BytesIO()
    now = int(time.time())

    def add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
        info = tarfile.TarInfo(name)
        info.type = tarfile.DIRTYPE
        info.mode = mode
        info.mtime = now
        tar.addfile(info)

    def add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = mode
        info.mtime = now
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "etc", "output", "data", "proc", "sys", "dev"):
            add_dir(tar, d)
        add_dir(tar, "tmp", 0o1777)
        add_file(tar, "bin/busybox", BUSYBOX.read_bytes(), 0o755)
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            link.mtime = now
            tar.addfile(link)
        add_file(
            tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
        )
        add_file(tar, "etc/group", b"root:x:0:\nnogroup:x:65534:\n")
    return buf.getvalue()


@pytest.fixture(scope="session")
def tiny_image(dockerd: Dockerd) -> str:
    try:
        dockerd.client.images.get(TINY_IMAGE)
        return TINY_IMAGE
    except docker.errors.ImageNotFound:
        pass
    if not BUSYBOX.exists():
        _unavailable(f"{BUSYBOX} is missing (apt-get install busybox-static)")
    # The engine's import endpoint is `docker import`: no Dockerfile, no base image, no
    # registry. No CMD is set; every test passes its argv.
    dockerd.client.api.import_image_from_data(_tiny_rootfs_tar(), repository=TINY_REPOSITORY, tag="latest")
    dockerd.client.images.get(TINY_IMAGE)  # raises if the import did not take
    return TINY_IMAGE
