"""What `contacts` may cost a node (docs/security.md): its answer lists every user of the
directory, so one connection's flood of it is refused (`rate-limited`) beyond the
connection's budget (vim.websocket.contacts-budget users a minute)."""

from __future__ import annotations

import contextlib

import redis
import trio

from vim_cluster.adapters.redis_registry import ONLINE_CHUNK, Keys, RedisRegistry
from vim_cluster.model import User, UserId
from vim_cluster.node.app import RunningNode
from vim_cluster.ports import Route

from ..support import Client, all_online, connect, online

USERS = 5000
FLOOD = 150


async def fill_directory(node: RunningNode, users: int) -> None:
    """`users` more users, written straight into the node's directory (no password hashing)."""
    directory = node.ctx.directory

    def fill() -> None:
        for i in range(users):
            directory.create_user(User(UserId(10**15 + i), f"filler{i}", f"Filler {i}", "-", None))

    await node.ctx.db(fill)


async def test_a_contacts_flood_is_refused_beyond_the_budget_and_messages_keep_flowing(
        node: RunningNode, url: str) -> None:
    """Attack: Mallory sends `contacts` as fast as the frame rate allows (150 in a burst) on a
    directory of 5,000 users, 30 ms of node CPU each. Defended: the node answers as many as
    the default budget of 100,000 users a minute holds (20, and what refills meanwhile), the
    rest `rate-limited` with their `rid`; Alice's messages to Bob all arrive meanwhile."""
    await fill_directory(node, USERS)
    with trio.fail_after(60):
        async with contextlib.AsyncExitStack() as stack:
            alice, bob, mallory = await all_online(stack, url, "alice", "bob", "mallory")
            assert bob.user_id is not None
            answers: dict[str, int] = {}
            refused: list[str] = []

            async def read_answers() -> None:
                while answers.get("contacts", 0) + answers.get("error", 0) < FLOOD:
                    frame = await mallory.receive()
                    answers[frame["code"]] = answers.get(frame["code"], 0) + 1  # `presence` too
                    if frame["code"] == "error":
                        assert frame["message"]["error"] == "rate-limited", frame
                        refused.append(frame["message"]["rid"])

            started = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_answers)
                for i in range(FLOOD):
                    await mallory.send("contacts", rid=f"c{i}")
                for i in range(20):
                    await alice.chat(bob.user_id, f"still here {i}", f"m{i}")
                for i in range(20):
                    assert (await bob.expect("message"))["content"] == f"still here {i}"
            assert answers["contacts"] >= 20
            # 20 from the full budget, then one per 3 s of refill (slack for a slow machine).
            assert answers["contacts"] <= 22 + (trio.current_time() - started) / 3, answers
            assert len(refused) == answers["error"] and all(rid.startswith("c") for rid in refused)


async def test_contacts_asked_at_once_on_many_connections_share_one_read(node: RunningNode, url: str,
                                                                        redis_url: str) -> None:
    """A reconnect storm: 20 users ask `contacts` at once on a directory of 5,000. The
    directory and the online flags (5,000 route reads in Redis, 50 ms of node CPU) are read
    for them together, a few times, not once each; every answer still has every other user
    of the 20 online and the rest offline."""
    await fill_directory(node, USERS)
    stats = redis.Redis.from_url(redis_url)
    with trio.fail_after(60):
        async with contextlib.AsyncExitStack() as stack:
            clients = await all_online(stack, url, *(f"user{n}" for n in range(20)))
            ids = {c.user_id for c in clients}
            before = stats.info("commandstats")["cmdstat_hgetall"]["calls"]
            answers: dict[str | None, dict] = {}

            async def ask(client: Client) -> None:
                await client.send("contacts")
                answers[client.user_id] = await client.expect("contacts", timeout=50)

            async with trio.open_nursery() as nursery:
                for client in clients:
                    nursery.start_soon(ask, client)
            route_reads = stats.info("commandstats")["cmdstat_hgetall"]["calls"] - before
            assert route_reads <= 4 * (USERS + len(clients)), route_reads  # 20 answers, at most 4 reads
            for me, answer in answers.items():
                online_ids = {u["userId"] for u in answer["users"] if u["online"]}
                assert online_ids == ids - {me} and len(answer["users"]) == USERS + len(clients) - 1


async def test_contacts_answers_what_changed_before_it_was_asked(url: str) -> None:
    """Each answer is read after its request: a user registered, a group created, a session
    opened just before are in it, however many `contacts` came before."""
    with trio.fail_after(20):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            for _ in range(3):
                await alice.send("contacts")
                await alice.expect("contacts")
            async with connect(url) as carol:
                await carol.register_login("carol")
                await alice.send("contacts")
                users = {u["userId"]: u for u in (await alice.expect("contacts"))["users"]}
                assert users[carol.user_id]["online"] is False
                await carol.ready()
                await alice.send("group-create", name="new", members=[carol.user_id])
                group = await alice.expect("group-ok")
                await alice.send("contacts")
                answer = await alice.expect("contacts")
                assert {u["userId"]: u["online"] for u in answer["users"]} == {carol.user_id: True}
                assert [g["groupId"] for g in answer["groups"]] == [group["groupId"]]


def test_online_is_who_routes_gives_routes_for(redis_url: str) -> None:
    """Registry.online (what `contacts` reads) against Registry.routes, on real Redis: users
    on a live node, only on a dead node, on both, with several sessions, or none, across
    ONLINE_CHUNK's chunks."""
    registry = RedisRegistry(redis_url)
    try:
        registry._r.set(Keys.node_lock("live"), "owner")
        users = [UserId(n) for n in range(1, 2 * ONLINE_CHUNK + 50)]
        for user in users:
            nodes = {0: [], 1: ["live"], 2: ["dead"], 3: ["dead", "live"], 4: ["live", "live"]}[user % 5]
            for n, node in enumerate(nodes):
                registry.add_route(user, Route(f"s{user}-{n}", node, f"c{n}", None))
        expected = {user for user, routes in registry.routes(users).items() if routes}
        assert registry.online(users) == expected
        assert expected == {user for user in users if user % 5 in (1, 3, 4)} and registry.online([]) == set()
    finally:
        registry.close()
