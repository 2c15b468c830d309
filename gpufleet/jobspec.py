"""The job spec both wings share: the plain data, its host-free checks and its wire form.

A job spec is untrusted input: the coordinator runs `check_portable` at submit and the agent runs it again
(with the host's own checks, agent/spec.py) at launch; every refusal names the field and the rule
(InvalidArgument -> INVALID_ARGUMENT). `spec_from_pb`/`spec_to_pb` are the one conversion to and from
gpufleet.v1.JobSpec, used by both daemons' convert.py.
"""
from __future__ import annotations

import json
import os
import posixpath
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gpufleet.errors import InvalidArgument
from gpufleet.v1 import common_pb2 as pb

JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")
# Docker image references: [registry[:port]/]name[:tag][@digest], lower-case path components.
IMAGE_RE = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
DATASET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # staging's stage id
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
    if spec.dataset and not DATASET_RE.fullmatch(spec.dataset):
        raise InvalidArgument("spec.dataset",
                              f"must be a stage id matching {DATASET_RE.pattern}: {spec.dataset[:80]!r}")
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


_JOB_TYPES = {pb.JOB_TYPE_UNSPECIFIED: "", pb.JOB_TYPE_TRAIN: "TRAIN", pb.JOB_TYPE_EVAL: "EVAL"}
_JOB_TYPES_PB = {v: k for k, v in _JOB_TYPES.items()}


def job_type_to_pb(job_type: str) -> int:
    """The wire enum for a spec's job_type ("" and unknown names are UNSPECIFIED)."""
    return int(_JOB_TYPES_PB.get(job_type, pb.JOB_TYPE_UNSPECIFIED))


def spec_from_pb(s: pb.JobSpec) -> JobSpec:
    if s.job_type not in _JOB_TYPES:
        job_type = f"<{s.job_type}>"  # unknown enum number: validation names it
    else:
        job_type = _JOB_TYPES[s.job_type]
    return JobSpec(
        image=s.image, command=list(s.command), env=dict(s.env), output_dir=s.output_dir,
        mounts=[MountSpec(m.source, m.target) for m in s.mounts], total_epoch=s.total_epoch,
        val_interval=s.val_interval, params_json=s.params_json, job_type=job_type,
        shm_size_bytes=s.shm_size_bytes, cpu_millis=s.resources.cpu_millis,
        memory_bytes=s.resources.memory_bytes, workdir=s.workdir, user=s.user, dataset=s.dataset,
    )


def spec_to_pb(s: JobSpec) -> pb.JobSpec:
    return pb.JobSpec(
        image=s.image, command=s.command, env=s.env, output_dir=s.output_dir,
        mounts=[pb.Mount(source=m.source, target=m.target) for m in s.mounts], total_epoch=s.total_epoch,
        val_interval=s.val_interval, params_json=s.params_json,
        job_type=job_type_to_pb(s.job_type), shm_size_bytes=s.shm_size_bytes,  # type: ignore[arg-type]
        resources=pb.Resources(cpu_millis=s.cpu_millis, memory_bytes=s.memory_bytes),
        workdir=s.workdir, user=s.user, dataset=s.dataset,
    )
