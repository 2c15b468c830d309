"""README.md stays true: the two commands come first and every daemon flag is documented."""
from __future__ import annotations

from pathlib import Path

from gpufleet.agent.main import OPTIONS as AGENT_OPTIONS
from gpufleet.coordinator.main import OPTIONS as COORDINATOR_OPTIONS

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
CI = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()


def test_every_flag_is_documented() -> None:
    for opt in [*AGENT_OPTIONS, *COORDINATOR_OPTIONS]:
        assert f"`--{opt.name}`" in README, f"--{opt.name} is missing from README.md"


def test_the_two_commands_come_first_and_ci_runs_the_test_command() -> None:
    first = README.index("```sh")
    assert "gpufleet demo" in README[first : first + 300]
    assert ".venv/bin/python -m pytest -q" in README[: README.index("## What the demo shows")]
    assert ".venv/bin/python -m pytest -q" in CI
