"""Requests during the offline replay (protocol.md §2.5): the node reads and answers a client's
frames while it replays to it. The replay is a task beside the connection's reader; before,
it ran inside the `ready` handler and nothing the client sent was read until it ended."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from structlog.testing import capture_logs
from trio.testing import MockClock
from trio_websocket import wrap_client_stream

from vim_cluster.errors import CloseCode, StoreUnavailable
from vim_cluster.node.app import RunningNode
from vim_cluster.node.connection import Connection
from vim_cluster.node.handlers import messages
from vim_cluster.node.send_queue import SendQueue
from vim_cluster.ports import Saved
from vim_cluster.protocol import frames as f
from vim_cluster.tunables import DEFAULTS

from ..support import Client, connect, online

BIG = 8_000  # characters of a message in a replay meant to outlast the sockets' buffers


@contextlib.asynccontextmanager
async def small_buffers(node: RunningNode, size: int = 4096) -> AsyncIterator[Client]:
    """A Client whose socket buffers are small (`size`, which the kernel doubles), each way:
    the node fills them with a few frames, and the client's frames back fill them soon too."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    await sock.connect(("127.0.0.1", node.client_port))
    stream = trio.SocketStream(sock)
    async with trio.open_nursery() as nursery:
        ws = await wrap_client_stream(nursery, stream, "127.0.0.1", "/", message_queue_size=1)
        try:
            yield Client(ws)
        finally:
            with trio.move_on_after(5):
                await ws.aclose()
            await trio.aclose_forcefully(stream)  # see support.connect: trio-websocket may not


async def away(url: str, count: int, content: str = "") -> tuple[str, list[str]]:
    """bob registered, and `count` messages from alice sent to him while he is away (500 at a
    time, pipelined): (bob's id, their ids, oldest first)."""
    async with connect(url) as alice, connect(url) as bob:
        await alice.register_login("alice")
        await alice.ready()
        await bob.register_login("bob")
        assert bob.user_id is not None
        ids: list[str] = []
        for start in range(0, count, 500):
            batch = range(start, min(count, start + 500))
            for i in batch:
                await alice.send("message", cid=f"away-{i}", chatId=bob.user_id, type="friend",
                                 messageType="text", content=f"{i} {content}")
            ids += [(await alice.expect("ack", timeout=20))["id"] for _ in batch]
    return bob.user_id, ids


async def big_replay(start_node: Any, **websocket: Any) -> tuple[RunningNode, str, str, list[str]]:
    """A node (a send queue of 256 KiB) where 300 messages of 8 KB wait for bob, more than the
    queue and small socket buffers take: (node, url, bob's id, their ids)."""
    node = await start_node(websocket={"rate-limit": 1_000_000, "send-queue-bytes": 256 * 1024, **websocket})
    url = f"ws://127.0.0.1:{node.client_port}/"
    bob_id, ids = await away(url, 300, "x" * BIG)
    return node, url, bob_id, ids


async def ready(bob: Client, **message: Any) -> None:
    """Logs bob in and sends `ready`; returns once `ready-ok` came (the replay has begun)."""
    await bob.login("bob")
    await bob.send("ready", token=bob.token, **message)
    await bob.expect("ready-ok")


async def read_to_sync_done(client: Client, timeout: float = 20) -> list[dict[str, Any]]:
    """Every frame up to and with `sync-done` (the backlog first)."""
    frames: list[dict[str, Any]] = []
    with trio.fail_after(timeout):
        while not frames or frames[-1]["code"] != "sync-done":
            frames.append(await client.next_frame())
    return frames


def replayed_ids(frames: list[dict[str, Any]]) -> list[str]:
    return [f["message"]["id"] for f in frames if f["code"] == "message" and f["message"].get("offline")]


