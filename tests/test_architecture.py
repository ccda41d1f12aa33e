"""The import rules of ARCHITECTURE.md, enforced: every module's imports (module level and inside functions,
relative ones resolved) are read with ``ast``; a forbidden direction or a cycle between modules fails.
The checker is tested on temporary module trees with deliberately bad imports, so it can fail."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("simulator", "calibration", "rl", "cluster")

# who may import whom (the most specific prefix of the importing module applies); ARCHITECTURE.md
ALLOWED: dict[str, tuple[str, ...]] = {
    "simulator": ("simulator",),
    "calibration": ("simulator", "calibration"),
    "rl": ("simulator", "rl"),
    "cluster.stack": ("simulator", "cluster.stack"),
    "cluster": ("simulator", "calibration", "rl", "cluster"),
}


def module_names(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` file of ``packages`` under ``root``."""
    out = {}
    for pkg in packages:
        for p in sorted((root / pkg).rglob("*.py")):
            parts = p.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = p
    return out


def _targets(node: ast.AST, module: str, is_pkg: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    if node.level:
        base = base[:len(base) - node.level + 1]
        stem = ".".join(base + ([node.module] if node.module else []))
    else:
        stem = node.module or ""
    return [f"{stem}.{a.name}" for a in node.names] + [stem]


def import_graph(root: Path, packages=PACKAGES) -> dict[str, set[str]]:
    """``{module: {project modules it imports}}``; ``from pkg import name`` counts as importing ``pkg.name``
    when that is a module, else ``pkg``."""
    mods = module_names(root, packages)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            found = [t for t in _targets(node, m, path.name == "__init__.py") if t in mods]
            if isinstance(node, ast.ImportFrom) and len(found) > 1:
                found = found[:-1]                     # the submodules named, not their package as well
            for t in found:
                if t != m and not m.startswith(t + "."):   # a module's own package is loaded anyway
                    graph[m].add(t)
    return graph


def _rule(module: str, allowed: dict[str, tuple[str, ...]]) -> tuple[str, ...] | None:
    best = None
    for prefix in allowed:
        if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best)):
            best = prefix
    return None if best is None else allowed[best]


def forbidden_imports(graph: dict[str, set[str]], allowed=ALLOWED) -> list[str]:
    """``"a -> b"`` for every import that the rules do not allow."""
    bad = []
    for m, targets in sorted(graph.items()):
        ok = _rule(m, allowed)
        for t in sorted(targets):
            if ok is not None and not any(t == p or t.startswith(p + ".") for p in ok):
                bad.append(f"{m} -> {t}")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


# --------------------------------------------------------------------------- the project


def test_the_project_keeps_its_import_rules():
    graph = import_graph(ROOT)
    assert len(graph) > 50 and "cluster.stack.procs" in graph and "simulator.engine" in graph
    assert forbidden_imports(graph) == []


def test_no_import_cycles_between_modules():
    assert cycles(import_graph(ROOT)) == []


def test_stack_and_experiments_are_apart():
    graph = import_graph(ROOT)
    stack = [m for m in graph if m.startswith("cluster.stack")]
    assert {"cluster.stack.procs", "cluster.stack.errors", "cluster.stack.triton", "cluster.stack.loadgen"} <= set(stack)
    # the experiments stay CLIs at cluster/<experiment>
    for cli in ("cluster.measure", "cluster.validate", "cluster.pipeline", "cluster.setup"):
        assert cli in graph
    assert "cluster.stack.errors" in graph["cluster.stack.procs"]


# --------------------------------------------------------------------------- the checker can fail


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir(exist_ok=True)
        (tmp_path / pkg / "__init__.py").touch()
    return tmp_path


def test_checker_flags_a_forbidden_direction(tmp_path):
    root = _tree(tmp_path, {
        "simulator/engine.py": "import math\n",
        "simulator/bad.py": "def f():\n    from rl.common import x  # inside a function still counts\n",
        "rl/common.py": "from simulator import engine\nx = 1\n",
        "cluster/stack/__init__.py": "",
        "cluster/stack/procs.py": "from ..measure import run  # the stack reaching into an experiment\n",
        "cluster/measure.py": "from .stack import procs\nfrom rl.common import x\nrun = 1\n",
    })
    graph = import_graph(root)
    assert graph["cluster.stack.procs"] == {"cluster.measure"}         # relative import resolved
    assert graph["cluster.measure"] == {"cluster.stack.procs", "rl.common"}
    assert forbidden_imports(graph) == ["cluster.stack.procs -> cluster.measure", "simulator.bad -> rl.common"]


def test_checker_flags_a_cycle(tmp_path):
    root = _tree(tmp_path, {
        "simulator/config.py": "from simulator.policy import REGISTRY\n",
        "simulator/policy.py": "REGISTRY = {}\ndef f():\n    from simulator import config\n",
        "simulator/engine.py": "from simulator import policy\n",
    })
    graph = import_graph(root)
    assert forbidden_imports(graph) == []
    assert cycles(graph) == [["simulator.config", "simulator.policy"]]


@pytest.mark.parametrize("module,target,ok", [
    ("cluster.stack.lb", "calibration.compare", False),
    ("cluster.stack.lb", "simulator.config", True),
    ("cluster.validate.run", "calibration.compare", True),
    ("calibration.fit", "rl.common", False),
    ("rl.env", "cluster.stack.procs", False),
])
def test_rule_table(module, target, ok):
    assert (forbidden_imports({module: {target}}) == []) is ok


def test_every_module_folder_is_an_installed_package():
    # a folder without __init__.py imports from a checkout but is left out of an install (find_packages)
    from setuptools import find_packages
    found = set(find_packages(str(ROOT), include=[f"{p}*" for p in PACKAGES]))
    folders = {".".join(p.parent.relative_to(ROOT).parts) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    assert folders <= found, sorted(folders - found)
