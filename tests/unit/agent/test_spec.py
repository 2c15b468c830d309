"""Launch validation: every bad field is refused by name before anything exists; good ones get the env."""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from gpufleet.agent.runtime.base import LaunchPlan
from gpufleet.agent.spec import JobSpec, MountSpec, Roots, check_portable, validate

from gpufleet.errors import InvalidArgument

PY = sys.executable
DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def roots(tmp_path: Path) -> Roots:
    out, data, outside = tmp_path / "out", tmp_path / "data", tmp_path / "outside"
    for d in (out, data / "ds1", outside):
        d.mkdir(parents=True)
    (out / "escape").symlink_to(outside)  # a link inside the output root that leads out of it
    (data / "escape").symlink_to(outside)
    (data / "ds1" / "img.png").write_text("x")
    return Roots(output_root=out, data_root=data, jobs_root=tmp_path / "state" / "jobs")


def run(roots: Roots, *, job_id: str = "job-1", attempt: int = 1, gpus: list[int] | None = None,
        runtime: str = "process", **spec: Any) -> LaunchPlan:
    spec.setdefault("output_dir", "job-1")
    if runtime == "process":
        spec.setdefault("command", [PY, "-c", "pass"])
    else:
        spec.setdefault("image", "busybox:latest")
    return validate(job_id, attempt, JobSpec(**spec), gpus or [], runtime=runtime, roots=roots,
                    known_gpus={0, 1, 2, 3}, real_gpus=False, log_max_bytes=1024,
                    base_env={"PATH": os.environ["PATH"], "LANG": "C"})


def m(source: str, target: str = "") -> list[MountSpec]:
    return [MountSpec(source, target)]


def ok(case: str, kw: dict[str, Any], field: str) -> Any:
    return pytest.param(kw, field, id=case)


def bug(case: str, kw: dict[str, Any], field: str, why: str) -> Any:
    return pytest.param(kw, field, id=case)


