"""Catch-up: what a node's sessions may have missed while its cluster link was down.

While a node is not linked to the active master (starting, a master restarted or failed over,
a link cut), the master has no route to the node's sessions: messages stored elsewhere for
their users meanwhile are relayed nowhere (and acked to their senders as done). So when the
link comes up (and when a node starts relaying as the master), the node re-delivers to its
local sessions, from the store, every message for their users since the link went down (or
the node started) minus Tunables.catch_up_margin_ms. The same runs when the master says that a
slave died or restarted while it may have held packets it had not relayed (a `CatchUp` packet,
node/forward_hub.py): its senders' messages were acked and stored, and then relayed nowhere.
What is re-delivered:
- friend messages: the unconfirmed (offline-set) rows of the user whose ids were minted since
  then (`ids.first_id_at`): older ones were relayed while the link was up, and a user whose
  devices confirm nothing would otherwise get all of them again at every link-up (more than
  a send queue holds: closed 4004), read from the store for every online user;
- group messages: those of the user's groups by timestamp, NOT limited by the read cursor (a
  client's `read` of a later message moves the cursor past the ones it missed);
- the user's own messages (friend and group) minted since then by other processes
  (`MessageStore.sent_after`): the copies for its devices here of what it sent from devices
  elsewhere (PROTOCOL.md: the sender's other sessions get the same frame), lost with the
  packets the catch-up stands for. What this process minted is not sent back: it went to the
  user's sessions here when it was sent (`LeasedIds.minted_here`).
Clients drop duplicates by id. To keep each sender's order, the caller delivers the catch-up
before any packet that arrives on the new link (node/forward_link.py holds them meanwhile).
A session gets the catch-up as fast as its send queue takes it: before each frame the run
waits for room there (pushed in one go, more than send-queue-frames closed a client 4004 even
while it read promptly), for the idle timeout at most: a session that took nothing for so long
is closed 4004 (its messages come with its next login's replay), and the run goes on.
USERS_AT_ONCE users are caught up at once, so such a session holds up only its own user's
(each user's messages still go out in order); as many sessions that read nothing hold up the
run that long (the held packets go out beside it after link_warmup_s).
Before re-delivering, a run checks its sessions' users with the directory and empties the
node's cache of existing users: `user delete` tells the nodes through the master, which cannot
reach a node that is not linked (cut off, frozen past its lease), so an account deleted
meanwhile has its sessions here closed with 4006, and its token is refused here from then on.
A run that the store fails (StoreUnavailable) is tried again while the link stays up, after
catch_up_retry_s doubling up to RETRY_CAP_S, with jitter (`run_until_done`): a session that
stays connected would otherwise miss those messages until it logs in again. Packets held for
it go out at its first failure, since a store that does not answer delivers nothing before
them; what a later try delivers may come after newer messages (never lost). When the link
goes down instead, the next link-up runs it. A run that fails otherwise (a bug, data it cannot
read) is given up: its messages come with the next login's offline replay.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

import structlog
import trio

from ..core.backoff import Backoff
from ..core.paging import merge_pages
from ..errors import CloseCode, StoreUnavailable
from ..ids import first_id_at
from ..model import GroupId, MessageId, UserId
from ..protocol import frames as f
from ..protocol.codec import OutFrame
from ..tunables import DEFAULTS

if TYPE_CHECKING:
    from .context import NodeContext
    from .local_sessions import Session

log = structlog.get_logger()
RETRY_CAP_S = 30.0  # the longest wait between two tries of a failed catch-up
# Users whose catch-up runs at once: a session that waits for room (up to the idle timeout)
# holds up one of them, not every user after it; each holds one page of the store meanwhile.
USERS_AT_ONCE = 8


class CatchUpRun(Protocol):
    """A CatchUp, as the forward link and the relay use it (tests give their own)."""

    last_failed: bool  # the last run failed (or was cut short): it is still to do

    def lost(self) -> None: ...

    def missed_since(self, since_ms: int) -> None: ...

    async def run(self) -> int: ...

    async def run_until_done(self, failed: trio.Event | None = None) -> int: ...


class CatchUp:
    """When the node's sessions may have started missing relayed messages (`down_since`, ms;
    None: linked and caught up), and the catch-up run at each link-up."""

    def __init__(self, deliver_since: Callable[[int], Awaitable[int]], clock_ms: Callable[[], int],
                 margin_ms: int = DEFAULTS.catch_up_margin_ms,
                 retry_s: float = DEFAULTS.catch_up_retry_s) -> None:
        self.deliver_since = deliver_since  # re-delivers messages stored since (ms); returns how many
        self.clock_ms = clock_ms
        # A packet may reach the master (and be dropped for want of a route) well after its message
        # was stored: a sender's node queues its packets while its own link is down and resends them.
        self.margin_ms = margin_ms
        self.down_since: int | None = clock_ms()  # the node starts unlinked
        self.retry_s = retry_s
        self.runs = 0
        self.failures = 0
        self.last_failed = False  # the last run failed (or was cut short): it is still to do
        self._one = trio.Lock()  # one run at a time: two would interleave their users' pages
        self._retrying = False  # a run_until_done is trying again

    def lost(self) -> None:
        """The link (or the relay) went down: sessions may miss relayed messages from now on."""
        if self.down_since is None:
            self.down_since = self.clock_ms()

    def missed_since(self, since_ms: int) -> None:
        """Sessions may have missed relayed messages since `since_ms` (another node died with
        packets it had not relayed: a `CatchUp` packet), whatever this node's link did."""
        self._restore(since_ms)

    def _restore(self, down: int) -> None:
        self.down_since = down if self.down_since is None else min(down, self.down_since)

    async def run(self) -> int:
        """The link is up: re-deliver what may have been missed since it went down, after any
        run already going. A run the store fails is logged and left to do (`last_failed`): for
        `run_until_done`, or the next link-up. One that crashes otherwise is logged with its
        range and given up: tried again, it would crash again (and a range kept for days would
        re-send days)."""
        async with self._one:
            down, self.down_since = self.down_since, None
            self.last_failed = False
            if down is None:
                return 0
            since = down - self.margin_ms
            try:
                sent = await self.deliver_since(since)
            except StoreUnavailable as exc:  # tried again: run_until_done, the next link-up
                self._restore(down)
                self.failures += 1
                self.last_failed = True
                log.warning("catch_up_failed", since_ms=since, error=str(exc))
                return 0
            except Exception:  # noqa: BLE001 - a bug, or data a retry would not mend: not tried again
                self.failures += 1  # its range is given up: those messages come at the next login's replay
                log.exception("catch_up_crashed", since_ms=since)
                return 0
            except BaseException:  # cancelled: the next link-up runs it again
                self._restore(down)
                raise
            self.runs += 1
            log.info("catch_up_done", since_ms=since, messages=sent)
            return sent

    async def run_until_done(self, failed: trio.Event | None = None) -> int:
        """`run`, then again while it fails, after retry_s doubling up to RETRY_CAP_S, until
        the caller cancels it (its link went down: the next link-up runs it). `failed` is set
        at the first failure: what waits for the catch-up need not wait for the store to come
        back. Returns what the run that succeeded sent (0 when another call's tries go on)."""
        sent = await self.run()
        if not self.last_failed:
            return sent
        if failed is not None:
            failed.set()
        if self._retrying:  # another call tries again already, and covers this one's loss
            return 0
        self._retrying = True
        try:
            backoff = Backoff(base=self.retry_s, cap=max(self.retry_s, RETRY_CAP_S))
            while self.last_failed:
                delay = backoff.next_delay()
                log.info("catch_up_retry", in_s=round(delay, 2), failures=self.failures)
                await trio.sleep(delay)
                sent = await self.run()
            return sent
        finally:
            self._retrying = False


