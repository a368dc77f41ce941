"""The adversarial suite's cluster: master, dept-1 and dept-2 as `vim-cluster run` processes,
started once for the whole folder (tests/cluster/harness.py), attacked over real sockets.

No test here may break a node: every test ends with the cluster healthy (the `watch`
context checks it), and the next test gets it only if every process still runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ..cluster.harness import Cluster
from ..support import flush_redis

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="package")
def adversary_cluster(tmp_path_factory: pytest.TempPathFactory, redis_server: str) -> Iterator[Cluster]:
    flush_redis(redis_server)  # emptied as unused: the nodes' worker ids need not settle
    cluster = Cluster(tmp_path_factory.mktemp("adversary"), redis_server)
    cluster.start()  # stops what it started if it fails
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster(adversary_cluster: Cluster) -> Cluster:
    """The running cluster, with every login lockout counter forgotten (tests share 127.0.0.1)."""
    adversary_cluster.check_running()
    with redis.Redis.from_url(adversary_cluster.redis_url) as client:
        keys = list(client.scan_iter("vim:login-fail:*"))
        if keys:
            client.delete(*keys)
    return adversary_cluster


@pytest.fixture
def secret(cluster: Cluster) -> bytes:
    """The cluster secret, as a node reads it (what an insider or a stolen file would give)."""
    return (Path(cluster.folder) / "secret.key").read_text().strip().encode()
