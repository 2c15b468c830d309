"""The agent as a real process on the docker runtime, against a real dockerd and a busybox image."""
from __future__ import annotations

import pytest

from gpufleet.v1 import agent_pb2 as apb
from tests.harness import AgentProc, state_name, wait_for

pytestmark = pytest.mark.docker

IMAGE = "gpufleet-tiny:latest"


def sh(script: str) -> list[str]:
    return ["/bin/sh", "-c", script]


def test_container_runs_to_success_with_logs_and_outputs(docker_agent: AgentProc, dockerd) -> None:  # type: ignore[no-untyped-def]
    a = docker_agent
    st = a.launch("d-ok", sh("echo hello; echo 1 > /output/marker; echo $CUDA_VISIBLE_DEVICES"), image=IMAGE,
                  gpus=[2])
    assert st.runtime == "docker" and st.runtime_id
    done = a.wait_state("d-ok", "SUCCEEDED")
    assert done.exit_code == 0
    assert a.logs("d-ok").split() == [b"hello", b"2"]
    assert (a.output_root / "d-ok" / "marker").read_text().strip() == "1"
    # Not auto-removed: the container stays until the coordinator acknowledges the final state.
    c = dockerd.client.containers.get("gpufleet-d-ok-1")
    assert c.labels["gpufleet.job_id"] == "d-ok" and c.labels["gpufleet.attempt"] == "1"
    a.stub.Acknowledge(apb.AcknowledgeRequest(job_id="d-ok", attempt=1), timeout=10)
    assert not dockerd.client.containers.list(all=True, filters={"name": "gpufleet-d-ok-1"})


def test_container_nonzero_exit_is_failed(docker_agent: AgentProc) -> None:
    docker_agent.launch("d-bad", sh("exit 5"), image=IMAGE)
    done = docker_agent.wait_state("d-bad", "FAILED")
    assert done.exit_code == 5


def test_stop_with_grace_and_escalation(docker_agent: AgentProc) -> None:
    a = docker_agent
    a.launch("d-trap", sh("trap 'echo bye; exit 0' TERM; echo ready; while true; do sleep 0.1; done"), image=IMAGE)
    wait_for(lambda: b"ready" in a.logs("d-trap"), what="container ready")
    st = a.stub.Stop(apb.StopRequest(job_id="d-trap", grace_seconds=10), timeout=20)
    assert state_name(st.state) == "STOPPED" and st.exit_code == 0
    assert b"bye" in a.logs("d-trap")
    a.launch("d-stubborn", sh("trap '' TERM; echo ready; while true; do sleep 0.1; done"), image=IMAGE)
    wait_for(lambda: b"ready" in a.logs("d-stubborn"), what="container ready")
    a.stub.Stop(apb.StopRequest(job_id="d-stubborn", grace_seconds=1), timeout=20)
    done = a.wait_state("d-stubborn", "STOPPED", timeout=20)
    assert done.exit_code == 137


def test_launch_is_idempotent_one_container(docker_agent: AgentProc, dockerd) -> None:  # type: ignore[no-untyped-def]
    a = docker_agent
    first = a.launch("d-idem", sh("sleep 30"), image=IMAGE)
    second = a.launch("d-idem", sh("sleep 30"), image=IMAGE)
    assert first.runtime_id == second.runtime_id
    found = dockerd.client.containers.list(all=True, filters={"label": "gpufleet.job_id=d-idem"})
    assert len(found) == 1


def test_agent_sigkill_mid_job_then_restart(docker_agent: AgentProc, dockerd) -> None:  # type: ignore[no-untyped-def]
    a = docker_agent
    a.launch("d-surv", sh("while [ ! -f /output/go ]; do sleep 0.05; done; exit 6"), image=IMAGE)
    before = a.wait_state("d-surv", "RUNNING")
    a.kill()
    (a.output_root / "d-surv" / "go").write_text("1")
    wait_for(lambda: dockerd.client.containers.get(before.runtime_id).status == "exited", what="container exit")
    a.start()
    done = a.wait_state("d-surv", "FAILED")
    assert done.exit_code == 6 and done.runtime_id == before.runtime_id


@pytest.mark.parametrize("complete", [True, False])
def test_container_removed_behind_the_agents_back_is_lost_with_probe(docker_agent: AgentProc, dockerd,  # type: ignore[no-untyped-def]
                                                                     complete: bool) -> None:
    a = docker_agent
    job = f"d-gone-{complete}"
    out = a.output_root / job
    out.mkdir(parents=True)
    rows = 2 if complete else 1
    (out / "val.csv").write_text("epoch,val_loss\n" + "".join(f"{e},0.5\n" for e in range(1, rows + 1)))
    st = a.launch(job, sh("sleep 60"), image=IMAGE, total_epoch=2)
    a.wait_state(job, "RUNNING")
    # Removed while the agent is down (as after a host reboot or a `docker rm -f` during an
    # upgrade): a live agent could catch the container's SIGKILL exit (137) before it vanishes,
    # which is a true FAILED, not this case.
    a.kill()
    dockerd.client.containers.get(st.runtime_id).remove(force=True)
    a.start()
    lost = a.wait_state(job, "LOST")
    assert lost.probe.completed is complete
    assert lost.probe.reason == ("ok" if complete else "val.csv-lines-mismatch lines=1 expected=2")


def test_missing_image_fails_clearly(docker_agent: AgentProc) -> None:
    st = docker_agent.launch("d-noimg", sh("true"), image="no-such-image:1")
    assert state_name(st.state) == "FAILED" and "no-such-image" in st.message
