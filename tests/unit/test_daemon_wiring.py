"""Daemon wiring without a server: which loops are stale (a table), and the typed configs built from
the options (every option has its field, with the same default; a missing field fails at start-up)."""
from __future__ import annotations

import dataclasses

import pytest
from gpufleet.agent.settings import OPTIONS as AGENT_OPTIONS
from gpufleet.agent.settings import AgentConfig
from gpufleet.agent.settings import parse as parse_agent
from gpufleet.coordinator.settings import OPTIONS as COORDINATOR_OPTIONS
from gpufleet.coordinator.settings import CoordinatorConfig
from gpufleet.coordinator.settings import parse as parse_coordinator

from gpufleet import config
from gpufleet.daemon import STALE_FLOOR_S, LoopEntry, stale_after, stale_loops


def entry(name: str, interval: float, last: float | None) -> LoopEntry:
    return LoopEntry(name, interval, None, lambda: None, None if last is None else (lambda: last))


# interval, last completed pass, now, floor -> stale?
@pytest.mark.parametrize(("interval", "last", "now", "floor", "stale"), [
    (5.0, 100.0, 159.0, STALE_FLOOR_S, False),  # 12 intervals = 60 s: not yet
    (5.0, 100.0, 161.0, STALE_FLOOR_S, True),
    (0.5, 100.0, 129.0, STALE_FLOOR_S, False),  # a short interval is held to the 30 s floor
    (0.5, 100.0, 131.0, STALE_FLOOR_S, True),
    (0.05, 100.0, 100.5, 1.0, False),
    (0.05, 100.0, 101.5, 1.0, True),
    (1.0, None, 1e9, STALE_FLOOR_S, False),  # not watched: never stale
])
def test_stale_loops(interval: float, last: float | None, now: float, floor: float, stale: bool) -> None:
    loops = [entry("a", interval, last), entry("fresh", 1.0, now)]
    assert stale_loops(loops, now, floor) == (["a"] if stale else [])
    assert stale_after(interval, floor) == max(12 * interval, floor)


@pytest.mark.parametrize(("cls", "options"), [(AgentConfig, AGENT_OPTIONS),
                                              (CoordinatorConfig, COORDINATOR_OPTIONS)])
def test_every_option_has_a_typed_field_with_its_default(cls: type, options: list[config.Option]) -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    assert {o.name.replace("-", "_"): o.default for o in options} == {
        k: v for k, v in defaults.items() if k != "stale_floor"}


def test_flags_become_typed_fields() -> None:
    a = parse_agent(["--poll-interval", "0.25", "--adopt", "--gpus", "fake:2"])
    assert (a.poll_interval, a.adopt, a.gpus, a.listen) == (0.25, True, "fake:2", "127.0.0.1:50051")
    c = parse_coordinator(["--node-timeout", "4", "--on-restart", "stop"])
    assert (c.node_timeout, c.on_restart, c.stale_floor) == (4.0, "stop", STALE_FLOOR_S)


def test_a_config_class_missing_an_option_fails_naming_it() -> None:
    @dataclasses.dataclass
    class Short:
        listen: str = ""

    opts = [config.Option("listen", "", ""), config.Option("state-dir", "", "")]
    with pytest.raises(TypeError, match="state_dir"):
        config.typed(Short, opts, config.parse("x", "x", opts, []))
