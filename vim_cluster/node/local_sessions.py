"""LocalSessions: this node's sessions, user -> sessions, and non-blocking delivery to them.

Rules:
- `deliver` never blocks: a frame goes into each session's bounded SendQueue. A session whose
  queue is full keeps what comes next in its backlog, in order (every frame pushed to it goes
  behind the backlog until it is empty), and a task of its connection hands the backlog over
  as the client reads, leaving half the queue free (for its answers, as a catch-up does). So a
  burst of more than send-queue-frames (a slave resending its queue after a link cut, a catch-up
  released at once) does not close a client that reads promptly, and the forward link's reader
  never waits for one session. The backlog is bounded by the queue's byte limit (counted apart
  from the queue, with the frames a replay holds): past it, or when the client read nothing
  for its idle timeout while frames waited, it is a slow consumer and is closed 4004 (it gets
  everything again through offline replay, which lasts until it confirms).
- While a session replays its offline messages (`holding` is a list), live frames are held
  and released after the replay, so a device sees messages in order. They are held within
  its SendQueue's byte limit (counted apart from what the queue holds): more, and the session
  is a slow consumer too (a client that reads next to nothing keeps its replay going, and
  what is sent to it would pile up here). Not its frame limit: a client that reads a long
  replay at its own pace gets the live frames of that time (many small ones: receipts,
  presence) without being cut off, which would start its replay over.
"""

from __future__ import annotations

import collections
import math
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
    # Frames that came while its send queue was full, in order (see the rules); None: none wait
    backlog: collections.deque[OutFrame] | None = None
    backlog_bytes: int = 0  # of the frames in `backlog`
    idle_timeout: float = math.inf  # how long the backlog waits for the client to read anything

    def push(self, frame: OutFrame) -> None:
        if self.holding is not None:
            self.hold(frame)
        elif self.backlog is not None or not self.send_queue.push(frame):
            self.back_up(frame)

    def hold(self, frame: OutFrame) -> None:
        """Keeps `frame` until the replay ends, or closes a slow consumer (see the rules)."""
        holding, queue = self.holding, self.send_queue
        assert holding is not None
        size = len(frame.payload(queue.binary))
        if self.held_bytes + self.backlog_bytes + size > queue.byte_limit:
            self.slow_consumer()
            return
        self.held_bytes += size
        holding.append(frame)

    def back_up(self, frame: OutFrame) -> None:
        """Its send queue did not take `frame`, or frames wait in its backlog: `frame` waits
        after them, or the session is a slow consumer (see the rules)."""
        queue = self.send_queue
        size = len(frame.payload(queue.binary))
        if self.held_bytes + self.backlog_bytes + size > queue.byte_limit:
            self.slow_consumer()
            return
        if self.backlog is None:
            if not queue.start_soon(self._hand_over):
                return  # its connection ended: dropped (its replay brings it)
            self.backlog = collections.deque()
        self.backlog_bytes += size
        self.backlog.append(frame)

    async def _hand_over(self) -> None:
        """Moves the backlog into the send queue as the client reads, half the queue left free;
        a client that read nothing for the idle timeout meanwhile is a slow consumer."""
        queue = self.send_queue
        backlog = self.backlog
        try:
            while backlog:
                frame = backlog[0]
                size = len(frame.payload(queue.binary))
                if not queue.takes(1, size, spare=True):
                    with trio.move_on_after(self.idle_timeout) as waited:
                        await queue.freed()
                    if waited.cancelled_caught:
                        self.slow_consumer()
                        return
                    continue  # looks again (a close empties the backlog)
                backlog.popleft()
                self.backlog_bytes -= size
                if not queue.push(frame):  # a frame its queue never takes (larger than its bytes)
                    self.slow_consumer()
                    return
        finally:
            if self.backlog is backlog:
                self.backlog, self.backlog_bytes = None, 0

    def takes(self, frames: int, size: int) -> bool:
        """Whether `frames` more frames of `size` bytes in all go straight into its send queue
        with half of it still free (SendQueue.takes, `spare`): what a caller that can wait (a
        catch-up, the release of held packets) asks before it pushes."""
        queue = self.send_queue
        return queue.takes(frames, size, spare=True) and (self.backlog is None or queue.closing)

    async def room(self, frames: int, size: int) -> None:
        """Returns once it `takes` `frames` more frames of `size` bytes (the caller bounds the wait)."""
        while not self.takes(frames, size):
            await self.send_queue.freed()

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
        if self.backlog is not None:
            self.backlog.clear()  # its task ends
            self.backlog_bytes = 0
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
                    elif session.backlog is not None or not session.send_queue.push(frame):
                        session.back_up(frame)
                    delivered += 1
        return delivered

    async def room(self, user_ids: Iterable[int], frames: int, size: int, exclude: str | None = None) -> None:
        """Returns once every session of these users here (but `exclude`) `takes` `frames`
        more frames of `size` bytes: room in its send queue, half of it still free after them,
        and nothing in its backlog; a session whose offline replay runs holds them instead, and
        needs no room. The caller bounds the wait."""
        for user_id in user_ids:
            for session in self.sessions(user_id):
                if session.id != exclude and session.holding is None:
                    await session.room(frames, size)

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