BAD: list[Any] = [
    # (case, run() keyword arguments, the field the refusal must name)
    ok("empty job id", {"job_id": ""}, "job_id"),
    ok("job id with slash", {"job_id": "a/b"}, "job_id"),
    ok("job id dot-dot", {"job_id": ".."}, "job_id"),
    ok("job id leading dash", {"job_id": "-rf"}, "job_id"),
    ok("job id with space", {"job_id": "a b"}, "job_id"),
    ok("job id with NUL", {"job_id": "a\x00b"}, "job_id"),
    ok("job id unicode", {"job_id": "jöb"}, "job_id"),
    ok("job id too long", {"job_id": "x" * 129}, "job_id"),
    ok("attempt 0", {"attempt": 0}, "attempt"),
    ok("attempt negative", {"attempt": -3}, "attempt"),
    ok("docker without image", {"runtime": "docker", "image": ""}, "spec.image"),
    ok("image upper case", {"runtime": "docker", "image": "Busybox"}, "spec.image"),
    ok("image with shell", {"runtime": "docker", "image": "busybox;rm -rf /"}, "spec.image"),
    ok("image with space", {"runtime": "docker", "image": "busy box"}, "spec.image"),
    ok("image bad digest", {"runtime": "docker", "image": "busybox@sha256:xyz"}, "spec.image"),
    ok("image too long", {"runtime": "docker", "image": "a" * 256}, "spec.image"),
    ok("process without command", {"command": []}, "spec.command"),
    ok("empty program", {"command": [""]}, "spec.command[0]"),
    ok("program not on PATH", {"command": ["no-such-program-gpufleet"]}, "spec.command[0]"),
    ok("NUL in arg", {"command": [PY, "-c", "pass\x00"]}, "spec.command[2]"),
    ok("arg too long", {"command": [PY, "x" * (128 * 1024 + 1)]}, "spec.command[1]"),
    ok("too many args", {"command": [PY] + ["x"] * 4096}, "spec.command"),
    ok("env key with =", {"env": {"A=B": "1"}}, "spec.env['A=B']"),
    ok("env key non-printable", {"env": {"A\x01": "1"}}, "spec.env['A\\x01']"),
    ok("env key with newline inside", {"env": {"A\nB": "1"}}, "spec.env['A\\nB']"),
    ok("env key empty", {"env": {"": "1"}}, "spec.env['']"),
    ok("env key leading digit", {"env": {"1A": "1"}}, "spec.env['1A']"),
    ok("env key non-ascii", {"env": {"KÉY": "1"}}, "spec.env['KÉY']"),
    ok("GPUFLEET_ env key", {"env": {"GPUFLEET_JOB_ID": "other"}}, "spec.env['GPUFLEET_JOB_ID']"),
    ok("env value with NUL", {"env": {"A": "x\x00y"}}, "spec.env['A']"),
    ok("output_dir empty", {"output_dir": ""}, "spec.output_dir"),
    ok("output_dir absolute", {"output_dir": "/tmp/x"}, "spec.output_dir"),
    ok("output_dir dot-dot", {"output_dir": "../x"}, "spec.output_dir"),
    ok("output_dir inner dot-dot", {"output_dir": "a/../../x"}, "spec.output_dir"),
    ok("output_dir home", {"output_dir": "~/x"}, "spec.output_dir"),
    ok("output_dir NUL", {"output_dir": "a\x00"}, "spec.output_dir"),
    ok("output_dir symlink escape", {"output_dir": "escape/job"}, "spec.output_dir"),
    ok("output_dir too long", {"output_dir": "a/" * 2049}, "spec.output_dir"),
    ok("mount source dot-dot", {"mounts": m("../outside")}, "spec.mounts[0].source"),
    ok("mount source absolute", {"mounts": m("/etc")}, "spec.mounts[0].source"),
    ok("mount source symlink escape", {"mounts": m("escape")}, "spec.mounts[0].source"),
    ok("mount source missing", {"mounts": m("nope")}, "spec.mounts[0].source"),
    ok("mount source empty", {"mounts": m("")}, "spec.mounts[0].source"),
    ok("second mount bad", {"mounts": m("ds1") + m("nope")}, "spec.mounts[1].source"),
    ok("mount target relative", {"mounts": m("ds1", "data")}, "spec.mounts[0].target"),
    ok("mount target /output", {"mounts": m("ds1", "/output")}, "spec.mounts[0].target"),
    ok("mount target /output/", {"mounts": m("ds1", "/output/")}, "spec.mounts[0].target"),
    ok("mount target root", {"mounts": m("ds1", "/")}, "spec.mounts[0].target"),
    ok("mount target dot-dot", {"mounts": m("ds1", "/data/../output")}, "spec.mounts[0].target"),
    ok("mount target NUL", {"mounts": m("ds1", "/data\x00")}, "spec.mounts[0].target"),
    ok("negative total_epoch", {"total_epoch": -1}, "spec.total_epoch"),
    ok("negative val_interval", {"val_interval": -1}, "spec.val_interval"),
    ok("negative shm size", {"shm_size_bytes": -1}, "spec.shm_size_bytes"),
    ok("negative cpu", {"cpu_millis": -5}, "spec.resources.cpu_millis"),
    ok("negative memory", {"memory_bytes": -5}, "spec.resources.memory_bytes"),
    ok("params_json not JSON", {"params_json": "{total_epoch: 3"}, "spec.params_json"),
    ok("params_json a list", {"params_json": "[1, 2]"}, "spec.params_json"),
    ok("params_json a string", {"params_json": '"x"'}, "spec.params_json"),
    ok("params_json NUL", {"params_json": '{"a": "\x00"}'}, "spec.params_json"),
    ok("params_json too big", {"params_json": '{"a": "' + "x" * (1024 * 1024) + '"}'}, "spec.params_json"),
    ok("unknown job type", {"job_type": "TEST"}, "spec.job_type"),
    ok("unknown job type number", {"job_type": "<7>"}, "spec.job_type"),
    ok("duplicate gpu index", {"gpus": [1, 1]}, "gpu_indices"),
    ok("unknown gpu index", {"gpus": [4]}, "gpu_indices"),
    ok("negative gpu index", {"gpus": [-1]}, "gpu_indices"),
    ok("user on process runtime", {"user": "root"}, "spec.user"),
    ok("bad docker user", {"runtime": "docker", "user": "root; id"}, "spec.user"),
    ok("process workdir escapes", {"workdir": "../x"}, "spec.workdir"),
    ok("docker workdir relative", {"runtime": "docker", "workdir": "work"}, "spec.workdir"),
    ok("docker workdir dot-dot", {"runtime": "docker", "workdir": "/a/../.."}, "spec.workdir"),
    # Known bugs: each is accepted (or crashes) today; the reasons say how.
    bug("job id trailing newline", {"job_id": "job\n"}, "job_id",
        "JOB_ID_RE uses re.match with '$', which also matches before a trailing newline, so 'job\\n' is "
        "accepted (use fullmatch or \\Z)"),
    bug("env key trailing newline", {"env": {"KEY\n": "1"}}, "spec.env['KEY\\n']",
        "ENV_KEY_RE's '$' accepts a trailing newline: the non-printable env key 'KEY\\n' reaches the job"),
    bug("image trailing newline", {"runtime": "docker", "image": "busybox\n"}, "spec.image",
        "IMAGE_RE's '$' accepts 'busybox\\n'"),
    bug("docker user trailing newline", {"runtime": "docker", "user": "root\n"}, "spec.user",
        "USER_RE's '$' accepts 'root\\n'"),
    bug("params_json deeply nested", {"params_json": "[" * 100_000}, "spec.params_json",
        "json.loads raises RecursionError (not ValueError) on deep nesting; it escapes validate() and "
        "Launch answers INTERNAL"),
    bug("mount source name too long", {"mounts": m("n" * 300)}, "spec.mounts[0].source",
        "src.exists() raises OSError(ENAMETOOLONG) for a path component over 255 bytes; it escapes "
        "validate() and Launch answers INTERNAL"),
    bug("output_dir name too long", {"output_dir": "o" * 300}, "spec.output_dir",
        "a path component over 255 bytes passes validate(); the mkdir after store.insert then fails, "
        "Launch answers INTERNAL and the job stays PENDING for ever (see test_agent_bad_input)"),
    bug("arg over the kernel's per-argument limit", {"command": [PY, "-c", "pass", "\u20ac" * 50_000]},
        "spec.command[3]",
        "MAX_ARG_LEN counts characters, the kernel's MAX_ARG_STRLEN (128 KiB incl. the NUL) counts bytes: "
        "150 kB of UTF-8 passes, execve then fails with E2BIG and the job is recorded FAILED, not refused"),
    *[
        bug(f"mount target {t!r}", {"mounts": m("ds1", t)}, "spec.mounts[0].target",
            "the target check compares the raw string with '/output' and '/'; other spellings of the same "
            "path pass and would shadow the job's output mount or the container's root")
        for t in ("/output/.", "/./output", "//output", "/.")
    ],
]


