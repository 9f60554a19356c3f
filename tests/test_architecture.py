"""One home per concern: no import cycles (lazy imports count), imports run one way.

The import graph is read from the source with ``ast`` (every ``import`` statement, at module level
or inside a function), so a cycle hidden behind a lazy import fails here too.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "jaxnotes"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(_module_name(p) for p in PACKAGE.rglob("*.py"))


def _target(name: str) -> str | None:
    """The jaxnotes module a dotted import name refers to (its file's module), if any."""
    while name.startswith("jaxnotes"):
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict[str, dict[str, bool]]:
    """module -> {imported jaxnotes module: imported at module level?}."""
    graph: dict[str, dict[str, bool]] = {}
    for path in PACKAGE.rglob("*.py"):
        me = _module_name(path)
        package = me if path.name == "__init__.py" else me.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        top_level = {id(node) for node in tree.body}
        edges: dict[str, bool] = {}
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                    base = f"{base}.{node.module}" if node.module else base
                # `from pkg import name`: the file pkg/name.py if there is one, else pkg itself.
                names = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                    for alias in node.names
                ]
            for name in names:
                target = _target(name)
                if target and target != me:
                    edges[target] = edges.get(target, False) or id(node) in top_level
        graph[me] = edges
    return graph


def find_cycle(graph: dict[str, dict[str, bool]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_anywhere_lazy_imports_included():
    graph = import_graph()
    assert len(graph) >= 20 and "jaxnotes.training" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    # The checker itself, on a graph with a lazy back edge (what parallel <-> training was).
    graph = {"a": {"b": True}, "b": {"c": True}, "c": {"a": False}, "d": {"a": True}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": True}, "b": {}}) is None


@pytest.mark.parametrize(
    "module, forbidden, lazily_too",
    [
        ("jaxnotes.parallel", "jaxnotes.training", True),  # placements know nothing of training
        ("jaxnotes.training", "jaxnotes.models", False),  # the zoo is looked up at the edge
        ("jaxnotes.training", "jaxnotes.selection", True),
        ("jaxnotes.modules", "jaxnotes.training", True),
        ("jaxnotes.losses", "jaxnotes.models", True),
        ("jaxnotes.checkpoints", "jaxnotes.training", True),
    ],
)
def test_imports_run_one_way(module, forbidden, lazily_too):
    edges = import_graph()[module]
    hits = {t: top for t, top in edges.items() if t == forbidden or t.startswith(forbidden + ".")}
    if not lazily_too:
        hits = {t: top for t, top in hits.items() if top}
    assert not hits, f"{module} imports {sorted(hits)}"


def test_every_module_imports_alone():
    # One fresh interpreter; before each module, every jaxnotes module is dropped, so each is
    # imported with nothing of the package preloaded (a hidden order dependence fails here).
    script = (
        "import importlib, sys\n"
        f"for name in {MODULES!r}:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] == 'jaxnotes']:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
        "print('ok', len(sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-3000:]


# Sizes a reader can hold in mind: a module read in one sitting, a function on one screen.
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 600, 60
SOURCES = sorted([*PACKAGE.rglob("*.py"), *(PACKAGE.parent / "train").rglob("*.py")])


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node.name, node.end_lineno - node.lineno + 1


def test_modules_and_functions_stay_small():
    long_modules = {
        str(p.relative_to(PACKAGE.parent)): n
        for p in SOURCES
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    long_functions = {
        f"{p.relative_to(PACKAGE.parent)}:{name}": n
        for p in SOURCES
        for name, n in _functions(p)
        if n > MAX_FUNCTION_LINES
    }
    assert not long_modules, long_modules
    assert not long_functions, long_functions


def test_no_module_uses_another_modules_private_names():
    # `module._name` reaches past a module's interface; each concern exports what others need.
    own = {_module_name(p).rpartition(".")[2] for p in PACKAGE.rglob("*.py")}
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name)
                and node.value.id in own
                and node.value.id != path.stem
            ):
                found.append(
                    f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.value.id}.{node.attr}"
                )
    assert not found, found
