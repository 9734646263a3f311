"""The layers of the code (docs/architecture.md), read from the source with ``ast``:

- ``core`` (config, session, tables, categories, run date) imports neither ``jobs`` nor ``udfs``;
- ``udfs`` (what runs in the executors) imports nothing from ``jobs`` (the driver side);
- no import cycle exists between the project's modules;
- every import of a project module sits at the top of its module (a function-level one
  only ever hid a cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("core", "jobs", "udfs", "prompts")


def _modules(root: Path = REPO) -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _targets(node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> list[str]:
    """The project modules an import statement loads (``from a import b`` is module
    ``a.b`` when that is a module, else ``a``)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif node.level == 0 and node.module:
        names = [f"{node.module}.{a.name}" for a in node.names]
    else:
        return []
    out = []
    for name in names:
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in modules:
            out.append(name)
    return out


def import_graph(root: Path = REPO) -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    """(module -> the project modules it imports, [(module, line, target)] of the imports
    made inside a function)."""
    modules = _modules(root)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    nested = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        in_function = {
            id(n)
            for f in ast.walk(tree)
            if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
            for n in ast.walk(f)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in _targets(node, modules):
                    if target != name:
                        graph[name].add(target)
                        if id(node) in in_function:
                            nested.append((name, node.lineno, target))
    return graph, nested


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _layer(module: str) -> str:
    return module.split(".")[0]


def test_core_imports_neither_jobs_nor_udfs():
    graph, _ = import_graph()
    bad = [
        (m, t) for m, ts in graph.items() for t in ts if _layer(m) == "core" and _layer(t) in ("jobs", "udfs")
    ]
    assert bad == []


def test_udfs_import_nothing_from_jobs():
    graph, _ = import_graph()
    bad = [(m, t) for m, ts in graph.items() for t in ts if _layer(m) == "udfs" and _layer(t) == "jobs"]
    assert bad == []


def test_no_import_cycle():
    graph, _ = import_graph()
    assert cycles(graph) == []


def test_project_modules_are_imported_at_the_top_of_a_module():
    _, nested = import_graph()
    assert nested == []


def test_the_checks_find_what_they_look_for(tmp_path):
    """The same checks on a small tree that breaks each rule."""
    files = {
        "core/__init__.py": "",
        "core/config.py": "from jobs import stage\n",  # core -> jobs
        "jobs/__init__.py": "",
        "jobs/stage.py": "from jobs.other import x\n",
        "jobs/other.py": "import jobs.stage\nx = 1\n",  # a cycle with jobs.stage
        "udfs/__init__.py": "",
        "udfs/work.py": "def f():\n    from jobs.stage import y\n",  # udfs -> jobs, inside a function
        "prompts/__init__.py": "",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    graph, nested = import_graph(tmp_path)
    assert graph["core.config"] == {"jobs.stage"}
    assert graph["udfs.work"] == {"jobs.stage"}
    assert cycles(graph) == [["jobs.other", "jobs.stage"]]
    assert nested == [("udfs.work", 2, "jobs.stage")]
