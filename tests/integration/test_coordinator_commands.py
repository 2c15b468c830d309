"""`gpufleet-coordinator`'s subcommands as an operator finds them: listed in --help, and `tokens` finds the
database where `migrate` and the daemon do, from --database-url or GPUFLEET_DATABASE_URL (issue 17)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def coordinator(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("GPUFLEET_")}
    return subprocess.run([sys.executable, "-P", "-m", "gpufleet.coordinator.main", *args], capture_output=True,
                          text=True, timeout=60, env={**base, **env}, stdin=subprocess.DEVNULL)


def test_help_lists_the_subcommands() -> None:
    r = coordinator("--help")
    assert r.returncode == 0
    assert "gpufleet-coordinator migrate" in r.stdout and "gpufleet-coordinator tokens" in r.stdout


def test_tokens_use_the_database_url_that_migrate_used(tmp_path: Path) -> None:
    db = tmp_path / "fleet.db"
    url = f"sqlite:///{db}"
    r = coordinator("migrate", "--state-dir", str(tmp_path / "state"), "--metrics-listen", "",
                    GPUFLEET_DATABASE_URL=url)
    assert r.returncode == 0 and db.is_file(), r.stderr
    made = coordinator("tokens", "create", "root", "--role", "admin", "-o", "json", GPUFLEET_DATABASE_URL=url)
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["token"].startswith("gft_")
    listed = coordinator("tokens", "list", "--database-url", url, "-o", "json")
    assert listed.returncode == 0, listed.stderr
    assert [t["name"] for t in json.loads(listed.stdout)["items"]] == ["root"]


def test_tokens_never_create_a_database(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.db"
    r = coordinator("tokens", "list", GPUFLEET_DATABASE_URL=f"sqlite:///{missing}")
    assert r.returncode == 2 and "--database-url" in r.stderr and str(missing) in r.stderr, r.stderr
    assert not missing.exists()
