"""The agent as a real process on loopback, process runtime: jobs, stops, restarts, truth."""
from __future__ import annotations

import os
import signal
import sys
import textwrap
from pathlib import Path

import grpc
import pytest

from gpufleet.v1 import agent_pb2 as apb
from tests.harness import AgentProc, state_name, wait_for

PY = sys.executable


def script(body: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(body)]


def write_outputs(folder: Path, epochs: int, done: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{e},{1.0 / e:.3f}\n" for e in range(1, done + 1))
    (folder / "val.csv").write_text("epoch,val_loss\n" + rows)
    for e in range(1, done + 1):
        (folder / f"epoch_{e}.pth").write_bytes(b"x")


def test_job_runs_to_success_with_logs(agent: AgentProc) -> None:
    st = agent.launch("ok1", script("print('hello', flush=True)\nprint('Epoch 1/1 loss=0.5')"), gpus=[0])
    assert state_name(st.state) in ("RUNNING", "SUCCEEDED")
    assert st.runtime == "process" and st.runtime_id
    done = agent.wait_state("ok1", "SUCCEEDED")
    assert done.exit_code == 0
    assert done.HasField("finished_at") and done.finished_at.ToNanoseconds() >= done.started_at.ToNanoseconds()
    assert b"hello" in agent.logs("ok1")
    assert agent.logs("ok1", tail=1).strip() == b"Epoch 1/1 loss=0.5"
    # GPUs are released when the job ends.
    node = agent.stub.GetNode(apb.GetNodeRequest(), timeout=5)
    assert all(g.assigned_job_id == "" for g in node.gpus)


def test_nonzero_exit_is_failed_with_the_code(agent: AgentProc) -> None:
    agent.launch("bad1", script("import sys; sys.exit(7)"))
    done = agent.wait_state("bad1", "FAILED")
    assert done.exit_code == 7 and done.signal == 0


def test_missing_program_is_refused_at_launch(agent: AgentProc) -> None:
    with pytest.raises(grpc.RpcError) as e:
        agent.launch("nope", ["/no/such/program"])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "spec.command[0]" in (e.value.details() or "")
    with pytest.raises(grpc.RpcError) as e2:
        agent.inspect("nope")
    assert e2.value.code() == grpc.StatusCode.NOT_FOUND  # nothing was recorded


def test_stop_with_grace_lets_the_job_clean_up(agent: AgentProc) -> None:
    agent.launch("grace1", script("""
        import signal, sys, time, os
        def bye(*_):
            open('stopped.txt', 'w').write('clean')
            sys.exit(0)
        signal.signal(signal.SIGTERM, bye)
        print('ready', flush=True)
        time.sleep(60)
    """))
    wait_for(lambda: b"ready" in agent.logs("grace1"), what="job ready")
    st = agent.stub.Stop(apb.StopRequest(job_id="grace1", grace_seconds=10), timeout=20)
    assert state_name(st.state) == "STOPPED"
    assert st.exit_code == 0  # the raw exit code is kept beside the STOPPED state
    assert (agent.output_root / "grace1" / "stopped.txt").read_text() == "clean"
    # Stopping an ended job is a no-op that returns its status.
    again = agent.stub.Stop(apb.StopRequest(job_id="grace1", grace_seconds=1), timeout=5)
    assert state_name(again.state) == "STOPPED" and again.finished_at == st.finished_at


def test_stop_escalates_to_sigkill_after_grace(agent: AgentProc) -> None:
    agent.launch("stubborn", script("""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print('ready', flush=True)
        time.sleep(120)
    """))
    wait_for(lambda: b"ready" in agent.logs("stubborn"), what="job ready")
    agent.stub.Stop(apb.StopRequest(job_id="stubborn", grace_seconds=1), timeout=20)
    done = agent.wait_state("stubborn", "STOPPED", timeout=15)
    assert done.signal == signal.SIGKILL and done.exit_code == 128 + signal.SIGKILL


def test_launch_is_idempotent_and_attempts_are_fenced(agent: AgentProc) -> None:
    argv = script("import time; time.sleep(30)")
    first = agent.launch("idem", argv, gpus=[1])
    second = agent.launch("idem", argv, gpus=[1])
    assert second.runtime_id == first.runtime_id
    jobs = agent.stub.ListJobs(apb.ListJobsRequest(), timeout=5).jobs
    assert [j.job_id for j in jobs].count("idem") == 1
    with pytest.raises(grpc.RpcError) as e:
        agent.launch("idem", argv, attempt=2, gpus=[2])
    assert e.value.code() == grpc.StatusCode.ABORTED and "attempt 1" in (e.value.details() or "")
    with pytest.raises(grpc.RpcError) as e:
        agent.launch("other", argv, gpus=[1])
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "GPU 1" in (e.value.details() or "")
    agent.stub.Stop(apb.StopRequest(job_id="idem", grace_seconds=1), timeout=20)
    agent.wait_state("idem", "STOPPED")
    # Attempt 2 may now run; a late repeat of attempt 1 returns its record and starts nothing.
    assert agent.launch("idem", argv, attempt=2, gpus=[1]).attempt == 2
    late = agent.launch("idem", argv, attempt=1, gpus=[1])
    assert late.attempt == 1 and state_name(late.state) == "STOPPED"
    assert state_name(agent.inspect("idem").state) == "RUNNING" and agent.inspect("idem").attempt == 2


def test_agent_sigkill_mid_job_then_restart_keeps_the_truth(agent: AgentProc) -> None:
    flag = agent.root / "go"
    agent.launch("survivor", script(f"""
        import os, sys, time
        print('started', flush=True)
        while not os.path.exists({str(flag)!r}):
            time.sleep(0.05)
        sys.exit(4)
    """), gpus=[0])
    agent.wait_state("survivor", "RUNNING")
    before = agent.inspect("survivor")
    agent.restart()
    again = agent.inspect("survivor")
    assert state_name(again.state) == "RUNNING" and again.runtime_id == before.runtime_id
    flag.write_text("1")
    done = agent.wait_state("survivor", "FAILED")
    assert done.exit_code == 4
    # The GPU was held across the restart and is free now.
    node = agent.stub.GetNode(apb.GetNodeRequest(), timeout=5)
    assert node.gpus[0].assigned_job_id == ""


def test_job_that_ends_while_the_agent_is_down_keeps_its_exit_code(agent: AgentProc) -> None:
    flag = agent.root / "go2"
    agent.launch("ender", script(f"""
        import os, sys, time
        while not os.path.exists({str(flag)!r}):
            time.sleep(0.05)
        print('bye', flush=True)
        sys.exit(9)
    """))
    agent.wait_state("ender", "RUNNING")
    agent.kill()
    flag.write_text("1")
    wait_for(lambda: (agent.state_dir / "jobs/ender/1/exit.json").exists(), what="the job to end")
    agent.start()
    done = agent.wait_state("ender", "FAILED")
    assert done.exit_code == 9
    assert b"bye" in agent.logs("ender")


@pytest.mark.parametrize("complete", [True, False])
def test_process_killed_behind_the_agents_back_is_lost_with_the_probe_verdict(agent: AgentProc,
                                                                             complete: bool) -> None:
    job = f"vanish-{complete}"
    write_outputs(agent.output_root / job, epochs=3, done=3 if complete else 1)
    st = agent.launch(job, script("import time; time.sleep(60)"), total_epoch=3)
    agent.wait_state(job, "RUNNING")
    # SIGKILL the wrapper and the job: no exit code is ever written.
    child = int(wait_for(lambda: (agent.state_dir / f"jobs/{job}/1/child.pid").read_text(), what="child pid"))
    os.kill(int(st.runtime_id), signal.SIGKILL)
    os.killpg(child, signal.SIGKILL)
    lost = agent.wait_state(job, "LOST")
    assert not lost.HasField("exit_code")
    assert lost.probe.completed is complete
    assert lost.probe.reason == ("ok" if complete else "val.csv-lines-mismatch lines=1 expected=3")
    assert lost.probe.reason in lost.message


def test_acknowledge_drops_the_record_and_fences_the_attempt(agent: AgentProc) -> None:
    agent.launch("acked", script("pass"))
    agent.wait_state("acked", "SUCCEEDED")
    with pytest.raises(grpc.RpcError) as e:
        agent.stub.Acknowledge(apb.AcknowledgeRequest(job_id="acked", attempt=0), timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert agent.stub.Acknowledge(apb.AcknowledgeRequest(job_id="acked", attempt=1), timeout=5).dropped
    assert not agent.stub.Acknowledge(apb.AcknowledgeRequest(job_id="acked", attempt=1), timeout=5).dropped
    with pytest.raises(grpc.RpcError) as e:
        agent.inspect("acked")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        agent.launch("acked", script("pass"))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_acknowledging_a_running_job_is_refused(agent: AgentProc) -> None:
    agent.launch("busy", script("import time; time.sleep(30)"))
    with pytest.raises(grpc.RpcError) as e:
        agent.stub.Acknowledge(apb.AcknowledgeRequest(job_id="busy", attempt=1), timeout=5)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert state_name(agent.inspect("busy").state) in ("PENDING", "RUNNING")


def test_watch_events_resume_from_a_sequence_number_across_restarts(agent: AgentProc) -> None:
    agent.launch("ev1", script("pass"))
    agent.wait_state("ev1", "SUCCEEDED")
    evs = list(agent.stub.WatchEvents(apb.WatchEventsRequest(no_follow=True), timeout=10))
    states = [state_name(e.job.state) for e in evs if e.job.job_id == "ev1" and e.kind == "state"]
    assert states[-1] == "SUCCEEDED"
    seqs = [e.seq for e in evs]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    last = seqs[-1]
    agent.restart()
    agent.launch("ev2", script("pass"))
    agent.wait_state("ev2", "SUCCEEDED")
    later = list(agent.stub.WatchEvents(apb.WatchEventsRequest(after_seq=last, no_follow=True), timeout=10))
    assert later and all(e.seq > last for e in later)
    assert {e.job.job_id for e in later} == {"ev2"}


def test_follow_stream_delivers_new_events(agent: AgentProc) -> None:
    last = agent.stub.GetNode(apb.GetNodeRequest(), timeout=5).last_event_seq
    stream = agent.stub.WatchEvents(apb.WatchEventsRequest(after_seq=last), timeout=20)
    agent.launch("ev3", script("pass"))
    for e in stream:
        if e.job.job_id == "ev3" and state_name(e.job.state) == "SUCCEEDED":
            stream.cancel()
            break
    else:
        pytest.fail("the stream ended without the job's end")


def test_live_progress_from_the_jobs_output(agent: AgentProc) -> None:
    flag = agent.root / "go3"
    agent.launch("prog", script(f"""
        import os, time
        print('Epoch 2/5 loss=0.41 val_loss=0.52', flush=True)
        while not os.path.exists({str(flag)!r}):
            time.sleep(0.05)
    """))
    st = wait_for(lambda: (j := agent.inspect("prog")).progress.current_epoch == 2 and j, what="progress")
    assert st.progress.total_epoch == 5
    assert st.progress.last_metrics["loss"] == pytest.approx(0.41)
    flag.write_text("1")
    agent.wait_state("prog", "SUCCEEDED")


def test_follow_logs_until_the_job_ends(agent: AgentProc) -> None:
    agent.launch("fol", script("""
        import time
        for i in range(3):
            print(f'line {i}', flush=True)
            time.sleep(0.1)
    """))
    data = agent.logs("fol", follow=True)
    assert data.splitlines() == [b"line 0", b"line 1", b"line 2"]


def test_unhealthy_gpu_is_never_assigned(agent: AgentProc) -> None:
    g = agent.stub.SetGpuHealth(apb.SetGpuHealthRequest(index=3, healthy=False, reason="xid=79"), timeout=5)
    assert not g.healthy
    with pytest.raises(grpc.RpcError) as e:
        agent.launch("sick", script("pass"), gpus=[3])
    assert e.value.code() == grpc.StatusCode.ABORTED and "xid=79" in (e.value.details() or "")
    agent.stub.SetGpuHealth(apb.SetGpuHealthRequest(index=3, healthy=True), timeout=5)
    agent.launch("well", script("pass"), gpus=[3])
    agent.wait_state("well", "SUCCEEDED")


def test_get_node_reports_gpus_and_holders(agent: AgentProc) -> None:
    agent.launch("holder", script("import time; time.sleep(30)"), gpus=[2])
    node = agent.stub.GetNode(apb.GetNodeRequest(), timeout=5)
    assert node.gpu_source == "fake" and len(node.gpus) == 4 and node.runtime == "process"
    assert node.gpus[2].assigned_job_id == "holder"
    g = node.gpus[0]
    assert g.uuid and 0 <= g.utilization_gpu <= 100 and 0 < g.memory_total_bytes
    assert g.memory_used_bytes <= g.memory_total_bytes and g.power_w <= g.power_limit_w and g.healthy


def test_env_reaches_the_job_and_gpus_are_visible(agent: AgentProc) -> None:
    agent.launch("envy", script("import os; print(os.environ['CUDA_VISIBLE_DEVICES'], os.environ['MY_VAR'])"),
                 gpus=[1, 3], env={"MY_VAR": "x1"})
    agent.wait_state("envy", "SUCCEEDED")
    assert agent.logs("envy").strip() == b"1,3 x1"


def test_probe_outputs_by_job_reports_checkpoints_and_metrics(agent: AgentProc) -> None:
    out = agent.output_root / "probe-job"
    write_outputs(out, epochs=2, done=2)
    (out / "best.pth").write_bytes(b"x")
    (out / "train.csv").write_text("epoch,loss\n1,0.9\n2,0.7\n")
    agent.launch("probe-job", script("pass"), total_epoch=2)
    done = agent.wait_state("probe-job", "SUCCEEDED")
    assert done.probe.completed and done.probe.reason == "ok"
    p = agent.stub.ProbeOutputs(apb.ProbeOutputsRequest(job_id="probe-job"), timeout=5)
    assert p.checkpoints == 3 and p.best_checkpoint == "best.pth" and not p.has_result_zip
    assert p.best_epoch == 2 and p.best_metric_key == "val_loss"
    assert {(m.split, m.epoch) for m in p.metrics} >= {("train", 1), ("train", 2), ("val", 1), ("val", 2)}
