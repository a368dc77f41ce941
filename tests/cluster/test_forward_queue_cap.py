"""The cap on a slave's forward queue (`vim.cluster.forward-queue-bytes`): dept-2, cut off from
the master (its link only: Redis still names it live, so the master does not drop it, and the
other nodes stay linked, so they run no catch-up of their own), keeps bounded memory while its
user sends far more than the cap to users of the other nodes; once linked again, the master
has every other node (and its own sessions) re-deliver from the store, so every acked message
still reaches its online recipients, in order per chat, and later messages after them. The
mode resets: a second cut after the recovery overflows and recovers the same way. A master
that stops reading (frozen) makes a linked slave pass its cap too: it empties its queue and
queues on, and everything arrives once the master runs again."""

from __future__ import annotations

import contextlib
import functools
import re
import secrets
import signal
from collections.abc import AsyncIterator, Iterator

import pytest
import trio

from ..support import Client, make_group, online
from .harness import DEPT1, DEPT2, MASTER, Cluster, ClusterNode, Collector, blocking

CAP = 65536  # the smallest cap: 600 messages of ~300 bytes overflow it several times over
MESSAGES = 600  # per cut, alternating bob (dept-1) and carol (master); every 50th to the group
LIMIT = 90  # seconds per test (the first takes about 8 s when the machine is idle, the second 1.5 s)


@pytest.fixture(scope="module")
def capped_cluster(tmp_path_factory: pytest.TempPathFactory, cluster_redis_url: str) -> Iterator[Cluster]:
    """master, dept-1, dept-2 (through a proxy) with dept-2's forward queue capped at CAP; its
    rate limit is raised so that one connection sends MESSAGES in a few seconds, and the
    recipients' send queues take a catch-up of every message of the test at once (the second
    catch-up re-delivers the first's messages too: within its margin) rather than close 4004."""
    big_queue = {"websocket": {"send-queue-frames": 10_000}}
    cluster = Cluster(tmp_path_factory.mktemp("capped"), cluster_redis_url, (DEPT2,), extra={
        MASTER: big_queue, DEPT1: big_queue,
        DEPT2: {"cluster": {"forward-queue-bytes": CAP}, "websocket": {"rate-limit": 100_000}},
    })
    cluster.start()  # stops what it started if it fails
    try:
        yield cluster
    finally:
        cluster.stop()


async def metric(node: ClusterNode, name: str) -> float:
    """The value of an unlabelled metric on the node's /metrics (fails if it is not there)."""
    found = re.search(rf"^{re.escape(name)} (\S+)$", await blocking(node.metrics), re.MULTILINE)
    assert found is not None, f"{node.name} has no metric {name}"
    return float(found.group(1))


class Chats:
    """What alice sent, per chat (the ids in ack order) and per recipient."""

    def __init__(self, bob: Client, carol: Client, group_id: str) -> None:
        assert bob.user_id is not None and carol.user_id is not None
        self.targets = [(bob.user_id, "friend"), (carol.user_id, "friend")]
        self.group = (group_id, "group")
        self.sent: dict[str, list[str]] = {chat: [] for chat, _ in [*self.targets, self.group]}
        self.bob, self.carol = bob.user_id, carol.user_id
        self.count = 0  # messages acked
        self.at_alice_pc: Collector | None = None  # alice's other device (three_users)
        self._changed = trio.Event()

    async def send(self, alice: Client, count: int, tag: str, group_every: int = 50,
                   stop: trio.Event | None = None, every: float = 0.0) -> None:
        """alice sends `count` messages (or until `stop`), each once the one before was acked
        (and `every` seconds after it)."""
        for i in range(count):
            if stop is not None and stop.is_set():
                return
            if i and every:
                await trio.sleep(every)
            chat, kind = self.group if i % group_every == group_every - 1 else self.targets[i % 2]
            content = f"{tag} {i:04d} " + "x" * 290
            ack = await alice.chat(chat, content, f"{tag}-{i}", chat_type=kind)
            assert "id" in ack, ack
            self.sent[chat].append(ack["id"])
            self.count += 1
            self._changed.set()
            self._changed = trio.Event()

    async def wait_sent(self, count: int) -> None:
        while self.count < count:
            await self._changed.wait()

    def of(self, user: str) -> dict[str, list[str]]:
        """The chats `user` gets messages of: theirs with alice, and the group."""
        return {chat: ids for chat, ids in self.sent.items() if chat in (user, self.group[0])}


