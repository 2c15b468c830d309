"""Launch requests as plain data, and the one place that validates them.

Job specs are untrusted input: every field is checked here before anything is recorded or
created, and each refusal names the field and the rule (InvalidArgument -> INVALID_ARGUMENT).
"""
from __future__ import annotations

import json
import os
import posixpath
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gpufleet.agent.runtime.base import LaunchPlan

from gpufleet.errors import InvalidArgument
from gpufleet.paths import relative_under

JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
DATASET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # staging's stage id
DATASET_TARGET = "/dataset"
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")
# Docker image references: [registry[:port]/]name[:tag][@digest], lower-case path components.
IMAGE_RE = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,31})?$")
MAX_ARGS = 4096
MAX_ARG_LEN = 128 * 1024
MAX_ENV = 1024
MAX_ENV_VALUE = 128 * 1024
MAX_PARAMS = 1024 * 1024
JOB_TYPES = ("TRAIN", "EVAL", "")


@dataclass
class MountSpec:
    source: str
    target: str = ""


@dataclass
class JobSpec:
    image: str = ""
    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    output_dir: str = ""
    mounts: list[MountSpec] = field(default_factory=list)
    total_epoch: int = 0
    val_interval: int = 0
    params_json: str = ""
    job_type: str = ""
    shm_size_bytes: int = 0
    cpu_millis: int = 0
    memory_bytes: int = 0
    workdir: str = ""
    user: str = ""
    dataset: str = ""  # stage id: <data-root>/tmp/<dataset> handed to the job read-only

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobSpec:
        d = dict(d)
        d["mounts"] = [MountSpec(**m) for m in d.get("mounts", [])]
        return cls(**d)


@dataclass(frozen=True)
class Roots:
    output_root: Path
    data_root: Path
    jobs_root: Path  # per-attempt runtime files, inside the state dir


def check_job_id(job_id: str, field_name: str = "job_id") -> None:
    if not job_id:
        raise InvalidArgument(field_name, "must not be empty")
    if not JOB_ID_RE.fullmatch(job_id):
        raise InvalidArgument(
            field_name, f"must match {JOB_ID_RE.pattern} (letters, digits, '_', '.', '-'), got {job_id[:80]!r}"
        )


def check_attempt(attempt: int) -> None:
    if attempt < 1:
        raise InvalidArgument("attempt", f"must be >= 1, got {attempt}")


def _check_text(value: str, field_name: str, limit: int) -> None:
    if "\x00" in value:
        raise InvalidArgument(field_name, "must not contain NUL bytes")
    if len(value) > limit:
        raise InvalidArgument(field_name, f"must be at most {limit} characters, got {len(value)}")


def _check_exec_string(value: str, field_name: str) -> None:
    """The kernel refuses one argv/env string of MAX_ARG_STRLEN (128 KiB) bytes or more, NUL included."""
    size = len(value.encode("utf-8", "surrogatepass")) + 1
    if size > MAX_ARG_LEN:
        raise InvalidArgument(field_name, f"must be under {MAX_ARG_LEN} bytes as UTF-8, got {size - 1}")


