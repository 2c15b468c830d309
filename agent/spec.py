"""Launch requests resolved against this host: the agent's half of the job-spec checks.

The spec itself, its host-free checks (`check_portable`) and its wire form live in gpufleet/jobspec.py,
shared with the coordinator; re-exported here for the agent's own modules. `validate` adds what only the
host can answer (roots, GPUs, the PATH) and resolves the request into a LaunchPlan.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from gpufleet.agent.runtime.base import LaunchPlan

from gpufleet.errors import InvalidArgument

# The shared spec and its host-free checks, re-exported for the agent's own modules.
from gpufleet.jobspec import JobSpec as JobSpec
from gpufleet.jobspec import MountSpec as MountSpec
from gpufleet.jobspec import check_attempt, check_job_id, check_portable
from gpufleet.paths import relative_under

DATASET_TARGET = "/dataset"


@dataclass(frozen=True)
class Roots:
    output_root: Path
    data_root: Path
    jobs_root: Path  # per-attempt runtime files, inside the state dir


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
