"""LocalSessions: this node's sessions, user -> sessions, and non-blocking delivery to them.

Rules:
- `deliver` never blocks: a frame goes into each session's bounded SendQueue; a session whose
  queue is full is a slow consumer and is closed (it gets everything again through offline
  replay, which lasts until it confirms).
- While a session replays its offline messages (`holding` is a list), live frames are held
  and released after the replay, so a device sees messages in order. They are held within
  its SendQueue's byte limit (counted apart from what the queue holds): more, and the session
  is a slow consumer too (a client that reads next to nothing keeps its replay going, and
  what is sent to it would pile up here). Not its frame limit: a client that reads a long
  replay at its own pace gets the live frames of that time (many small ones: receipts,
  presence) without being cut off, which would start its replay over.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs
import structlog
import trio

from ..errors import CloseCode
from ..protocol.codec import OutFrame
from .send_queue import Close, SendQueue

log = structlog.get_logger()


@attrs.define(eq=False)
class Session:
    id: str
    user_id: int
    client: str
    uuid: str | None
    send_queue: SendQueue
    cancel_scope: trio.CancelScope
    holding: list[OutFrame] | None = None
    held_bytes: int = 0  # of the frames in `holding`
    close_code: CloseCode | None = None
    wants_presence: bool = False  # asked for `contacts`: gets their live updates (presence)

    def push(self, frame: OutFrame) -> None:
        if self.holding is not None:
            self.hold(frame)
        elif not self.send_queue.push(frame):
            self.slow_consumer()

    def hold(self, frame: OutFrame) -> None:
        """Keeps `frame` until the replay ends, or closes a slow consumer (see the rules)."""
        holding, queue = self.holding, self.send_queue
        assert holding is not None
        size = len(frame.payload(queue.binary))
        if self.held_bytes + size > queue.byte_limit:
            self.slow_consumer()
            return
        self.held_bytes += size
        holding.append(frame)

    def slow_consumer(self) -> None:
        """Its queue is full: close it (it gets everything again through offline replay)."""
        log.warning("slow_consumer_closed", session_id=self.id, user_id=self.user_id)
        self.close_now(CloseCode.SLOW_CONSUMER)

    def kick(self, code: CloseCode, reason: str, frame: OutFrame | None = None) -> None:
        """Close this session after sending `frame`; immediately if its queue is full."""
        if not self.send_queue.close(Close(code, reason, frame)):
            self.close_now(code)

    def close_now(self, code: CloseCode) -> None:
        """Stop reading, drop what waits, close with `code` after the frame being sent."""
        self.close_code = code
        self.holding, self.held_bytes = None, 0  # nothing more is held for it (its queue drops it)
        self.cancel_scope.cancel()
        self.send_queue.abort(Close(code, code.name.lower().replace("_", "-")))


@attrs.define
class LocalSessions:
    _by_user: dict[int, dict[str, Session]] = attrs.Factory(dict)
    _count: int = 0
    _emptied: trio.Event | None = None

    async def wait_empty(self) -> None:
        """Returns once no session is left (at once if none is)."""
        while self._count:
            if self._emptied is None:
                self._emptied = trio.Event()
            await self._emptied.wait()

    def add(self, session: Session) -> None:
        sessions = self._by_user.setdefault(session.user_id, {})
        if session.id not in sessions:
            sessions[session.id] = session
            self._count += 1

    def remove(self, session: Session) -> None:
        sessions = self._by_user.get(session.user_id)
        if sessions and sessions.pop(session.id, None) is not None:
            self._count -= 1
            if not sessions:
                del self._by_user[session.user_id]
            if not self._count and self._emptied is not None:
                self._emptied.set()
                self._emptied = None

    def sessions(self, user_id: int) -> list[Session]:
        return list(self._by_user.get(user_id, {}).values())

    def users(self) -> list[int]:
        return list(self._by_user)

    def has_user(self, user_id: int) -> bool:
        return user_id in self._by_user

    def has_any(self, user_ids: Iterable[int]) -> bool:
        """Whether any of these users has a session here."""
        return not self._by_user.keys().isdisjoint(user_ids)

    def deliver(self, user_ids: Iterable[int], frame: OutFrame, exclude: str | None = None) -> int:
        """Queue `frame` to every local session of the users but `exclude`; returns how many."""
        delivered = 0
        by_user = self._by_user
        for user_id in user_ids:
            sessions = by_user.get(user_id)
            if sessions is None:  # not on this node (most of a group's members)
                continue
            for session in sessions.values():
                if session.id != exclude:
                    # Session.push inlined: this runs once per copy of a group message.
                    if session.holding is not None:
                        session.hold(frame)
                    elif not session.send_queue.push(frame):
                        session.slow_consumer()
                    delivered += 1
        return delivered

    async def room(self, user_ids: Iterable[int], frames: int, size: int, exclude: str | None = None) -> None:
        """Returns once the send queue of every session of these users here (but `exclude`)
        takes `frames` more frames of `size` bytes, half of it still free after them
        (SendQueue.room, `spare`); a session whose offline
        replay runs holds them instead, and needs no room. The caller bounds the wait."""
        for user_id in user_ids:
            for session in self.sessions(user_id):
                if session.id != exclude and session.holding is None:
                    await session.send_queue.room(frames, size, spare=True)

    def deliver_to_presence_watchers(self, frame: OutFrame) -> int:
        """Queue `frame` to every local session that asked for `contacts`; returns how many."""
        delivered = 0
        for sessions in self._by_user.values():
            for session in sessions.values():
                if session.wants_presence:
                    session.push(frame)
                    delivered += 1
        return delivered

    def __len__(self) -> int:
        return self._count
