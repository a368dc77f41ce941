"""The connection outbox (vim_cluster.node.outbox) against a stand-in WebSocket that records
what is sent and can be made to block or fail: order, the on-demand writer, limits, close."""

from __future__ import annotations

import pytest
import trio
from trio_websocket import CloseReason, ConnectionClosed

from vim_cluster.errors import CloseCode
from vim_cluster.node import outbox as outbox_module
from vim_cluster.node.outbox import Close, Outbox
from vim_cluster.protocol import frames as f
from vim_cluster.protocol.codec import OutFrame


class Socket:
    """What Outbox uses of a trio-websocket connection; `gate` holds sends back when closed."""

    def __init__(self) -> None:
        self.sent: list[str | bytes] = []
        self.closed: tuple[int, str] | None = None
        self.gate = trio.Event()
        self.gate.set()
        self.fail = False

    async def send_message(self, data: str | bytes) -> None:
        await self.gate.wait()
        if self.fail:
            raise ConnectionClosed(CloseReason(1006, "gone"))
        self.sent.append(data)

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed = (code, reason or "")


def frame(n: int) -> OutFrame:
    return OutFrame(f.Pong(n))


def pongs(sent: list[str | bytes]) -> list[int]:
    import json

    return [json.loads(s)["message"]["ts"] for s in sent]


@pytest.fixture(autouse=True)
def short_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outbox_module, "LINGER_S", 0.05)


async def test_frames_go_out_in_order_and_the_writer_exists_only_while_there_is_work() -> None:
    ws = Socket()
    box = Outbox(ws, limit=100)  # type: ignore[arg-type]
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            box.attach(nursery, nursery.cancel_scope)
            assert len(nursery.child_tasks) == 0  # idle: no writer task
            for n in range(5):
                assert box.push(frame(n))
            box.append(frame(5))
            assert len(nursery.child_tasks) == 1
            await trio.sleep(0.01)
            assert pongs(ws.sent) == [0, 1, 2, 3, 4, 5]
            await trio.sleep(0.2)  # longer than LINGER_S: the writer has ended
            assert len(nursery.child_tasks) == 0
            assert box.push(frame(6))  # and starts again for the next frame
            await trio.sleep(0.01)
            assert pongs(ws.sent) == [0, 1, 2, 3, 4, 5, 6]
            nursery.cancel_scope.cancel()


async def test_frames_queued_before_attach_are_sent_once_attached() -> None:
    ws = Socket()
    box = Outbox(ws, limit=10)  # type: ignore[arg-type]
    box.append(frame(1))
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            box.attach(nursery, nursery.cancel_scope)
            await trio.sleep(0.01)
            assert pongs(ws.sent) == [1]
            nursery.cancel_scope.cancel()


async def test_a_full_outbox_refuses_pushes_but_not_replies_and_room_waits_for_the_writer() -> None:
    ws = Socket()
    ws.gate = trio.Event()  # the peer reads nothing
    box = Outbox(ws, limit=3)  # type: ignore[arg-type]
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            box.attach(nursery, nursery.cancel_scope)
            assert box.push(frame(0))
            await trio.sleep(0.01)  # the writer took frame 0 and blocks sending it
            assert all(box.push(frame(n)) for n in (1, 2, 3))
            assert not box.push(frame(4))  # three wait: a slow consumer
            box.append(frame(5))  # the connection's own replies are bounded elsewhere
            assert len(box) == 4
            waited = trio.Event()

            async def wait_for_room() -> None:
                await box.room()
                waited.set()

            nursery.start_soon(wait_for_room)
            await trio.sleep(0.01)
            assert not waited.is_set()
            ws.gate.set()
            await waited.wait()
            await trio.sleep(0.01)
            assert pongs(ws.sent) == [0, 1, 2, 3, 5]
            nursery.cancel_scope.cancel()


async def test_close_sends_its_frame_then_closes_and_ends_the_connection_scope() -> None:
    ws = Socket()
    box = Outbox(ws, limit=10)  # type: ignore[arg-type]
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            box.attach(nursery, nursery.cancel_scope)
            box.push(frame(1))
            assert box.close(Close(CloseCode.OTHER_LOGIN, "other login", frame(2)))
            assert box.push(frame(3))  # after the close: dropped, not refused
            await trio.sleep_forever()
    assert nursery.cancel_scope.cancelled_caught
    assert pongs(ws.sent) == [1, 2]
    assert ws.closed == (int(CloseCode.OTHER_LOGIN), "other login")


async def test_close_is_refused_when_the_outbox_is_full() -> None:
    ws = Socket()
    ws.gate = trio.Event()
    box = Outbox(ws, limit=1)  # type: ignore[arg-type]
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            box.attach(nursery, nursery.cancel_scope)
            box.push(frame(0))
            await trio.sleep(0.01)
            box.push(frame(1))
            assert not box.close(Close(CloseCode.OTHER_LOGIN, "other login"))
            nursery.cancel_scope.cancel()


async def test_a_peer_gone_while_sending_ends_the_connection_scope() -> None:
    ws = Socket()
    ws.fail = True
    box = Outbox(ws, limit=10)  # type: ignore[arg-type]
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            box.attach(nursery, nursery.cancel_scope)
            box.push(frame(1))
            await trio.sleep_forever()
    assert nursery.cancel_scope.cancelled_caught
    assert box.push(frame(2)) and len(box) == 0  # closing: nothing queues any more


async def test_a_byte_limit_refuses_pushes_counting_the_frame_being_written_until_it_is() -> None:
    """A client that stops reading holds at most `byte_limit` bytes, whatever the frame count."""
    ws = Socket()
    ws.gate = trio.Event()  # the peer reads nothing
    size = len(frame(0).encoded(False))
    box = Outbox(ws, limit=100, byte_limit=3 * size)  # type: ignore[arg-type]
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            box.attach(nursery, nursery.cancel_scope)
            assert box.push(frame(0))
            await trio.sleep(0.01)  # the writer took frame 0 and blocks sending it: still counted
            assert box.push(frame(1)) and box.push(frame(2))
            assert not box.push(frame(3))  # 3 frames' bytes wait: a slow consumer
            ws.gate.set()
            await trio.sleep(0.01)
            assert pongs(ws.sent) == [0, 1, 2]
            assert all(box.push(frame(n)) for n in (4, 5, 6))  # written: the bytes are free again
            nursery.cancel_scope.cancel()
