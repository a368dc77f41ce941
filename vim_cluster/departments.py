"""Department paths ("Engineering/Backend") resolved against the directory's department tree.

Rules:
- A path is names separated by "/"; each name is stripped and must be 1-64 characters.
- `ensure_path` finds each name under its parent (names compare exactly) and creates the
  missing tail, root first, so every department of the path exists when it returns.
- `path_of` is the way back: a department's path from the root, as `ensure_path` takes it.
- Two operators creating the same new department at the same moment may create it twice
  (the tree has no unique (parent, name) rule, as in V-IM's `dept` table); nodes show both.
"""

from __future__ import annotations

from collections.abc import Callable

from .errors import ClientError, ErrorKind
from .model import Department
from .ports import Directory

MAX_NAME = 64


def parse_path(path: str) -> list[str]:
    """The names of a department path; raises ClientError(invalid) for an empty or long name."""
    names = [part.strip() for part in path.split("/")]
    if not names or any(not n or len(n) > MAX_NAME for n in names):
        raise ClientError(ErrorKind.INVALID,
                          f"department path {path!r}: names separated by '/', each 1-{MAX_NAME} characters")
    return names


def find_path(departments: list[Department], names: list[str]) -> tuple[int | None, list[str]]:
    """The deepest existing department along `names` and the names still missing below it."""
    parent: int | None = None
    for depth, name in enumerate(names):
        match = next((d for d in departments if d.parent_id == parent and d.name == name), None)
        if match is None:
            return parent, names[depth:]
        parent = match.id
    return parent, []


def ensure_path(directory: Directory, path: str, next_id: Callable[[], int]) -> int:
    """The id of the department at `path`, creating the missing ones (durable on return)."""
    parent, missing = find_path(directory.departments(), parse_path(path))
    for name in missing:
        department = Department(next_id(), name, parent)
        directory.create_department(department)
        parent = department.id
    assert parent is not None  # a path has at least one name
    return parent


def path_of(departments: list[Department], department_id: int) -> str:
    """The path of a department ("Engineering/Backend"); an id the tree lacks (or a loop in
    it) ends the path with the id in brackets."""
    by_id = {d.id: d for d in departments}
    names: list[str] = []
    current: int | None = department_id
    while current is not None:
        department = by_id.get(current)
        if department is None or len(names) > len(by_id):
            names.append(f"[{current}]")
            break
        names.append(department.name)
        current = department.parent_id
    return "/".join(reversed(names))
