"""fastcg's Python import graph has no circle and no upward import (docs/design.md's layers).

Read with ``ast`` only (nothing is imported): every ``import`` / ``from ... import`` of a fastcg
module, and ``importlib.import_module("fastcg...")`` with a literal name. Module-level imports
(what runs at import time) must form no circle; no import, module-level or inside a function,
may go to a higher layer. Importing a submodule also runs its parents' ``__init__``; those
implicit imports are not edges (every module would otherwise close a circle through
``fastcg/__init__.py``, which is where the public API is assembled).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "fastcg"

# Lowest first; a module may import its own layer and those below. A prefix names a package and
# everything under it. fastcg/__init__.py (the public API) and the framework integrations are the
# top: they may import anything in fastcg.
LAYERS: list[tuple[str, ...]] = [
    ("fastcg._C", "fastcg.irreps", "fastcg.cg", "fastcg.descriptors", "fastcg.backend",
     "fastcg.testing"),
    ("fastcg.reference",),
    ("fastcg.ops",),
    ("fastcg.triton",),
    ("fastcg.nn",),
    ("fastcg.models",),
    ("fastcg", "fastcg.integrations", "fastcg.convert", "fastcg.calculator", "fastcg.md",
     "fastcg.cli"),
]  # fmt: skip

# (importer, imported): the upward imports that remain, each with its reason.
ALLOWED_UPWARD = {
    # The dispatcher loads the Triton kernels by name on the first CUDA call (a plugin
    # registration into torch.ops.fastcg_triton); fastcg.triton imports nothing of ops/backend.
    ("fastcg.backend", "fastcg.triton"),
    # SO3Net.from_schnetpack, a convenience constructor, delegates (lazily) to the integration;
    # fastcg.convert and fastcg.integrations.schnetpack.from_schnetpack need no upward import.
    ("fastcg.models.so3net", "fastcg.integrations.schnetpack"),
}
# Packages whose module-level circles remain: a circle is allowed when all of its modules are the
# package or under it. None today (the models' shared helpers live in fastcg/models/base.py).
ALLOWED_CIRCLE_PACKAGES: tuple[str, ...] = ()


def allowed_circle(modules: set[str], packages: tuple[str, ...] = ALLOWED_CIRCLE_PACKAGES) -> bool:
    """Whether a circle lies within one package of ``packages``."""
    return any(all(m == p or m.startswith(p + ".") for m in modules) for p in packages)


def module_names() -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (path, is a package) of every module under fastcg/."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    out["fastcg._C"] = (PACKAGE, False)  # the compiled extension
    return out


def _target(name: str, modules: dict) -> str | None:
    """The fastcg module ``name`` runs: itself, or its longest prefix that is a module."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name if name.startswith("fastcg") else None


def _targets(node: ast.AST, importer: str, is_pkg: bool, modules: dict) -> set[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parts = importer.split(".") if is_pkg else importer.split(".")[:-1]
            parts = parts[: len(parts) - node.level + 1]
            base = ".".join(parts + ([node.module] if node.module else []))
        # ``from pkg import sub`` runs pkg.sub; ``from pkg import name`` runs pkg
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    else:  # importlib.import_module("fastcg.x")
        names = [node.args[0].value]
    return {t for n in names if n.startswith("fastcg") and (t := _target(n, modules))}


def _is_dynamic_import(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "import_module"
        and len(node.args) == 1
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    )


def import_edges(modules: dict) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module-level, inside-function) fastcg imports of each module; TYPE_CHECKING blocks and
    dynamic imports at module level are skipped / counted as lazy respectively."""
    top: dict[str, set[str]] = {m: set() for m in modules}
    lazy: dict[str, set[str]] = {m: set() for m in modules}

    def visit(node: ast.AST, name: str, is_pkg: bool, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found = _targets(child, name, is_pkg, modules) - {name}
                (lazy if in_function else top)[name] |= found
            elif _is_dynamic_import(child):
                lazy[name] |= _targets(child, name, is_pkg, modules) - {name}
            nested = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, name, is_pkg, in_function or nested)

    for name, (path, is_pkg) in modules.items():
        if name != "fastcg._C":
            visit(ast.parse(path.read_text(), str(path)), name, is_pkg, False)
    return top, lazy


def layer(module: str) -> int:
    """Index of the layer of ``module`` (the longest matching prefix decides)."""
    best, best_len = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    return best


def circles(edges: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return out


@pytest.fixture(scope="module")
def graph():
    modules = module_names()
    return modules, *import_edges(modules)


def test_every_module_has_a_layer(graph):
    modules, _, _ = graph
    missing = sorted(m for m in modules if layer(m) < 0)
    assert not missing, f"place these modules in LAYERS (tests/test_import_graph.py): {missing}"


def test_no_upward_import(graph):
    _, top, lazy = graph
    bad = [
        f"{a} ({LAYERS[layer(a)][0]}) imports {b} ({LAYERS[layer(b)][0]})"
        + (" inside a function" if b not in top[a] else "")
        for a in sorted(top)
        for b in sorted(top[a] | lazy[a])
        if layer(b) > layer(a) and (a, b) not in ALLOWED_UPWARD
    ]
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_import_circle(graph):
    _, top, _ = graph
    found = [sorted(c) for c in circles(top) if not allowed_circle(c)]
    assert not found, f"module-level import circles: {found}"


def test_allow_lists_are_current(graph):
    # an entry that no longer happens must go, so the lists stay the honest remainder
    _, top, lazy = graph
    stale = [e for e in ALLOWED_UPWARD if e[1] not in top[e[0]] | lazy[e[0]]]
    stale += [p for p in ALLOWED_CIRCLE_PACKAGES if not any(
        allowed_circle(c) and any(m.startswith(p) for m in c) for c in circles(top))]  # fmt: skip
    assert not stale, f"allow-list entries that no longer occur: {stale}"


def test_the_checks_can_fail():
    edges = {"fastcg.ops.conv": {"fastcg.reference"}, "fastcg.reference": {"fastcg.ops.conv"}}
    assert circles(edges) == [{"fastcg.ops.conv", "fastcg.reference"}]
    assert not allowed_circle({"fastcg.ops.conv", "fastcg.reference"})
    assert allowed_circle({"fastcg.models", "fastcg.models.mace"}, ("fastcg.models",))
    assert layer("fastcg.reference") < layer("fastcg.ops.conv") < layer("fastcg.integrations.x")
    assert layer("fastcg.models._reference") > layer("fastcg.testing")
    src = "from .ops.symmetric_contraction import to_channels\nimport fastcg.nn as fnn\n"
    modules = {m: (PACKAGE, False) for m in ("fastcg", "fastcg.nn", "fastcg.ops",
                                             "fastcg.ops.symmetric_contraction")}  # fmt: skip
    found = set()
    for node in ast.parse(src).body:
        found |= _targets(node, "fastcg.reference", False, modules)
    assert found == {"fastcg.ops.symmetric_contraction", "fastcg.nn"}