async def expect_all_in_order(at: Collector, chats: dict[str, list[str]], who: str) -> None:
    """Every id of `chats` reached `at` (first arrivals), and in each chat in the order sent."""
    wanted = [i for ids in chats.values() for i in ids]
    assert await at.wait_for(wanted, 30), \
        f"{len(set(wanted) - at.arrived.keys())} of {len(wanted)} messages never reached {who}"
    for chat, ids in chats.items():
        mine = set(ids)
        assert [i for i in at.order if i in mine] == ids, f"{who}: chat {chat} out of order"


def lines_since(node: ClusterNode, start: int, event: str) -> list[str]:
    """The node's log lines from offset `start` on that name `event`."""
    return [line for line in node.log_text()[start:].splitlines() if event in line]


async def cut_overflow_restore(cluster: Cluster, alice: Client, chats: Chats, tag: str) -> None:
    """Cuts dept-2's link, alice sends MESSAGES, checks the cap held, brings the link back while
    alice goes on sending (so that some messages cross the link while the catch-ups run; paced,
    so that a slow reconnect does not pile up thousands), and returns once 100 messages were
    acked after the link was back."""
    proxy, dept2 = cluster.proxies[DEPT2], cluster.dept2
    log_from = len(dept2.log_text())
    dropped_before = await metric(dept2, "vim_forward_dropped_frames_total")
    await blocking(proxy.sever)
    try:
        await blocking(dept2.wait_health, 503, 5)
        await chats.send(alice, MESSAGES, tag)
        # bounded: what it holds is the Delivers kept before the overflow (at most CAP bytes of
        # frames of ~300 bytes), now empty, and one CatchUp; not a packet per message
        depth = await metric(dept2, "vim_forward_queue_depth")
        assert depth <= CAP // 300 + 10 < MESSAGES, depth
        assert await metric(dept2, "vim_forward_dropped_frames_total") > dropped_before
        overflow = lines_since(dept2, log_from, "forward_queue_overflow")
        assert overflow, dept2.log_tail()
        assert f"cap_bytes={CAP}" in overflow[0], overflow
        async with trio.open_nursery() as nursery:
            stop = trio.Event()
            nursery.start_soon(functools.partial(chats.send, alice, 1_000_000, f"{tag}-across",
                                                     stop=stop, every=0.005))
            try:
                await blocking(proxy.restore)
                await blocking(dept2.wait_health, 200, 15)
                await chats.wait_sent(chats.count + 100)
            finally:
                stop.set()
    finally:
        await blocking(proxy.restore)


@contextlib.asynccontextmanager
async def three_users(cluster: Cluster) -> AsyncIterator[tuple[Client, Chats, Collector, Collector, str]]:
    """(alice on dept-2, her Chats, a Collector at bob on dept-1 and one at carol on the master,
    a fresh tag); alice, bob and carol share a group. `chats.at_alice_pc` collects at alice's
    second device, on the master: the sender's other session gets every message too."""
    tag = secrets.token_hex(3)
    async with contextlib.AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        alice = await online(stack, cluster.dept2.url, f"alice-{tag}")
        bob = await online(stack, cluster.dept1.url, f"bob-{tag}")
        carol = await online(stack, cluster.master.url, f"carol-{tag}")
        group_id = await make_group(alice, [bob, carol], name=f"capped-{tag}")
        alice_pc = await online(stack, cluster.master.url, f"alice-{tag}", register=False, client="pc")
        at_bob, at_carol, at_alice_pc = Collector(bob), Collector(carol), Collector(alice_pc)
        chats = Chats(bob, carol, group_id)
        chats.at_alice_pc = at_alice_pc
        for collector in (at_bob, at_carol, at_alice_pc):
            nursery.start_soon(collector.run)
        yield alice, chats, at_bob, at_carol, tag
        for collector in (at_bob, at_carol, at_alice_pc):
            collector.stop()


