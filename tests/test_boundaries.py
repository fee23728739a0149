"""The import contracts, read from the source: which part may import which (DESIGN.md), what the light parts must
never pull in, which runtime packages are leaves, and that no module imports itself through others (no cycles).
Every import counts, the lazy ones inside functions too: a cycle dodged by a function-level import is still one.

The graph is built from the files (ast), not by importing them: the parts are folders mapped into the ``tokenyard``
namespace by pyproject.toml, which graph libraries that walk one package's folder do not follow."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# part -> its folder; each maps to the import name tokenyard.<part>
PARTS = {
    "runtime": "runtime",
    "gateway": "gateway",
    "operator": "operator",
    "evals": "evals",
    "wire": "tokenyard/wire",
    "benchmarks": "benchmarks",
}
ALL_PARTS = set(PARTS)
# part -> the parts it may import (besides itself); the wire module is shared and imports none of them
ALLOWED = {
    "runtime": {"wire"},
    "gateway": {"wire"},
    "operator": set(),
    "evals": {"wire"},
    "wire": set(),
    "benchmarks": ALL_PARTS,  # measures every part; no part imports it
}
# third-party packages a part must never import (the operator image and the wire module carry no torch)
NEVER = {"operator": {"torch", "transformers"}, "wire": {"torch", "transformers", "numpy"}}
# runtime packages that sit low in the runtime and import only what is named here (and themselves)
LEAVES = {
    "tokenyard.runtime.validation": set(),
    "tokenyard.runtime.quantization": {"tokenyard.runtime.kernels", "tokenyard.runtime.validation"},
    "tokenyard.runtime.distributed": {"tokenyard.runtime.validation"},
    "tokenyard.runtime.kernels": {"tokenyard.runtime.cpu"},
    "tokenyard.runtime.cpu": set(),
    "tokenyard.runtime.threads": set(),
}


def modules_of(part: str) -> dict[str, Path]:
    """Module name -> file, for every module of a part."""
    found = {}
    folder = ROOT / PARTS[part]
    for path in folder.rglob("*.py"):
        relative = path.relative_to(folder).with_suffix("").parts
        name = ".".join((f"tokenyard.{part}", *relative))
        found[name.removesuffix(".__init__")] = path
    return found


def imports_in(module: str, path: Path) -> Iterator[str]:
    """The absolute names a module's import statements name: ``from a.b import c`` names ``a.b`` and ``a.b.c``
    (c may be a submodule); relative imports resolved against the module's package."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def imported_modules(part: str) -> dict[str, set[str]]:
    """Each module name imported anywhere in the part -> the files that import it."""
    found: dict[str, set[str]] = {}
    folder = ROOT / PARTS[part]
    for module, path in modules_of(part).items():
        for name in imports_in(module, path):
            found.setdefault(name, set()).add(str(path.relative_to(folder)))
    return found


def module_graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports."""
    modules = {name: path for part in PARTS for name, path in modules_of(part).items()}
    return {
        module: {name for name in imports_in(module, path) if name in modules and name != module}
        for module, path in modules.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def part_of(module: str) -> str | None:
    for part in PARTS:
        if module == f"tokenyard.{part}" or module.startswith(f"tokenyard.{part}."):
            return part
    return None


def is_within(module: str, package: str) -> bool:
    return module == package or module.startswith(f"{package}.")


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


def test_no_module_imports_itself_through_others():
    found = cycles(module_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(cycle) for cycle in found)


@pytest.mark.parametrize("leaf", LEAVES)
def test_low_runtime_packages_import_only_what_is_below_them(leaf):
    graph = module_graph()
    upward = {
        (module, target)
        for module, targets in graph.items()
        if is_within(module, leaf)
        for target in targets
        if not is_within(target, leaf) and not any(is_within(target, allowed) for allowed in LEAVES[leaf])
    }
    assert not upward, f"{leaf} may import only {sorted(LEAVES[leaf]) or 'nothing of the project'}: {sorted(upward)}"


def test_the_checker_sees_a_crossing(tmp_path, monkeypatch):
    """The tests above could pass by reading nothing: give them a part that crosses, and they must see it."""
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.py").write_text("def f():\n    from tokenyard.runtime.llm import LLM\n")
    monkeypatch.setitem(PARTS, "bad", str(tmp_path / "bad"))
    assert "tokenyard.runtime.llm" in imported_modules("bad")
    assert part_of("tokenyard.runtime.llm") == "runtime"


def test_the_checker_sees_a_cycle_dodged_by_a_lazy_relative_import(tmp_path, monkeypatch):
    (tmp_path / "loop" / "inner").mkdir(parents=True)
    (tmp_path / "loop" / "__init__.py").write_text("")
    (tmp_path / "loop" / "a.py").write_text("from tokenyard.loop.inner import b\n")
    (tmp_path / "loop" / "inner" / "__init__.py").write_text("")
    (tmp_path / "loop" / "inner" / "b.py").write_text("def f():\n    from ..a import f\n")
    monkeypatch.setitem(PARTS, "loop", str(tmp_path / "loop"))
    for part in [p for p in PARTS if p != "loop"]:
        monkeypatch.delitem(PARTS, part)
    assert cycles(module_graph()) == [["tokenyard.loop.a", "tokenyard.loop.inner.b"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
