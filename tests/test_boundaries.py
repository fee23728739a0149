"""The parts' contracts (DESIGN.md), read from the source: which part may import which, and what the light
parts must never pull in. Every import counts, the lazy ones inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PARTS = {"runtime": "runtime", "gateway": "gateway", "operator": "operator", "evals": "evals", "wire": "tokenyard/wire"}
# part -> the parts it may import (besides itself); the wire module is shared and imports none of them
ALLOWED = {
    "runtime": {"wire"},
    "gateway": {"wire"},
    "operator": set(),
    "evals": {"wire"},
    "wire": set(),
}
# third-party packages a part must never import (the operator image and the wire module carry no torch)
NEVER = {"operator": {"torch", "transformers"}, "wire": {"torch", "transformers", "numpy"}}


def imported_modules(part: str) -> dict[str, set[str]]:
    """Each module name imported anywhere in the part -> the files that import it."""
    found: dict[str, set[str]] = {}
    folder = ROOT / PARTS[part]
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                found.setdefault(name, set()).add(str(path.relative_to(folder)))
    return found


def part_of(module: str) -> str | None:
    for part in PARTS:
        if module == f"tokenyard.{part}" or module.startswith(f"tokenyard.{part}."):
            return part
    return None


@pytest.mark.parametrize("part", PARTS)
def test_a_part_imports_only_the_parts_it_may(part):
    crossings = {
        module: files
        for module, files in imported_modules(part).items()
        if part_of(module) not in (None, part, *ALLOWED[part])
    }
    assert not crossings, f"{part} must not import {crossings}"


@pytest.mark.parametrize("part", NEVER)
def test_light_parts_never_import_heavy_packages(part):
    heavy = {m: f for m, f in imported_modules(part).items() if m.split(".")[0] in NEVER[part]}
    assert not heavy, f"{part} must not import {heavy}"


def test_the_checker_sees_a_crossing(tmp_path, monkeypatch):
    """The test above could pass by reading nothing: give it a part that crosses, and it must see it."""
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.py").write_text("def f():\n    from tokenyard.runtime.llm import LLM\n")
    monkeypatch.setitem(PARTS, "bad", str(tmp_path / "bad"))
    assert "tokenyard.runtime.llm" in imported_modules("bad")
    assert part_of("tokenyard.runtime.llm") == "runtime"
