"""The shared wing (gpufleet/, the CLI included) imports neither daemon: the CLI reaches the
coordinator's tokens over the Coordinator API, never through its database."""
from __future__ import annotations

import ast
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "gpufleet"
DAEMONS = ("gpufleet.agent", "gpufleet.coordinator", "agent", "coordinator")


def imported(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):  # function-level imports count too
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def breaks(names: set[str]) -> list[str]:
    return sorted(n for n in names if any(n == d or n.startswith(d + ".") for d in DAEMONS))


def test_shared_wing_imports_no_daemon() -> None:
    found = {str(p.relative_to(SHARED.parent)): b for p in sorted(SHARED.rglob("*.py"))
             if (b := breaks(imported(ast.parse(p.read_text(), str(p)))))}
    assert found == {}


def test_the_check_sees_function_level_imports() -> None:
    code = "def f():\n    from gpufleet.coordinator.db import tokens\n    import gpufleet.agent.main\n"
    assert breaks(imported(ast.parse(code))) == ["gpufleet.agent.main", "gpufleet.coordinator.db",
                                                 "gpufleet.coordinator.db.tokens"]
    assert breaks(imported(ast.parse("from gpufleet import auth, tls\n"))) == []
