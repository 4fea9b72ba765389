"""The house: every name that could be imported before the packages still imports, and imports
run one way, from the rooms above to the rooms below (errors and images under the model machinery,
under activation maximization, under attribution, under the data pass, under the site, under the
command line), with no import circles."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "src" / "featvis"
NAMES = (Path(__file__).with_name("public_names.txt")).read_text().split()

# the rooms, lowest first: a module may import its own room and the rooms below it, never above
ROOMS = [
    "version",
    "errors",
    "registry",
    "rng",
    "image",
    "model",
    "optvis",
    "attribution",
    "data",
    "concepts",
    "site",
    "compat",
    "cli",
]


def room(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return len(ROOMS)  # the package's __init__: the front door, above every room
    return ROOMS.index(parts[1]) if parts[1] in ROOMS else len(ROOMS)


def featvis_imports(path: Path) -> list[tuple[str, int]]:
    """(imported featvis module, line) for every import in the file, at any depth (lazy ones too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import (featvis imports by full path)"
            if node.module and node.module.startswith("featvis"):
                found.append((node.module, node.lineno))
                found.extend((f"{node.module}.{alias.name}", node.lineno) for alias in node.names)
        elif isinstance(node, ast.Import):
            found.extend((a.name, node.lineno) for a in node.names if a.name.startswith("featvis"))
    return found


def module_of(path: Path) -> str:
    parts = list(path.relative_to(SOURCE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_of(p): p for p in sorted(SOURCE.rglob("*.py"))}


@pytest.mark.parametrize("name", NAMES)
def test_every_name_that_imported_before_the_packages_still_imports(name):
    """`featvis.X`, and `featvis.module.X` as the README, the docs and `__all__` used them."""
    module, _, attribute = name.rpartition(".")
    try:
        imported = importlib.import_module(name)  # a module path itself
    except ImportError:
        imported = getattr(importlib.import_module(module), attribute)
    assert imported is not None


def test_old_module_paths_are_the_modules_that_hold_them_now():
    import featvis.losses
    import featvis.optvis.losses

    assert featvis.losses is featvis.optvis.losses
    assert featvis.losses.channel is featvis.optvis.losses.channel


def test_imports_never_run_up_from_a_lower_room():
    upward = []
    for module, path in MODULES.items():
        for imported, line in featvis_imports(path):
            target = next((m for m in (imported, imported.rpartition(".")[0]) if m in MODULES), None)
            if target is None:
                continue
            if room(target) > room(module):
                upward.append(f"{path.relative_to(ROOT)}:{line} ({ROOMS[room(module)]}) imports {target}")
    assert not upward, "imports that run back up:\n" + "\n".join(upward)


def test_no_import_circles():
    graph = {module: set() for module in MODULES}
    for module, path in MODULES.items():
        for imported, _ in featvis_imports(path):
            if imported in MODULES and imported != module and not module.startswith(imported + "."):
                graph[module].add(imported)  # a package's __init__ runs before its modules anyway
    circles, state = [], {}

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                circles.append(trail[trail.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_each_room_imports_alone_in_a_fresh_interpreter():
    """Importing a low room first works (no room relies on featvis/__init__ having run first)."""
    for room_name in ["featvis.model.prepared", "featvis.optvis.losses", "featvis.attribution.metrics"]:
        subprocess.run([sys.executable, "-c", f"import {room_name}"], check=True, cwd=ROOT)