async def expect_everything(chats: Chats, at_bob: Collector, at_carol: Collector) -> None:
    await expect_all_in_order(at_bob, chats.of(chats.bob), "bob")
    await expect_all_in_order(at_carol, chats.of(chats.carol), "carol")
    assert chats.at_alice_pc is not None
    await expect_all_in_order(chats.at_alice_pc, chats.sent, "alice's other device")


async def test_a_slave_cut_off_keeps_its_forward_queue_bounded_and_every_message_arrives_once_linked(
    capped_cluster: Cluster,
) -> None:
    cluster = capped_cluster
    cluster.check_running()
    with trio.fail_after(LIMIT):
        async with three_users(cluster) as (alice, chats, at_bob, at_carol, tag):
            for round_ in ("first", "second"):  # the second cut: the overflow mode was reset
                master_log_from, dept1_log_from = len(cluster.master.log_text()), len(cluster.dept1.log_text())
                await cut_overflow_restore(cluster, alice, chats, f"{tag}-{round_}")
                await expect_everything(chats, at_bob, at_carol)
                # once all of it arrived (the catch-ups are done), live delivery goes on after it
                await chats.send(alice, 4, f"{tag}-{round_}-after", group_every=3)
                await expect_everything(chats, at_bob, at_carol)
                asked = lines_since(cluster.master, master_log_from, "catch_up_asked_of_all")
                assert asked and "gone=dept-2" in asked[0], cluster.master.log_tail()
                # dept-1 stayed linked: it caught up because the master asked (for dept-2)
                told = lines_since(cluster.dept1, dept1_log_from, "catch_up_asked")
                assert told and "dead_node=dept-2" in told[0], cluster.dept1.log_tail()


async def test_a_slave_whose_master_stops_reading_empties_its_queue_while_linked_and_every_message_arrives(
    capped_cluster: Cluster,
) -> None:
    """The master frozen (SIGSTOP) while alice sends MESSAGES // 2: dept-2's link stays up (not
    silent for link-dead-after), nothing is acked, and its queue passes the cap while linked: it
    empties it, asks for the catch-up and queues on (it drops nothing after). Once the master
    runs again, every message arrives, in order. Freezes the master: keep it last."""
    cluster = capped_cluster
    cluster.check_running()
    dept2 = cluster.dept2
    with trio.fail_after(LIMIT):
        async with three_users(cluster) as (alice, chats, at_bob, at_carol, tag):
            log_from = len(dept2.log_text())
            dropped_before = await metric(dept2, "vim_forward_dropped_frames_total")
            cluster.master.signal(signal.SIGSTOP)
            try:  # about 0.5 s (2 s on a busy machine): well within the master lease's 4 s
                await chats.send(alice, MESSAGES // 2, tag)
            finally:
                cluster.master.signal(signal.SIGCONT)
            # (its depth in packets is not bounded here: the emptied Delivers keep their places)
            assert await metric(dept2, "vim_forward_dropped_frames_total") > dropped_before
            overflow = lines_since(dept2, log_from, "forward_queue_overflow")
            assert overflow and "linked=True" in overflow[0], overflow
            await expect_everything(chats, at_bob, at_carol)
            await chats.send(alice, 4, f"{tag}-after", group_every=3)  # once caught up: live, after them
            await expect_everything(chats, at_bob, at_carol)
