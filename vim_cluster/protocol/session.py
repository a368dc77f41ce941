"""Per-connection client state (ClientState): which commands a connection may send, and when it must go.

States and transitions (data, as in h11's _state.py):

    ANONYMOUS --login-ok/register-ok--> ANONYMOUS   (still not authenticated)
    ANONYMOUS --ready-ok--------------> READY
    ANONYMOUS --handshake token-------> AUTHENTICATED
    AUTHENTICATED --ready-ok----------> READY
    any -------------close------------> CLOSED

Rules:
- ANONYMOUS accepts only ping, register, login and ready; anything else is `unauthorized`.
- A connection still ANONYMOUS `auth_timeout` seconds (Tunables.client_auth_timeout_s, 10) after
  it opened must be closed.
- `ready` is accepted once.
- No idle deadline while the connection's offline replay runs (`replaying`): the replay's own
  wait for the client to read bounds it (node/offline_replay.py); the idle timer restarts when
  the replay ends.
"""

from __future__ import annotations

import enum

import attrs

from ..core.limits import RateWindow
from ..errors import ClientError, ErrorKind
from ..tunables import DEFAULTS
from . import frames as f

# The deadline while the offline replay runs: never reached, yet not math.inf, which the reader
# sets once a frame came (node/serve.py): a finite deadline tells that the reader waits for a
# frame, and the replay's end arms the idle deadline there (Connection.replay_ended).
REPLAYING = 2.0 ** 60


class Phase(enum.Enum):
    ANONYMOUS = "anonymous"
    AUTHENTICATED = "authenticated"
    READY = "ready"
    CLOSED = "closed"


ALLOWED: dict[Phase, tuple[type[f.Command], ...] | None] = {
    Phase.ANONYMOUS: (f.RawPing, f.Ping, f.Register, f.Login, f.Ready),
    Phase.AUTHENTICATED: None,  # None: every command
    Phase.READY: None,
    Phase.CLOSED: (),
}

TRANSITIONS: dict[tuple[Phase, str], Phase] = {
    (Phase.ANONYMOUS, "handshake"): Phase.AUTHENTICATED,
    (Phase.ANONYMOUS, "ready"): Phase.READY,
    (Phase.AUTHENTICATED, "ready"): Phase.READY,
}


@attrs.define
class ClientState:
    opened_at: float
    rate: RateWindow
    idle_timeout: float
    phase: Phase = Phase.ANONYMOUS
    user_id: int | None = None
    last_frame_at: float = attrs.field(default=None)
    auth_timeout: float = attrs.field(default=DEFAULTS.client_auth_timeout_s, kw_only=True)
    replaying: bool = attrs.field(default=False, kw_only=True)  # its offline replay runs: not idle

    def __attrs_post_init__(self) -> None:
        if self.last_frame_at is None:
            self.last_frame_at = self.opened_at

    def deadline(self) -> float:
        """When the connection must be closed if no frame arrives before (REPLAYING, never,
        while its offline replay runs)."""
        idle = REPLAYING if self.replaying else self.last_frame_at + self.idle_timeout
        if self.phase is Phase.ANONYMOUS:
            return min(idle, self.opened_at + self.auth_timeout)
        return idle

    def room_deadline(self, now: float) -> float:
        """Until when an answer may wait for room among the frames the client has not read
        (node/connection.py): the idle timeout, and no later than the authentication
        deadline while the client is anonymous."""
        if self.phase is Phase.ANONYMOUS:
            return min(now + self.idle_timeout, self.opened_at + self.auth_timeout)
        return now + self.idle_timeout

    def replay_ended(self, now: float) -> None:
        """Its offline replay ended: the idle timer restarts `now` (the client was reading it)."""
        self.replaying = False
        self.last_frame_at = max(self.last_frame_at, now)

    def auth_expired(self, now: float) -> bool:
        return self.phase is Phase.ANONYMOUS and now >= self.opened_at + self.auth_timeout

    def frame_received(self, now: float) -> bool:
        """Record a frame; False when it exceeds the rate limit (answer rate-limited)."""
        self.last_frame_at = now
        return self.rate.admit(now)

    def check(self, command: f.Command) -> None:
        """Raise ClientError if this command is not allowed now."""
        allowed = ALLOWED[self.phase]
        if allowed is not None and not isinstance(command, allowed):
            raise ClientError(ErrorKind.UNAUTHORIZED, "authenticate first: login, then ready")
        if isinstance(command, f.Ready) and self.phase is Phase.READY:
            raise ClientError(ErrorKind.INVALID, "this connection is ready already")

    def transition(self, event: str, user_id: int) -> None:
        try:
            self.phase = TRANSITIONS[(self.phase, event)]
        except KeyError:
            raise RuntimeError(f"no transition from {self.phase} on {event}") from None
        self.user_id = user_id

    @property
    def authenticated(self) -> bool:
        return self.phase in (Phase.AUTHENTICATED, Phase.READY)

    def close(self) -> None:
        self.phase = Phase.CLOSED
