"""`vim-cluster up` as an operator meets it: each node printed once with its client, web client
and dashboard URLs; a second `up` refused before it prints anything; SIGINT and SIGTERM stop
it even as a background job (SIGINT ignored when it started); the embedded Redis stops with
the last node using it (for `up` and for separate `vim-cluster run` processes alike)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from vim_cluster.adapters.embedded_redis import running_url
from vim_cluster.sysinfo import pid_alive

from ..cluster.harness import cli_env
from ..support import NodeProcess, free_port, write_config

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def redis_dir(tmp_path: Path) -> Iterator[Path]:
    """The embedded Redis's folder for this test's nodes; stopped if a test leaves it."""
    folder = tmp_path / "embedded-redis"
    yield folder
    from vim_cluster.adapters.embedded_redis import stop_embedded_redis

    stop_embedded_redis(folder)


def env_for(redis_dir: Path) -> dict[str, str]:
    return {**cli_env(), "VIM_EMBEDDED_REDIS_DIR": str(redis_dir)}


def write_cluster(folder: Path) -> list[Path]:
    master = write_config(folder, node_id="master", redis_url="embedded", extra={"http": {"port": free_port()}})
    forward = yaml.safe_load(master.read_text())["vim"]["websocket"]["forward-port"]
    slave = write_config(folder, node_id="dept-1", node_type="slave", redis_url="embedded",
                         master_url=f"ws://127.0.0.1:{forward}/forward", extra={"http": {"port": free_port()}})
    return [master, slave]


def up(folder: Path, redis_dir: Path, ignore_sigint: bool = False) -> subprocess.Popen[str]:
    def background_job() -> None:  # what a non-interactive shell does for `cmd &`
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    return subprocess.Popen([sys.executable, "-m", "vim_cluster.cli", "up", str(folder)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env_for(redis_dir),
                            preexec_fn=background_job if ignore_sigint else None)


def read_until_up(process: subprocess.Popen[str], timeout: float = 90) -> list[str]:
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"up ended: {lines} {process.stderr.read() if process.stderr else ''}")
        lines.append(line.rstrip("\n"))
        if line.startswith("all nodes are up"):
            return lines
    raise AssertionError(f"up did not finish starting: {lines}")


def node_pids(redis_url: str) -> list[int]:
    from vim_cluster.adapters.redis_registry import RedisRegistry

    registry = RedisRegistry(redis_url)
    try:
        return [n.pid for n in registry.nodes()]
    finally:
        registry.close()


def gone(pid: int) -> bool:
    return not pid_alive(pid)


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_up_prints_each_node_once_refuses_a_second_up_and_stops_on_a_signal_as_a_background_job(
    tmp_path: Path, redis_dir: Path, stop_signal: int
) -> None:
    folder = tmp_path / "configs"
    master, slave = write_cluster(folder)
    process = up(folder, redis_dir, ignore_sigint=True)
    try:
        lines = read_until_up(process)
        master_cfg, slave_cfg = (yaml.safe_load(p.read_text())["vim"] for p in (master, slave))
        expected = [
            f"master       master client ws://127.0.0.1:{master_cfg['websocket']['port']}/  "
            f"web http://127.0.0.1:{master_cfg['http']['port']}/  "
            f"dashboard http://127.0.0.1:{master_cfg['http']['port']}/dashboard",
            f"dept-1       slave  client ws://127.0.0.1:{slave_cfg['websocket']['port']}/  "
            f"web http://127.0.0.1:{slave_cfg['http']['port']}/  "
            f"dashboard http://127.0.0.1:{slave_cfg['http']['port']}/dashboard",
            "all nodes are up; Ctrl-C stops them",
        ]
        assert [line for line in lines if not line.startswith("created the cluster secret")] == expected
        redis_url = running_url(redis_dir)
        assert redis_url is not None
        pids = node_pids(redis_url)
        assert len(pids) == 2

        second = subprocess.run([sys.executable, "-m", "vim_cluster.cli", "up", str(folder)], text=True,
                                capture_output=True, timeout=60, env=env_for(redis_dir))
        assert second.returncode == 2 and second.stdout == "", second
        assert second.stderr.count("\n") == 1 and "master is already running" in second.stderr, second

        process.send_signal(stop_signal)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    assert all(gone(pid) for pid in pids)
    assert running_url(redis_dir) is None  # the embedded Redis stopped with the last node


def test_up_refuses_a_taken_port_before_printing_anything(tmp_path: Path, redis_dir: Path) -> None:
    folder = tmp_path / "configs"
    master, _ = write_cluster(folder)
    http_port = yaml.safe_load(master.read_text())["vim"]["http"]["port"]
    with socket.socket() as other_cluster:
        other_cluster.bind(("127.0.0.1", http_port))
        other_cluster.listen()
        result = subprocess.run([sys.executable, "-m", "vim_cluster.cli", "up", str(folder)], text=True,
                                capture_output=True, timeout=60, env=env_for(redis_dir))
    assert result.returncode == 2, result
    assert result.stdout.replace(f"created the cluster secret {folder.resolve() / 'secret.key'}\n", "") == ""
    assert result.stderr == (f"vim-cluster up: master: vim.http.port {http_port} on 127.0.0.1 is taken "
                             "(another process listens on it)\n")
    assert running_url(redis_dir) is None  # nothing was started


def test_the_embedded_redis_stops_with_the_last_run_node_that_uses_it(tmp_path: Path, redis_dir: Path) -> None:
    master, slave = write_cluster(tmp_path / "configs")
    processes = [NodeProcess(path, yaml.safe_load(path.read_text())["vim"]["websocket"]["port"],
                             env=env_for(redis_dir)) for path in (master, slave)]
    try:
        for process in processes:
            process.start(60)
        assert running_url(redis_dir) is not None
        assert processes[1].stop() == 0
        assert running_url(redis_dir) is not None  # the master still uses it
        assert processes[0].stop() == 0
        assert running_url(redis_dir) is None
    finally:
        for process in processes:
            process.kill()


def test_user_add_on_an_embedded_redis_leaves_none_running(tmp_path: Path, redis_dir: Path) -> None:
    master, _ = write_cluster(tmp_path / "configs")
    result = subprocess.run([sys.executable, "-m", "vim_cluster.cli", "user", "add", "ivy", "--config", str(master)],
                            input="a good password\n", text=True, capture_output=True, timeout=60,
                            env=env_for(redis_dir))
    assert result.returncode == 0 and result.stdout.strip().isdigit(), result
    assert (redis_dir / "redis.url").exists()  # it did start one for the worker id
    assert running_url(redis_dir) is None
    deleted = subprocess.run([sys.executable, "-m", "vim_cluster.cli", "user", "delete", "ivy", "--config", str(master)],
                             text=True, capture_output=True, timeout=60, env=env_for(redis_dir))
    # No node runs (nor its embedded Redis): no session to close, nothing to report as failed.
    assert deleted.returncode == 0 and deleted.stdout == f"user {result.stdout.strip()}: account deleted\n", deleted
    assert running_url(redis_dir) is None
    # --erase too: no route to remove (a Redis started later starts empty); it said "stopped part
    # way: the embedded Redis is not running" (exit 3) with everything done, at every re-run
    erased = subprocess.run([sys.executable, "-m", "vim_cluster.cli", "user", "delete", result.stdout.strip(), "--erase",
                             "--config", str(master)], text=True, capture_output=True, timeout=60, env=env_for(redis_dir))
    assert erased.returncode == 0 and "account already gone" in erased.stdout and "0 routes removed" in erased.stdout, erased
    assert running_url(redis_dir) is None
