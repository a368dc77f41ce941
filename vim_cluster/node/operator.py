"""Operator login, actions and their audit trail, for the dashboard (never for clients).

Rules:
- Login proves the cluster secret (the content of vim.cluster.secret-file, compared in
  constant time); the operator also gives a name, recorded with every action. Five failed
  logins within a minute from one source address (an IPv6 one as its /64) refuse that
  address's attempts for the rest of that minute; fifty from all addresses together refuse
  everyone's (one address alone cannot lock the operators out).
- The session is a cookie `vim_operator` = `EXPIRES.NAME.MAC` (MAC: HMAC-SHA256 with the
  cluster secret), HttpOnly, SameSite=Strict (and Secure on a node with TLS), valid SESSION_S on
  every node of the cluster.
- Actions: kick a user (every session, close code 4002) and drain a node (refuse new client
  connections with HTTP 503, close every session with 4005 "node draining": clients
  reconnect to another node). A drained node stays drained until it restarts.
- Every action and every login (ok or not) is logged (`operator_action`, `operator_login`)
  with who and from where, and kept in a short in-memory trail the dashboard shows.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
from collections.abc import Callable
from typing import Any

import attrs
import structlog

from ..core.lockout import source_key
from ..errors import CloseCode

log = structlog.get_logger()
COOKIE = "vim_operator"
SESSION_S = 8 * 3600
TRAIL = 100
FAILURES_PER_MINUTE = 5  # from one source address
FAILURES_PER_MINUTE_ALL = 50  # from all addresses together
NAME_MAX = 64


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _unb64(text: str) -> str:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()


@attrs.define
class Operator:
    secret: bytes = attrs.field(repr=False)
    clock_ms: Callable[[], int]
    trail: collections.deque[dict[str, Any]] = attrs.Factory(lambda: collections.deque(maxlen=TRAIL))
    _failures: list[tuple[int, str]] = attrs.Factory(list)  # (ms, source address) of recent failed logins

    def _mac(self, expires: int, name: str) -> str:
        return hmac.new(self.secret, f"operator|{expires}|{name}".encode(), hashlib.sha256).hexdigest()

    def login(self, given_secret: str, name: str, remote: str) -> str | None:
        """A cookie value for a right secret, None otherwise (or while logins are refused)."""
        now = self.clock_ms()
        self._failures = [(t, a) for t, a in self._failures if now - t < 60_000]
        name = (name.strip() or "operator")[:NAME_MAX]
        if self.locked_for_s(remote):
            log.warning("operator_login", ok=False, who=name, remote=remote, reason="too many failures")
            return None
        if not hmac.compare_digest(given_secret.strip().encode(), self.secret.strip()):
            self._failures.append((now, source_key(remote)))
            log.warning("operator_login", ok=False, who=name, remote=remote, reason="wrong secret")
            return None
        expires = now + SESSION_S * 1000
        log.info("operator_login", ok=True, who=name, remote=remote)
        self.record(name, remote, "login", "", "ok")
        return f"{expires}.{_b64(name)}.{self._mac(expires, name)}"

    def locked_for_s(self, remote: str) -> int:
        """Seconds until logins from `remote` are taken again after FAILURES_PER_MINUTE failures
        from its address, or FAILURES_PER_MINUTE_ALL from all, within a minute (0: taken now)."""
        now = self.clock_ms()
        recent = [(t, a) for t, a in self._failures if now - t < 60_000]
        address = source_key(remote)
        mine = [t for t, a in recent if a == address]
        until = 0
        if len(mine) >= FAILURES_PER_MINUTE:
            until = mine[-FAILURES_PER_MINUTE] + 60_000
        if len(recent) >= FAILURES_PER_MINUTE_ALL:
            until = max(until, recent[-FAILURES_PER_MINUTE_ALL][0] + 60_000)
        return max(1, -(-(until - now) // 1000)) if until else 0

    def who(self, cookie: str | None) -> str | None:
        """The operator's name if the cookie is valid and not expired."""
        if not cookie:
            return None
        try:
            expires_text, name_b64, mac = cookie.split(".")
            expires, name = int(expires_text), _unb64(name_b64)
        except (ValueError, UnicodeDecodeError):
            return None
        # Bytes: compare_digest raises TypeError for a str with a letter outside ASCII (the
        # header is read as latin-1, so anyone can send one).
        if expires < self.clock_ms() or not hmac.compare_digest(mac.encode(), self._mac(expires, name).encode()):
            return None
        return name

    def record(self, who: str, remote: str, action: str, target: str, result: str) -> None:
        entry = {"t": self.clock_ms(), "who": who, "remote": remote, "action": action,
                 "target": target, "result": result}
        self.trail.append(entry)
        log.info("operator_action", **entry)


def cookie_header(value: str, max_age: int = SESSION_S, *, secure: bool = False) -> str:
    """The Set-Cookie value; `secure` (a node with TLS): the browser sends it over HTTPS only,
    never to a plain-HTTP port of the same host (cookies do not tell ports apart)."""
    return f"{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}" + ("; Secure" if secure else "")


def cookie_of(header: str | None) -> str | None:
    for part in (header or "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == COOKIE:
            return value
    return None


DRAIN_CODE = CloseCode.DRAINING
