"""`gpufleet demo` from a freshly installed package (a wheel in a new virtualenv), as a new user runs it."""
from __future__ import annotations

import os
import site
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fresh_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv with gpufleet installed from a wheel built from this tree.

    Dependencies come from the test environment (a .pth file), so no network is needed; gpufleet
    itself comes only from the wheel: package data, console scripts and migrations must be in it.
    """
    tmp = tmp_path_factory.mktemp("fresh")
    wheels = tmp / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(wheels), str(ROOT)], check=True, timeout=300, cwd=tmp)
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    vpy = env_dir / "bin" / "python"
    purelib = subprocess.run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    deps = [p for p in {sysconfig.get_paths()["purelib"], *site.getsitepackages()} if os.path.isdir(p)]
    Path(purelib, "zz_test_deps.pth").write_text("\n".join(deps) + "\n")
    wheel = next(wheels.glob("gpufleet-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", purelib, str(wheel)],
                   check=True, timeout=300)
    # Console scripts: pip --target does not write them into bin/, so make them as pip would.
    for name, target in (("gpufleet", "gpufleet.cli:main"), ("gpufleet-agent", "gpufleet.agent.main:main"),
                         ("gpufleet-coordinator", "gpufleet.coordinator.main:main")):
        mod, func = target.split(":")
        script = env_dir / "bin" / name
        script.write_text(f"#!{vpy}\nimport sys\nfrom {mod} import {func}\nsys.exit({func}())\n")
        script.chmod(0o755)
    return env_dir


def test_demo_runs_to_a_completed_model(fresh_install: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{fresh_install / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    state = tmp_path / "demo"
    r = subprocess.run([str(fresh_install / "bin" / "gpufleet"), "demo", "--epochs", "3", "--epoch-seconds", "0.1",
                        "--state-dir", str(state)], capture_output=True, text=True, timeout=180, cwd=tmp_path,
                       env=env, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "model COMPLETED" in r.stdout
    # It really ran the installed code, not this source tree.
    loc = subprocess.run([str(fresh_install / "bin" / "python"), "-c", "import gpufleet; print(gpufleet.__file__)"],
                         capture_output=True, text=True, cwd=tmp_path, env=env).stdout
    assert str(fresh_install) in loc
    # The embedded coordinator's database holds the COMPLETED model with its metrics.
    import sqlalchemy as sa

    db = next(state.glob("coordinator/*.db"))
    with sa.create_engine(f"sqlite:///{db}").connect() as conn:
        status = conn.execute(sa.text("SELECT status, step1_state, step2_state FROM models")).one()
        val_rows = conn.execute(sa.text("SELECT COUNT(DISTINCT epoch) FROM metrics_validation")).scalar()
        test_rows = conn.execute(sa.text("SELECT COUNT(*) FROM metrics_test")).scalar()
    assert tuple(status) == ("COMPLETED", "COMPLETED", "COMPLETED")
    assert val_rows == 3 and test_rows and test_rows > 0


def test_the_current_folder_cannot_shadow_the_daemons(tmp_path: Path) -> None:
    """Run from a folder holding its own `agent/`, `coordinator/` (and even `gpufleet/`) packages, the demo still
    starts the real daemons: they install under gpufleet.*, not under names a user's folder is likely to hold,
    and start with `python -P -m gpufleet.<daemon>.main`, so the current folder is not on sys.path."""
    here = tmp_path / "project"
    marker = tmp_path / "shadowed"
    for name in ("agent", "coordinator", "gpufleet/agent", "gpufleet/coordinator"):
        pkg = here / name
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text(f"open({str(marker)!r}, 'a').write('{name} package\\n')\n")
        (pkg / "main.py").write_text(f"open({str(marker)!r}, 'a').write('{name}.main\\n')\nraise SystemExit(3)\n")
    (here / "gpufleet" / "__init__.py").write_text(f"open({str(marker)!r}, 'a').write('gpufleet package\\n')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    gpufleet = Path(sys.executable).parent / "gpufleet"
    r = subprocess.run([str(gpufleet), "demo", "--epochs", "2", "--epoch-seconds", "0.1",
                        "--state-dir", str(tmp_path / "demo")], capture_output=True, text=True, timeout=240,
                       cwd=here, env=env, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "model COMPLETED" in r.stdout
    assert not marker.exists(), marker.read_text()
