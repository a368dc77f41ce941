"""Where frames go: this node's sessions and, through the cluster link, every other node's.

`to_users` is the one call handlers make; it never blocks and never waits on the network.
`apply_deliver`/`apply_kick` carry out packets that arrived over the forward channel.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, Protocol

import attrs

from ..core import presence
from ..core.presence import Change
from ..errors import CloseCode
from ..protocol.codec import OutFrame
from ..protocol.forward_frames import ForwardProtocolError
from ..protocol.frames import PresenceOut, RawReply, Reply
from .local_sessions import LocalSessions, Session
from .metrics import NodeMetrics


class ClusterLink(Protocol):
    """The node's side of the forward channel (slave link or master hub). Never blocks."""

    def deliver(self, users: list[int], frame: OutFrame, exclude: str | None) -> None: ...

    def kick(self, dst: str, user: int, session: str | None, code: CloseCode, notice: OutFrame | None) -> None: ...

    def session_opened(self, session: Session) -> None: ...

    def session_closed(self, session: Session) -> None: ...

    def queue_depth(self) -> int: ...

    def healthy(self) -> bool: ...


class LocalOnly:
    """No cluster (not used by running nodes: a master alone is a MasterHub with no peers)."""

    def deliver(self, users: list[int], frame: OutFrame, exclude: str | None) -> None:
        return None

    def kick(self, dst: str, user: int, session: str | None, code: CloseCode, notice: OutFrame | None) -> None:
        return None

    def session_opened(self, session: Session) -> None:
        return None

    def session_closed(self, session: Session) -> None:
        return None

    def queue_depth(self) -> int:
        return 0

    def healthy(self) -> bool:
        return True


@attrs.define
class Delivery:
    node_id: str
    hub: LocalSessions
    metrics: NodeMetrics
    cluster: ClusterLink = attrs.Factory(LocalOnly)
    # Called with a user id when an operator deleted that account (kick code 4006), so the
    # node stops trusting its cache of existing users for it.
    forget_user: Callable[[int], None] = lambda user: None

    def to_users(self, users: Collection[int], reply: Reply, exclude: str | None = None) -> OutFrame:
        frame = OutFrame(reply)
        self.metrics.frames_out.inc(self.hub.deliver(users, frame, exclude=exclude))
        self.cluster.deliver(list(users), frame, exclude)
        return frame

    def kick(self, node: str, user: int, session: str | None, code: CloseCode, notice: OutFrame | None) -> None:
        if node == self.node_id:
            self.kick_local(user, session, code, notice)
        else:
            self.cluster.kick(node, user, session, code, notice)

    def kick_local(self, user: int, session: str | None, code: CloseCode, notice: OutFrame | None) -> int:
        kicked = 0
        for local in self.hub.sessions(user):
            if session is None or local.id == session:
                local.kick(code, CloseCode(code).name.lower().replace("_", "-"), notice)
                kicked += 1
        return kicked

    def apply_deliver(self, users: tuple[int, ...], frame: dict[str, Any], exclude: str | None, ts: int,
                      now_ms: int) -> OutFrame:
        out = OutFrame(RawReply(frame))
        self.metrics.frames_out.inc(self.hub.deliver(users, out, exclude=exclude))
        self.metrics.relay_delivered(max(0, now_ms - ts) / 1000)
        return out

    def presence_local(self, changes: list[Change]) -> int:
        """Announce presence changes to every local session that asked for `contacts` (the
        snapshot presence keeps up to date); returns the frames queued."""
        queued = 0
        for chunk in presence.chunks(changes):
            queued += self.hub.deliver_to_presence_watchers(OutFrame(PresenceOut(chunk)))
        self.metrics.frames_out.inc(queued)
        self.metrics.presence_frames.inc(queued)
        return queued

    def apply_presence(self, changes: list[list[Any]]) -> int:
        """A `presence` packet from the master."""
        try:
            parsed = [Change(int(u), bool(online), str(node) if node is not None else None)
                      for u, online, node in changes]
        except (TypeError, ValueError) as exc:
            raise ForwardProtocolError(f"bad presence changes: {exc}") from None
        return self.presence_local(parsed)

    def apply_kick(self, user: int, session: str | None, code: int, notice: dict[str, Any] | None) -> None:
        try:
            close_code = CloseCode(code)
        except ValueError:
            raise ForwardProtocolError(f"kick with an unknown close code {code}") from None
        frame = OutFrame(RawReply(notice)) if notice else None
        if close_code is CloseCode.ACCOUNT_DELETED:
            self.forget_user(user)
        self.kick_local(user, session, close_code, frame)