async def deliver_since(ctx: NodeContext, since_ms: int) -> int:
    """Pushes to every local session the stored messages for its user since `since_ms` (see
    the module's rules), oldest first; returns the frames pushed. Users deleted meanwhile are
    dropped first (`drop_deleted_users`)."""
    await drop_deleted_users(ctx)
    pushed = 0
    failed: list[StoreUnavailable] = []
    slots = trio.Semaphore(USERS_AT_ONCE)

    async def one_user(user_id: UserId) -> None:
        nonlocal pushed
        try:
            user_pushed = await _user_since(ctx, user_id, since_ms)
            pushed += user_pushed  # not `pushed += await ...`: that reads `pushed` before the wait
        except StoreUnavailable as exc:  # the run fails as a whole (CatchUp.run tries it again)
            failed.append(exc)
            nursery.cancel_scope.cancel()
        finally:
            slots.release()

    async with trio.open_nursery() as nursery:
        for user_id in ctx.local_sessions.users():
            await slots.acquire()
            nursery.start_soon(one_user, UserId(user_id))
    if failed:
        raise failed[0]
    return pushed


async def drop_deleted_users(ctx: NodeContext) -> int:
    """Closes (4006) the local sessions of users the directory no longer has, and empties the
    cache of existing users (`known_users`: it refills as handlers look users up), so that a
    deleted user's token is refused here: what a kick of `user delete` does, for a deletion
    whose kick never reached this node. One directory read per 500 connected users, none per
    cached one. Returns the users whose sessions were closed."""
    ctx.known_users.clear()
    users = ctx.local_sessions.users()
    if not users:
        return 0
    found = await ctx.db(ctx.directory.users_by_id, [UserId(u) for u in users])
    gone = sorted(set(users) - set(found))
    for user in gone:
        closed = ctx.delivery.local.kick_local(user, None, CloseCode.ACCOUNT_DELETED, None)
        log.warning("deleted_user_dropped", user_id=user, sessions_closed=closed)
    return len(gone)


