"""The node's listening sockets, bound before anything else starts.

Rules:
- `bind_listeners` binds the client port, the master's forward port and the HTTP port (TLS
  wrapped when the config has a certificate) before the node takes its lease in Redis: a node
  whose port is taken stops with `PortTaken` naming the config key and the port, and never
  appears in `vim-cluster nodes`.
- A port of 0 binds a free port; `port_of` tells which.
"""

from __future__ import annotations

import contextlib
import errno
from typing import Any, cast

import attrs
import trio

from ..config import NodeConfig
from ..errors import VimError
from ..tls import server_context

Listener = trio.SocketListener | trio.SSLListener[trio.SocketStream]
Listeners = list[Listener]


class PortTaken(VimError):
    """A port of the config cannot be listened on (taken, or not allowed)."""

    def __init__(self, key: str, host: str, port: int, why: str) -> None:
        super().__init__(f"{key} {port}: cannot listen on {host}:{port}: {why}")
        self.key = key
        self.port = port


@attrs.frozen
class NodeListeners:
    client: Listeners
    forward: Listeners | None
    http: Listeners | None


async def bind_listeners(config: NodeConfig) -> NodeListeners:
    """Binds every port of the config; on a failure the ports bound so far are closed again."""
    ws = config.websocket
    tls = server_context(config)
    async with contextlib.AsyncExitStack() as stack:
        client = await _bind("vim.websocket.port", ws.host, ws.port, tls)
        stack.push_async_callback(close_listeners, client)
        forward = None
        if config.is_master and ws.forward_port is not None:
            forward = await _bind("vim.websocket.forward-port", ws.host, ws.forward_port, tls)
            stack.push_async_callback(close_listeners, forward)
        http = None
        if config.http.port:
            http = await _bind("vim.http.port", ws.host, config.http.port, tls)
            stack.push_async_callback(close_listeners, http)
        stack.pop_all()  # all bound: the caller closes them from now on
    return NodeListeners(client, forward, http)


async def close_listeners(listeners: Listeners) -> None:
    for listener in listeners:
        await trio.aclose_forcefully(listener)


async def _bind(key: str, host: str, port: int, tls: Any) -> Listeners:
    try:
        if tls is None:
            listeners: Listeners = list(await trio.open_tcp_listeners(port, host=host))
        else:
            listeners = list(await trio.open_ssl_over_tcp_listeners(port, tls, host=host, https_compatible=True))
    except OSError as exc:
        why = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            why = f"{why} (another process has it: `ss -ltnp 'sport = :{port}'` shows which)"
        raise PortTaken(key, host, port, why) from None
    return listeners


def port_of(listeners: Listeners) -> int:
    listener = listeners[0]
    plain = listener.transport_listener if isinstance(listener, trio.SSLListener) else listener
    return int(cast(trio.SocketListener, plain).socket.getsockname()[1])


async def bind_forward(config: NodeConfig) -> Listeners:
    """Binds the forward port again (a standby that takes the master role over; the port was
    closed while it was not the master). Raises PortTaken."""
    ws = config.websocket
    assert ws.forward_port is not None
    return await _bind("vim.websocket.forward-port", ws.host, ws.forward_port, server_context(config))
