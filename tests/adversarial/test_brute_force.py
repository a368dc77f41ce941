"""Password guessing: in parallel on many connections of every node, from one address and
from many, against one account and sprayed over many (core/lockout.py states the rule)."""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable, Sequence

import trio

from vim_cluster.core.lockout import LockoutPolicy

from ..cluster.harness import Cluster
from ..support import PASSWORD, Client, connect
from .attack import connect_from, name, watch

POLICY = LockoutPolicy()  # the node's defaults


async def _answer(client: Client) -> str:
    frame = await client.next_frame()
    while frame["code"] not in ("error", "login-ok"):
        frame = await client.next_frame()
    return frame["code"] if frame["code"] == "login-ok" else frame["message"]["error"]


async def guess_in_parallel(clients: Sequence[Client], username: str | Sequence[str]) -> collections.Counter[str]:
    """Every client sends one wrong login at the same moment; counts the answers by kind."""
    names = [username] * len(clients) if isinstance(username, str) else list(username)
    answers: collections.Counter[str] = collections.Counter()
    go = trio.Event()

    async def guess(client: Client, user: str, n: int) -> None:
        await go.wait()
        await client.send("login", username=user, password=f"guess number {n}")
        answers[await _answer(client)] += 1

    async with trio.open_nursery() as nursery:
        for n, (client, user) in enumerate(zip(clients, names, strict=True)):
            nursery.start_soon(guess, client, user, n)
        await trio.testing.wait_all_tasks_blocked()
        go.set()
    return answers


async def login_answer(client: Client, username: str) -> str:
    await client.send("login", username=username, password=PASSWORD)
    return await _answer(client)


async def register(cluster: Cluster, username: str) -> None:
    async with connect(cluster.master.url) as client:
        await client.send("register", username=username, password=PASSWORD)
        await client.expect("register-ok")


@contextlib.asynccontextmanager
async def attackers(stack: contextlib.AsyncExitStack, cluster: Cluster, count: int, sources: Sequence[str] = ()):
    """`count` connections spread over every node (from `sources` in turn, else 127.0.0.1)."""
    nodes = list(cluster.nodes.values())
    clients = []
    for n in range(count):
        node = nodes[n % len(nodes)]
        if sources:
            clients.append(await stack.enter_async_context(connect_from(sources[n % len(sources)], node)))
        else:
            clients.append(await stack.enter_async_context(connect(node.url)))
    yield clients


async def test_100_parallel_guesses_from_one_address_get_five_checks_per_window(
    cluster: Cluster, record_property: Callable[[str, object], None]
) -> None:
    """Attack: 100 connections spread over the 3 nodes send a wrong password for one account
    at the same moment (the race that let 40 of 40 through before the lockout was atomic).
    Defended: exactly `per_pair` (5) guesses are checked, the other 95 are answered `locked`;
    the right password from that address is `locked` too. The owner, at another address, still
    logs in: one attacker cannot lock the account for everybody."""
    victim = name("victim")
    await register(cluster, victim)
    with trio.fail_after(45):
        async with watch(cluster, cluster.master), contextlib.AsyncExitStack() as stack:
            async with attackers(stack, cluster, 100) as clients:
                answers = await guess_in_parallel(clients, victim)
                record_property("guesses_per_lockout_window_100_parallel_one_address", answers["unauthorized"])
                print(f"100 parallel guesses from one address: {dict(answers)}")
                assert answers == {"unauthorized": POLICY.per_pair, "locked": 100 - POLICY.per_pair}
                assert await login_answer(clients[0], victim) == "locked"
            async with connect_from("127.0.0.2", cluster.dept2) as owner:
                assert await login_answer(owner, victim) == "login-ok"


async def test_100_parallel_guesses_from_ten_addresses_get_twenty_checks_per_window(
    cluster: Cluster, record_property: Callable[[str, object], None]
) -> None:
    """Attack: a botnet: 100 parallel connections from 10 source addresses (127.0.0.10-19)
    over the 3 nodes guess one account's password. Defended: no more than `per_user` (20)
    guesses are checked per window however many addresses guess; the rest are `locked`. The
    price, stated in docs/security.md: such an attacker (4 addresses or more) locks that one
    account for everybody for the rest of the window."""
    victim = name("botnet")
    await register(cluster, victim)
    sources = [f"127.0.0.{10 + n}" for n in range(10)]
    with trio.fail_after(45):
        async with watch(cluster, cluster.dept1), contextlib.AsyncExitStack() as stack:
            async with attackers(stack, cluster, 100, sources) as clients:
                answers = await guess_in_parallel(clients, victim)
            record_property("guesses_per_lockout_window_100_parallel_ten_addresses", answers["unauthorized"])
            print(f"100 parallel guesses from ten addresses: {dict(answers)}")
            assert answers == {"unauthorized": POLICY.per_user, "locked": 100 - POLICY.per_user}
            async with connect_from("127.0.0.3", cluster.master) as owner:
                assert await login_answer(owner, victim) == "locked"


async def test_password_spraying_from_one_address_stops_at_the_address_limit(cluster: Cluster) -> None:
    """Attack: spray one guess each at 120 usernames from one address, in parallel over every
    node (no single account ever reaches its own limit). Defended: `per_address` (100)
    guesses are checked per window, the other 20 are `locked`; users at other addresses are
    not affected."""
    bystander = name("sprayed")
    await register(cluster, bystander)
    with trio.fail_after(45):
        async with watch(cluster, cluster.dept2), contextlib.AsyncExitStack() as stack:
            async with attackers(stack, cluster, 120, ["127.0.0.4"]) as clients:
                answers = await guess_in_parallel(clients, [name("spray") for _ in clients])
            assert answers == {"unauthorized": POLICY.per_address, "locked": 120 - POLICY.per_address}
            async with connect_from("127.0.0.5", cluster.dept1) as other:
                assert await login_answer(other, bystander) == "login-ok"


async def test_look_alike_usernames_are_one_account_for_register_login_and_lockout(cluster: Cluster) -> None:
    """Attack: register look-alikes of an existing user (a trailing newline, full-width
    letters, another case, the Kelvin sign) to impersonate them in contact lists, and spread
    password guesses over look-alike spellings to dodge the lockout. Defended: the newline is
    `invalid`, the others are `conflict`; any spelling logs in as the one user, and guesses in
    any spelling count against the same lockout."""
    owner = name("kate")
    await register(cluster, owner)
    with trio.fail_after(30):
        async with watch(cluster, cluster.master), connect(cluster.dept1.url) as attacker:
            for look_alike, kind in [(owner + "\n", "invalid"), (owner.upper(), "conflict"),
                                     ("\u212a" + owner[1:], "conflict"),
                                     ("".join(chr(ord(c) + 0xFEE0) if c.isalnum() else c for c in owner), "conflict")]:
                await attacker.send("register", username=look_alike, password=PASSWORD)
                await attacker.expect_error(kind)
            spellings = [owner.upper(), owner.title(), "\u212a" + owner[1:], owner]
            answers = await guess_in_parallel([attacker], spellings[0])
            for spelling in spellings[1:] * 2:
                answers += await guess_in_parallel([attacker], spelling)
            assert answers == {"unauthorized": POLICY.per_pair, "locked": 7 - POLICY.per_pair}
            async with connect_from("127.0.0.6", cluster.dept2) as real:
                assert await login_answer(real, owner.upper()) == "login-ok"
