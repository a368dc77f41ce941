"""Print size figures of the vim_cluster package: module count, median module, the longest module
and the longest functions (by source lines, decorators and docstrings included).

    python scripts/code_stats.py [--top N] [PACKAGE_DIR]

Used by issue 14's closing note ("longest function and module before and after"); re-run it after a
merge to see the figures of the merged tree.
"""

from __future__ import annotations

import argparse
import ast
import statistics
from pathlib import Path


def module_lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def functions(path: Path, root: Path) -> list[tuple[int, str]]:
    """(lines, "module.py:Class.function") for every function and method of one module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                length = (child.end_lineno or child.lineno) - first + 1
                name = f"{prefix}{child.name}"
                found.append((length, f"{path.relative_to(root)}:{name}"))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(tree, "")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", nargs="?", default=None, help="package folder (default: vim_cluster)")
    parser.add_argument("--top", type=int, default=3, help="how many of the longest to list (default 3)")
    args = parser.parse_args()
    package = Path(args.package) if args.package else Path(__file__).resolve().parent.parent / "vim_cluster"
    root = package.parent
    paths = sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts)
    sizes = sorted(((module_lines(p), str(p.relative_to(root))) for p in paths), reverse=True)
    funcs = sorted((f for p in paths for f in functions(p, root)), reverse=True)
    print(f"modules: {len(sizes)}, lines: {sum(n for n, _ in sizes)}, "
          f"median module: {statistics.median(n for n, _ in sizes):.0f} lines")
    print("longest modules:")
    for n, name in sizes[: args.top]:
        print(f"  {n:5d}  {name}")
    print(f"functions: {len(funcs)}, median: {statistics.median(n for n, _ in funcs):.0f} lines")
    print("longest functions:")
    for n, name in funcs[: args.top]:
        print(f"  {n:5d}  {name}")


if __name__ == "__main__":
    main()
