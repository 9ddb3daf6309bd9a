"""The package's layout: dependencies point one way and nothing imports upwards or in a circle.

Layers, from the command line down: ``jaxfl.cli`` -> ``jaxfl.experiments`` -> ``jaxfl.algorithms``
-> ``jaxfl.mechanisms`` -> ``jaxfl.configs`` (every setting, no JAX), ``jaxfl.core``,
``jaxfl.data``, ``jaxfl.models``. Every ``import`` in
the library (function-local ones included: a local import hides a dependency, it does not remove
it) must go to the same layer or one below, and the module graph must have no cycle.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jaxfl"
LAYERS = {"cli": 4, "experiments": 3, "algorithms": 2, "mechanisms": 1}  # configs, core, ...: 0
# Upward edges still there, each with the reason; the list may only shrink (it is empty: the
# checks the builder and the sweep runner ran from the command line are
# jaxfl.experiments.validation's since the settings moved to jaxfl.configs).
KNOWN_UPWARD: set[tuple[str, str]] = set()


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The jaxfl modules ``path`` imports (a ``from pkg import sub`` names the submodule)."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "jaxfl"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            if base.split(".")[0] != "jaxfl":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in known else base)
    return {m for m in out if m != name}


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], 0) if len(parts) > 1 else 0


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(path, name, set(found)) for name, path in found.items()}


def test_imports_only_go_down_the_layers():
    upward = {
        (a, b)
        for a, targets in graph().items()
        for b in targets
        if a != "jaxfl" and b != "jaxfl" and layer(b) > layer(a)
    }
    assert upward <= KNOWN_UPWARD, sorted(upward - KNOWN_UPWARD)
    assert not KNOWN_UPWARD - upward, "an upward edge is gone: take it off KNOWN_UPWARD"


def test_the_module_graph_has_no_cycle():
    edges = graph()
    # a package's __init__ importing its own submodules is not a cycle of design
    for name in edges:
        edges[name] = {t for t in edges[name] if not name.startswith(t + ".") or t == "jaxfl"}
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, cycles


def test_the_library_imports_nothing_outside_it():
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            for n in names:
                top = n.split(".")[0]
                assert top not in {
                    "reproductions",
                    "benchmarks",
                    "scripts",
                    "tests",
                    "algorithms",
                }, (
                    path,
                    n,
                )


def test_only_jaxfl_is_installed():
    """pyproject's package list installs jaxfl and its subpackages, no generic top-level name."""
    import tomllib
    from setuptools import find_packages

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = find_packages(str(ROOT), include=include)
    assert packages and {p.split(".")[0] for p in packages} == {"jaxfl"}
    assert {"jaxfl.core", "jaxfl.mechanisms", "jaxfl.algorithms", "jaxfl.experiments"} <= set(
        packages
    )