def check_portable(spec: JobSpec, runtime: str = "") -> None:
    """The checks that need no host: run by the coordinator at submit and by the agent at launch.

    `runtime` "" means "not known yet": an image or a command must be given.
    """
    if runtime == "docker" or (runtime == "" and spec.image):
        if not spec.image:
            raise InvalidArgument("spec.image", "is required by the docker runtime")
        if len(spec.image) > 255 or not IMAGE_RE.fullmatch(spec.image):
            raise InvalidArgument("spec.image", f"is not a valid image reference: {spec.image[:80]!r}")
    elif not spec.command:
        raise InvalidArgument("spec.command", "is required by the process runtime (an argv list)"
                              if runtime else "give spec.image (docker) or spec.command (an argv list)")
    if len(spec.command) > MAX_ARGS:
        raise InvalidArgument("spec.command", f"must have at most {MAX_ARGS} items")
    for i, arg in enumerate(spec.command):
        _check_text(arg, f"spec.command[{i}]", MAX_ARG_LEN)
        _check_exec_string(arg, f"spec.command[{i}]")
    if spec.command and not spec.command[0]:
        raise InvalidArgument("spec.command[0]", "must name the program to run")
    if len(spec.env) > MAX_ENV:
        raise InvalidArgument("spec.env", f"must have at most {MAX_ENV} entries")
    for k, v in spec.env.items():
        if not ENV_KEY_RE.fullmatch(k):
            raise InvalidArgument(
                f"spec.env[{k[:40]!r}]", "keys must be printable ASCII names matching [A-Za-z_][A-Za-z0-9_]*"
            )
        if k.startswith("GPUFLEET_"):
            raise InvalidArgument(f"spec.env[{k!r}]", "GPUFLEET_* variables are set by the agent")
        _check_text(v, f"spec.env[{k!r}]", MAX_ENV_VALUE)
        _check_exec_string(f"{k}={v}", f"spec.env[{k!r}]")
    _check_relative(spec.output_dir, "spec.output_dir")
    if spec.dataset and not DATASET_RE.fullmatch(spec.dataset):
        raise InvalidArgument("spec.dataset",
                              f"must be a stage id matching {DATASET_RE.pattern}: {spec.dataset[:80]!r}")
    for i, m in enumerate(spec.mounts):
        _check_relative(m.source, f"spec.mounts[{i}].source")
        target = m.target or "/data/" + m.source.strip("/")
        _check_text(target, f"spec.mounts[{i}].target", 4096)
        # Compare the normalised path: "/output/.", "//output" and "/./" are the same places.
        norm = posixpath.normpath("/" + target.lstrip("/"))
        if not target.startswith("/") or ".." in Path(target).parts or norm in ("/", "/output"):
            raise InvalidArgument(
                f"spec.mounts[{i}].target", f"must be an absolute path without '..', not / or /output: {target!r}"
            )
    for name, wire in (("total_epoch", "total_epoch"), ("val_interval", "val_interval"),
                       ("shm_size_bytes", "shm_size_bytes"), ("cpu_millis", "resources.cpu_millis"),
                       ("memory_bytes", "resources.memory_bytes")):
        if getattr(spec, name) < 0:
            raise InvalidArgument(f"spec.{wire}", f"must be >= 0, got {getattr(spec, name)}")
    if spec.params_json:
        _check_text(spec.params_json, "spec.params_json", MAX_PARAMS)
        try:
            params = json.loads(spec.params_json)
        except (ValueError, RecursionError) as exc:
            raise InvalidArgument("spec.params_json", f"is not valid JSON ({str(exc)[:120]})") from None
        if not isinstance(params, dict):
            raise InvalidArgument("spec.params_json", "must be a JSON object")
    if spec.job_type not in JOB_TYPES:
        raise InvalidArgument("spec.job_type", f"must be TRAIN or EVAL, got {spec.job_type!r}")
    if spec.user and (runtime == "process" or not USER_RE.fullmatch(spec.user)):
        raise InvalidArgument(
            "spec.user", "must be 'user' or 'uid:gid' (docker runtime only; process jobs run as the agent user)"
        )


def _check_relative(rel: str, field_name: str) -> None:
    if not rel:
        raise InvalidArgument(field_name, "must not be empty")
    _check_text(rel, field_name, 4096)
    if os.path.isabs(rel) or rel.startswith("~"):
        raise InvalidArgument(field_name, f"must be relative to its root, got absolute path {rel!r}")
    if ".." in Path(rel).parts:
        raise InvalidArgument(field_name, f"must not contain '..' ({rel!r})")
    if not Path(rel).parts or Path(rel).parts == (".",) or posixpath.normpath(rel) == ".":
        raise InvalidArgument(field_name, f"must name a folder below its root, got {rel!r}")
    for part in Path(rel).parts:
        if len(os.fsencode(part)) > 255:
            raise InvalidArgument(field_name, f"each path part must be at most 255 bytes ({part[:40]!r}...)")


