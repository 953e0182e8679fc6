"""The import graph of `ltkd_jax` has no cycle, counting deferred imports too.

`import_graph` reads the source with `ast` (nothing is imported), so an import inside a
function counts as much as one at the top of the module: a cycle hidden in a function body
is still a cycle, it only fails later.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _package_root(package_dir: pathlib.Path) -> tuple[pathlib.Path, str]:
    """(the directory above the top package, the dotted name of `package_dir`)."""
    package_dir = package_dir.resolve()
    if not (package_dir / "__init__.py").exists():
        raise ValueError(f"{package_dir} is not a package (no __init__.py)")
    parts, top = [], package_dir
    while (top / "__init__.py").exists():
        parts.append(top.name)
        top = top.parent
    return top, ".".join(reversed(parts))


def _module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str, root: pathlib.Path) -> bool:
    """Whether dotted `name` is a module or package on disk under `root`."""
    path = root.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imported(node: ast.AST, module: str, is_package: bool, root: pathlib.Path) -> set[str]:
    """The modules one import statement loads (`from p import x` -> `p.x` when x is a module)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    if not isinstance(node, ast.ImportFrom):
        return set()
    if node.level:  # Relative: resolve against this module's package.
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    out = set()
    for alias in node.names:
        sub = f"{source}.{alias.name}"
        out.add(sub if alias.name != "*" and _is_module(sub, root) else source)
    return out


def import_graph(package_dir: str | pathlib.Path) -> dict[str, set[str]]:
    """Module -> the first-party modules it imports, for every module under `package_dir`.

    Every import statement counts, wherever it is (top level, function body, `if
    TYPE_CHECKING`). Targets are limited to the top-level package of `package_dir` (e.g.
    `ltkd_jax`); a package's `__init__` is its own node (`ltkd_jax.data`), reached by
    `from ltkd_jax.data import name` when `name` is not a submodule. Importing a submodule
    is not counted as importing its parent package.
    """
    root, name = _package_root(pathlib.Path(package_dir))
    top = name.split(".")[0]
    graph: dict[str, set[str]] = {}
    for path in sorted(pathlib.Path(package_dir).resolve().rglob("*.py")):
        module = _module_name(path, root)
        tree = ast.parse(path.read_text(), filename=str(path))
        targets: set[str] = set()
        for node in ast.walk(tree):
            targets |= _imported(node, module, path.name == "__init__.py", root)
        graph[module] = {
            t for t in targets if (t == top or t.startswith(top + ".")) and t != module
        }
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [m0, m1, ..., m0], or None when the graph is acyclic."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph(REPO / "ltkd_jax")
    assert "ltkd_jax.data.records" in graph and "ltkd_jax.methods.bkd" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _reaches(graph: dict, start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _modules_under(graph: dict, package: str) -> list[str]:
    return [m for m in graph if m == package or m.startswith(package + ".")]


def _in(names: set[str], *packages: str) -> set[str]:
    return {n for n in names if any(n == p or n.startswith(p + ".") for p in packages)}


def test_the_layers_import_only_downwards():
    """methods (and models, data) know nothing of training, runs or deploy; training knows
    nothing of runs (their directories, summaries, the job) or deploy."""
    graph = import_graph(REPO / "ltkd_jax")
    assert _modules_under(graph, "ltkd_jax.training") and _modules_under(graph, "ltkd_jax.deploy")
    for lower in ("ltkd_jax.methods", "ltkd_jax.models", "ltkd_jax.data"):
        for module in _modules_under(graph, lower):
            above = _in(
                _reaches(graph, module), "ltkd_jax.training", "ltkd_jax.runs", "ltkd_jax.deploy"
            )
            assert not above, (module, sorted(above))
    for module in _modules_under(graph, "ltkd_jax.training"):
        above = _in(_reaches(graph, module), "ltkd_jax.deploy", "ltkd_jax.runs")
        assert not above, (module, sorted(above))


def test_import_graph_sees_deferred_and_package_imports(tmp_path):
    pkg = tmp_path / "top" / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / "top" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from top.sub.a import f\nCONST = 1\n")
    (pkg / "a.py").write_text("import numpy\n\ndef f():\n    from top.sub import b\n")
    (pkg / "b.py").write_text("from . import c\nfrom .c import g\n")
    (pkg / "c.py").write_text("def g():\n    from top.sub import CONST\n")
    graph = import_graph(pkg)
    assert graph == {
        "top.sub": {"top.sub.a"},
        "top.sub.a": {"top.sub.b"},  # deferred; numpy is not first-party
        "top.sub.b": {"top.sub.c"},  # relative imports resolved
        "top.sub.c": {"top.sub"},  # a name from the package's __init__
    }
    assert find_cycle(graph) == ["top.sub", "top.sub.a", "top.sub.b", "top.sub.c", "top.sub"]
    graph["top.sub.c"] = set()
    assert find_cycle(graph) is None


def test_not_a_package(tmp_path):
    with pytest.raises(ValueError, match="not a package"):
        import_graph(tmp_path)