@pytest.mark.parametrize(("kw", "field"), BAD)
def test_bad_input_is_refused_naming_the_field(roots: Roots, kw: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        run(roots, **kw)
    assert e.value.field == field, str(e.value)
    assert str(e.value).startswith(field + ": ")
    # Nothing was created for a refused request.
    assert not roots.jobs_root.exists()
    assert sorted(p.name for p in roots.output_root.iterdir()) == ["escape"]


@pytest.mark.parametrize("mode", [0o644, 0o600])
def test_a_program_that_is_not_executable_is_refused(roots: Roots, tmp_path: Path, mode: int) -> None:
    prog = tmp_path / "train.sh"
    prog.write_text("#!/bin/sh\n")
    prog.chmod(mode)
    for argv in ([str(prog)], [str(tmp_path / "missing")], [str(tmp_path)]):
        with pytest.raises(InvalidArgument) as e:
            run(roots, command=argv)
        assert e.value.field == "spec.command[0]" and "not an executable file" in str(e.value)


def test_a_good_process_plan(roots: Roots) -> None:
    plan = run(roots, job_id="train.v2_x", attempt=3, gpus=[3, 1], output_dir="team/run1",
               mounts=m("ds1") + m("ds1/img.png", "/in/img.png"), total_epoch=12, val_interval=2,
               params_json='{"lr": 0.1}', job_type="EVAL", env={"MY_VAR": "x=y", "LANG": "de"})
    out = roots.output_root.resolve() / "team" / "run1"
    assert plan.output_dir == out
    assert plan.job_dir == roots.jobs_root / "train.v2_x" / "3"
    assert plan.mounts == [(roots.data_root.resolve() / "ds1", "/data/ds1"),
                           (roots.data_root.resolve() / "ds1" / "img.png", "/in/img.png")]
    assert plan.gpu_indices == [3, 1] and plan.argv == [PY, "-c", "pass"] and plan.log_max_bytes == 1024
    assert plan.env == {
        "PATH": os.environ["PATH"],
        "LANG": "de",  # the job's env overrides the agent's base env
        "MY_VAR": "x=y",
        "CUDA_VISIBLE_DEVICES": "3,1",
        "NVIDIA_VISIBLE_DEVICES": "3,1",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "GPUFLEET_GPU_UUIDS": "",
        "GPUFLEET_JOB_ID": "train.v2_x",
        "GPUFLEET_ATTEMPT": "3",
        "GPUFLEET_OUTPUT_DIR": str(out),
        "GPUFLEET_PARAMS_JSON": '{"lr": 0.1}',
        "GPUFLEET_JOB_TYPE": "EVAL",
        "GPUFLEET_TOTAL_EPOCH": "12",
    }
    assert not out.exists() and not roots.jobs_root.exists()  # validate creates nothing


def test_a_cpu_job_sees_no_gpu_and_gets_defaults(roots: Roots) -> None:
    plan = run(roots, runtime="docker", image="registry.local:5000/team/img:1.0", command=[])
    assert plan.env["CUDA_VISIBLE_DEVICES"] == ""
    assert plan.env["NVIDIA_VISIBLE_DEVICES"] == "void"  # not "" (= all GPUs to the NVIDIA runtime)
    assert plan.env["GPUFLEET_OUTPUT_DIR"] == "/output"  # the container's view
    assert plan.env["GPUFLEET_PARAMS_JSON"] == "{}"
    assert plan.env["GPUFLEET_JOB_TYPE"] == "TRAIN"
    assert plan.env["GPUFLEET_TOTAL_EPOCH"] == "0"
    assert plan.argv == [] and plan.image == "registry.local:5000/team/img:1.0"


UUIDS = {i: f"GPU-{i}0000000-aaaa-bbbb-cccc-dddddddddddd" for i in range(4)}


def _real(roots: Roots, runtime: str, gpus: list[int]) -> LaunchPlan:
    kw: dict[str, Any] = {"command": [PY, "-c", "pass"]} if runtime == "process" else {"image": "busybox"}
    return validate("job-1", 1, JobSpec(output_dir="job-1", **kw), gpus, runtime=runtime, roots=roots,
                    known_gpus={0, 1, 2, 3}, real_gpus=True, log_max_bytes=1024, base_env={}, gpu_uuids=UUIDS)


@pytest.mark.parametrize("runtime", ["process", "docker"])
def test_real_gpus_are_handed_over_by_uuid(roots: Roots, runtime: str) -> None:
    plan = _real(roots, runtime, [3, 1])
    want = f"{UUIDS[3]},{UUIDS[1]}"
    assert plan.env["CUDA_VISIBLE_DEVICES"] == want and plan.env["NVIDIA_VISIBLE_DEVICES"] == want
    assert plan.env["GPUFLEET_GPU_UUIDS"] == want and plan.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert plan.gpu_indices == [3, 1]


def test_fake_gpus_keep_indices_and_name_their_uuids(roots: Roots) -> None:
    plan = validate("job-1", 1, JobSpec(output_dir="job-1", command=[PY, "-c", "pass"]), [2], runtime="process",
                    roots=roots, known_gpus={0, 1, 2, 3}, real_gpus=False, log_max_bytes=1024, base_env={},
                    gpu_uuids=UUIDS)
    assert plan.env["CUDA_VISIBLE_DEVICES"] == "2" and plan.env["GPUFLEET_GPU_UUIDS"] == UUIDS[2]


def test_the_job_cannot_override_what_the_agent_sets(roots: Roots) -> None:
    plan = run(roots, gpus=[2], env={"CUDA_VISIBLE_DEVICES": "0,1,2,3", "NVIDIA_VISIBLE_DEVICES": "all"})
    assert plan.env["CUDA_VISIBLE_DEVICES"] == "2" and plan.env["NVIDIA_VISIBLE_DEVICES"] == "2"


@pytest.mark.parametrize("image", ["busybox", "busybox:1.36", "gpufleet/tiny:test", "host:5000/a/b-c_d.e:v1",
                                   f"busybox@{DIGEST}", f"localhost/img:1@{DIGEST}"])
def test_good_image_references(roots: Roots, image: str) -> None:
    assert run(roots, runtime="docker", image=image).image == image


@pytest.mark.parametrize("user", ["1000", "1000:1000", "trainer", "trainer:users"])
def test_good_docker_users(roots: Roots, user: str) -> None:
    assert run(roots, runtime="docker", user=user).user == user


def test_spec_round_trips_through_a_dict(roots: Roots) -> None:
    spec = JobSpec(command=["a", "b"], env={"K": "v"}, output_dir="o", mounts=m("ds1", "/d"), total_epoch=3,
                   params_json="{}", job_type="TRAIN", user="")
    assert JobSpec.from_dict(spec.to_dict()) == spec
    assert dataclasses.asdict(spec)["mounts"] == [{"source": "ds1", "target": "/d"}]


@pytest.mark.parametrize(
    ("spec", "runtime", "field", "rule"),
    [
        (JobSpec(), "", "spec.command", "give spec.image (docker) or spec.command (an argv list)"),
        (JobSpec(image="Bad Image"), "", "spec.image", "is not a valid image reference"),
        (JobSpec(command=["x"]), "docker", "spec.image", "is required by the docker runtime"),
        (JobSpec(command=["x"], output_dir="../o"), "", "spec.output_dir", "must not contain '..'"),
        (JobSpec(command=["x"], output_dir="o", mounts=m("/abs")), "", "spec.mounts[0].source", "absolute"),
        (JobSpec(command=["x"], output_dir="o", user="u"), "process", "spec.user", "docker runtime only"),
    ],
)
def test_portable_checks_without_a_host(spec: JobSpec, runtime: str, field: str, rule: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        check_portable(spec, runtime)
    assert e.value.field == field and rule in e.value.rule


def test_portable_checks_leave_host_facts_to_the_agent() -> None:
    # A program or a data folder this machine lacks is the agent's business, not the submitter's.
    check_portable(JobSpec(command=["no-such-program"], output_dir="o", mounts=m("not/here")))
    check_portable(JobSpec(image="busybox", output_dir="o"))
