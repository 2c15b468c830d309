"""Issue 15 on fake GPUs through a real agent: idle GPUs read idle, held ones show load, and jobs
learn their GPUs' identity (UUIDs, PCI order) in both runtimes."""
from __future__ import annotations

import json
import subprocess
import sys

import grpc
import pytest

from gpufleet.v1 import agent_pb2 as apb
from gpufleet.v1 import common_pb2 as pb
from tests.harness import AgentProc, wait_for

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
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "foreign" in (e.value.details() or "")
        # Recovery: once the process is gone from the GPU, the GPU is offered again.
        control.write_text(json.dumps({"1": [[job_pid, 1 << 30]]}))
        wait_for(lambda: gpus(a)[0].healthy and not gpus(a)[3].health_reason, 60, "the GPUs free again")
    finally:
        foreign.kill()
        foreign.wait()
        (a.output_root / "own" / "release").write_text("")
    a.wait_state("own", "SUCCEEDED", timeout=60)
