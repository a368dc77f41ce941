"""What the `vim-cluster` command modules share (cli.py and the modules it loads, cli_users and
cli_lifecycle, so none of them imports cli.py back): how a subcommand is added, and the config
a command runs on."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .config import SECRET_OPEN_BITS, WORLD_OPEN_BITS, NodeConfig, load_config, too_open
from .errors import ConfigError
from .logs import escaped

EXIT_USAGE = 2
DEFAULT_CONFIG = "node-configs/master.yaml"  # every command's config when none is given (cli.py)
NO_CONFIG_HINT = (f"{DEFAULT_CONFIG} is the default config, found only in a checkout: name the node's config "
                  "(--config /etc/vim-cluster/NODE.yaml; heartbeat: its CONFIG argument) or set VIM_CLUSTER_CONFIG")


def shown(text: str) -> str:
    """`text` (a user's name, a client type: anyone can choose them) for the operator's terminal,
    its control characters written as escapes (`\\x1b`): no escape sequence a user chose moves
    the cursor, rewrites a row or talks to the terminal."""
    return escaped(text)


def add_command(commands: Any, name: str, run: Callable[[argparse.Namespace], int],
                **texts: str) -> argparse.ArgumentParser:
    """Adds the subcommand `name` (`texts`: its help= and description=) that runs `run(args)`;
    returns its parser for the arguments."""
    parser: argparse.ArgumentParser = commands.add_parser(name, **texts)
    parser.set_defaults(func=run)
    return parser


def at_least(low: float, kind: Callable[[str], Any] = float) -> Callable[[str], Any]:
    """An argparse `type=`: a number (int or float) no smaller than `low` (argparse says why
    in one line and exits 2 otherwise)."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a{'n integer' if kind is int else ' number'}: {text!r}") from None
        if not value >= low:  # NaN too
            raise argparse.ArgumentTypeError(f"must be at least {low:g}, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def load_or_exit(path: str, stores_exist: Sequence[str] = ()) -> NodeConfig:
    """The config, or exit 2 with the one-line ConfigError. `stores_exist` ("directory",
    "messages"): a command that only reads or changes what is there also exits 2 if such a
    SQLite store file is missing (opening it would create an empty one: a typo in its path
    would show an empty directory)."""
    try:
        config = load_config(path)
        for store in stores_exist:
            missing_sqlite_store(config, store)
        return config
    except ConfigError as exc:
        hint = f" ({NO_CONFIG_HINT})" if path == DEFAULT_CONFIG and not Path(path).exists() else ""
        print(f"vim-cluster: config error: {exc}{hint}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def missing_sqlite_store(config: NodeConfig, store: str) -> None:
    """Raises ConfigError if `store` ("directory" or "messages") is a SQLite file that does not exist."""
    url: str = getattr(config.store, store)
    if url.startswith("sqlite://") and not Path(url[len("sqlite://"):]).exists():
        raise ConfigError(str(config.file), f"vim.store.{store}", f"{url[len('sqlite://'):]} does not exist (a typo? a "
                          "node creates it at its first start, as do `user add` and `import`)")


def secret_file_warnings(config: NodeConfig) -> list[str]:
    """`check`'s warnings for files that hold secrets and that others may read (config.too_open):
    the cluster secret with any group or other permission (the node logs it as
    `secret_file_too_open` at its start), the TLS key and the stores' password files readable
    by every user of the host. `openssl rand -hex 32 > FILE`, as the docs make them, leaves
    0644 under the usual umask."""
    warnings = []
    secret = config.cluster.secret_file
    if (mode := too_open(secret, SECRET_OPEN_BITS)) is not None:
        warnings.append(f"vim.cluster.secret-file: {secret} is mode {mode:04o}: others than its owner may read it, "
                        f"and whoever reads it can act as any user (chmod 600 {secret}; docs/security.md)")
    private = [("vim.websocket.tls.key-file", config.websocket.tls_key)] if config.websocket.tls_key else []
    for key, path in (*private, *config.password_files):
        if (mode := too_open(path, WORLD_OPEN_BITS)) is not None:
            warnings.append(f"{key}: {path} is mode {mode:04o}: every user of this host may read it (chmod 600 {path})")
    return warnings
