"""SIGTERM while a node is still starting stops it cleanly (exit 0) at once, instead of being
left to Python's default action (killed without cleanup) or, as a container's pid 1, to none at
all (`docker stop` then waits its whole timeout): the signal receiver is open from the start
(cli._run_node). The start is held up here by a Redis that accepts and never answers."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from ..cluster.harness import cli_env
from ..support import write_config


def test_sigterm_during_the_start_stops_the_node_cleanly(tmp_path: Path) -> None:
    with socket.socket() as silent:  # a Redis that never answers: the start waits on it
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        config = write_config(tmp_path, node_id="early", redis_url=f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
        node = subprocess.Popen([sys.executable, "-m", "vim_cluster.cli", "run", str(config)], text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
        try:
            assert node.stderr is not None
            for line in node.stderr:  # its stores are open: it waits on Redis now
                if "sqlite_database_created" in line and "messages.db" in line:
                    break
            node.terminate()
            _, err = node.communicate(timeout=30)
        finally:
            if node.poll() is None:
                node.kill()
                node.wait()
    assert node.returncode == 0, err
    assert "node_start_cancelled" in err and "ready at" not in err
