"""The import graph of the emcore package has no cycle (issue 14, item 5).

Every ``import emcore.x`` / ``from emcore.x import y`` / ``from emcore import x``
in every module of the package, at module level or inside a function, is an
edge; a cycle means two modules each need the other, so neither can be read,
tested or replaced on its own. Imports inside ``if TYPE_CHECKING:`` blocks are
edges too: a type annotation is a dependency of the reader.
"""

import ast
import importlib.util
from pathlib import Path

import emcore

PACKAGE = Path(emcore.__file__).resolve().parent


def _roots() -> dict:
    """{package name: folder}: emcore, and emcore.plugins where it lives apart
    (the source tree's plugins/ in an editable install; inside emcore/ in a wheel)."""
    roots = {"emcore": PACKAGE}
    spec = importlib.util.find_spec("emcore.plugins")
    if spec is not None and spec.submodule_search_locations:
        folder = Path(list(spec.submodule_search_locations)[0]).resolve()
        if PACKAGE not in folder.parents:
            roots["emcore.plugins"] = folder
    return roots


def _module_name(package: str, root: Path, path: Path) -> str:
    parts = [package] + list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict:
    """{module name: path} of every Python module of the package and its plugins, and
    of every compiled (Cython) module: ``from emcore.kernel import FamilyKernel`` is
    an edge to emcore.kernel, not to the package emcore. A compiled module's own
    imports are not read (it is not Python source; the kernels import numpy,
    emcore.kernel and their .pxd declarations only)."""
    return {_module_name(package, root, p): p for package, root in _roots().items()
            for pattern in ("*.pyx", "*.py") for p in sorted(root.rglob(pattern))}


def _resolve(name: str, modules: dict):
    """The module of the package that ``name`` (a module or a name in one) is,
    or None if it is outside the package."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict:
    """{module: set of package modules it imports}, from the source with ``ast``."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        if path.suffix == ".pyx":
            graph[name] = edges
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                # "from emcore import x": x may be a module or a name in __init__
                targets = [f"{module}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                found = _resolve(target, modules)
                if found is not None and found != name:
                    edges.add(found)
        graph[name] = edges
    return graph


def find_cycle(graph: dict):
    """One cycle of ``graph`` as a list of modules (first == last), or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    stack = []

    def visit(node):
        colour[node] = GREY
        stack.append(node)
        for nxt in sorted(graph[node]):
            if colour[nxt] == GREY:
                return stack[stack.index(nxt):] + [nxt]
            if colour[nxt] == WHITE:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        colour[node] = BLACK
        return None

    for node in sorted(graph):
        if colour[node] == WHITE:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_graph_finds_known_edges():
    graph = import_graph()
    assert "emcore.plugins.gaussian" in graph        # the first-party plugins too
    assert "emcore.engine" in graph["emcore._mixture"]
    assert "emcore.plugin_api" in graph["emcore.engine"]
    # a function-level import counts (GaussianMixture.partial_fit imports _online)
    assert "emcore._online" in graph["emcore.gaussian_mixture"]


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_emcore_imports_form_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_model_selection_uses_the_estimators_public_methods():
    # select_model and icl work on what any user of a fitted estimator has; the one
    # exception is the estimator's parameter check before any cell is fitted
    # (scikit-learn's convention leaves it to fit, with no public check)
    tree = ast.parse((PACKAGE / "model_selection.py").read_text())
    private = {node.attr for node in ast.walk(tree)
               if isinstance(node, ast.Attribute) and node.attr.startswith("_")
               and not node.attr.startswith("__")}
    assert private == {"_check_parameters"}
