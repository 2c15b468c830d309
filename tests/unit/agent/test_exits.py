"""ExitWatcher (agent/exits.py): a wrapper's exit wakes the supervisor at once, whether the process
is our child or one we only know by pid (re-attached after a restart)."""
from __future__ import annotations

import subprocess
import sys
import threading

import pytest
from gpufleet.agent.exits import ExitWatcher


@pytest.mark.parametrize("child", [True, False], ids=["child", "re-attached"])
def test_an_exit_wakes_the_supervisor(child: bool) -> None:
    woken = threading.Event()
    w = ExitWatcher(woken.set)
    if not w.available:
        pytest.skip("no os.pidfd_open on this platform")
    w.start()
    try:
        if child:
            p = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
            w.watch(p.pid)
            assert not woken.wait(0.2)  # still running: nothing to tell (a window for what must NOT happen)
            assert p.stdin is not None
            p.stdin.close()
            assert woken.wait(30), "the exit of a child did not wake the supervisor"
            p.wait()
        else:
            # Not our child: a grandchild whose parent (the shell) did not wait for it.
            out = subprocess.run(["/bin/sh", "-c", "sleep 0.3 >/dev/null 2>&1 & echo $!"], capture_output=True,
                                 text=True, check=True)
            w.watch(int(out.stdout.strip()))
            assert woken.wait(30), "the exit of a re-attached process did not wake the supervisor"
    finally:
        w.close()


def test_a_pid_that_is_gone_is_ignored() -> None:
    w = ExitWatcher(lambda: None)
    w.watch(2**22 + 12345)  # no such process: nothing registered, nothing raised
    w.watch(0)
    w.close()
