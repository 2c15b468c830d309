"""Docker runtime: one container per (job_id, attempt), made and watched through the Docker SDK.

Only the SDK's HTTP API is used (never the docker CLI, never a shell). The container is named
`gpufleet-<job_id>-<attempt>` and labelled, so that after an agent crash at any point the agent
finds it again by name or by label instead of making a second one.

Decisions worth knowing:
- Containers are never auto-removed: the old system lost exit codes to `--rm`. `remove()` is
  called by the supervisor only after it stored the exit code.
- The container runs under docker's init (tini, `init=True`) with `TINI_KILL_PROCESS_GROUP=1`:
  without it the job is PID 1, which the kernel shields from every signal it has no handler
  for, so a plain SIGTERM would do nothing and every stop would wait out its grace period.
  With it a signal reaches the job's whole process group (like the process runtime's killpg)
  and an unhandled SIGTERM ends the job with 143, the same as on a bare host.
- The network mode is docker's default. It works on an engine started with `--bridge=none`
  (the container then simply has no outside network) and gives jobs the host's usual
  network on a normally configured engine.
- Nothing is pulled: no registry is reachable from the fleet's hosts, and a silent pull of a
  wrong image is worse than a clear error.
"""

from __future__ import annotations

import calendar
import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests
import urllib3.exceptions
from docker.types import DeviceRequest, LogConfig, Mount
from gpufleet.agent import outputdirs
from gpufleet.agent.runtime.base import Found, Handle, LaunchPlan, Observation, RuntimeError_, Seen

from gpufleet import failpoints

log = logging.getLogger("gpufleet.agent.runtime.docker")

LABEL_JOB = "gpufleet.job_id"
LABEL_ATTEMPT = "gpufleet.attempt"
LABEL_AGENT = "gpufleet.agent"
LABEL_OUTPUT = "gpufleet.output_dir"
OUTPUT_TARGET = "/output"

# Docker's own rule for container names; checked up front so a bad job id gives our message.
_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
# RFC 3339 as docker writes it: nanoseconds with trailing zeros trimmed, normally UTC ("Z").
_TS_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$")
# Everything that means "the engine did not answer properly" (socket gone, timeout, HTTP error).
_ENGINE_ERRORS: tuple[type[BaseException], ...] = (
    docker.errors.DockerException,
    requests.exceptions.RequestException,
    urllib3.exceptions.HTTPError,
    OSError,
)
# read_since asks from this far before its cursor: more than stdout and stderr are ever
# apart in the log (microseconds), so the cursor's own line is in what comes back.
_READ_BACK_S = 1.0
# How long start() waits for a container whose name a concurrent create took (409) to appear.
_ADOPT_DEADLINE_S = 10.0
_RUNNING_STATES = frozenset({"running", "paused", "restarting"})
_ENDED_STATES = frozenset({"exited", "dead", "removing"})


def container_name(job_id: str, attempt: int) -> str:
    return f"gpufleet-{job_id}-{attempt}"


def _explain(exc: BaseException) -> str:
    # APIError.explanation is the engine's own sentence; str(exc) adds the URL, which only
    # adds noise to a message a user reads.
    if isinstance(exc, docker.errors.APIError) and exc.explanation:
        return str(exc.explanation)
    return str(exc) or type(exc).__name__


@contextlib.contextmanager
def _engine(what: str) -> Iterator[None]:
    """Turn any engine failure inside the block into RuntimeError_ (callers handle 404 first)."""
    try:
        yield
    except RuntimeError_:
        raise
    except _ENGINE_ERRORS as exc:
        raise RuntimeError_(f"docker: {what}: {_explain(exc)}") from exc


def _timestamp_ns(text: str) -> int | None:
    """Nanoseconds since the epoch of a docker timestamp, or None for docker's zero time/garbage.

    Integers, not floats: log cursors must compare exactly at nanosecond resolution.
    """
    m = _TS_RE.match(text)
    if m is None:
        return None
    year, month, day, hour, minute, sec = (int(m.group(i)) for i in range(1, 7))
    if year <= 1:  # "0001-01-01T00:00:00Z" is Go's zero time: never started / never finished
        return None
    secs = calendar.timegm((year, month, day, hour, minute, sec, 0, 0, 0))
    zone = m.group(8)
    if zone != "Z":
        offset = int(zone[1:3]) * 3600 + int(zone[4:6]) * 60
        secs -= offset if zone[0] == "+" else -offset
    frac = int((m.group(7) or "0").ljust(9, "0"))
    return secs * 1_000_000_000 + frac


