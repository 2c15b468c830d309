"""The walls of the house: the agent and the coordinator meet only over gRPC.

Three wings install under one import root (README "Layout"):
- gpufleet.agent (agent/) imports nothing of gpufleet.coordinator;
- gpufleet.coordinator (coordinator/) imports nothing of gpufleet.agent;
- the shared wing (every other gpufleet.* module: jobspec, errors, config, TLS, logging, the stubs, the CLI,
  the web console when it lands) imports neither daemon.
No module imports the old top-level names `agent` or `coordinator` either. The check reads every module's AST
(function-level and TYPE_CHECKING imports included, and importlib.import_module with a constant name), so a
breach fails here before anyone runs it. That the current folder cannot shadow the daemons is shown by
tests/e2e/test_demo.py (a demo run from a folder holding its own agent/ and coordinator/ packages).
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Source folder -> the package it installs as (the package-dir mapping in pyproject.toml).
WINGS = {"agent": "gpufleet.agent", "coordinator": "gpufleet.coordinator", "gpufleet": "gpufleet"}
DAEMONS = ("gpufleet.agent", "gpufleet.coordinator")

# Modules allowed to breach a wall for now (none since the token RPC landed). The test also fails when
# one of these stops breaching, so the list cannot rot.
KNOWN_BREACHES: set[str] = set()


def _modules() -> Iterator[tuple[str, Path]]:
    for folder, package in WINGS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            if folder == "gpufleet" and rel.parts[0] == "v1":
                continue  # generated stubs: they import only each other and protobuf
            parts = [p for p in rel.parts if p != "__init__"]
            yield ".".join([package, *parts]), path


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _imports(module: str, path: Path) -> Iterator[str]:
    """Every module name `module` imports, relative imports resolved; `from X import Y` yields X and X.Y."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if _is_package(path) else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target
            yield from (f"{target}.{alias.name}" for alias in node.names if alias.name != "*")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name)
              and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            yield node.args[0].value


def _wing(module: str) -> str:
    for daemon in DAEMONS:
        if module == daemon or module.startswith(daemon + "."):
            return daemon
    return "gpufleet"


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def breaches(module: str, path: Path) -> list[str]:
    """The imports of `module` that cross a wall, as 'imported name' strings."""
    wing = _wing(module)
    forbidden = [d for d in DAEMONS if d != wing]
    out = []
    for name in _imports(module, path):
        if _within(name, "agent") or _within(name, "coordinator"):
            out.append(f"{name} (the old top-level name)")
        elif any(_within(name, d) for d in forbidden):
            out.append(name)
    return sorted(set(out))


def test_the_walls_hold() -> None:
    found = {module: b for module, path in _modules() if (b := breaches(module, path))}
    unexpected = {m: b for m, b in found.items() if m not in KNOWN_BREACHES}
    assert not unexpected, "imports that cross the walls (README 'Layout'):\n" + "\n".join(
        f"  {m}: {', '.join(b)}" for m, b in sorted(unexpected.items()))
    mended = KNOWN_BREACHES - set(found)
    assert not mended, f"no longer breaching, take them off KNOWN_BREACHES: {sorted(mended)}"


def test_every_wing_is_scanned() -> None:
    modules = dict(_modules())
    assert {"gpufleet.agent.main", "gpufleet.agent.runtime.process", "gpufleet.coordinator.main",
            "gpufleet.coordinator.db.repo", "gpufleet.jobspec", "gpufleet.cli"} <= set(modules)
    assert not any(m.startswith("gpufleet.v1") for m in modules)


@pytest.mark.parametrize(("module", "source", "expected"), [
    ("gpufleet.coordinator.x", "from gpufleet.agent.spec import JobSpec", ["gpufleet.agent.spec",
                                                                           "gpufleet.agent.spec.JobSpec"]),
    ("gpufleet.coordinator.x", "from gpufleet import agent", ["gpufleet.agent"]),
    ("gpufleet.coordinator.db.x", "from ...agent import spec", ["gpufleet.agent", "gpufleet.agent.spec"]),
    ("gpufleet.agent.x", "def f():\n    import gpufleet.coordinator.db", ["gpufleet.coordinator.db"]),
    ("gpufleet.agent.x", "import importlib\nimportlib.import_module('gpufleet.coordinator.main')",
     ["gpufleet.coordinator.main"]),
    ("gpufleet.demo", "from gpufleet.agent import main", ["gpufleet.agent", "gpufleet.agent.main"]),
    ("gpufleet.demo", "import coordinator.db", ["coordinator.db (the old top-level name)"]),
    ("gpufleet.agent.x", "from gpufleet.agent import spec\nfrom gpufleet import jobspec\nfrom . import store", []),
    ("gpufleet.demo", "spawn(['gpufleet.agent.main'])", []),  # a string naming a module is no import
])
def test_the_check_sees_every_form_of_import(tmp_path: Path, module: str, source: str,
                                             expected: list[str]) -> None:
    path = tmp_path / "x.py"
    path.write_text(source + "\n")
    assert breaches(module, path) == expected


def _python(cwd: Path, code: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("name", ["agent", "coordinator"])
def test_the_old_top_level_names_do_not_import(tmp_path: Path, name: str) -> None:
    r = _python(tmp_path, f"import {name}")
    assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr, r.stdout + r.stderr


def test_the_daemons_import_under_one_root(tmp_path: Path) -> None:
    r = _python(tmp_path, "import gpufleet.agent.main, gpufleet.coordinator.main, gpufleet.jobspec; print('ok')")
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr
