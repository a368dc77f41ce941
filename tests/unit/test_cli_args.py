"""The command line's own checks: numbers out of range are refused by argparse with one line
(exit 2) before anything runs, and a load generator that reaches no node says so in one line
(exit 1), not with a traceback."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vim_cluster.cli import build_parser
from vim_cluster.cli_config import at_least

from ..cluster.harness import run_cli
from ..support import free_port, write_config


@pytest.mark.parametrize(("args", "problem"), [
    (["nodes", "--watch", "--interval", "-1"], "argument --interval: must be at least 0.1, got -1"),
    (["nodes", "--watch", "--interval", "0"], "argument --interval: must be at least 0.1, got 0"),
    (["nodes", "--interval", "nan"], "argument --interval: must be at least 0.1, got nan"),
    (["bench", "cross-node", "--senders", "0"], "argument --senders: must be at least 1, got 0"),
    (["bench", "cross-node", "--window", "1.5"], "argument --window: not an integer: '1.5'"),
    (["bench", "group", "--members", "1"], "argument --members: must be at least 2, got 1"),
    (["bench", "local", "--rate", "-5"], "argument --rate: must be at least 0, got -5"),
])
def test_numbers_out_of_range_are_one_line_and_exit_2(
    args: list[str], problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(args)
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"error: {problem}")


def test_at_least_gives_the_number_in_its_kind() -> None:
    assert at_least(0.1)("2") == 2.0 and at_least(1, int)("3") == 3
    with pytest.raises(argparse.ArgumentTypeError, match="not a number"):
        at_least(0)("soon")


def test_bench_against_a_port_where_nothing_listens_is_one_line_and_exit_1() -> None:
    url = f"ws://127.0.0.1:{free_port()}/"
    result = run_cli("bench", "cross-node", "--url", url, "--url", url, "--duration", "1")
    assert result.returncode == 1 and result.stdout == "", result
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("vim-cluster bench: a node did not answer or closed the connection: OSError: ")
    endless = run_cli("bench", "cross-node", "--url", url, "--duration", "0")
    assert endless.returncode == 2 and endless.stderr == (
        "vim-cluster bench: --duration 0 needs --messages N (else it would send for ever)\n")


def test_nodes_without_redis_is_one_line_and_exit_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path, node_id="master", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    result = run_cli("nodes", "--config", str(config))
    assert result.returncode == 3 and result.stderr.count("\n") == 1, result
    assert result.stderr.startswith("vim-cluster nodes: cannot ask Redis: redis redis://127.0.0.1:"), result
    embedded = write_config(tmp_path / "embedded", node_id="master", redis_url="embedded")
    monkeypatch.setenv("VIM_EMBEDDED_REDIS_DIR", str(tmp_path / "no-redis-here"))  # none runs there
    result = run_cli("nodes", "--config", str(embedded))
    assert result.returncode == 3 and result.stderr.count("\n") == 1, result
    assert result.stderr.startswith("vim-cluster nodes: cannot ask Redis: the embedded Redis is not running"), result


def test_commands_that_read_a_store_refuse_a_missing_sqlite_file_instead_of_creating_it(
    tmp_path: Path, redis_url: str
) -> None:
    """A typo in a `sqlite:` path made `user list` create and show an empty directory."""
    config = write_config(tmp_path, node_id="master", redis_url=redis_url,
                          store={"directory": "sqlite:typo/directory.db", "messages": "sqlite:typo/messages.db"})
    directory = tmp_path / "typo" / "directory.db"
    for command in (["user", "list"], ["user", "passwd", "bob"], ["whereis", "bob"], ["kick", "bob"],
                    ["user", "delete", "bob"], ["export", "--chat", "f1-2"], ["purge"]):
        result = run_cli(*command, "--config", str(config), stdin="a good password\n")
        store = "messages" if command[0] in ("export", "purge") else "directory"
        assert result.returncode == 2 and result.stderr.count("\n") == 1, (command, result)
        assert f"vim.store.{store}: {tmp_path / 'typo' / f'{store}.db'} does not exist (a typo?" in result.stderr
        assert not directory.exists() and not (tmp_path / "typo").exists()
    added = run_cli("user", "add", "bob", "--config", str(config), stdin="a good password\n")
    assert added.returncode == 0 and directory.exists(), added  # user add creates it, as a node does
    listed = run_cli("user", "list", "--config", str(config))
    assert listed.returncode == 0 and "bob" in listed.stdout, listed


def _leaf_commands(parser: argparse.ArgumentParser, name: str) -> list[tuple[str, argparse.ArgumentParser]]:
    """Every command that runs something (`user add`, not `user`), with its parser."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [(name, parser)]
    return [leaf for sub in subs for child, p in sub.choices.items() for leaf in _leaf_commands(p, f"{name} {child}")]


def test_every_commands_help_gives_its_exit_codes() -> None:
    """An operator's script needs a command's exit codes: `--help` gave them for some commands
    only (not `nodes`, `user add|list`, `export`, `import`, `purge`, `user delete`, `bench`)."""
    leaves = _leaf_commands(build_parser(), "vim-cluster")
    assert {"vim-cluster user add", "vim-cluster nodes", "vim-cluster purge"} <= {n for n, _ in leaves}
    silent = [name for name, parser in leaves if not re.search(r"\bexit 0\b", parser.description or "", re.I)]
    assert not silent, f"--help without exit codes: {silent}"
    undescribed = [f"{name} {a.dest}" for name, parser in leaves for a in parser._actions
                   if a.help is None and not a.option_strings]
    assert not undescribed, f"arguments without help: {undescribed}"


def test_a_command_run_away_from_a_checkout_says_how_to_name_the_config(tmp_path: Path) -> None:
    """On a node host (no checkout, VIM_CLUSTER_CONFIG set only inside the systemd unit), the
    default node-configs/master.yaml is missing: the error named that file and nothing else,
    not that it was a default nor how to give the node's config."""
    env = {k: v for k, v in os.environ.items() if k != "VIM_CLUSTER_CONFIG"}
    for command in (["nodes"], ["user", "list"], ["heartbeat"], ["purge"]):
        result = subprocess.run([sys.executable, "-m", "vim_cluster.cli", *command], capture_output=True,
                                text=True, timeout=60, env=env, cwd=tmp_path)
        assert result.returncode == 2 and result.stdout == "" and result.stderr.count("\n") == 1, (command, result)
        assert result.stderr.startswith("vim-cluster: config error: node-configs/master.yaml: -: cannot read the file")
        assert "--config /etc/vim-cluster/NODE.yaml" in result.stderr and "VIM_CLUSTER_CONFIG" in result.stderr
    given = subprocess.run([sys.executable, "-m", "vim_cluster.cli", "nodes", "--config", "elsewhere.yaml"],
                           capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert given.returncode == 2 and given.stderr == (
        "vim-cluster: config error: elsewhere.yaml: -: cannot read the file: No such file or directory\n")
