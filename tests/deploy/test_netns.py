"""The namespace helper cleans up after itself and after crashed runs (what the multi-host test
relies on to leave nothing behind)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..servers import unavailable
from . import netns


@pytest.fixture
def prefixes() -> Iterator[list[str]]:
    why = netns.missing_requirement()
    if why:
        unavailable(f"network namespaces: {why}")
    made: list[str] = []
    yield made
    for prefix in made:
        netns.remove_prefix(prefix)


def dead_run_prefix() -> str:
    """The prefix of a run whose process cannot exist (a pid above the kernel's pid_max)."""
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    return f"{netns.BASE}{pid_max + 1:x}"


def test_destroy_removes_namespaces_links_hosts_files_and_processes(prefixes: list[str]) -> None:
    prefix = netns.run_prefix()
    prefixes.append(prefix)
    network = netns.Network(prefix, {"a": (10, ("a", "alias")), "b": (11, ("b",))}).create()
    assert {network.ns("a"), network.ns("b"), network.switch} <= set(netns.namespaces())
    assert "10.213.7.11 b" in (netns.NETNS_ETC / network.ns("a") / "hosts").read_text()
    # a's hosts file names b, and the bridge carries a connection from a to b
    server = subprocess.Popen([*network.exec_prefix("b"), sys.executable, "-c",
                               "import socket; s = socket.create_server(('0.0.0.0', 7000)); print('up', flush=True);"
                               " s.accept(); import time; time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline() == "up\n"
        subprocess.run([*network.exec_prefix("a"), sys.executable, "-c",
                        "import socket; socket.create_connection(('b', 7000), timeout=5)"], check=True, timeout=30)
        network.destroy()  # the server still runs inside b: destroy kills it
        assert server.wait(10) != 0
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()
    assert not [ns for ns in netns.namespaces() if ns.startswith(prefix)]
    assert not [f for f in netns.NETNS_ETC.iterdir() if f.name.startswith(prefix)]


def test_remove_stale_removes_a_dead_runs_namespaces_but_not_a_live_runs(prefixes: list[str]) -> None:
    dead, live = dead_run_prefix(), netns.run_prefix()
    prefixes.extend([dead, live])
    netns.Network(dead, {"x": (10, ("x",))}).create()
    netns.Network(live, {"y": (10, ("y",))}).create()
    assert dead in netns.remove_stale()
    names = netns.namespaces()
    assert not [ns for ns in names if ns.startswith(f"{dead}-")]
    assert {f"{live}-y", f"{live}-sw"} <= set(names)
