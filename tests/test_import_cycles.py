"""The package has no import cycle: every ``import`` of one ``invaspread`` module by another, at module level or
inside a function (a deferred import still ties the two modules together), read with ``ast``; the strongly
connected components of that graph must all be single modules."""

import ast
from pathlib import Path

import invaspread

PACKAGE = Path(invaspread.__file__).parent


def module_name(path: Path) -> str:
    parts = ("invaspread",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict:
    """module -> the set of package modules it imports (``from .x import y`` counts x, and x.y when y is a module)."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            graph[name] |= {c for c in candidates if c in files and c != name}
    return graph


def strongly_connected_components(graph: dict) -> list:
    """Tarjan's algorithm, iterative (no recursion limit to meet)."""
    index, low, on_stack, stack, components, counter = {}, {}, set(), [], [], 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    components.append(component)
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return components


def test_the_scanner_finds_a_cycle_it_is_shown():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert sorted(sorted(c) for c in strongly_connected_components(graph) if len(c) > 1) == [["a", "b", "c"]]


def test_the_graph_sees_relative_and_deferred_imports():
    graph = import_graph()
    assert "invaspread.errors" in graph["invaspread.checks"]                 # from .errors import ConfigError
    assert "invaspread.engine.precision" in graph["invaspread.engine.checkpoint"]   # inside a function


def test_the_package_has_no_import_cycle():
    cycles = [sorted(c) for c in strongly_connected_components(import_graph()) if len(c) > 1]
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


MAX_FUNCTION_LINES = 60


def test_no_function_of_the_package_is_longer_than_60_lines():
    """Long functions are where settings get tangled (the guide's limit; a long command-line parser is split by
    command, a long validation by section)."""
    long = [f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in sorted(PACKAGE.rglob("*.py")) for node in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, long
