"""The shape of the code: modules, packages, the longest functions, public signatures with hidden
``**options``, and import circles between featvis's modules. Static (it reads the source), so it
costs a second and runs anywhere.

    python benchmarks/house.py              # a JSON line, then a short table
    python benchmarks/house.py --top 10     # the 10 longest functions
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
from pathlib import Path

SOURCE = Path(__file__).resolve().parent.parent / "src" / "featvis"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def functions(tree: ast.AST, prefix: str):
    """(qualified name, lines) of every function and method."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    yield f"{prefix}.{node.name}.{item.name}", item.end_lineno - item.lineno + 1
    for node in getattr(tree, "body", []):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield f"{prefix}.{node.name}", node.end_lineno - node.lineno + 1


def imports_of(tree: ast.AST, name: str, is_package: bool) -> set[str]:
    """The featvis modules `name` imports (relative imports resolved), at any depth of the file."""
    found = set()
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                root = ".".join(base + ([node.module] if node.module else []))
            else:
                root = node.module or ""
            if root.startswith("featvis"):
                found.add(root)
                found.update(f"{root}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("featvis"))
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def hidden_options() -> list[str]:
    """Public callables of `featvis` and its public modules whose signature has ``**kwargs``."""
    import featvis

    seen, hidden = set(), []
    spaces = [featvis] + [getattr(featvis, m) for m in dir(featvis) if inspect.ismodule(getattr(featvis, m))]
    for space in spaces:
        for attr in getattr(space, "__all__", None) or [n for n in dir(space) if not n.startswith("_")]:
            obj = getattr(space, attr, None)
            if (
                not callable(obj)
                or not getattr(obj, "__module__", "").startswith("featvis")
                or id(obj) in seen
            ):
                continue
            seen.add(id(obj))
            try:
                params = inspect.signature(obj).parameters.values()
            except (TypeError, ValueError):
                continue
            if any(p.kind is p.VAR_KEYWORD for p in params):
                hidden.append(f"{obj.__module__}.{obj.__qualname__}")
    return sorted(hidden)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args()
    files = sorted(SOURCE.rglob("*.py"))
    graph, lengths, lines = {}, [], 0
    for path in files:
        text = path.read_text()
        lines += text.count("\n")
        tree = ast.parse(text)
        name = module_name(path)
        lengths.extend(functions(tree, name))
        graph[name] = imports_of(tree, name, path.name == "__init__.py")
    modules = set(graph)
    graph = {m: {d for d in deps if d in modules and d != m} for m, deps in graph.items()}
    packages = sorted(module_name(p) for p in files if p.name == "__init__.py")
    lengths.sort(key=lambda item: -item[1])
    report = {
        "modules": len(files),
        "packages": packages,
        "lines": lines,
        "longest_functions": lengths[: args.top],
        "hidden_options": hidden_options(),
        "import_circles": circles(
            {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
        ),
    }
    print(json.dumps(report))
    print(f"\n{report['modules']} modules in {len(packages)} packages, {lines} lines")
    print("longest functions: " + ", ".join(f"{name} ({n})" for name, n in report["longest_functions"]))
    print(
        f"{len(report['hidden_options'])} public signatures with **options: "
        + ", ".join(report["hidden_options"])
    )
    print(f"{len(report['import_circles'])} import circles: {report['import_circles']}")


if __name__ == "__main__":
    main()