def _epoch(text: str | None) -> float | None:
    ns = _timestamp_ns(text or "")
    return None if ns is None else ns / 1e9


def _signal_of(exit_code: int) -> int:
    # 128+N is how a shell and tini report "ended by signal N"; 64 covers the real-time signals.
    return exit_code - 128 if 128 < exit_code <= 128 + 64 else 0


def _observation(state: dict[str, Any]) -> Observation:
    """Map a container's State (from inspect) to an Observation."""
    status = str(state.get("Status", ""))
    started = _epoch(state.get("StartedAt"))
    finished = _epoch(state.get("FinishedAt"))
    exit_code = int(state.get("ExitCode") or 0)
    error = str(state.get("Error") or "")
    if status in _RUNNING_STATES:
        return Observation(Seen.RUNNING, started_at=started)
    if status == "created" or (status == "removing" and started is None):
        if error and exit_code != 0:
            # A start was tried and the engine refused it (command not found, no GPU driver,
            # ...): docker leaves the container 'created' with the would-be exit code (127,
            # 126, 128) and the reason. That is the job's end, not a job still to be started.
            return Observation(Seen.EXITED, exit_code=exit_code, message=error)
        return Observation(Seen.CREATED)
    if status in _ENDED_STATES:
        message = "OOMKilled" if state.get("OOMKilled") else error
        return Observation(
            Seen.EXITED,
            exit_code=exit_code,
            signal=_signal_of(exit_code),
            started_at=started,
            finished_at=finished,
            message=message,
        )
    # An engine state this code does not know: do not guess an end (the supervisor keeps the
    # job's last state when observe raises).
    raise RuntimeError_(f"docker: container in unknown state {status!r}")


def _never_started(state: dict[str, Any]) -> bool:
    return str(state.get("Status")) == "created" and _timestamp_ns(str(state.get("StartedAt", ""))) is None