async def _user_since(ctx: NodeContext, uid: UserId, since_ms: int) -> int:
    groups = await ctx.db(ctx.directory.groups_of, uid)
    cursors: dict[GroupId, int] = {g.id: since_ms for g in groups}
    after = MessageId(0)
    first = MessageId(first_id_at(since_ms) - 1)  # friend messages minted since `since_ms`
    pushed = 0
    while True:
        size = ctx.tunables.replay_page
        friends = await ctx.store(ctx.messages.pending, uid, max(after, first), size)
        grouped = await ctx.store(ctx.messages.group_messages_after, cursors, after, size) if cursors else []
        own = await ctx.store(ctx.messages.sent_after, uid, max(after, first), size)
        page, _ = merge_pages([friends, grouped, own], size)
        if not page:
            return pushed
        for message in page:
            if message.from_id == uid and ctx.ids.minted_here(message.id):
                continue
            frame = OutFrame(f.MessageOut(message, offline=True))
            for session in ctx.local_sessions.sessions(uid):
                await _room(ctx, session, frame)
                session.push(frame)
                pushed += 1
        after = MessageId(page[-1].id)


async def _room(ctx: NodeContext, session: Session, frame: OutFrame) -> None:
    """Waits until `session` takes `frame` (its send queue, with nothing in its backlog:
    Session.takes), for the idle timeout at most: a session that took nothing for so long is
    a slow consumer (closed 4004; its messages come with its next login's replay), and the
    catch-up goes on. Without the wait, a catch-up of more than send-queue-frames messages for
    one user went into its backlog at once, which then could pass its bytes. No wait for a
    session whose offline replay runs: it holds the frame."""
    size = len(frame.payload(session.send_queue.binary))
    if session.holding is not None or session.takes(1, size):
        return
    with trio.move_on_after(ctx.config.websocket.idle_timeout) as waited:
        await session.room(1, size)
    if waited.cancelled_caught:
        session.slow_consumer()
