"""Which browser pages may open a client connection (the WebSocket handshake's `Origin`).

A browser sends `Origin` with every WebSocket handshake, whatever page opens it; a native
client sends none. Without a check, any web page a user visits could talk to a node from inside
the company network through that user's browser (cross-site WebSocket hijacking): list the
directory, message anyone, spend the user's address on login guesses.

Rules (`allowed`, pure):
- no `Origin` (native clients, tools): allowed;
- `vim.websocket.allowed-origins` lists `*`: every origin is allowed (the behaviour before it);
- an origin listed there (scheme://host[:port], compared without case and default ports): allowed;
- else the origin's host must be one of the cluster's own: the host the request was sent to
  (its `Host` header: the page came from the same name, as the web client served on the node's
  HTTP port does), or a live node's public host (the web client moving to another node);
- an origin that is not a URL (`null`: a file or a sandboxed frame) is refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

ANY = "*"
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


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


def allowed(origin: str | None, host_header: str, cluster_hosts: Iterable[str], listed: Iterable[str]) -> bool:
    """Whether a handshake with this `Origin` may open a client connection (module rules)."""
    if origin is None:
        return True
    listed = tuple(listed)
    if ANY in listed:
        return True
    wanted = normal(origin)
    if wanted is None:
        return False
    if wanted in {normal(item) for item in listed}:
        return True
    host = wanted.split("://", 1)[1].rpartition(":")[0].strip("[]")
    return host == host_of_header(host_header) or host in {h.lower() for h in cluster_hosts}