class DockerRuntime:
    """Runtime protocol over a Docker engine (see agent.runtime.base.Runtime)."""

    name = "docker"

    def __init__(
        self,
        agent_name: str,
        base_url: str | None = None,
        client: docker.DockerClient | None = None,
        log_max_bytes: int = 64 * 1024 * 1024,
        log_max_files: int = 2,
        default_user: str = "",
        *,
        timeout: int = 30,
        init: bool = True,
        output_root: Path | None = None,
    ) -> None:
        if not agent_name:
            raise ValueError("agent_name must not be empty (it labels every container)")
        self.agent_name = agent_name
        self.log_max_bytes = log_max_bytes
        self.log_max_files = log_max_files
        self.default_user = default_user
        self.init = init
        self.output_root = output_root
        if client is None:
            with _engine(f"connect to {base_url or 'the default engine'}"):
                # version "auto" (the SDK's default here) asks the engine which API it speaks:
                # pinning one would break on engines older (20.10 tops at 1.41) or newer
                # (29 refuses < 1.44) than the pin.
                if base_url:
                    client = docker.DockerClient(base_url=base_url, timeout=timeout)
                else:
                    client = docker.from_env(timeout=timeout)
        self.client: docker.DockerClient = client
        # The low-level API: one HTTP request per call, no hidden re-inspect like the models do.
        self._api: Any = client.api
        # StartedAt of running containers, so observe_many needs no inspect for them after the
        # first sighting (the list call does not carry it; it does not change while running).
        self._started_at: dict[str, float | None] = {}
        self._events_stop = threading.Event()
        self._events: Any = None

    @classmethod
    def available(cls, base_url: str | None = None, timeout: float = 2.0) -> bool:
        """Whether a Docker engine answers at base_url (default: DOCKER_HOST or the usual socket)."""
        try:
            if base_url:
                client = docker.DockerClient(base_url=base_url, timeout=timeout)
            else:
                client = docker.from_env(timeout=timeout)
        except _ENGINE_ERRORS:
            return False
        try:
            return bool(client.ping())
        except _ENGINE_ERRORS:
            return False
        finally:
            client.close()

    # ---- start / find -------------------------------------------------------------------------

    def start(self, plan: LaunchPlan) -> Handle:
        name = container_name(plan.job_id, plan.attempt)
        if not _NAME_RE.match(name):
            raise RuntimeError_(
                f"job_id {plan.job_id!r} cannot form a container name (allowed: letters, digits, _ . -)"
            )
        with _engine(f"start {name}"):
            # A concurrent start of the same attempt (a retried Launch) may take the name
            # between our look-up and our create. The engine reserves the name before the
            # container can be inspected, so after a 409 we look again until it shows up.
            deadline = time.monotonic() + _ADOPT_DEADLINE_S
            while True:
                info = self._inspect(name)
                if info is not None:
                    break
                try:
                    cid = self._create(plan, name)
                except docker.errors.APIError as exc:
                    if exc.status_code != 409:
                        raise
                    if time.monotonic() > deadline:
                        raise RuntimeError_(
                            f"docker: start {name}: the name is taken but no such container appeared "
                            f"within {_ADOPT_DEADLINE_S:.0f}s"
                        ) from exc
                    time.sleep(0.005)  # poll interval while the other create registers
                    continue
                failpoints.hit("agent.launch.after_create")
                self._start(cid, name)
                return Handle(runtime_id=cid)
            self._check_ours(info, plan.job_id, plan.attempt, name)
            # Created but never started: the agent died between create and start (or the
            # start failed). Start it now; a container that ran is never started again.
            if _never_started(info["State"]):
                self._start(info["Id"], name)
            return Handle(runtime_id=info["Id"])

    def find(self, job_id: str, attempt: int, job_dir: Path) -> Handle | None:
        name = container_name(job_id, attempt)
        if not _NAME_RE.match(name):
            return None
        with _engine(f"find {name}"):
            info = self._inspect(name)
            if info is not None:
                labels = info.get("Config", {}).get("Labels") or {}
                if labels.get(LABEL_JOB) == job_id and labels.get(LABEL_ATTEMPT) == str(attempt):
                    return Handle(runtime_id=info["Id"])
                return None  # the name is held by something we did not make
            # Someone renamed it: the labels still say whose it is.
            rows = self._api.containers(
                all=True,
                filters={
                    "label": [
                        f"{LABEL_AGENT}={self.agent_name}",
                        f"{LABEL_JOB}={job_id}",
                        f"{LABEL_ATTEMPT}={attempt}",
                    ]
                },
            )
        return Handle(runtime_id=rows[0]["Id"]) if rows else None

    def _inspect(self, ref: str) -> dict[str, Any] | None:
        try:
            info: dict[str, Any] = self._api.inspect_container(ref)
        except docker.errors.NotFound:
            return None
        return info

    def _check_ours(self, info: dict[str, Any], job_id: str, attempt: int, name: str) -> None:
        labels = info.get("Config", {}).get("Labels") or {}
        if labels.get(LABEL_JOB) != job_id or labels.get(LABEL_ATTEMPT) != str(attempt):
            raise RuntimeError_(
                f"docker: a container named {name} exists but was not made by gpufleet for "
                f"job {job_id} attempt {attempt}; remove it or rename it"
            )

    def _env(self, plan: LaunchPlan) -> dict[str, str]:
        env = dict(plan.env)
        # The supervisor normally sets both; these defaults only fill gaps. "void" (not just
        # an absent variable) matters: CUDA images bake NVIDIA_VISIBLE_DEVICES=all into their
        # ENV, and on a host whose default runtime is nvidia that would hand the job every GPU.
        env.setdefault("NVIDIA_VISIBLE_DEVICES", ",".join(map(str, plan.gpu_indices)) or "void")
        if plan.real_gpus and plan.gpu_indices:
            # Inside the container the requested GPUs are renumbered from 0.
            env.setdefault("CUDA_VISIBLE_DEVICES", ",".join(str(i) for i in range(len(plan.gpu_indices))))
        else:
            env.setdefault("CUDA_VISIBLE_DEVICES", ",".join(map(str, plan.gpu_indices)))
        # Signals to tini reach the job's whole process group (see the module docstring).
        if self.init:
            env.setdefault("TINI_KILL_PROCESS_GROUP", "1")
        return env

    def _user(self, plan: LaunchPlan) -> str | None:
        """The spec's user, else the owner's own uid:gid (its folder made its), else --container-user."""
        if plan.user or plan.run_as is None or plan.run_as.is_root:
            return plan.user or self.default_user or None
        outputdirs.give_output_dir(self.output_root, plan.output_dir, plan.run_as, plan.owner, own_uid=True)
        return f"{plan.run_as.uid}:{plan.run_as.gid}"

    def _create(self, plan: LaunchPlan, name: str) -> str:
        mounts = [Mount(target=OUTPUT_TARGET, source=str(plan.output_dir), type="bind", read_only=False)]
        mounts += [
            Mount(target=target, source=str(src), type="bind", read_only=True) for src, target in plan.mounts
        ]
        device_requests = None
        if plan.real_gpus and plan.gpu_indices:
            device_requests = [
                DeviceRequest(device_ids=_device_ids(plan), capabilities=[["gpu"]])
            ]
        # plan.log_max_bytes is the per-job rotation size the supervisor chose; the
        # constructor's value is the fallback when a plan leaves it at 0.
        max_size = plan.log_max_bytes or self.log_max_bytes
        host_config = self._api.create_host_config(
            mounts=mounts,
            shm_size=plan.shm_size_bytes or None,
            nano_cpus=plan.cpu_millis * 1_000_000 or None,
            mem_limit=plan.memory_bytes or None,
            privileged=False,
            auto_remove=False,  # never: the exit code must outlive the container's end
            init=self.init,
            log_config=LogConfig(
                type="json-file",
                config={"max-size": str(max_size), "max-file": str(self.log_max_files)},
            ),
            device_requests=device_requests,
        )
        labels = {
            LABEL_JOB: plan.job_id,
            LABEL_ATTEMPT: str(plan.attempt),
            LABEL_AGENT: self.agent_name,
            LABEL_OUTPUT: str(plan.output_dir),
        }
        user = self._user(plan)
        try:
            created = self._api.create_container(
                plan.image,
                command=list(plan.argv) or None,
                environment=self._env(plan),
                name=name,
                labels=labels,
                host_config=host_config,
                working_dir=plan.workdir or None,
                user=user,
                detach=True,
            )
        except docker.errors.ImageNotFound as exc:
            raise RuntimeError_(
                f"image {plan.image!r} is not present on this host; no registry pull is attempted"
            ) from exc
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                raise
            raise RuntimeError_(f"docker: create {name}: {_explain(exc)}") from exc
        cid: str = created["Id"]
        return cid

    def _start(self, cid: str, name: str) -> None:
        try:
            self._api.start(cid)  # 304 "already started" is not an error for the SDK
        except docker.errors.APIError as exc:
            # A concurrent start may have won; only a container that still never ran failed.
            info = self._inspect(cid)
            if info is not None and not _never_started(info["State"]):
                return
            # The container is left in place: observe() reports it EXITED with the engine's
            # exit code (127 command not found, ...) and reason; remove() cleans it up.
            raise RuntimeError_(f"docker: container {name} could not start: {_explain(exc)}") from exc

    # ---- observe ------------------------------------------------------------------------------

    def observe(self, handle: Handle, job_dir: Path) -> Observation:
        with _engine(f"inspect {handle.runtime_id[:12]}"):
            info = self._inspect(handle.runtime_id)
        if info is None:
            return Observation(Seen.MISSING)
        return _observation(info["State"])

    def observe_many(self, items: list[tuple[Handle, Path]]) -> list[Observation]:
        if not items:
            return []
        with _engine("list containers"):
            rows = self._api.containers(all=True, filters={"label": f"{LABEL_AGENT}={self.agent_name}"})
        listed: dict[str, str] = {row["Id"]: str(row.get("State", "")) for row in rows}
        # Forget running containers that are gone, so the cache stays as small as the host.
        # (Built apart and swapped in one assignment: other threads may be reading it.)
        started_at = {cid: t for cid, t in list(self._started_at.items()) if listed.get(cid) == "running"}
        out: list[Observation] = []
        for handle, job_dir in items:
            cid = handle.runtime_id
            state = listed.get(cid)
            if state == "running":
                if cid not in started_at:
                    obs = self.observe(handle, job_dir)
                    if obs.seen is Seen.RUNNING:
                        started_at[cid] = obs.started_at
                    out.append(obs)
                    continue
                out.append(Observation(Seen.RUNNING, started_at=started_at[cid]))
            else:
                # Exited/created/paused/...: the list has no exit code, one inspect has it.
                # Not listed: gone, or a handle that is a short id or made under another
                # agent name; the inspect tells those apart instead of guessing MISSING.
                out.append(self.observe(handle, job_dir))
        self._started_at = started_at
        return out

    # ---- signal / remove ----------------------------------------------------------------------

    def signal(self, handle: Handle, job_dir: Path, sig: int) -> None:
        if sig <= 0:
            # The engine reads signal 0 as "none given" and sends SIGKILL: never pass 0 on.
            return
        with _engine(f"signal {sig} to {handle.runtime_id[:12]}"):
            try:
                self._api.kill(handle.runtime_id, signal=int(sig))
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as exc:
                # 409 "is not running": it ended already, which is what a signal asks for.
                if exc.status_code == 409 or "is not running" in _explain(exc):
                    return
                raise

    def remove(self, handle: Handle, job_dir: Path) -> None:
        # job_dir is left alone: the docker runtime keeps no files of its own there.
        with _engine(f"remove {handle.runtime_id[:12]}"):
            try:
                # v=True also drops anonymous volumes an image's VOLUME lines made.
                self._api.remove_container(handle.runtime_id, force=True, v=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if exc.status_code == 409 and "already in progress" in _explain(exc):
                    return
                raise
        # (Its cached StartedAt, if any, goes at the next observe_many: it is no longer listed.)

    # ---- logs ---------------------------------------------------------------------------------

    def logs(self, handle: Handle, job_dir: Path, tail_lines: int = 0) -> bytes:
        with _engine(f"logs of {handle.runtime_id[:12]}"):
            try:
                data: bytes = self._api.logs(
                    handle.runtime_id,
                    stdout=True,
                    stderr=True,
                    # The SDK reads tail=0 as "no lines"; our 0 means "everything".
                    tail=tail_lines if tail_lines > 0 else "all",
                )
            except docker.errors.NotFound:
                return b""
        return data

    def follow(self, handle: Handle, job_dir: Path, tail_lines: int = 0) -> Iterator[bytes]:
        with _engine(f"follow logs of {handle.runtime_id[:12]}"):
            try:
                # The SDK lifts the client's read timeout on this stream, so quiet jobs are fine.
                stream = self._api.logs(
                    handle.runtime_id,
                    stdout=True,
                    stderr=True,
                    stream=True,
                    follow=True,
                    tail=tail_lines if tail_lines > 0 else "all",
                )
            except docker.errors.NotFound:
                return
        try:
            with _engine(f"follow logs of {handle.runtime_id[:12]}"):
                yield from stream
        finally:
            # A reader that stops early must not leave the HTTP connection open.
            stream.close()

    def read_since(self, handle: Handle, job_dir: Path, cursor: str) -> tuple[bytes, str]:
        """Lines logged after `cursor` ("" = from the start) and the cursor for the next call.

        The cursor is the docker timestamp of the last line returned, *in log order*. Log
        order and timestamp order can differ by microseconds: stdout and stderr are copied by
        separate goroutines, each stamping its own lines. So the next call reads back from a
        little before the cursor, finds the line carrying that exact timestamp and returns
        what follows it in log order; only when that line is gone (rotated away) does it fall
        back to "timestamp after the cursor". Lines are split at "\\n"; a line longer than
        docker's 16 KiB message limit comes back with docker's inner timestamps in it
        (progress lines are never that long).
        """
        since_ns = _timestamp_ns(cursor) if cursor else None
        kwargs: dict[str, Any] = {}
        if since_ns is not None:
            kwargs["since"] = max(since_ns / 1e9 - _READ_BACK_S, 1e-3)
        with _engine(f"logs of {handle.runtime_id[:12]}"):
            try:
                data: bytes = self._api.logs(
                    handle.runtime_id, stdout=True, stderr=True, timestamps=True, tail="all", **kwargs
                )
            except docker.errors.NotFound:
                return b"", cursor
        # (nanoseconds or None when unstamped, timestamp text, the line without its stamp)
        lines: list[tuple[int | None, str, bytes]] = []
        for line in data.splitlines(keepends=True):
            stamp, _, rest = line.partition(b" ")
            stamp_text = stamp.decode("ascii", "replace")
            ns = _timestamp_ns(stamp_text)
            # An unstamped line should not happen; keep it whole rather than lose it.
            lines.append((ns, stamp_text, rest) if ns is not None else (None, "", line))
        if since_ns is not None:
            anchor = next((i for i in range(len(lines) - 1, -1, -1) if lines[i][0] == since_ns), None)
            if anchor is not None:
                lines = lines[anchor + 1 :]
            else:
                lines = [entry for entry in lines if entry[0] is None or entry[0] > since_ns]
        new_cursor = next((text for ns, text, _ in reversed(lines) if ns is not None), cursor)
        return b"".join(rest for _, _, rest in lines), new_cursor

    # ---- inventory / health -------------------------------------------------------------------

    def list_labelled(self) -> list[Found]:
        with _engine("list containers"):
            rows = self._api.containers(all=True, filters={"label": f"{LABEL_AGENT}={self.agent_name}"})
        found: list[Found] = []
        for row in rows:
            labels = row.get("Labels") or {}
            job_id = labels.get(LABEL_JOB, "")
            try:
                attempt = int(labels.get(LABEL_ATTEMPT, ""))
            except ValueError:
                log.warning("container %s has a bad %s label; skipped", row["Id"][:12], LABEL_ATTEMPT)
                continue
            if not job_id:
                continue
            names = row.get("Names") or []
            found.append(
                Found(
                    job_id=job_id,
                    attempt=attempt,
                    handle=Handle(runtime_id=row["Id"]),
                    extra={
                        "name": names[0].lstrip("/") if names else "",
                        "state": str(row.get("State", "")),
                        "output_dir": labels.get(LABEL_OUTPUT, ""),
                    },
                )
            )
        return found

    def healthy(self) -> bool:
        try:
            return bool(self._api.ping())
        except _ENGINE_ERRORS:
            return False

    def watch_exits(self, wake: Callable[[], None]) -> None:
        """Follow the engine's event stream and call `wake` as soon as one of this agent's containers
        dies, so its end is recorded (and pushed) at once. The supervisor's poll stays the safety net,
        and covers the gaps while the stream reconnects (after an engine restart, say)."""
        filters = {"type": "container", "event": ["die", "oom"], "label": f"{LABEL_AGENT}={self.agent_name}"}

        def run() -> None:
            while not self._events_stop.is_set():
                try:
                    self._events = self._api.events(decode=True, filters=filters)
                    for _ in self._events:
                        if self._events_stop.is_set():
                            return
                        wake()
                except Exception as exc:  # noqa: BLE001 - engine away: the poll covers it meanwhile
                    log.debug("docker event stream: %s", _explain(exc))
                self._events_stop.wait(1.0)

        threading.Thread(target=run, name="docker-events", daemon=True).start()

    def close(self) -> None:
        self._events_stop.set()
        if self._events is not None:
            with contextlib.suppress(Exception):
                self._events.close()
        self.client.close()


def _device_ids(plan: LaunchPlan) -> list[str]:
    """The GPUs to request by UUID (their identity) when the plan knows them all, else by index."""
    uuids = [u for u in plan.env.get("GPUFLEET_GPU_UUIDS", "").split(",") if u]
    return uuids if len(uuids) == len(plan.gpu_indices) else [str(i) for i in plan.gpu_indices]
