"""`vim-cluster user ...`: add, list, passwd (the CLI's user actions; cli.py registers them).

Passwords: prompted twice without echo on a terminal (getpass), else the first line of
stdin, or the first line of --password-file. They are never arguments (visible in `ps`).
Exit codes: 0 done; 1 refused (a taken username, a too-short password, prompts that differ);
2 usage, config error or unknown user; 3 a store could not be reached.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from typing import Any

from .cli_config import add_command, load_or_exit, shown
from .errors import ClientError, ErrorKind, StoreUnavailable

EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


class PasswordError(Exception):
    """The password could not be read (file missing, prompts differ)."""


def read_password(password_file: str | None, prompt: str = "Password: ") -> str:
    if password_file:
        try:
            with open(password_file, encoding="utf-8") as source:
                return source.readline().rstrip("\r\n")
        except OSError as exc:
            raise PasswordError(f"cannot read --password-file {password_file}: {exc.strerror or exc}") from None
    if sys.stdin.isatty():
        first = getpass.getpass(prompt)
        if getpass.getpass("Again: ") != first:
            raise PasswordError("the two passwords differ; nothing changed")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def _answer(action: Callable[[], Any]) -> tuple[int, Any]:
    """Runs `action`; (0, result) or (exit code, None) with the one-line error printed."""
    try:
        return 0, action()
    except PasswordError as exc:
        print(f"vim-cluster user: {exc}", file=sys.stderr)
        return EXIT_REFUSED, None
    except ClientError as exc:
        print(f"vim-cluster user: {exc.detail}", file=sys.stderr)
        return (EXIT_USAGE if exc.kind is ErrorKind.NOT_FOUND else EXIT_REFUSED), None
    except StoreUnavailable as exc:
        print(f"vim-cluster user: a store is unreachable: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE, None


def cmd_user_add(args: argparse.Namespace) -> int:
    from .admin import add_user

    config = load_or_exit(args.config)
    code, user_id = _answer(lambda: add_user(config, args.username, read_password(args.password_file), args.name,
                                                 dept=args.dept))
    if code == 0:
        print(user_id)
    return code


def cmd_user_list(args: argparse.Namespace) -> int:
    from .admin import list_users

    config = load_or_exit(args.config, stores_exist=("directory",))
    code, users = _answer(lambda: list_users(config))
    if code == 0:
        rows = [("ID", "USERNAME", "NAME", "DEPARTMENT")] + [
            (str(u.id), shown(u.username), shown(u.name), shown(path)) for u, path in users]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for row in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return code


def cmd_user_passwd(args: argparse.Namespace) -> int:
    from .admin import set_password

    config = load_or_exit(args.config, stores_exist=("directory",))
    code, user_id = _answer(lambda: set_password(config, args.username, read_password(
        args.password_file, f"New password for {args.username}: ")))
    if code == 0:
        print(f"password of {args.username} (user {user_id}) changed; open sessions stay logged in")
    return code


def add_password_file_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--password-file", metavar="FILE",
                        help="read the password from the first line of FILE (else: prompt, or stdin)")


def register_user_actions(user_commands: Any, config_option: Callable[[argparse.ArgumentParser], None]) -> None:
    """Adds `user list` and `user passwd` to the `user` subcommand."""
    listing = add_command(user_commands, "list", cmd_user_list, help="list every user",
                          description="Every user of CONFIG's directory: id, username, name, department. "
                          "Exit 0; 2 config error (or a SQLite directory file that does not exist); 3 a store "
                          "unreachable.")
    config_option(listing)

    passwd = add_command(
        user_commands, "passwd", cmd_user_passwd, help="set a user's password",
        description="Set USERNAME's password: prompted twice without echo on a terminal, else "
        "read from the first line of stdin, or of --password-file. Open sessions stay logged in and tokens "
        "already issued stay valid until they expire (7 days): `vim-cluster kick USERNAME` closes the "
        "sessions, only rotating the cluster secret ends the tokens (docs/security.md). Exit 0; 1 a "
        "password under 8 characters or prompts that differ; 2 no such user or config error; 3 a store "
        "unreachable.")
    passwd.add_argument("username", help="username (as given to `user add`)")
    add_password_file_option(passwd)
    config_option(passwd)