async def test_a_client_that_confirms_each_replayed_message_before_it_reads_on_gets_the_whole_replay(
        start_node) -> None:
    # bob sends a `received` for each replayed message and waits for the send before he reads
    # the next one, as a simple client does. The node read nothing from him while it replayed:
    # once his frames filled the sockets' buffers (small ones here; some hundred messages with
    # the kernel's defaults), his send waited for the node to read, and the node's replay for
    # him to read, until the idle timeout (60 s) closed him 4004. (A send queue of 64 frames:
    # the replay waits for room in it, not only in the sockets' buffers.)
    node = await start_node(websocket={"rate-limit": 1_000_000, "send-queue-frames": 64})
    url = f"ws://127.0.0.1:{node.client_port}/"
    bob_id, ids = await away(url, 2000)
    with trio.fail_after(60):
        async with small_buffers(node) as bob:
            await bob.login("bob")
            await bob.send("ready", token=bob.token, rid="back")
            assert (await bob.expect("ready-ok"))["rid"] == "back"
            seen: list[str] = []
            with trio.fail_after(30):
                while (frame := await bob.next_frame())["code"] != "sync-done":
                    assert frame["code"] == "message" and frame["message"]["offline"], frame
                    seen.append(frame["message"]["id"])
                    await bob.send("received", ids=[seen[-1]], rid=f"confirm-{len(seen):056d}")
            assert frame["message"] == {"count": 2000, "rid": "back"}
            assert seen == ids
        async with connect(url) as again:  # every confirm was read and committed
            await again.login("bob")
            assert await again.ready() == []


@pytest.fixture
def acked(monkeypatch: pytest.MonkeyPatch) -> dict[str, trio.Event]:
    """cid -> an Event set once the node queued that message's ack (messages.saved ran)."""
    events: dict[str, trio.Event] = {}
    saved = messages.saved

    def saved_and_told(conn: Connection, command: f.SendMessage, recipients: frozenset[int], result: Saved | None,
                       error: BaseException | None) -> None:
        saved(conn, command, recipients, result, error)
        events.setdefault(command.cid, trio.Event()).set()

    monkeypatch.setattr(messages, "saved", saved_and_told)
    return events


async def test_a_message_sent_during_the_replay_is_acked_before_sync_done(start_node, acked) -> None:
    # A replay of some 2.4 MB to a client with small buffers that reads nothing for a while
    # waits for him (its half of a 256 KiB send queue, the sockets' buffers): the ack of what
    # he sent meanwhile comes among the replayed messages, not after the whole replay.
    node, url, bob_id, ids = await big_replay(start_node)
    async with connect(url) as alice:
        await alice.login("alice")
        await alice.ready()
        assert alice.user_id is not None
        with trio.fail_after(30):
            async with small_buffers(node) as bob:
                await bob.login("bob")
                await bob.send("ready", token=bob.token, rid="back")
                await bob.expect("ready-ok")
                first = [await bob.next_frame() for _ in range(3)]
                await bob.send("message", cid="mid", chatId=alice.user_id, type="friend", messageType="text",
                               content="sent during the replay", rid="m")
                acked.setdefault("mid", trio.Event())
                await acked["mid"].wait()  # the node queued the ack; bob has read nothing since
                frames = first + await read_to_sync_done(bob)
                codes = [f["code"] for f in frames]
                assert codes.count("ack") == 1 and codes[-1] == "sync-done"
                ack = frames[codes.index("ack")]["message"]
                assert ack["cid"] == "mid" and ack["rid"] == "m"
                assert "message" in codes[codes.index("ack"):]  # the replay went on after it
                assert replayed_ids(frames) == ids
                assert frames[-1]["message"]["count"] == 300
                live = await alice.expect("message")
                assert live["id"] == ack["id"] and not live.get("offline")


async def test_the_replay_leaves_room_in_the_send_queue_for_the_answers(start_node, acked) -> None:
    # bob reads nothing after the first replayed messages: his replay fills what it may of his
    # send queue (16 frames here) and waits. His `ping` is answered into the rest of the queue at once, so the
    # node reads on: his `message` is stored and acked while he still reads nothing. A replay
    # that took the whole queue left the `pong` waiting for room, and the reader with it.
    node, url, bob_id, ids = await big_replay(start_node, **{"send-queue-frames": 16, "send-queue-bytes": 4 << 20})
    with trio.fail_after(30):
        async with small_buffers(node) as bob:
            await ready(bob)
            first = [await bob.next_frame() for _ in range(3)]  # the replay's one page was read
            await trio.testing.wait_all_tasks_blocked()  # its next frames wait for room in the queue
            await bob.send("ping", rid="p")
            await bob.send("message", cid="queued", chatId=bob_id, type="friend", messageType="text",
                           content="to myself")
            with trio.fail_after(10):
                await acked.setdefault("queued", trio.Event()).wait()  # bob has read nothing since
            frames = first + await read_to_sync_done(bob)
            codes = [f["code"] for f in frames]
            assert codes.index("pong") < codes.index("ack") < len(codes) - 1
            assert replayed_ids(frames)[:len(ids)] == ids


async def test_answers_come_during_the_replay_and_a_second_ready_is_refused(start_node) -> None:
    # A second `ready` is `error invalid` (its rid echoed) whenever it comes: during the replay
    # it is answered at once, and the replay goes on to its `sync-done`. `history` and `ping`
    # are answered meanwhile too.
    node, url, bob_id, ids = await big_replay(start_node)
    with trio.fail_after(30):
        async with small_buffers(node) as bob:
            await ready(bob, rid="first")
            await bob.send("ready", token=bob.token, rid="second")
            await bob.send("history", chatId=bob_id, type="friend", limit=1, rid="h")
            await bob.send("ping", rid="p")
            frames = await read_to_sync_done(bob)
            codes = [f["code"] for f in frames]
            error = frames[codes.index("error")]["message"]
            assert error["error"] == "invalid" and error["rid"] == "second"
            assert frames[codes.index("history")]["message"]["rid"] == "h"
            assert frames[codes.index("pong")]["message"]["rid"] == "p"
            assert codes.index("pong") < len(codes) - 2 and codes[-2] == "message"  # answered mid-replay
            assert frames[-1]["message"] == {"count": 300, "rid": "first"}
            assert replayed_ids(frames) == ids
            await bob.no_frame("ready-ok")


async def test_a_client_that_closes_during_its_replay_ends_it_and_loses_nothing(start_node) -> None:
    # bob closes after a few replayed messages while a live message to him is held for after
    # the replay: the replay task ends with his connection (his session closes), nothing is
    # logged as an error, and the next `ready` replays everything, the held message too.
    node, url, bob_id, ids = await big_replay(start_node)
    with trio.fail_after(30), capture_logs() as logs:
        async with small_buffers(node) as bob:
            await ready(bob)
            assert [(await bob.next_frame())["message"]["id"] for _ in range(3)] == ids[:3]
            (session,) = node.ctx.local_sessions.sessions(int(bob_id))
            async with connect(url) as alice:
                await alice.login("alice")
                await alice.ready()
                held = await alice.chat(bob_id, "held during the replay", "held")
            assert len(session.holding or ()) == 1
        # His session closes once his connection's tasks ended, the replay's too.
        await node.ctx.local_sessions.wait_empty()
        async with connect(url) as again:
            await again.login("bob")
            replayed = await again.ready()
    assert [m["id"] for m in replayed] == ids + [held["id"]]
    assert not [e for e in logs if e["log_level"] in ("error", "critical") or "crashed" in e["event"]]


async def test_a_session_replaced_during_its_replay_ends_it_and_the_new_one_gets_everything(start_node) -> None:
    # bob's `web` session is replaced (other-login) while its replay waits for him to read:
    # the old one gets the replay's queued frames, `other-login` and 4001, no `sync-done`; the
    # new one the whole replay.
    node, url, bob_id, ids = await big_replay(start_node)
    with trio.fail_after(30):
        async with small_buffers(node) as old:
            await ready(old, client="web", uuid="old")
            assert (await old.next_frame())["message"]["id"] == ids[0]
            async with connect(url) as new:
                await new.login("bob")
                await new.send("ready", token=new.token, client="web", uuid="new")
                assert (await old.expect_closed(timeout=20)).code == int(CloseCode.OTHER_LOGIN)
                codes = [f["code"] for f in old.backlog]
                assert codes[-1] == "other-login" and set(codes[:-1]) == {"message"}
                frames = await read_to_sync_done(new)
                assert replayed_ids(frames) == ids


