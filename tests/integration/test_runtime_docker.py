"""DockerRuntime against a real engine and the tiny busybox image (fixtures in tests/dockerd.py).

Synchronisation is by the engine's own wait endpoint (blocks until the container ends) or by
polling a condition until a deadline; never by sleeping a guessed time.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import pytest
from gpufleet.agent.runtime.base import Handle, LaunchPlan, Observation, RuntimeError_, Seen
from gpufleet.agent.runtime.docker import LABEL_AGENT, LABEL_ATTEMPT, LABEL_JOB, DockerRuntime, container_name

from tests.dockerd import Dockerd

pytestmark = pytest.mark.docker

T = TypeVar("T")
DEADLINE_S = 20.0


def poll(fn: Callable[[], T], until: Callable[[T], bool], what: str, deadline_s: float = DEADLINE_S) -> T:
    """Call fn until `until(result)` holds; fail with the last result after the deadline."""
    end = time.monotonic() + deadline_s
    while True:
        value = fn()
        if until(value):
            return value
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}; last value: {value!r}")
        time.sleep(0.02)  # poll interval only; correctness never depends on it


def wait_exit(engine: Dockerd, handle: Handle) -> int:
    """Block until the container ends (the engine's wait endpoint)."""
    result = engine.client.api.wait(handle.runtime_id, timeout=DEADLINE_S)
    return int(result["StatusCode"])


@pytest.fixture
def agent_name() -> str:
    # A fresh agent name per test: label queries then see only this test's containers.
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def rt(dockerd: Dockerd, agent_name: str) -> Iterator[DockerRuntime]:
    runtime = DockerRuntime(agent_name, base_url=dockerd.base_url)
    yield runtime
    for c in dockerd.client.api.containers(all=True, filters={"label": f"{LABEL_AGENT}={agent_name}"}):
        dockerd.client.api.remove_container(c["Id"], force=True)
    runtime.close()


@pytest.fixture
def make_plan(tmp_path: Path, tiny_image: str) -> Callable[..., LaunchPlan]:
    def make(argv: list[str], job_id: str | None = None, attempt: int = 1, **kw: Any) -> LaunchPlan:
        job_id = job_id or f"j{uuid.uuid4().hex[:8]}"
        out = tmp_path / f"out-{uuid.uuid4().hex[:8]}"
        out.mkdir(exist_ok=True)
        fields: dict[str, Any] = dict(
            job_id=job_id,
            attempt=attempt,
            argv=argv,
            image=tiny_image,
            env={},
            output_dir=out,
            mounts=[],
            gpu_indices=[],
            real_gpus=False,
            job_dir=out.with_name(out.name + "-state"),
        )
        fields.update(kw)
        return LaunchPlan(**fields)

    return make


def count_containers(engine: Dockerd, job_id: str, attempt: int) -> int:
    rows = engine.client.api.containers(
        all=True, filters={"label": [f"{LABEL_JOB}={job_id}", f"{LABEL_ATTEMPT}={attempt}"]}
    )
    return len(rows)


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


# A job that waits for the test to create <output>/go, so RUNNING is observed without a race.
WAIT_GO = "while [ ! -e /output/go ]; do usleep 20000; done; "


def test_run_to_exit_zero_with_logs(
    rt: DockerRuntime, dockerd: Dockerd, make_plan: Callable[..., LaunchPlan]
) -> None:
    plan = make_plan(sh(WAIT_GO + "echo hello; echo oops >&2; echo last"))
    handle = rt.start(plan)
    assert handle.runtime_id == dockerd.client.api.inspect_container(container_name(plan.job_id, 1))["Id"]
    obs = rt.observe(handle, plan.job_dir)
    assert obs.seen is Seen.RUNNING and obs.started_at is not None
    (plan.output_dir / "go").touch()
    assert wait_exit(dockerd, handle) == 0
    obs = rt.observe(handle, plan.job_dir)
    assert obs.seen is Seen.EXITED and obs.exit_code == 0 and obs.signal == 0
    assert obs.started_at is not None and obs.finished_at is not None
    assert obs.started_at <= obs.finished_at <= time.time() + 1
    logs = rt.logs(handle, plan.job_dir)
    assert b"hello\n" in logs and b"oops\n" in logs and b"last\n" in logs
    # stdout and stderr are copied by separate pipes: their relative order is not guaranteed.
    assert sorted(logs.splitlines()) == [b"hello", b"last", b"oops"]
    assert rt.logs(handle, plan.job_dir, tail_lines=1) in (b"last\n", b"oops\n")
    # Never auto-removed: the container and its exit code outlive the job.
    info = dockerd.client.api.inspect_container(handle.runtime_id)
    assert info["HostConfig"]["AutoRemove"] is False and info["State"]["ExitCode"] == 0


def test_nonzero_exit(rt: DockerRuntime, dockerd: Dockerd, make_plan: Callable[..., LaunchPlan]) -> None:
    plan = make_plan(sh("echo failing; exit 3"))
    handle = rt.start(plan)
    assert wait_exit(dockerd, handle) == 3
    obs = rt.observe(handle, plan.job_dir)
    assert (obs.seen, obs.exit_code, obs.signal) == (Seen.EXITED, 3, 0)


def test_start_is_idempotent(
    rt: DockerRuntime, dockerd: Dockerd, make_plan: Callable[..., LaunchPlan]
) -> None:
    plan = make_plan(["sleep", "30"])
    first = rt.start(plan)
    second = rt.start(plan)
    assert first == second
    assert count_containers(dockerd, plan.job_id, 1) == 1
    assert rt.find(plan.job_id, 1, plan.job_dir) == first
    assert rt.find(plan.job_id, 2, plan.job_dir) is None


def test_concurrent_starts_make_one_container(
    rt: DockerRuntime, dockerd: Dockerd, make_plan: Callable[..., LaunchPlan]
) -> None:
    # A retried Launch racing the first one: the engine's name uniqueness decides, the loser
    # adopts the winner's container.
    plan = make_plan(["sleep", "300"])
    barrier = threading.Barrier(6)

    def go() -> Handle:
        barrier.wait()
        return rt.start(plan)

    with ThreadPoolExecutor(6) as pool:
        handles = list(pool.map(lambda _: go(), range(6)))
    assert len(set(handles)) == 1
    assert count_containers(dockerd, plan.job_id, plan.attempt) == 1
    assert rt.observe(handles[0], plan.job_dir).seen is Seen.RUNNING


def test_start_after_crash_between_create_and_start(
    rt: DockerRuntime, dockerd: Dockerd, make_plan: Callable[..., LaunchPlan], agent_name: str
) -> None:
    plan = make_plan(sh("echo started-late; exit 5"))
    # What an agent leaves behind when it dies right after create: a 'created' container.
    created = dockerd.client.api.create_container(
        plan.image,
        command=plan.argv,
        name=container_name(plan.job_id, plan.attempt),
        labels={LABEL_JOB: plan.job_id, LABEL_ATTEMPT: str(plan.attempt), LABEL_AGENT: agent_name},
    )
    handle = Handle(created["Id"])
    assert rt.observe(handle, plan.job_dir).seen is Seen.CREATED
    assert rt.start(plan) == handle
    assert wait_exit(dockerd, handle) == 5
    assert count_containers(dockerd, plan.job_id, plan.attempt) == 1
    assert rt.observe(handle, plan.job_dir).exit_code == 5
    # A container that has run is never started again.
    assert rt.start(plan) == handle
    assert b"started-late" in rt.logs(handle, plan.job_dir)
    assert rt.logs(handle, plan.job_dir).count(b"started-late") == 1


def test_name_held_by_a_foreign_container(
    rt: DockerRuntime, dockerd: Dockerd, make_plan: Callable[..., LaunchPlan]
) -> None:
    plan = make_plan(["true"])
    name = container_name(plan.job_id, plan.attempt)
    foreign = dockerd.client.api.create_container(plan.image, command=["true"], name=name)
    try:
        with pytest.raises(RuntimeError_, match="not made by gpufleet"):
            rt.start(plan)
        assert rt.find(plan.job_id, plan.attempt, plan.job_dir) is None
    finally:
        dockerd.client.api.remove_container(foreign["Id"], force=True)


def test_sigterm_runs_the_jobs_trap(
    rt: DockerRuntime, dockerd: Dockerd, make_plan: Callable[..., LaunchPlan]
) -> None:
    plan = make_plan(
        sh("trap 'echo trapped; exit 42' TERM; touch /output/ready; while true; do usleep 20000; done")
    )
    handle = rt.start(plan)
    poll(lambda: (plan.output_dir / "ready").exists(), bool, "the trap to be installed")
    rt.signal(handle, plan.job_dir, 15)
    assert wait_exit(dockerd, handle) == 42
    obs = rt.observe(handle, plan.job_dir)
    assert (obs.seen, obs.exit_code, obs.signal) == (Seen.EXITED, 42, 0)
    assert b"trapped" in rt.logs(handle, plan.job_dir)


def test_sigterm_without_handler_ends_the_job(
    rt: DockerRuntime, dockerd: Dockerd, make_plan: Callable[..., LaunchPlan]
) -> None:
    # Without docker's init the job would be PID 1 and immune to an unhandled SIGTERM.
    plan = make_plan(["sleep", "300"])
    handle = rt.start(plan)
    rt.signal(handle, plan.job_dir, 15)
    assert wait_exit(dockerd, handle) == 143
    obs = rt.observe(handle, plan.job_dir)
    assert (obs.exit_code, obs.signal) == (143, 15)


def test_sigterm_reaches_the_process_group(
    rt: DockerRuntime, dockerd: Dockerd, make_plan: Callable[..., LaunchPlan]
) -> None:
    # The shell ignores TERM (trap), its child `sleep` does not: only a group signal ends it.
    plan = make_plan(
        sh("trap 'echo shell-got-term' TERM; touch /output/ready; sleep 300; echo child-ended $?")
    )
    handle = rt.start(plan)
    poll(lambda: (plan.output_dir / "ready").exists(), bool, "the trap to be installed")
    rt.signal(handle, plan.job_dir, 15)
    assert wait_exit(dockerd, handle) == 0
    assert b"child-ended 143" in rt.logs(handle, plan.job_dir)


def test_sigkill(rt: DockerRuntime, dockerd: Dockerd, make_plan: Callable[..., LaunchPlan]) -> None:
    plan = make_plan(sh("trap 'exit 1' TERM; sleep 300"))
    handle = rt.start(plan)
    rt.signal(handle, plan.job_dir, 9)
    assert wait_exit(dockerd, handle) == 137
    obs = rt.observe(handle, plan.job_dir)
    assert (obs.seen, obs.exit_code, obs.signal) == (Seen.EXITED, 137, 9)
    # Signalling an ended job is not an error, and signal 0 never turns into a SIGKILL.
    rt.signal(handle, plan.job_dir, 15)
    rt.signal(handle, plan.job_dir, 0)


def test_signal_zero_is_not_a_kill(rt: DockerRuntime, make_plan: Callable[..., LaunchPlan]) -> None:
    plan = make_plan(["sleep", "300"])
    handle = rt.start(plan)
    rt.signal(handle, plan.job_dir, 0)
    assert rt.observe(handle, plan.job_dir).seen is Seen.RUNNING


def test_removed_behind_the_runtimes_back(
    rt: DockerRuntime, dockerd: Dockerd, make_plan: Callable[..., LaunchPlan]
) -> None:
    plan = make_plan(["sleep", "300"])
    handle = rt.start(plan)
    dockerd.client.api.remove_container(handle.runtime_id, force=True)
    assert rt.observe(handle, plan.job_dir) == Observation(Seen.MISSING)
    assert rt.observe_many([(handle, plan.job_dir)]) == [Observation(Seen.MISSING)]
    assert rt.find(plan.job_id, plan.attempt, plan.job_dir) is None
    assert rt.logs(handle, plan.job_dir) == b""
    assert rt.read_since(handle, plan.job_dir, "cur") == (b"", "cur")
    assert list(rt.follow(handle, plan.job_dir)) == []
    rt.signal(handle, plan.job_dir, 15)
    rt.remove(handle, plan.job_dir)
    rt.remove(handle, plan.job_dir)


def test_remove(rt: DockerRuntime, dockerd: Dockerd, make_plan: Callable[..., LaunchPlan]) -> None:
    plan = make_plan(["sleep", "300"])
    handle = rt.start(plan)
    rt.remove(handle, plan.job_dir)  # force: a running container goes too
    assert count_containers(dockerd, plan.job_id, plan.attempt) == 0
    assert rt.observe(handle, plan.job_dir).seen is Seen.MISSING


def test_output_is_writable_and_data_read_only(
    rt: DockerRuntime, dockerd: Dockerd, make_plan: Callable[..., LaunchPlan], tmp_path: Path
) -> None:
    data = tmp_path / "dataset"
    data.mkdir()
    (data / "train.txt").write_text("sample-1\n")
    plan = make_plan(
        sh(
            "echo result > /output/x; "
            "if echo y > /data/in/y 2>/dev/null; then echo WROTE; exit 10; fi; "
            "cat /data/in/train.txt"
        ),
        mounts=[(data, "/data/in")],
    )
    handle = rt.start(plan)
    assert wait_exit(dockerd, handle) == 0
    assert (plan.output_dir / "x").read_text() == "result\n"
    assert not (data / "y").exists()
    assert b"sample-1" in rt.logs(handle, plan.job_dir)
    mounts = {
        m["Destination"]: m["RW"] for m in dockerd.client.api.inspect_container(handle.runtime_id)["Mounts"]
    }
    assert mounts == {"/output": True, "/data/in": False}


def test_environment(rt: DockerRuntime, dockerd: Dockerd, make_plan: Callable[..., LaunchPlan]) -> None:
    plan = make_plan(["env"], env={"CUDA_VISIBLE_DEVICES": "1,3", "FOO": "bar baz"}, gpu_indices=[1, 3])
    handle = rt.start(plan)
    assert wait_exit(dockerd, handle) == 0
    lines = set(rt.logs(handle, plan.job_dir).decode().splitlines())
    assert {"CUDA_VISIBLE_DEVICES=1,3", "FOO=bar baz", "NVIDIA_VISIBLE_DEVICES=1,3"} <= lines

    # Without GPUs and without the supervisor's variables: no GPU is visible, explicitly.
    plan = make_plan(["env"])
    handle = rt.start(plan)
    assert wait_exit(dockerd, handle) == 0
    lines = set(rt.logs(handle, plan.job_dir).decode().splitlines())
    assert {"CUDA_VISIBLE_DEVICES=", "NVIDIA_VISIBLE_DEVICES=void"} <= lines


def test_host_config(rt: DockerRuntime, dockerd: Dockerd, make_plan: Callable[..., LaunchPlan]) -> None:
    plan = make_plan(
        sh("id -u; pwd"),
        user="65534:65534",
        workdir="/tmp",
        shm_size_bytes=128 * 1024 * 1024,
        cpu_millis=1500,
        memory_bytes=256 * 1024 * 1024,
        log_max_bytes=1024 * 1024,
    )
    handle = rt.start(plan)
    assert wait_exit(dockerd, handle) == 0
    assert rt.logs(handle, plan.job_dir) == b"65534\n/tmp\n"
    hc = dockerd.client.api.inspect_container(handle.runtime_id)["HostConfig"]
    assert hc["NanoCpus"] == 1_500_000_000
    assert hc["Memory"] == 256 * 1024 * 1024
    assert hc["ShmSize"] == 128 * 1024 * 1024
    assert hc["Privileged"] is False and hc["AutoRemove"] is False and hc["Init"] is True
    assert hc["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "1048576", "max-file": "2"}}
    assert not hc.get("DeviceRequests")


def test_real_gpus_get_a_device_request(
    rt: DockerRuntime, dockerd: Dockerd, make_plan: Callable[..., LaunchPlan]
) -> None:
    plan = make_plan(["true"], gpu_indices=[0, 2], real_gpus=True)
    try:
        rt.start(plan)
    except RuntimeError_ as exc:
        # An engine without the NVIDIA toolkit refuses the start; the request was still made.
        assert "could not start" in str(exc)
    handle = rt.find(plan.job_id, plan.attempt, plan.job_dir)
    assert handle is not None
    info = dockerd.client.api.inspect_container(handle.runtime_id)
    (req,) = info["HostConfig"]["DeviceRequests"]
    assert req["DeviceIDs"] == ["0", "2"] and req["Capabilities"] == [["gpu"]]
    env = set(info["Config"]["Env"])
    assert {"NVIDIA_VISIBLE_DEVICES=0,2", "CUDA_VISIBLE_DEVICES=0,1"} <= env


def test_command_not_found(rt: DockerRuntime, dockerd: Dockerd, make_plan: Callable[..., LaunchPlan]) -> None:
    # Under docker's init the exec failure is the job's own: exit 127, the reason in the logs.
    plan = make_plan(["no-such-command"])
    handle = rt.start(plan)
    assert wait_exit(dockerd, handle) == 127
    assert rt.observe(handle, plan.job_dir).exit_code == 127
    assert b"no-such-command" in rt.logs(handle, plan.job_dir)


def test_start_refused_by_the_engine(rt: DockerRuntime, make_plan: Callable[..., LaunchPlan]) -> None:
    plan = make_plan(["true"], user="no-such-user")
    with pytest.raises(RuntimeError_, match="could not start.*no-such-user"):
        rt.start(plan)
    # The container stays: it carries the engine's exit code and reason until remove().
    handle = rt.find(plan.job_id, plan.attempt, plan.job_dir)
    assert handle is not None
    obs = rt.observe(handle, plan.job_dir)
    assert obs.seen is Seen.EXITED and obs.exit_code and "no-such-user" in obs.message
    assert rt.observe_many([(handle, plan.job_dir)]) == [obs]
    # A repeated start tries once more and fails the same way; still one container.
    with pytest.raises(RuntimeError_, match="could not start"):
        rt.start(plan)
    print(obs)


def test_missing_image(rt: DockerRuntime, dockerd: Dockerd, make_plan: Callable[..., LaunchPlan]) -> None:
    plan = make_plan(["true"], image="gpufleet-absent:v9")
    with pytest.raises(RuntimeError_, match=r"image 'gpufleet-absent:v9' is not present on this host"):
        rt.start(plan)
    assert count_containers(dockerd, plan.job_id, plan.attempt) == 0


def test_bad_job_id(rt: DockerRuntime, make_plan: Callable[..., LaunchPlan]) -> None:
    plan = make_plan(["true"], job_id="bad/id")
    with pytest.raises(RuntimeError_, match="cannot form a container name"):
        rt.start(plan)


def test_read_since_returns_only_new_lines(
    rt: DockerRuntime, dockerd: Dockerd, make_plan: Callable[..., LaunchPlan]
) -> None:
    script = (
        "echo 'Epoch 1/3'; echo 'epoch=1 loss=0.9' >&2; "
        "while [ ! -e /output/go1 ]; do usleep 20000; done; echo 'Epoch 2/3'; "
        "while [ ! -e /output/go2 ]; do usleep 20000; done; echo 'Epoch 3/3'; echo done"
    )
    plan = make_plan(sh(script))
    handle = rt.start(plan)
    seen: list[bytes] = []
    cursor = ""

    def read() -> bytes:
        nonlocal cursor
        data, cursor = rt.read_since(handle, plan.job_dir, cursor)
        seen.append(data)
        return b"".join(seen)

    got = poll(read, lambda b: b.count(b"\n") >= 2, "the first two lines")
    assert sorted(got.splitlines()) == [b"Epoch 1/3", b"epoch=1 loss=0.9"]
    assert cursor
    # Nothing new: nothing returned, cursor kept.
    before = cursor
    assert rt.read_since(handle, plan.job_dir, cursor) == (b"", before)
    (plan.output_dir / "go1").touch()
    seen.clear()
    assert poll(read, lambda b: b.count(b"\n") >= 1, "line 3") == b"Epoch 2/3\n"
    (plan.output_dir / "go2").touch()
    assert wait_exit(dockerd, handle) == 0
    data, cursor = rt.read_since(handle, plan.job_dir, cursor)
    assert data == b"Epoch 3/3\ndone\n"
    assert rt.read_since(handle, plan.job_dir, cursor) == (b"", cursor)
    # From the start again: everything, once.
    assert sorted(rt.read_since(handle, plan.job_dir, "")[0].splitlines()) == sorted(
        [b"Epoch 1/3", b"epoch=1 loss=0.9", b"Epoch 2/3", b"Epoch 3/3", b"done"]
    )


def test_follow_until_the_job_ends(
    rt: DockerRuntime, dockerd: Dockerd, make_plan: Callable[..., LaunchPlan]
) -> None:
    plan = make_plan(sh("echo one; " + WAIT_GO + "echo two"))
    handle = rt.start(plan)
    chunks: list[bytes] = []
    for chunk in rt.follow(handle, plan.job_dir):
        chunks.append(chunk)
        if b"one" in b"".join(chunks) and not (plan.output_dir / "go").exists():
            (plan.output_dir / "go").touch()  # let it finish only once we saw the first line
    assert b"".join(chunks) == b"one\ntwo\n"  # the loop ended by itself: the job ended
    assert rt.observe(handle, plan.job_dir).seen is Seen.EXITED
    assert b"".join(rt.follow(handle, plan.job_dir, tail_lines=1)) == b"two\n"


def test_list_labelled(
    rt: DockerRuntime, dockerd: Dockerd, make_plan: Callable[..., LaunchPlan], agent_name: str
) -> None:
    a = make_plan(["sleep", "300"], job_id="jobA", attempt=1)
    b = make_plan(["true"], job_id="jobB", attempt=4)
    ha, hb = rt.start(a), rt.start(b)
    found = {(f.job_id, f.attempt): f for f in rt.list_labelled()}
    assert set(found) == {("jobA", 1), ("jobB", 4)}
    assert found[("jobA", 1)].handle == ha and found[("jobB", 4)].handle == hb
    assert found[("jobA", 1)].extra["name"] == "gpufleet-jobA-1"
    assert found[("jobA", 1)].extra["output_dir"] == str(a.output_dir)
    # Another agent's containers are not ours.
    other = DockerRuntime(f"{agent_name}-other", base_url=dockerd.base_url)
    assert other.list_labelled() == []
    other.close()


def test_observe_many_in_one_list_call(
    rt: DockerRuntime, dockerd: Dockerd, make_plan: Callable[..., LaunchPlan], monkeypatch: pytest.MonkeyPatch
) -> None:
    items: list[tuple[Handle, Path]] = []
    expected: list[tuple[Seen, int | None]] = []
    ended: list[Handle] = []
    for i in range(20):
        kind = i % 4
        if kind == 0:
            plan = make_plan(["sleep", "300"])
            expected.append((Seen.RUNNING, None))
        elif kind in (1, 2):
            plan = make_plan(sh(f"exit {i}"))
            expected.append((Seen.EXITED, i))
        else:
            plan = make_plan(["sleep", "300"])
            expected.append((Seen.MISSING, None))
        handle = rt.start(plan)
        if kind in (1, 2):
            ended.append(handle)
        if kind == 3:
            dockerd.client.api.remove_container(handle.runtime_id, force=True)
        items.append((handle, plan.job_dir))
    for handle in ended:
        wait_exit(dockerd, handle)

    calls: list[str] = []
    api = rt.client.api
    real_containers = api.containers

    def counting_containers(*args: Any, **kwargs: Any) -> Any:
        calls.append("containers")
        return real_containers(*args, **kwargs)

    monkeypatch.setattr(api, "containers", counting_containers)
    t0 = time.perf_counter()
    result = rt.observe_many(items)
    first_s = time.perf_counter() - t0
    assert [(o.seen, o.exit_code) for o in result] == expected
    assert all(o.started_at is not None for o in result if o.seen is Seen.RUNNING)
    assert calls == ["containers"]
    # Second round: running containers come from the list alone (their StartedAt is cached).
    calls.clear()
    real_inspect = api.inspect_container
    inspected: list[str] = []

    def counting_inspect(ref: str) -> Any:
        inspected.append(ref)
        return real_inspect(ref)

    monkeypatch.setattr(api, "inspect_container", counting_inspect)
    again = rt.observe_many(items)
    assert again == result
    assert calls == ["containers"]
    running = {
        h.runtime_id for (h, _), (seen, _) in zip(items, expected, strict=True) if seen is Seen.RUNNING
    }
    assert not running & set(inspected)
    print(f"observe_many(20): first {first_s * 1000:.1f} ms")


def test_engine_unreachable(tmp_path: Path) -> None:
    # A client for a socket nobody serves; the version is pinned so that building it needs
    # no answer (the runtime's own constructor would ask the engine and fail right there).
    client = docker.DockerClient(base_url=f"unix://{tmp_path}/none.sock", version="1.41", timeout=2)
    runtime = DockerRuntime("unreachable", client=client)
    handle = Handle("0" * 64)
    with pytest.raises(RuntimeError_):
        runtime.observe(handle, tmp_path)
    with pytest.raises(RuntimeError_):
        runtime.observe_many([(handle, tmp_path)])
    with pytest.raises(RuntimeError_):
        runtime.list_labelled()
    assert runtime.healthy() is False
    assert DockerRuntime.available(f"unix://{tmp_path}/none.sock") is False
    with pytest.raises(RuntimeError_):
        DockerRuntime("x", base_url=f"unix://{tmp_path}/none.sock")
    runtime.close()


def test_available_and_healthy(rt: DockerRuntime, dockerd: Dockerd) -> None:
    assert DockerRuntime.available(dockerd.base_url) is True
    assert rt.healthy() is True


def test_read_since_cursor_follows_log_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # stdout and stderr are stamped by separate copiers: a line can sit later in the log than
    # a line with a newer stamp. The cursor must neither repeat nor drop such lines. (The
    # engine's answers are faked here to make the interleaving certain.)
    client = docker.DockerClient(base_url=f"unix://{tmp_path}/none.sock", version="1.41", timeout=2)
    runtime = DockerRuntime("fake", client=client)
    log = [
        b"2026-01-01T00:00:00.000000300Z out-1\n",
        b"2026-01-01T00:00:00.0000002Z err-1\n",  # older stamp, later in the log
        b"2026-01-01T00:00:01.5Z out-2\n",
        b"2026-01-01T00:00:01.4Z err-2\n",
    ]
    shown = 2
    asked_since: list[float | None] = []

    def fake_logs(container: str, **kwargs: Any) -> bytes:
        assert kwargs["timestamps"] is True
        asked_since.append(kwargs.get("since"))
        return b"".join(log[:shown])  # the engine's since filter is loose enough to ignore here

    monkeypatch.setattr(client.api, "logs", fake_logs)
    handle = Handle("f" * 64)
    data, cursor = runtime.read_since(handle, tmp_path, "")
    assert data == b"out-1\nerr-1\n" and cursor == "2026-01-01T00:00:00.0000002Z"
    assert runtime.read_since(handle, tmp_path, cursor) == (b"", cursor)
    shown = 4
    data, cursor = runtime.read_since(handle, tmp_path, cursor)
    assert data == b"out-2\nerr-2\n" and cursor == "2026-01-01T00:00:01.4Z"
    assert runtime.read_since(handle, tmp_path, cursor) == (b"", cursor)
    assert asked_since[0] is None and all(s is not None and s > 0 for s in asked_since[1:])
    # The cursor's line rotated away: fall back to "stamped after the cursor".
    log[:] = log[2:]
    assert runtime.read_since(handle, tmp_path, "2026-01-01T00:00:01.45Z") == (
        b"out-2\n",
        "2026-01-01T00:00:01.5Z",
    )
    runtime.close()


def test_an_owners_container_runs_as_its_uid_unless_the_spec_names_a_user(
    dockerd: Dockerd, agent_name: str, make_plan: Callable[..., LaunchPlan], tmp_path: Path
) -> None:
    """Issue 13: with an owner's own uid (agent/owneruids.py) the container runs as it, ahead of
    --container-user, in a folder made the owner's (0700); a user named by the spec still wins."""
    from gpufleet.agent.jobuser import JobUser

    rt = DockerRuntime(agent_name, base_url=dockerd.base_url, default_user="65534:65534", output_root=tmp_path)
    try:
        alice = JobUser("alice", 62000, 62000, "/")
        out = tmp_path / "users" / "alice" / "m"
        out.mkdir(parents=True)
        plan = make_plan(sh("id -u; id -g; echo w > /output/f"), output_dir=out, owner="alice", run_as=alice)
        handle = rt.start(plan)
        assert wait_exit(dockerd, handle) == 0, rt.logs(handle, plan.job_dir)
        assert rt.logs(handle, plan.job_dir) == b"62000\n62000\n"
        for folder in (tmp_path / "users" / "alice", out):
            st = folder.stat()
            assert (st.st_uid, st.st_mode & 0o777) == (62000, 0o700), folder
        assert (out / "f").stat().st_uid == 62000

        named = make_plan(sh("id -u"), user="1234:1234", owner="alice", run_as=alice)
        handle = rt.start(named)
        assert wait_exit(dockerd, handle) == 0
        assert rt.logs(handle, named.job_dir) == b"1234\n"
        assert named.output_dir.stat().st_uid == 0  # not handed to the owner: the spec chose its user
    finally:
        for c in dockerd.client.api.containers(all=True, filters={"label": f"{LABEL_AGENT}={agent_name}"}):
            dockerd.client.api.remove_container(c["Id"], force=True)
        rt.close()
