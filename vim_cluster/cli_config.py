"""What the `vim-cluster` command modules share (cli.py and the modules it loads, cli_users and
cli_lifecycle, so none of them imports cli.py back): how a subcommand is added, and the config
a command runs on."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from .config import NodeConfig, load_config
from .errors import ConfigError

EXIT_USAGE = 2


def add_command(commands: Any, name: str, run: Callable[[argparse.Namespace], int],
                **texts: str) -> argparse.ArgumentParser:
    """Adds the subcommand `name` (`texts`: its help= and description=) that runs `run(args)`;
    returns its parser for the arguments."""
    parser: argparse.ArgumentParser = commands.add_parser(name, **texts)
    parser.set_defaults(func=run)
    return parser


def load_or_exit(path: str) -> NodeConfig:
    """The config, or exit 2 with the one-line ConfigError."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"vim-cluster: config error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