def validate(
    job_id: str,
    attempt: int,
    spec: JobSpec,
    gpu_indices: list[int],
    *,
    runtime: str,
    roots: Roots,
    known_gpus: set[int],
    real_gpus: bool,
    base_env: dict[str, str],
    log_max_bytes: int,
    gpu_uuids: dict[int, str] | None = None,
) -> LaunchPlan:
    """Check a launch request and resolve it into a LaunchPlan. Creates nothing."""
    check_job_id(job_id)
    check_attempt(attempt)
    check_portable(spec, runtime)
    if runtime == "process" and spec.command:
        prog = spec.command[0]
        if os.sep in prog:
            if not (os.path.isfile(prog) and os.access(prog, os.X_OK)):
                raise InvalidArgument("spec.command[0]", f"{prog!r} is not an executable file on this host")
        elif shutil.which(prog, path=base_env.get("PATH")) is None:
            raise InvalidArgument("spec.command[0]", f"{prog!r} is not found on the agent's PATH")
    output_dir = relative_under(roots.output_root, spec.output_dir, "spec.output_dir")
    mounts: list[tuple[Path, str]] = []
    for i, m in enumerate(spec.mounts):
        src = relative_under(roots.data_root, m.source, f"spec.mounts[{i}].source")
        target = m.target or "/data/" + m.source.strip("/")
        try:
            exists = src.exists()
        except OSError as exc:  # ENAMETOOLONG and friends
            raise InvalidArgument(f"spec.mounts[{i}].source", f"cannot be read: {exc.strerror}") from None
        if not exists:
            raise InvalidArgument(f"spec.mounts[{i}].source", f"{m.source!r} does not exist under the data root")
        mounts.append((src, target))
    dataset_dir = _staged_dataset(roots.data_root, spec.dataset)
    if spec.workdir:
        if runtime == "process":
            relative_under(output_dir, spec.workdir, "spec.workdir")
        elif not spec.workdir.startswith("/") or ".." in Path(spec.workdir).parts:
            raise InvalidArgument("spec.workdir", "must be an absolute container path without '..'")
    if len(set(gpu_indices)) != len(gpu_indices):
        raise InvalidArgument("gpu_indices", f"must not repeat an index: {list(gpu_indices)}")
    for idx in gpu_indices:
        if idx not in known_gpus:
            raise InvalidArgument("gpu_indices", f"GPU {idx} does not exist on this host (have {sorted(known_gpus)})")

    visible = ",".join(str(i) for i in gpu_indices)
    uuids = [(gpu_uuids or {}).get(i, "") for i in gpu_indices]
    by_uuid = real_gpus and bool(gpu_indices) and all(uuids)
    # Inside a container that got real GPUs through a device request they are renumbered 0..n-1.
    cuda = ",".join(str(i) for i in range(len(gpu_indices))) if runtime == "docker" and real_gpus else visible
    if by_uuid:
        # By identity (issue 15): CUDA numbers devices fastest-first, NVML by PCI bus, so an index
        # can name another GPU on a mixed host; a UUID cannot (in a container too: the device
        # request passes the same UUIDs).
        cuda = visible = ",".join(uuids)
    # A container keeps its image's PATH/HOME: only process jobs start from the agent's base env.
    env = dict(base_env) if runtime == "process" else {}
    env.update(spec.env)
    env.update({
        "CUDA_VISIBLE_DEVICES": cuda,
        "NVIDIA_VISIBLE_DEVICES": visible if visible else "void",
        # Where a job still numbers devices itself: the same order as NVML and nvidia-smi.
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "GPUFLEET_GPU_UUIDS": ",".join(u for u in uuids if u),
        "GPUFLEET_JOB_ID": job_id,
        "GPUFLEET_ATTEMPT": str(attempt),
        "GPUFLEET_OUTPUT_DIR": str(output_dir) if runtime == "process" else "/output",
        "GPUFLEET_PARAMS_JSON": spec.params_json or "{}",
        "GPUFLEET_JOB_TYPE": spec.job_type or "TRAIN",
        "GPUFLEET_TOTAL_EPOCH": str(spec.total_epoch),
    })
    if dataset_dir is not None:
        if runtime == "docker":
            if all(t != DATASET_TARGET for _, t in mounts):
                mounts.append((dataset_dir, DATASET_TARGET))
            env["GPUFLEET_DATASET_DIR"] = DATASET_TARGET
        else:
            env["GPUFLEET_DATASET_DIR"] = str(dataset_dir)
    return LaunchPlan(
        job_id=job_id,
        attempt=attempt,
        argv=list(spec.command),
        image=spec.image,
        env=env,
        output_dir=output_dir,
        mounts=mounts,
        gpu_indices=list(gpu_indices),
        real_gpus=real_gpus,
        job_dir=roots.jobs_root / job_id / str(attempt),
        shm_size_bytes=spec.shm_size_bytes,
        cpu_millis=spec.cpu_millis,
        memory_bytes=spec.memory_bytes,
        workdir=spec.workdir,
        user=spec.user,
        log_max_bytes=log_max_bytes,
    )


def _staged_dataset(data_root: Path, dataset: str) -> Path | None:
    """<data-root>/tmp/<dataset> when it was staged on this node (a real folder), else None."""
    if not dataset:
        return None
    folder = data_root / "tmp" / dataset
    try:
        if folder.is_symlink() or not folder.is_dir():
            return None
        resolved = folder.resolve()
    except OSError:
        return None
    return resolved if resolved.parent == (data_root / "tmp").resolve() else None
