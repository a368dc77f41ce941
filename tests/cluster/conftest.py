"""Cluster fixtures: master, dept-1 and dept-2 as `vim-cluster run` subprocesses.

`cluster` is one 3-node cluster per test module (starting one costs a few seconds); each test
gets it only if every node process still runs. Tests that break a node (kill, SIGSTOP) must be
the last of their module. The cluster uses the session's real Redis, emptied when the module's
cluster starts: tests of these modules must not use the function-scoped `redis_url` fixture,
which would empty it under the running nodes.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..support import flush_redis
from .harness import DEPT2, Cluster


@pytest.fixture(scope="module")
def cluster_redis_url(redis_server: str) -> str:
    """The session's Redis, emptied for this module's cluster."""
    flush_redis(redis_server)
    return redis_server


def _run(tmp_path_factory: pytest.TempPathFactory, redis_url: str, proxied: tuple[str, ...]) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("cluster"), redis_url, proxied)
    cluster.start()  # stops what it started if it fails
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def module_cluster(tmp_path_factory: pytest.TempPathFactory, cluster_redis_url: str) -> Iterator[Cluster]:
    yield from _run(tmp_path_factory, cluster_redis_url, ())


@pytest.fixture
def cluster(module_cluster: Cluster) -> Cluster:
    """The module's running cluster: master, dept-1, dept-2 (all links up when it started)."""
    module_cluster.check_running()
    return module_cluster


@pytest.fixture(scope="module")
def module_proxied_cluster(tmp_path_factory: pytest.TempPathFactory, cluster_redis_url: str) -> Iterator[Cluster]:
    yield from _run(tmp_path_factory, cluster_redis_url, (DEPT2,))


@pytest.fixture
def proxied_cluster(module_proxied_cluster: Cluster) -> Cluster:
    """Like `cluster`, but dept-2 reaches the master through `cluster.proxies["dept-2"]`."""
    module_proxied_cluster.check_running()
    return module_proxied_cluster
