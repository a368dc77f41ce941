"""The connection caps at a port's accept (core/conn_caps.py decides; this answers, counts
and logs the refusals).

Rules:
- `Admission.admit(remote)` runs at the accept, before a byte is read: a `Slot` for a
  connection within the caps (released when its socket closes), or a `Refusal`.
- A refused connection gets one HTTP answer, written before anything of its request is
  read: `429 Too Many Requests` for an address over its cap (of connections, or of
  unauthenticated ones), `503 Service Unavailable` for a port at its node-wide cap; each with
  `Retry-After` (seconds), `Connection: close` and a one-line body that begins
  `connection limit:` (what tells it from the port's other refusals). Then our side ends, and
  what the client sent is read and dropped until its close, for REFUSAL_LINGER_S at most (so
  the client reads the answer, not a reset).
- At most ANSWERING refusals of a port are being answered at once (a TLS handshake, the
  linger); past those, a refused connection is closed at once without an answer: a flood from
  many addresses costs the node no more than that.
- Each refusal counts in `vim_connections_refused_total{port, reason}`; it is logged at debug
  (`connection_refused`), and at most once a minute per port as a warning
  (`connections_refused`, with how many since the last one): anyone can cause them.
"""

from __future__ import annotations

import resource

import structlog
import trio

from ..config import NodeConfig
from ..core.conn_caps import ConnectionCaps, Refusal, Slot, loopback_key
from ..core.lockout import source_key
from .metrics import Count, NodeMetrics

log = structlog.get_logger()
ANSWERING = 64  # refusals of one port answered at once
REFUSAL_LINGER_S = 1.0  # to write the answer and drop what the client still sends
WARN_EVERY_S = 60.0
RESERVE_FILES = 1024  # descriptors the node keeps for the rest (stores, Redis, the other ports)
STATUS = {Refusal.ADDRESS: 429, Refusal.PENDING: 429, Refusal.NODE: 503}
# Pending connections end within the authentication deadline (10 s); others may last for hours.
RETRY_AFTER = {Refusal.ADDRESS: 60, Refusal.PENDING: 10, Refusal.NODE: 60}
PHRASE = {429: "Too Many Requests", 503: "Service Unavailable"}


def default_total(open_files: int | None = None) -> int:
    """The client port's node-wide cap unless configured: the open-files limit in force, less
    what the node needs besides (RESERVE_FILES, or a quarter of a small limit), so that a
    flood of connections leaves it the descriptors its stores, Redis and other ports need."""
    if open_files is None:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        open_files = 1 << 20 if soft == resource.RLIM_INFINITY else soft
    return max(1, open_files - min(RESERVE_FILES, open_files // 4))


class Admission:
    """One port's caps, its refusals' counter and their log."""

    def __init__(self, port: str, caps: ConnectionCaps, refused: dict[Refusal, Count],
                 extra_headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.port = port
        self.caps = caps
        self.refused = refused
        self.extra_headers = extra_headers  # the HTTP port's: every answer of it carries them
        self.answering = 0
        self._warned_at = -WARN_EVERY_S
        self._unwarned = 0

    @classmethod
    def for_port(cls, port: str, config: NodeConfig, metrics: NodeMetrics, *, per_address: bool = True,
                 total: bool = False, extra_headers: tuple[tuple[str, str], ...] = ()) -> Admission:
        """The caps of a port by the config: the unauthenticated cap always; the per-address
        one when `per_address` (not the forward port: its authenticated nodes are never
        capped); the node-wide one when `total` (the client port)."""
        settings = config.websocket.caps
        cap_total = (settings.total or default_total()) if total else None
        caps = ConnectionCaps(per_address=settings.per_address if per_address else None,
                              pending_per_address=settings.unauthenticated_per_address, total=cap_total,
                              exempt=_never if settings.count_loopback else loopback_key)
        return cls(port, caps, metrics.refusals(port), extra_headers)

    def admit(self, remote: str) -> Slot | Refusal:
        """At the accept: the connection's slot, or the refusal (counted and logged)."""
        key = source_key(remote)
        admitted = self.caps.admit(key)
        if isinstance(admitted, Slot):
            return admitted
        self.refused[admitted].inc()
        log.debug("connection_refused", port=self.port, remote=remote, reason=admitted.name.lower())
        now = trio.current_time()
        self._unwarned += 1
        if now - self._warned_at >= WARN_EVERY_S:
            log.warning("connections_refused", port=self.port, refused=self._unwarned, last_remote=remote,
                        last_reason=admitted.name.lower(), held_by_it=self.caps.held_by(key)[0],
                        open=self.caps.open)
            self._warned_at, self._unwarned = now, 0
        return admitted

    async def enter(self, stream: trio.abc.Stream, remote: str) -> Slot | None:
        """At the accept: the connection's slot, or None once a refused one was answered and
        closed."""
        admitted = self.admit(remote)
        if isinstance(admitted, Slot):
            return admitted
        try:
            await self.refuse(stream, admitted)
        finally:
            await trio.aclose_forcefully(stream)
        return None

    def cap_of(self, refusal: Refusal) -> int | None:
        caps = self.caps
        return {Refusal.ADDRESS: caps.per_address, Refusal.PENDING: caps.pending_per_address,
                Refusal.NODE: caps.total}[refusal]

    async def refuse(self, stream: trio.abc.Stream, refusal: Refusal) -> None:
        """Answers a refused connection (the module's rules); the caller closes the stream."""
        if self.answering >= ANSWERING:
            return
        self.answering += 1
        try:
            with trio.move_on_after(REFUSAL_LINGER_S):
                await stream.send_all(self.answer(refusal))
                if isinstance(stream, trio.abc.HalfCloseableStream):
                    await stream.send_eof()
                while await stream.receive_some(65536):
                    pass
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("connection_refusal_unsent", port=self.port, error=str(exc))
        finally:
            self.answering -= 1

    def answer(self, refusal: Refusal) -> bytes:
        status = STATUS[refusal]
        body = f"connection limit: {refusal.value} ({self.cap_of(refusal)}); retry later\n".encode()
        head = [f"HTTP/1.1 {status} {PHRASE[status]}", "Content-Type: text/plain; charset=utf-8",
                f"Content-Length: {len(body)}", f"Retry-After: {RETRY_AFTER[refusal]}", "Connection: close",
                *(f"{name}: {value}" for name, value in self.extra_headers)]
        return "\r\n".join(head).encode() + b"\r\n\r\n" + body


def _never(key: str) -> bool:
    return False
