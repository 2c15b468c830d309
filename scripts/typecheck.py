"""Run mypy over the installed layout: gpufleet/, with agent/ and coordinator/ as gpufleet.agent and
gpufleet.coordinator (the package-dir mapping in pyproject.toml), built as a tree of links in a
temporary folder so mypy sees one import root and checks every cross-module call."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="gpufleet-mypy-") as tmp:
        pkg = Path(tmp) / "gpufleet"
        pkg.mkdir()
        for entry in (ROOT / "gpufleet").iterdir():
            if entry.name not in ("__pycache__", "agent", "coordinator"):
                os.symlink(entry, pkg / entry.name)
        os.symlink(ROOT / "agent", pkg / "agent")
        os.symlink(ROOT / "coordinator", pkg / "coordinator")
        cmd = [sys.executable, "-m", "mypy", "--no-incremental", "--config-file", str(ROOT / "pyproject.toml"),
               "-p", "gpufleet", *sys.argv[1:]]
        r = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        sys.stdout.write(r.stdout.replace(tmp + "/", ""))
        sys.stderr.write(r.stderr)
        return r.returncode


if __name__ == "__main__":
    sys.exit(main())
