"""grpc's C core stays quiet in the daemons unless the operator asks for it (issue 17)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest


def verbosity_seen(module: str, **env: str) -> str:
    """GRPC_VERBOSITY as the daemon's process has it once its entry point and grpc are imported."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
    code = f"import {module}, grpc, os; print(os.environ.get('GRPC_VERBOSITY'), grpc.__name__)"
    r = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=60,
                       env={**base, **env}, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()[0]


@pytest.mark.parametrize("module", ["gpufleet.agent.main", "gpufleet.coordinator.main"])
def test_daemons_silence_grpc_core_unless_the_operator_set_it(module: str) -> None:
    assert verbosity_seen(module) == "NONE"
    assert verbosity_seen(module, GRPC_VERBOSITY="DEBUG") == "DEBUG"
