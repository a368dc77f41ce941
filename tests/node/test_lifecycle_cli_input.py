"""`export`, `user delete` (and `whereis`) given a user that cannot be one: one line, exit 2.
A number past 64 bits was a traceback (SQLite: OverflowError), `--user ''` an AssertionError."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vim_cluster import wiring
from vim_cluster.config import load_config
from vim_cluster.model import user_id_in

from ..support import PASSWORD, write_config

HUGE = str(2**64)


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vim_cluster.cli", *args, "--config", str(config)],
                          input=PASSWORD + "\n", capture_output=True, text=True, timeout=60)


def test_user_id_in_takes_positive_64_bit_ids_only() -> None:
    assert user_id_in("12") == 12 and user_id_in(str(2**63 - 1)) == 2**63 - 1
    assert [user_id_in(t) for t in ("", "0", str(2**63), HUGE, "alice", "-5")] == [None] * 6


@pytest.mark.parametrize("args", [
    ("export", "--user", HUGE), ("export", "--user", ""), ("user", "delete", HUGE, "--erase"),
    ("user", "delete", "0", "--erase"), ("whereis", HUGE),
])
def test_a_user_that_cannot_be_one_is_one_line_and_exit_2(tmp_path: Path, redis_url: str, args: tuple[str, ...]) -> None:
    config = write_config(tmp_path, redis_url=redis_url)
    assert cli(config, "user", "add", "ada").returncode == 0  # the stores exist
    wiring.open_messages(load_config(config)).close()
    result = cli(config, *args)
    assert result.returncode == 2, result
    assert result.stderr.count("\n") == 1 and "no such user" in result.stderr, result.stderr
