"""`vim-cluster up` (vim_cluster/launcher.py) before and after its nodes run: what it refuses
with one line, and the order it stops them in. No node is started here (tests/deploy/test_up.py
runs whole clusters)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vim_cluster import launcher
from vim_cluster.config import load_config

from ..support import write_config


def test_a_folder_with_a_config_that_is_not_yaml_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "broken.yaml").write_text("vim:\n  cluster: {node-type: master, node-id: m\n")
    assert launcher.launch(tmp_path) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "broken.yaml" in err and "not valid YAML/TOML" in err, err


class Recorded:
    """A stand-in for a node's Popen: records the signals it is sent, exits on SIGTERM."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, signum: int) -> None:
        self.log.append(f"TERM {self.name}")
        self.returncode = 0

    def wait(self, timeout: float | None = None) -> int:
        self.log.append(f"waited {self.name}")
        return 0


def test_department_nodes_stop_before_the_masters_so_each_leaves_through_its_master(tmp_path: Path) -> None:
    redis = "redis://127.0.0.1:1/0"
    master = "ws://127.0.0.1:1/forward"
    configs = [load_config(write_config(tmp_path, node_id="master-1", redis_url=redis)),
               load_config(write_config(tmp_path, node_id="dept-1", node_type="slave", redis_url=redis, master_url=master)),
               load_config(write_config(tmp_path, node_id="dept-2", node_type="slave", redis_url=redis, master_url=master))]
    log: list[str] = []
    processes = [Recorded(c.node_id, log) for c in configs]
    launcher.stop_in_order(configs, processes)  # type: ignore[arg-type]  # stand-ins for Popen
    assert log == ["TERM dept-1", "TERM dept-2", "waited dept-1", "waited dept-2", "TERM master-1", "waited master-1"]