def _failing_second_page(monkeypatch: pytest.MonkeyPatch, node: RunningNode, error: Exception) -> None:
    """The message store's `pending` answers its first page, then raises `error`."""
    store = node.ctx.messages
    pending = store.pending
    calls = 0

    def failing(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise error
        return pending(*args)

    monkeypatch.setattr(store, "pending", failing)


async def test_a_replay_whose_store_fails_ends_with_error_unavailable_and_the_connection_stays(
        start_node, monkeypatch: pytest.MonkeyPatch) -> None:
    # The replay's task ends, answered `error unavailable` with the ready's rid in place of
    # `sync-done`, as when the replay ran in the `ready` handler: the held live frames go out,
    # live ones flow, requests are answered; the rest is replayed at the next `ready`.
    node = await start_node(tunables=attrs.evolve(DEFAULTS, replay_page=10))
    url = f"ws://127.0.0.1:{node.client_port}/"
    bob_id, ids = await away(url, 25)
    with trio.fail_after(20):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice", register=False)
            _failing_second_page(monkeypatch, node, StoreUnavailable("sqlite: disk I/O error"))
            bob = await stack.enter_async_context(connect(url))
            await ready(bob, rid="back")
            frames: list[dict[str, Any]] = []
            while (frame := await bob.next_frame())["code"] != "error":
                frames.append(frame)
            assert frame["message"]["error"] == "unavailable" and frame["message"]["rid"] == "back"
            assert replayed_ids(frames) == ids[:10]
            monkeypatch.undo()
            live = await alice.chat(bob_id, "live after the failed replay", "live")
            assert (await bob.expect("message"))["id"] == live["id"]
            await bob.send("ping", rid="still")
            assert (await bob.expect("pong"))["rid"] == "still"
            bob.assert_none("sync-done")
            await stack.aclose()
        async with connect(url) as again:
            await again.login("bob")
            assert [m["id"] for m in await again.ready()] == ids + [live["id"]]


async def test_a_replay_that_crashes_answers_error_internal_and_closes_1011(
        start_node, monkeypatch: pytest.MonkeyPatch) -> None:
    node = await start_node(tunables=attrs.evolve(DEFAULTS, replay_page=10))
    url = f"ws://127.0.0.1:{node.client_port}/"
    _, ids = await away(url, 25)
    _failing_second_page(monkeypatch, node, RuntimeError("a bug"))
    with trio.fail_after(20), capture_logs() as logs:
        async with connect(url) as bob:
            await ready(bob, rid="back")
            reason = await bob.expect_closed()
            assert reason.code == int(CloseCode.INTERNAL)
            codes = [f["code"] for f in bob.backlog]
            assert codes == ["message"] * 10 + ["error"]
            assert bob.backlog[-1]["message"] == {"error": "internal", "detail": "internal error", "rid": "back"}
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["replay_crashed"]


@attrs.define
class RoomWait:
    """A replay's waits for room in one send queue: `began` is set once one waits, `ended` once
    one returned (the client read, or the queue closed; not when its deadline ended it)."""

    began: trio.Event = attrs.Factory(trio.Event)
    ended: trio.Event = attrs.Factory(trio.Event)
    ends: int = 0  # how many returned


@pytest.fixture
def room_waits(monkeypatch: pytest.MonkeyPatch) -> dict[SendQueue, RoomWait]:
    """send queue -> its RoomWait, for the waits of a caller that spares half the queue (the
    offline replay)."""
    waits: dict[SendQueue, RoomWait] = {}
    room = SendQueue.room

    async def told(self: SendQueue, frames: int = 1, size: int = 0, spare: bool = False) -> None:
        wait = waits.setdefault(self, RoomWait()) if spare else None
        if wait is not None:
            wait.began.set()
        await room(self, frames, size, spare)
        if wait is not None:
            wait.ended.set()
            wait.ends += 1

    monkeypatch.setattr(SendQueue, "room", told)
    return waits


def session_of(node: RunningNode, user_id: str) -> Any:
    (session,) = node.ctx.local_sessions.sessions(int(user_id))
    return session


async def test_a_client_that_reads_a_replay_longer_than_the_idle_timeout_and_sends_nothing_stays(
        start_node, jump_clock: MockClock, room_waits: dict[SendQueue, RoomWait]) -> None:
    # bob reads his replay as it comes and sends nothing, on a slow link: the first times the
    # replay gets room in his send queue, 1 s passes (the test's clock jumped), more than the
    # idle timeout (1.5 s) in all. Since the replay ran beside the reader, the idle timeout
    # closed him 1001 mid-replay, and the next `ready` started it over. He is not idle while
    # the replay runs, and the idle timer runs again from its end (a client that reads
    # nothing is closed 4004 by the replay's wait for room: the next test). (Jumps tied to the
    # replay's waits, not to his reads: the node's socket buffer may take a hundred frames
    # and more; and few: jumps of 8 s and more in all lapse the node's lease.)
    node, url, bob_id, ids = await big_replay(start_node, **{"idle-timeout": 1.5})
    with trio.fail_after(60):
        async with small_buffers(node) as bob:
            await ready(bob, rid="back")
            wait = room_waits.setdefault(session_of(node, bob_id).send_queue, RoomWait())
            frames: list[dict[str, Any]] = []
            jumped, seen = 0.0, 0
            while not frames or frames[-1]["code"] != "sync-done":
                frames.append(await bob.next_frame())
                await trio.testing.wait_all_tasks_blocked()  # the node wrote what it could
                if wait.ends != seen and jumped < 2:  # the replay got room since the last jump: a new wait
                    seen = wait.ends
                    jump_clock.jump(1.0)
                    jumped += 1.0
            assert replayed_ids(frames) == ids and frames[-1]["message"] == {"count": 300, "rid": "back"}
            assert jumped == 2  # the replay lasted longer than the idle timeout
            await trio.testing.wait_all_tasks_blocked()
            assert bob.ws.closed is None
            jump_clock.jump(1.6)  # the idle timeout since the replay's end
            assert (await bob.expect_closed(timeout=5)).code == int(CloseCode.GOING_AWAY)
            assert bob.backlog == []


async def test_a_client_that_reads_nothing_during_its_replay_is_closed_4004_at_the_idle_timeout(
        start_node, jump_clock: MockClock, room_waits: dict[SendQueue, RoomWait]) -> None:
    # bob sends `ready` and reads nothing: his replay waits for room in his send queue, and
    # ends him as a slow consumer once it waited the idle timeout (he is not closed idle
    # while the replay runs: its wait is what bounds him). Once he reads, the close is 4004.
    node, url, bob_id, ids = await big_replay(start_node, **{"idle-timeout": 2})
    with trio.fail_after(20):
        async with small_buffers(node) as bob:
            await ready(bob)
            session = session_of(node, bob_id)
            await room_waits.setdefault(session.send_queue, RoomWait()).began.wait()
            await trio.testing.wait_all_tasks_blocked()
            jump_clock.jump(1.5)
            await trio.testing.wait_all_tasks_blocked()
            assert session.close_code is None
            jump_clock.jump(1)
            await trio.testing.wait_all_tasks_blocked()
            assert session.close_code is CloseCode.SLOW_CONSUMER
            assert not room_waits[session.send_queue].ended.is_set()
            assert (await bob.expect_closed(timeout=10)).code == int(CloseCode.SLOW_CONSUMER)
            assert {f["code"] for f in bob.backlog} == {"message"}


async def test_a_session_kicked_while_its_replay_waits_for_room_ends_the_replay_at_once(
        start_node, room_waits: dict[SendQueue, RoomWait]) -> None:
    # bob's `web` session is replaced (other-login) while its replay waits for him to read,
    # and he reads nothing: its close is queued, and the replay must see it at once. The
    # queued close woke nothing: the replay waited for the idle timeout (60 s) and then
    # closed him 4004 as a slow consumer, dropping `other-login` and its 4001.
    node, url, bob_id, ids = await big_replay(start_node)
    with trio.fail_after(30), capture_logs() as logs:
        async with small_buffers(node) as old:
            await ready(old, client="web", uuid="old")
            session = session_of(node, bob_id)
            wait = room_waits.setdefault(session.send_queue, RoomWait())
            await wait.began.wait()
            await trio.testing.wait_all_tasks_blocked()
            async with connect(url) as new:
                await new.login("bob")
                await new.send("ready", token=new.token, client="web", uuid="new")
                await new.expect("ready-ok")
                with trio.fail_after(5):
                    await wait.ended.wait()  # the close woke it, old read nothing
                await trio.testing.wait_all_tasks_blocked()
                assert session.holding is None  # the replay ended: released what it held
                assert (await old.expect_closed(timeout=20)).code == int(CloseCode.OTHER_LOGIN)
                codes = [f["code"] for f in old.backlog]
                assert codes[-1] == "other-login" and set(codes[:-1]) == {"message"}
    assert session.close_code is None
    assert not [e for e in logs if e["event"] == "slow_consumer_closed"]
