"""Issue 15 on fake GPUs through a real agent: idle GPUs read idle, held ones show load, and jobs
learn their GPUs' identity (UUIDs, PCI order) in both runtimes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import grpc
import pytest

from gpufleet.v1 import agent_pb2 as apb
from gpufleet.v1 import common_pb2 as pb
from tests.harness import AgentProc, pid_alive, wait_for

PY = sys.executable
GATE = ("import os, time\n"
        "open('env', 'w').write(os.environ['GPUFLEET_GPU_UUIDS'] + ' ' + os.environ['CUDA_DEVICE_ORDER'])\n"
        "while not os.path.exists('release'):\n"
        "    time.sleep(0.05)\n")


def gpus(a: AgentProc) -> list[pb.GpuInfo]:
    return list(a.stub.GetNode(apb.GetNodeRequest(), timeout=10).gpus)


def test_fake_gpus_are_idle_until_a_job_holds_them(agent_factory) -> None:  # type: ignore[no-untyped-def]
    a: AgentProc = agent_factory("a")
    for g in gpus(a):
        assert (g.utilization_gpu, g.memory_used_bytes) == (0, 0) and g.power_w < 80
    a.launch("hold", [PY, "-c", GATE], gpus=[2])
    wait_for(lambda: gpus(a)[2].utilization_gpu >= 40, 60, "load on the held GPU")
    now = gpus(a)
    assert now[2].assigned_job_id == "hold" and now[2].memory_used_bytes > 0 and now[2].power_w > 200
    assert all(g.utilization_gpu == 0 for g in now if g.index != 2)
    env = wait_for(lambda: (p := a.output_root / "hold" / "env").exists() and p.read_text(), 30, "env file")
    assert env == f"{now[2].uuid} PCI_BUS_ID"
    (a.output_root / "hold" / "release").write_text("")
    a.wait_state("hold", "SUCCEEDED", timeout=60)
    wait_for(lambda: gpus(a)[2].utilization_gpu == 0, 60, "the GPU idle again")


@pytest.mark.docker
def test_a_container_learns_its_gpus_uuids(docker_agent: AgentProc) -> None:
    a = docker_agent
    uuid = gpus(a)[1].uuid
    a.launch("d-uuid", ["/bin/sh", "-c", 'echo "$GPUFLEET_GPU_UUIDS $CUDA_DEVICE_ORDER" > /output/env'],
             image="gpufleet-tiny:latest", gpus=[1])
    a.wait_state("d-uuid", "SUCCEEDED", timeout=60)
    assert (a.output_root / "d-uuid" / "env").read_text().split() == [uuid, "PCI_BUS_ID"]


def test_foreign_and_escaped_processes_are_flagged_and_a_foreign_held_gpu_recovers(agent_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    control = tmp_path / "gpu-procs.json"
    control.write_text("{}")
    a: AgentProc = agent_factory("x", env={"GPUFLEET_FAKE_GPU_PROCESSES": str(control)})
    # The job's trainer is a child of its wrapper; it reports its pid, then waits.
    a.launch("own", [PY, "-c", "import os, time\nopen('pid', 'w').write(str(os.getpid()))\n"
                               "while not os.path.exists('release'):\n    time.sleep(0.05)\n"], gpus=[1])
    pid_file = a.output_root / "own" / "pid"
    job_pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), 30, "the job's pid"))
    foreign = subprocess.Popen([PY, "-c", "import time; time.sleep(600)"])
    try:
        control.write_text(json.dumps({"0": [[foreign.pid, 8 << 30]], "1": [[job_pid, 1 << 30]],
                                       "3": [[job_pid, 1 << 30]]}))

        def flagged() -> list[pb.GpuInfo] | None:
            now = gpus(a)
            return now if not now[0].healthy and "escaped" in now[3].health_reason else None
        now = wait_for(flagged, 60, "foreign and escaped processes flagged")
        assert f"foreign process pid {foreign.pid}" in now[0].health_reason and "8192 MiB" in now[0].health_reason
        assert now[1].healthy and now[1].health_reason == ""  # the job's own process on its own GPU
        assert f"escaped process pid {job_pid} of job own" in now[3].health_reason and now[3].healthy
        # A foreign-held GPU is not offered: a launch on it is refused.
        with pytest.raises(grpc.RpcError) as e:
            a.launch("victim", [PY, "-c", "pass"], gpus=[0])
        assert e.value.code() == grpc.StatusCode.ABORTED and "foreign" in (e.value.details() or "")
        # Recovery: once the process is gone from the GPU, the GPU is offered again.
        control.write_text(json.dumps({"1": [[job_pid, 1 << 30]]}))
        wait_for(lambda: gpus(a)[0].healthy and not gpus(a)[3].health_reason, 60, "the GPUs free again")
    finally:
        foreign.kill()
        foreign.wait()
        (a.output_root / "own" / "release").write_text("")
    a.wait_state("own", "SUCCEEDED", timeout=60)


# What a job leaves behind once it has ended. Where the agent contains jobs in cgroups
# (agent/cgroups.py, tests/integration/test_safety_cgroups.py) a job's own leftovers die with it, so
# an orphan is what escapes that: a process on a host without cgroup v2, or one started in the
# job's name from outside its tree. The test makes one directly: the job's environment, its own
# session, holding on.
def orphan_of(a: AgentProc, job_id: str, gpu: int, control) -> int:  # type: ignore[no-untyped-def]
    a.launch(job_id, [PY, "-c", "pass"], gpus=[gpu])
    a.wait_state(job_id, "SUCCEEDED", timeout=60)
    env = {**os.environ, "GPUFLEET_JOB_ID": job_id, "GPUFLEET_ATTEMPT": "1"}
    leftover = subprocess.Popen([PY, "-c", "import time\nwhile True:\n    time.sleep(1)"], env=env,
                                start_new_session=True, stdin=subprocess.DEVNULL)
    threading.Thread(target=leftover.wait, daemon=True).start()  # reaped the moment it is killed
    control.write_text(json.dumps({str(gpu): [[leftover.pid, 3 << 30]]}))  # it holds 3 GiB of the GPU
    return leftover.pid


def test_an_orphan_holds_its_gpu_back_until_it_is_gone(agent_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    control = tmp_path / "gpu-procs.json"
    control.write_text("{}")
    # --orphan-grace 0: orphans are reported, never killed.
    a: AgentProc = agent_factory("o", env={"GPUFLEET_FAKE_GPU_PROCESSES": str(control)},
                                 extra=["--orphan-grace", "0"])
    pid = orphan_of(a, "leaves", 2, control)
    try:
        g = wait_for(lambda: (g := gpus(a)[2]).processes and g, 60, "the orphan on GPU 2")
        assert [(p.pid, p.kind, p.job_id, p.used_bytes) for p in g.processes] == [(pid, "orphan", "leaves", 3 << 30)]
        assert not g.healthy and f"orphan process pid {pid} of job leaves (3072 MiB)" in g.health_reason
        with pytest.raises(grpc.RpcError) as e:
            a.launch("next", [PY, "-c", "pass"], gpus=[2])
        assert e.value.code() == grpc.StatusCode.ABORTED and "orphan" in (e.value.details() or "")
        assert pid_alive(pid)  # grace 0: never killed by the agent
    finally:
        os.kill(pid, signal.SIGKILL)
    # Once it is gone from the GPU, the GPU is offered again.
    wait_for(lambda: gpus(a)[2].healthy and not gpus(a)[2].processes, 60, "GPU 2 free again")


def test_orphans_are_killed_after_the_grace_and_warn_only_keeps_gpus_offered(agent_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    control = tmp_path / "gpu-procs.json"
    control.write_text("{}")
    a: AgentProc = agent_factory("k", env={"GPUFLEET_FAKE_GPU_PROCESSES": str(control)},
                                 extra=["--orphan-grace", "1", "--gpu-exclusivity", "warn"])
    foreign = subprocess.Popen([PY, "-c", "import time; time.sleep(600)"])
    try:
        pid = orphan_of(a, "leaves", 1, control)
        control.write_text(json.dumps({"0": [[foreign.pid, 1 << 30]], "1": [[pid, 3 << 30]]}))
        killed = wait_for(lambda: [line for line in a.daemon.log_tail(200).splitlines()
                                   if "gpu.orphan_killed" in line and f'"pid": {pid},' in line],
                          60, "the orphan killed")
        assert '"job_id": "leaves"' in killed[0]
        wait_for(lambda: not pid_alive(pid), 30, "the orphan gone")
        wait_for(lambda: not gpus(a)[1].processes, 60, "GPU 1 free again")
        # warn: the foreign process is shown and counted, but its GPU stays offered, and it is never killed.
        g = gpus(a)[0]
        assert g.healthy and f"foreign process pid {foreign.pid}" in g.health_reason
        assert [p.kind for p in g.processes] == ["foreign"] and foreign.poll() is None
        a.launch("beside", [PY, "-c", "pass"], gpus=[0])
        a.wait_state("beside", "SUCCEEDED", timeout=60)
    finally:
        foreign.kill()
        foreign.wait()
