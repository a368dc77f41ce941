"""Typed errors, each saying who is at fault, translated exactly once where they enter.

- `ClientError` (the client sent something wrong): becomes a protocol `error` frame; the
  connection stays open.
- `Disconnect` (the connection must end): closes the WebSocket with its code.
- `StoreUnavailable` (infrastructure: a database or Redis is down): becomes
  `error unavailable`; nothing was accepted, so the client may retry.
- Store-level outcomes that are the client's fault (`Conflict`, `NotFound`) are raised by the
  adapters and turned into `ClientError` by the handlers.
"""

from __future__ import annotations

import enum


class ErrorKind(enum.Enum):
    """The `error` kinds of PROTOCOL.md §2.5; the value is the wire string."""

    BAD_FRAME = "bad-frame"
    UNKNOWN_CODE = "unknown-code"
    INVALID = "invalid"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not-found"
    NOT_MEMBER = "not-member"
    CONFLICT = "conflict"
    LOCKED = "locked"
    EXPIRED = "expired"
    TOO_LARGE = "too-large"
    RATE_LIMITED = "rate-limited"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class CloseCode(enum.IntEnum):
    """WebSocket close codes the node uses.

    1000-1015 are RFC 6455's; 4000-4099 are ours. All are documented in docs/protocol.md §4.
    """

    NORMAL = 1000
    GOING_AWAY = 1001  # idle timeout, node shutting down
    PROTOCOL_ERROR = 1002  # RFC 6455 broken: the frame parser refused it (node/ws_server.py)
    INVALID_DATA = 1007  # a text frame that is not UTF-8 (node/ws_server.py)
    POLICY = 1008
    TOO_BIG = 1009  # frame larger than vim.websocket.max-frame
    INTERNAL = 1011
    OTHER_LOGIN = 4001  # the same user logged in with the same client type elsewhere
    KICKED = 4002  # an operator ran `vim-cluster kick`
    AUTH_TIMEOUT = 4003  # not authenticated within 10 s
    SLOW_CONSUMER = 4004  # the client did not read its frames fast enough
    DRAINING = 4005  # an operator drained the node: reconnect to another node
    ACCOUNT_DELETED = 4006  # an operator ran `vim-cluster user delete` (the account is gone)


class VimError(Exception):
    """Base of every error this package raises on purpose."""


class ClientError(VimError):
    """The client is at fault; answered with a protocol `error` frame."""

    def __init__(self, kind: ErrorKind, detail: str) -> None:
        super().__init__(f"{kind.value}: {detail}")
        self.kind = kind
        self.detail = detail


class Disconnect(VimError):
    """The connection must be closed with `code`."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(f"{int(code)} {reason}")
        self.code = code
        self.reason = reason


class PeerClosed(Disconnect):
    """The peer closed the WebSocket with `peer_code` and `peer_reason`; `code` is our answer."""

    def __init__(self, peer_code: int, peer_reason: str) -> None:
        super().__init__(CloseCode.NORMAL, "closed by peer")
        self.peer_code = peer_code
        self.peer_reason = peer_reason


class StoreUnavailable(VimError):
    """A store (database, Redis) could not be reached or failed; nothing was written."""


class NodeDraining(StoreUnavailable):
    """The node drains (an operator) or stops: it opens no new session (close 4005: reconnect
    to another node). A StoreUnavailable, so that code that only knows those refuses too."""


DRAINING_DETAIL = "node draining: reconnect to another node"
UNAVAILABLE_DETAIL = "a store or the cluster is down: nothing was accepted; retry later"


class Conflict(VimError):
    """A uniqueness rule of a store was violated (e.g. the username exists)."""


class NotFound(VimError):
    """A referenced row does not exist."""


class ConfigError(VimError):
    """A node configuration problem: which file, which key, what is wrong."""

    def __init__(self, file: str, key: str, problem: str) -> None:
        super().__init__(f"{file}: {key}: {problem}")
        self.file = file
        self.key = key
        self.problem = problem
