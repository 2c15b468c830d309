"""Issue 13: log reads are bounded: a 150 MB log keeps the agent small and tail_lines=1 cheap."""
from __future__ import annotations

import sys
import textwrap

import pytest

from tests.harness import AgentProc

PY = sys.executable


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.slow
def test_a_150_mb_log_keeps_the_agent_small_and_tails_cheap(agent: AgentProc) -> None:
    # 150 MB of short lines, written in big chunks so the job itself is quick.
    body = textwrap.dedent("""
        import sys
        out = sys.stdout.buffer
        block = b"".join(b"line %07d\\n" % i for i in range(100_000))  # 1.3 MB
        for _ in range(115):
            out.write(block)
        out.write(b"the very last line\\n")
        out.flush()
    """)
    agent.launch("big", [PY, "-c", body], gpus=[0])
    done = agent.wait_state("big", "SUCCEEDED", "FAILED", timeout=300)
    assert done.exit_code == 0
    assert agent.logs("big", tail=1) == b"the very last line\n"
    assert agent.logs("big", tail=3).splitlines()[-1] == b"the very last line"
    whole = agent.logs("big")  # no tail asked: still bounded in bytes, the end of the log
    assert whole.endswith(b"the very last line\n") and len(whole) <= 4 * 1024 * 1024
    followed = agent.logs("big", follow=True, tail=1)
    assert followed == b"the very last line\n"
    assert agent.daemon.proc is not None
    assert peak_rss_mib(agent.daemon.proc.pid) < 400
