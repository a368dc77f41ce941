"""The config a `vim-cluster` command runs on, shared by cli.py and the command modules it
loads (cli_users, cli_lifecycle), so none of them imports cli.py back."""

from __future__ import annotations

import sys

from .config import NodeConfig, load_config
from .errors import ConfigError

EXIT_USAGE = 2


def load_or_exit(path: str) -> NodeConfig:
    """The config, or exit 2 with the one-line ConfigError."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"vim-cluster: config error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
