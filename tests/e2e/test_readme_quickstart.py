"""The README's "Quick start: a secure fleet" and "Operate", run from the README's own code blocks.

Every ```sh block of those sections, in order, becomes one bash script (`set -euo pipefail`): the CA
and certificates, the coordinator's database and first admin token, both daemons with mTLS, the CLI
with a client certificate and tokens (saved with `gpufleet login`), a job and its log; then the
upgrade's migrate, an SQLite backup and its restore check, a certificate rotation and a node drain.
The PostgreSQL blocks run against a real PostgreSQL in their own test. The only change made to the
text: the four example ports become free ones, so parallel runs cannot collide. HOME is a
temporary folder, so `~/fleet` (and `~/.config/gpufleet`) are the test's own.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import free_port

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Quick start: a secure fleet"
OPERATE = "## Operate"
EXAMPLE_PORTS = ("50050", "50051", "9410", "9411")


def section_blocks(readme: str, title: str) -> list[str]:
    start = readme.index(title)
    end = readme.find("\n## ", start + len(title))
    section = readme[start:end if end >= 0 else len(readme)]
    return re.findall(r"^```sh\n(.*?)^```$", section, flags=re.S | re.M)


def quickstart_blocks(readme: str) -> list[str]:
    """The quick start, then the Operate blocks that continue its rehearsal (SQLite)."""
    return section_blocks(readme, SECTION) + [b for b in section_blocks(readme, OPERATE) if not is_postgres(b)]


def is_postgres(block: str) -> bool:
    return block.startswith("# PostgreSQL")


def test_the_section_covers_the_whole_setup() -> None:
    script = "\n".join(quickstart_blocks((ROOT / "README.md").read_text()))
    for step in ("gpufleet certs init", "--role coordinator", "--role agent", "--role client",
                 "gpufleet-coordinator migrate", "gpufleet-coordinator tokens create", "--tls-cert",
                 "gpufleet-agent", "gpufleet login", "gpufleet tokens create", "gpufleet jobs submit",
                 "gpufleet jobs logs", "sqlite3", "--force", "nodes drain", "--state drained", "nodes undrain",
                 *EXAMPLE_PORTS):
        assert step in script, f"the quick start lost {step!r}"


def stop_group(pgid: int) -> None:
    """SIGTERM the script's process group (the daemons it left in the background), SIGKILL what stays."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def test_readme_quickstart_runs_as_written(tmp_path: Path) -> None:
    script = "\n".join(quickstart_blocks((ROOT / "README.md").read_text()))
    for port in EXAMPLE_PORTS:
        script = re.sub(rf"(?<=:){port}\b", str(free_port()), script)
    bin_dir = Path(sys.executable).parent
    for tool in ("gpufleet", "gpufleet-coordinator", "gpufleet-agent"):
        assert (bin_dir / tool).exists(), f"{tool} is not installed next to {sys.executable}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUFLEET_")}
    env.update(HOME=str(tmp_path), PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}")
    log, stdout_file = tmp_path / "quickstart.log", tmp_path / "quickstart.out"
    # Files, not pipes: the daemons left in the background inherit them and would hold a pipe open.
    with open(log, "wb") as err, open(stdout_file, "wb") as out:
        proc = subprocess.Popen(["bash", "-c", "set -euo pipefail\n" + script], cwd=tmp_path, env=env,
                                stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            proc.wait(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            stop_group(proc.pid)
    text = stdout_file.read_text(errors="replace")
    assert proc.returncode == 0, f"quick start failed (exit {proc.returncode}):\n{text}\n{log.read_text()}"
    assert "hello from gpu01" in text, f"{text}\n{log.read_text()}"
    assert (tmp_path / "fleet" / "gpu01" / "tls" / "agent.crt").is_file()  # the deploy file names
    assert (tmp_path / "fleet" / "alice" / "token").read_text().startswith("gft_")
    assert (tmp_path / ".config" / "gpufleet" / "config.toml").stat().st_mode & 0o777 == 0o600
    assert "DRAINED" in text and "alice" in text, text  # the drain waited; the restored copy lists alice's token
    assert (tmp_path / "fleet" / "restored" / "coordinator.db").is_file()


@pytest.mark.postgres
def test_readme_postgres_backup_and_restore_run_as_written(tmp_path: Path, pg_url: str) -> None:
    """The PostgreSQL blocks of "Operate": a token made after the dump is gone after the restore."""
    backup, restore = [b for b in section_blocks((ROOT / "README.md").read_text(), OPERATE) if is_postgres(b)]
    bin_dir = Path(sys.executable).parent
    from tests.postgres import find_bindir

    pg_bin = find_bindir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUFLEET_")}
    env.update(HOME=str(tmp_path), GPUFLEET_DATABASE_URL=pg_url, PGURL=pg_url.replace("+psycopg", ""),
               PATH=os.pathsep.join([str(pg_bin or ""), str(bin_dir), env.get("PATH", "/usr/bin:/bin")]))

    def run(*argv: str) -> str:
        r = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"{argv}: {r.stdout}\n{r.stderr}"
        return r.stdout

    def tokens(*args: str) -> str:
        return run("gpufleet-coordinator", "tokens", *args, "--database-url", pg_url)

    run("gpufleet-coordinator", "migrate")
    tokens("create", "before", "--role", "admin")
    run("bash", "-c", "set -euo pipefail\n" + backup)
    tokens("create", "after", "--role", "user")
    assert "after" in tokens("list")
    run("bash", "-c", "set -euo pipefail\n" + restore)
    listed = tokens("list")
    assert "before" in listed and "after" not in listed, listed
