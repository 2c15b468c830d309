"""gpufleet/loop.py: a background loop that runs when woken, and gathers a burst of wakes into one
pass when asked to (the scheduler: one pass per burst of submits, not one per submit)."""
from __future__ import annotations

import threading
import time

from gpufleet.loop import Loop
from tests.harness import wait_for


class Counter:
    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def step(self) -> bool:
        with self.lock:
            self.calls += 1
        return False


def burst(loop: Loop, wakes: int = 20, over: float = 0.1) -> None:
    """`wakes` wakes spread over `over` seconds, as submits arriving one after another."""
    for _ in range(wakes):
        loop.wake()
        time.sleep(over / wakes)


def test_a_burst_of_wakes_within_the_batch_window_is_one_pass() -> None:
    c = Counter()
    loop = Loop("t", c.step, interval=60.0, batch=2.0)  # wide: a stalled test thread must not split it
    loop.start()
    try:
        wait_for(lambda: c.calls == 1, 10, "the first pass at start")
        burst(loop)
        wait_for(lambda: c.calls >= 2, 10, "the pass after the burst")
    finally:
        loop.close()
    assert c.calls <= 3, c.calls  # unbatched, the same burst costs up to one pass per wake


def test_without_batching_a_wake_runs_a_pass_at_once_every_time() -> None:
    c = Counter()
    loop = Loop("t", c.step, interval=60.0)
    loop.start()
    try:
        wait_for(lambda: c.calls == 1, 10, "the first pass at start")
        for n in range(2, 6):
            loop.wake()
            wait_for(lambda n=n: c.calls >= n, 10, f"pass {n} after its wake")  # type: ignore[misc]
    finally:
        loop.close()


def test_close_does_not_wait_out_the_batch_window() -> None:
    c = Counter()
    loop = Loop("t", c.step, interval=60.0, batch=30.0)
    loop.start()
    wait_for(lambda: c.calls == 1, 10, "the first pass at start")
    loop.wake()  # now waiting out the 30 s batch window
    closer = threading.Thread(target=loop.close, kwargs={"timeout": 60.0})
    closer.start()
    closer.join(10)
    assert not closer.is_alive(), "close() waited for the batch window"
    assert c.calls == 1
