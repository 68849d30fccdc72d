"""The layout ARCHITECTURE.md describes, checked on the tree: packages import only downwards, no
module imports itself round a cycle, no room grows past 400 lines, and every package is named
in ARCHITECTURE.md (a new one gets its line there)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Floors, lowest first: a package may import its own floor's siblings (without a cycle) and
# the floors below it, never one above.
FLOORS = {
    "tasks.core": 0,
    "tasks.registry": 1,
    "tasks.datasets": 1,
    "tasks.modeling": 1,
    "tasks.serving": 1,
    "tasks.ops": 2,
    "flows": 3,
    "cli": 4,
}
MAX_LINES = 400


def package_of(module: str) -> str | None:
    for package in sorted(FLOORS, key=len, reverse=True):
        if module == package or module.startswith(f"{package}."):
            return package
    return None


def modules() -> dict[str, Path]:
    found = {}
    for top in ("tasks", "flows", "cli"):
        for path in (ROOT / top).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """conveyor modules `path` imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n for n in names if n in known}
    return found


def test_packages_import_only_downwards_and_without_cycles() -> None:
    known = modules()
    # A package that imports its own submodules (a table of them) is not a cycle.
    graph = {name: imports(path, known) - {name} for name, path in known.items()}
    upwards = [
        f"{a} imports {b}"
        for a, targets in graph.items()
        for b in targets
        if FLOORS[package_of(b) or ""] > FLOORS[package_of(a) or ""]
    ]
    assert not upwards, upwards
    unplaced = [m for m in known if package_of(m) is None and m not in ("tasks", "flows", "cli")]
    assert not unplaced, f"modules outside the packages of ARCHITECTURE.md: {unplaced}"

    def cycle_from(start: str) -> list[str] | None:
        path: list[str] = []
        done: set[str] = set()

        def visit(node: str) -> list[str] | None:
            if node in path:
                return [*path[path.index(node) :], node]
            if node in done:
                return None
            path.append(node)
            for target in sorted(graph.get(node, ())):
                if (found := visit(target)) is not None:
                    return found
            path.pop()
            done.add(node)
            return None

        return visit(start)

    cycles = [c for m in sorted(graph) if (c := cycle_from(m))]
    assert not cycles, cycles[0]
    # Sibling packages of one floor form no cycle either.
    between: dict[str, set[str]] = {}
    for a, targets in graph.items():
        for b in targets:
            pa, pb = package_of(a), package_of(b)
            if pa and pb and pa != pb:
                between.setdefault(pa, set()).add(pb)

    def reaches(a: str, b: str, seen: frozenset[str] = frozenset()) -> bool:
        nexts = between.get(a, set()) - seen
        return b in nexts or any(reaches(n, b, seen | {n}) for n in nexts)

    assert not [p for p in between if reaches(p, p)], between


def test_no_room_is_over_400_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for path in modules().values()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long


def test_architecture_names_every_package() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    packages = [
        str(p.parent.relative_to(ROOT)) + "/"
        for p in sorted(ROOT.glob("tasks/**/__init__.py"))
        if p.parent != ROOT / "tasks"
    ] + ["flows/", "cli/"]
    missing = [p for p in packages if f"`{p}`" not in text]
    assert not missing, f"ARCHITECTURE.md does not name {missing}"


def test_architecture_names_every_module() -> None:
    """Every module has its line in ARCHITECTURE.md, by file name: a newcomer finds each room
    from the map, a table's entries included (a new family, gate or source adds its name)."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    unnamed = [
        str(path.relative_to(ROOT))
        for path in modules().values()
        if path.name != "__init__.py" and f"`{path.name}`" not in text
    ]
    assert not unnamed, f"ARCHITECTURE.md does not name these modules: {unnamed}"


def test_the_line_does_not_import_infra() -> None:
    """`infra/` starts the production topology around conveyor; conveyor never needs it."""
    found = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            found += [f"{name} imports {t}" for t in targets if t.split(".")[0] == "infra"]
    assert not found, found
