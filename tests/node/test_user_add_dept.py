"""`vim-cluster user add USERNAME --dept PATH` (issue 13): the department path is created as
needed and the user belongs to its last department; a bad path is one line, exit 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from vim_cluster import wiring
from vim_cluster.config import load_config

from ..support import PASSWORD, write_config


def user_add(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vim_cluster.cli", "user", "add", *args, "--config", str(config)],
                          input=PASSWORD + "\n", capture_output=True, text=True, timeout=60)


def test_user_add_with_a_department_path(tmp_path: Path, redis_url: str) -> None:
    config = write_config(tmp_path, redis_url=redis_url)
    first = user_add(config, "dora", "--dept", "Engineering/Backend", "--name", "Dora")
    second = user_add(config, "bert", "--dept", "Engineering / Backend")
    third = user_add(config, "fred", "--dept", "Engineering")
    assert (first.returncode, second.returncode, third.returncode) == (0, 0, 0), (first.stderr, second.stderr)
    bad = user_add(config, "gina", "--dept", "Engineering//Backend")
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
    assert "department path" in bad.stderr
    directory = wiring.open_directory(load_config(config))
    try:
        departments = {d.name: d for d in directory.departments()}
        assert set(departments) == {"Engineering", "Backend"}
        assert departments["Backend"].parent_id == departments["Engineering"].id
        users = {u.username: u.department_id for u in directory.all_users()}
    finally:
        directory.close()
    assert users == {"dora": departments["Backend"].id, "bert": departments["Backend"].id,
                     "fred": departments["Engineering"].id}
