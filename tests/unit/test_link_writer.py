"""The forward link's writer task (node/link.py `_writer`), driven with a fake connection and
socket: what it sends, and that it opens a cancel scope only when it has to wait (issue 12: a
scope costs more than encoding a small batch, and under load packets wait at every turn)."""

from __future__ import annotations

from typing import Any, cast

import pytest
import trio

from vim_cluster.node import link
from vim_cluster.protocol.forward_connection import Flush, Heartbeat
from vim_cluster.tunables import DEFAULTS


class FakeConnection:
    """Batches waiting to be sent (`unsent`), each sent whole by one Flush."""

    def __init__(self, batches: int) -> None:
        self.unsent = batches
        self.sent: list[str] = []

    def has_unsent(self) -> bool:
        return self.unsent > 0

    def ack_moved(self) -> bool:
        return False

    def send(self, what: Any) -> bytes:
        if isinstance(what, Flush):
            self.unsent -= 1
            self.sent.append("batch")
        else:
            assert isinstance(what, Heartbeat)
            self.sent.append("beat")
        return b"x"


class FakeSocket:
    def __init__(self) -> None:
        self.messages = 0

    async def send_message(self, message: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self.messages += 1


@pytest.fixture
def scopes(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The timeouts of the cancel scopes `trio.move_on_after` opened (link.py calls it)."""
    opened: list[float] = []
    real = trio.move_on_after

    def counting(seconds: float, **kwargs: Any) -> trio.CancelScope:
        opened.append(seconds)
        return real(seconds, **kwargs)

    monkeypatch.setattr(trio, "move_on_after", counting)
    return opened


async def test_waiting_batches_go_out_without_a_cancel_scope_each(scopes: list[float], autojump_clock: Any) -> None:
    conn, ws = FakeConnection(batches=5), FakeSocket()
    peer: link.PeerLink[Any] = link.PeerLink("dept-1", cast(Any, None), cast(Any, None))  # the writer uses `wake` only
    with trio.fail_after(DEFAULTS.link_beat_s * 1.5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link._writer, cast(Any, ws), cast(Any, conn), peer, None, DEFAULTS)
            while conn.unsent:
                await trio.sleep(0.001)
            await trio.sleep(DEFAULTS.link_beat_s * 1.25)  # idle: one heartbeat
            nursery.cancel_scope.cancel()
    assert conn.sent == ["batch"] * 5 + ["beat"]
    assert ws.messages == 6
    # One scope for the idle wait that ended in the heartbeat, one for the wait after it; a
    # scope per turn (before) is seven.
    assert scopes == [DEFAULTS.link_beat_s] * 2
