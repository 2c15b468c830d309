"""The code stays ruff- and mypy-clean (generated stubs excluded, see pyproject.toml)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_clean() -> None:
    r = _run("ruff", "check", "--no-cache", ".")
    assert r.returncode == 0, r.stdout[-4000:]


def test_mypy_clean_on_the_daemons() -> None:
    r = _run("mypy", "--no-incremental", "agent", "coordinator", "gpufleet")
    assert r.returncode == 0, r.stdout[-4000:]
