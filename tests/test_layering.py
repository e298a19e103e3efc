"""The import contract: dependencies point one way, no cycles, no private names across modules.

Layers, lowest first. A module may import its own layer or lower ones, never a higher one;
function-level (lazy) imports count the same as top-level ones.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mobilenets"

LAYERS: list[tuple[str, ...]] = [
    ("mobilenets.errors", "mobilenets.utils", "mobilenets.version", "mobilenets.models.cfg", "mobilenets.data.labels"),
    ("mobilenets.data",),
    ("mobilenets.models", "mobilenets.profile"),
    ("mobilenets.weights",),
    ("mobilenets.builder",),
    ("mobilenets.runtime",),
    ("mobilenets.export", "mobilenets.quantize"),
    ("mobilenets.auto", "mobilenets.bench"),
    ("mobilenets.tasks", "mobilenets.train"),
    ("mobilenets.cli", "mobilenets.serve"),
    ("mobilenets",),  # the package's __init__: the public surface, above everything
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def layer_of(module: str) -> int:
    best, rank = -1, None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank is not None, f"{module} is in no layer: add it to LAYERS"
    return rank


def imports_of(module: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names imported from it, line) for every import statement, lazy ones included."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("mobilenets")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("mobilenets"):
                continue
            names = [a.name for a in node.names]
            # `from . import x` may name a submodule
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            out += [(s, [], node.lineno) for s in subs]
            rest = [n for n in names if f"{target}.{n}" not in MODULES]
            if rest or not subs:
                out.append((target, rest, node.lineno))
    return out


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    here = layer_of(module)
    for target, _, line in imports_of(module):
        assert layer_of(target) <= here, (
            f"{module} (layer {here}) imports {target} (layer {layer_of(target)}) at line {line}"
        )


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_names_across_modules(module):
    for target, names, line in imports_of(module):
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        assert not private, f"{module} imports private {private} from {target} at line {line}"


def test_no_import_cycle():
    graph = {m: {t for t, _, _ in imports_of(m) if t in MODULES and t != m} for m in MODULES}
    # a package's __init__ importing its own submodules is how packages expose them, not a cycle
    for m, targets in graph.items():
        graph[m] = {t for t in targets if not (MODULES[m].name == "__init__.py" and t.startswith(m + "."))}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_quiet_native_only_in_the_cli():
    """It redirects the whole process's stdout/stderr: a server or library call must never do that."""
    users = [m for m in MODULES if m not in ("mobilenets.utils",) and not m.startswith("mobilenets.cli")
             and any("quiet_native" in names for _, names, _ in imports_of(m))]  # fmt: skip
    assert users == []


# Preprocessing constants live in the contract (models/cfg.py) and the catalog (models/registry.py) only.
_LITERALS = ("0.875", "127.5", "0.50196", "1 / 128", "1/128")
_CONTRACT = {"mobilenets.models.cfg", "mobilenets.models.registry"}


@pytest.mark.parametrize("module", sorted(set(MODULES) - _CONTRACT))
def test_no_preprocessing_literal_outside_the_catalog(module):
    tree = ast.parse(MODULES[module].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, float):
            assert node.value not in (0.875, 127.5), f"{module}:{node.lineno}: preprocessing literal {node.value}"
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                "EvalTransform", "PillowEvalTransform") and len(node.args) > 2:  # fmt: skip
            pytest.fail(f"{module}:{node.lineno}: mean/std spelled out; use EvalTransform.from_cfg(cfg)")
