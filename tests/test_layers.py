"""The package's layers hold: no module imports a layer above its own, no two modules
import each other (directly or round a loop), and a tool pack stays out of the others.

Every import counts, also one inside a function or under ``TYPE_CHECKING``: a lazy
import is still a dependency a reader has to follow. docs/architecture.md draws the
layers this test enforces.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "engine" / "wsrun"

#: Which layers each layer may import (its own included).
ALLOWED = {
    "core": {"core"},
    "formats": {"core", "formats"},
    "stores": {"core", "formats", "stores"},
    "steps": {"core", "formats", "stores", "steps"},
    "packs": {"core", "formats", "stores", "steps", "packs"},
    "worker": {"core", "formats", "stores", "worker"},
    "web": {"core", "formats", "stores", "worker", "web"},
    "cli": {"core", "formats", "stores", "steps", "worker", "web", "cli"},
    "top": {"top", "core", "cli"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else "top"


def imports_of(source: str, me: str, is_package: bool, modules: set[str]) -> set[str]:
    """The wsrun modules that module ``me`` imports, wherever the import statement is."""
    package = me if is_package else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            candidates = [base, *(f"{base}.{a.name}" for a in node.names)]
        else:
            continue
        for name in candidates:
            # the deepest wsrun module the name refers to
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != me and name != "wsrun":
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {
        module_name(p): imports_of(
            p.read_text(encoding="utf-8"), module_name(p), p.name == "__init__.py", modules
        )
        for p in paths
    }


def test_each_layer_imports_only_the_layers_below_it() -> None:
    wrong = []
    for module, deps in graph().items():
        mine = layer(module)
        for dep in sorted(deps):
            theirs = layer(dep)
            if theirs not in ALLOWED[mine]:
                # a pack's console scripts run its recipes through the command line
                if mine == "packs" and module.endswith(".console") and theirs == "cli":
                    continue
                wrong.append(f"{module} ({mine}) imports {dep} ({theirs})")
    assert not wrong, "\n".join(wrong)


def test_a_pack_imports_no_other_pack() -> None:
    wrong = [
        f"{module} imports {dep}"
        for module, deps in graph().items()
        if layer(module) == "packs"
        for dep in deps
        if layer(dep) == "packs" and dep.split(".")[2] != module.split(".")[2]
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    """Tarjan's strongly connected components: any of more than one module is a cycle."""
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_checks_see_what_they_must_catch() -> None:
    """Lazy and relative imports count, so a core module reaching for a store is caught."""
    lazy = "def f():\n    from wsrun.stores.state import open_state_store\n"
    modules = {"wsrun.stores.state", "wsrun.core.x", "wsrun.core.y"}
    assert imports_of(lazy, "wsrun.core.x", False, modules) == {"wsrun.stores.state"}
    assert imports_of("from . import y\n", "wsrun.core.x", False, modules) == {"wsrun.core.y"}
    assert layer("wsrun.stores.state") == "stores" and layer("wsrun.testing") == "top"


@pytest.mark.parametrize("limit", [500])
def test_a_long_module_says_why_it_is_one_piece(limit: int) -> None:
    """Past ~500 lines a module's docstring must say why it is not split
    ("One piece:" in its docstring), so the next engineer knows it was a choice."""
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > limit:
            doc = ast.get_docstring(ast.parse(text)) or ""
            if "One piece:" not in doc:
                long.append(f"{module_name(path)} ({text.count(chr(10))} lines)")
    assert not long, "modules over 500 lines without 'One piece:' in their docstring:\n" + (
        "\n".join(long)
    )
