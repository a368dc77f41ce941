"""Which browser pages may open a client connection (the WebSocket handshake's `Origin`).

A browser sends `Origin` with every WebSocket handshake, whatever page opens it; a native
client sends none. Without a check, any web page a user visits could talk to a node from inside
the company network through that user's browser (cross-site WebSocket hijacking): list the
directory, message anyone, spend the user's address on login guesses.

A page can also reach a node by DNS rebinding: its own name (evil.example) is made to resolve
to the node's address, and its requests then carry that name in both `Origin` and `Host`. So the
`Host` of a browser's request must itself be a name the node knows (`known_host`): an IP
literal (rebinding needs a DNS name), `localhost`, one of `names` (this node's public host and
bind host, the machine's hostname and FQDN, the live nodes' public hosts) or the host of an
entry of `vim.websocket.allowed-origins`.

Rules (`refusal`, pure):
- no `Origin` (native clients, tools): allowed;
- `vim.websocket.allowed-origins` lists `*`: every origin is allowed (the behaviour before it);
- a `Host` the node does not know (above): refused;
- an origin listed there (scheme://host[:port], compared without case and default ports): allowed;
- else the origin's host must be one of the cluster's own: the host the request was sent to
  (its `Host` header: the page came from the same name, as the web client served on the node's
  HTTP port does), or one of `names` (the web client moving to another node);
- an origin that is not a URL (`null`: a file or a sandboxed frame) is refused.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

ANY = "*"
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
UNKNOWN_HOST = "host not known"
NOT_ALLOWED = "origin not allowed"


def normal(origin: str) -> str | None:
    """scheme://host:port in lower case with the port spelled out, or None if not a URL."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname or port is None:
        return None
    host = parts.hostname.lower()
    return f"{parts.scheme.lower()}://{f'[{host}]' if ':' in host else host}:{port}"


def host_of_header(host: str) -> str:
    """The host name of a `Host` header (`name:port`, `[::1]:port`), in lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _host_of(url: str) -> str:
    """The host of a `normal` URL (without the brackets of an IPv6 address)."""
    return url.split("://", 1)[1].rpartition(":")[0].strip("[]")


def known_host(host_header: str, names: Iterable[str], listed: Iterable[str]) -> bool:
    """Whether a request's `Host` names this node in a way DNS rebinding cannot (module rules)."""
    host = host_of_header(host_header)
    if not host:
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return True
    if host == "localhost" or host in {n.lower().strip("[]") for n in names}:
        return True
    return host in {_host_of(url) for item in listed if (url := normal(item)) is not None}


def refusal(origin: str | None, host_header: str, names: Iterable[str], listed: Iterable[str]) -> str | None:
    """Why a handshake with this `Origin` and `Host` may not open a client connection
    (UNKNOWN_HOST or NOT_ALLOWED), or None if it may (module rules)."""
    if origin is None:
        return None
    listed, names = tuple(listed), tuple(names)
    if ANY in listed:
        return None
    if not known_host(host_header, names, listed):
        return UNKNOWN_HOST
    wanted = normal(origin)
    if wanted is None:
        return NOT_ALLOWED
    if wanted in {normal(item) for item in listed}:
        return None
    host = _host_of(wanted)
    if host == host_of_header(host_header) or host in {n.lower().strip("[]") for n in names}:
        return None
    return NOT_ALLOWED


def allowed(origin: str | None, host_header: str, names: Iterable[str], listed: Iterable[str]) -> bool:
    """Whether a handshake with this `Origin` and `Host` may open a client connection."""
    return refusal(origin, host_header, names, listed) is None
