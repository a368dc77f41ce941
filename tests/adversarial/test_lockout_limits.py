"""The login lockout's shared limits as config keys, on a cluster of its own: a botnet's
guesses at one username over several nodes and addresses stop at `vim.login.lockout-per-user`
(counted together in Redis), and an unknown username is locked in the same way and the same
words, so that `locked` does not tell which accounts exist."""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from ..cluster.harness import Cluster
from ..servers import RedisServer, redis_process  # noqa: F401 - fixture
from ..support import PASSWORD, Client
from .attack import connect_from, name
from .test_brute_force import guess_in_parallel, login_answer, register

PER_USER = 8  # configured: neither the default 20 nor a multiple the default per-pair 5 would give
SOURCES = [f"127.0.0.{40 + n}" for n in range(6)]  # 6 addresses: 6 x 5 per pair would allow 30

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def limited_cluster(tmp_path: Path, redis_process: RedisServer) -> Iterator[Cluster]:  # noqa: F811 - the fixture
    login = {"login": {"lockout-per-user": PER_USER}}
    cluster = Cluster(tmp_path / "cluster", redis_process.url, extra={n: login for n in ("master", "dept-1", "dept-2")})
    cluster.start()  # stops what it started if it fails
    try:
        yield cluster
    finally:
        cluster.stop()


async def botnet_guesses(cluster: Cluster, username: str) -> tuple[collections.Counter[str], list[str]]:
    """30 wrong passwords at the same moment from 6 addresses over the 2 department nodes; the
    answers by kind, and the words of every `locked`."""
    nodes = [cluster.dept1, cluster.dept2]
    async with contextlib.AsyncExitStack() as stack:
        clients: list[Client] = [await stack.enter_async_context(connect_from(SOURCES[n % len(SOURCES)],
                                                                              nodes[n % len(nodes)]))
                                 for n in range(30)]
        answers = await guess_in_parallel(clients, username)
        words = []
        for client in clients[:4]:  # once more each, after the lock: the refusal's words
            await client.send("login", username=username, password="again")
            words.append((await client.expect_error("locked"))["detail"])
    return answers, words


async def test_the_per_username_limit_is_configured_shared_by_the_nodes_and_blind_to_existence(
    limited_cluster: Cluster,
) -> None:
    cluster = limited_cluster
    victim, ghost = name("victim"), name("ghost")  # ghost is never registered
    await register(cluster, victim)
    with trio.fail_after(90):
        known, known_words = await botnet_guesses(cluster, victim)
        unknown, unknown_words = await botnet_guesses(cluster, ghost)
        assert known == unknown == {"unauthorized": PER_USER, "locked": 30 - PER_USER}, (known, unknown)
        assert set(known_words) == set(unknown_words) and len(set(known_words)) == 1, (known_words, unknown_words)
        assert "for this username:" in known_words[0]
        # locked for everybody: the owner, at an address that never guessed, on the master
        async with connect_from("127.0.0.60", cluster.master) as owner:
            assert await login_answer(owner, victim) == "locked"
        # another account is not affected
        other = name("other")
        await register(cluster, other)
        async with connect_from("127.0.0.61", cluster.dept1) as someone:
            await someone.send("login", username=other, password=PASSWORD)
            assert (await someone.expect("login-ok"))["userId"]
