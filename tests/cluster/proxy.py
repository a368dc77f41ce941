"""A small TCP proxy (trio) that can cut the link it carries and bring it back.

`TcpProxy` listens on a port and pipes every accepted connection to a target port.
`sever()` closes every proxied connection and, until `restore()`, closes each new connection
as soon as it is accepted (the peer sees its connection refused mid-handshake).
`stall()` is a pulled cable instead: nothing is carried either way, and nothing is closed; what
was sent meanwhile is carried at `unstall()`, even on a connection its sender gave up on and
closed meanwhile (TCP delivers what a closed socket had queued once the network heals, so a
request that timed out may still reach its server, its answer lost).
With `record=True` it keeps every byte it carried (both directions) in `carried`: what a
sniffer on the link would read.
`ProxyThread` runs a `TcpProxy` in its own thread with its own trio loop, so tests that block
(subprocesses, HTTP polls) never stall the bytes it forwards; its methods are thread-safe.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import trio

BUFFER = 65536

T = TypeVar("T")


class TcpProxy:
    def __init__(self, target_port: int, host: str = "127.0.0.1", listen_port: int = 0,
                 record: bool = False) -> None:
        self.host = host
        self.record = record
        self.carried = bytearray()
        self.target_port = target_port
        self.listen_port = listen_port
        self.port: int | None = None
        self.severed = False
        self.accepted = 0  # connections piped to the target
        self.refused = 0  # connections closed at once while severed
        self._links: set[trio.CancelScope] = set()
        self._flowing = trio.Event()  # set while not stalled
        self._flowing.set()

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.listen_port, host=self.host)
        self.port = int(listeners[0].socket.getsockname()[1])
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    def sever(self) -> None:
        """Close every proxied connection and refuse new ones until `restore`."""
        self.severed = True
        for scope in list(self._links):
            scope.cancel()

    def restore(self) -> None:
        self.severed = False

    def stall(self) -> None:
        """Carry nothing until `unstall`; keep every connection and what is sent on it."""
        if self._flowing.is_set():
            self._flowing = trio.Event()

    def unstall(self) -> None:
        self._flowing.set()

    @property
    def open_links(self) -> int:
        return len(self._links)

    async def _handle(self, downstream: trio.SocketStream) -> None:
        if self.severed:
            self.refused += 1
            await trio.aclose_forcefully(downstream)
            return
        await self._flowing.wait()  # a connection made into a stall reaches the target after it
        try:
            upstream = await trio.open_tcp_stream(self.host, self.target_port)
        except OSError:
            await trio.aclose_forcefully(downstream)
            return
        self.accepted += 1
        scope = trio.CancelScope()
        self._links.add(scope)
        try:
            with scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pipe, downstream, upstream, nursery.cancel_scope)
                    nursery.start_soon(self._pipe, upstream, downstream, nursery.cancel_scope)
        finally:
            self._links.discard(scope)
            await trio.aclose_forcefully(upstream)
            await trio.aclose_forcefully(downstream)

    async def _pipe(self, source: trio.SocketStream, sink: trio.SocketStream, both: trio.CancelScope) -> None:
        """Copies bytes until either side ends; then ends both directions."""
        try:
            while data := await source.receive_some(BUFFER):
                await self._flowing.wait()
                if self.record:
                    self.carried += data
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        both.cancel()


class ProxyThread:
    """A TcpProxy in a thread of its own: `start()`, `sever()`, `restore()`, `stall()`,
    `unstall()`, `stop()`."""

    def __init__(self, target_port: int, host: str = "127.0.0.1", listen_port: int = 0) -> None:
        self.proxy = TcpProxy(target_port, host, listen_port)
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="tcp-proxy", daemon=True)

    @property
    def port(self) -> int:
        assert self.proxy.port is not None, "the proxy is not started"
        return self.proxy.port

    def start(self, timeout: float = 10.0) -> ProxyThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the proxy did not start")
        if self._error is not None:
            raise RuntimeError("the proxy failed to start") from self._error
        return self

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(self.proxy.run)
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def _call(self, fn: Callable[[], T]) -> T:
        assert self._token is not None
        return trio.from_thread.run_sync(fn, trio_token=self._token)

    def sever(self) -> None:
        self._call(self.proxy.sever)

    def restore(self) -> None:
        self._call(self.proxy.restore)

    def stall(self) -> None:
        self._call(self.proxy.stall)

    def unstall(self) -> None:
        self._call(self.proxy.unstall)

    def open_links(self) -> int:
        return int(self._call(lambda: self.proxy.open_links))

    def stop(self) -> None:
        if self._thread.is_alive() and self._stop is not None:
            try:
                self._call(self._stop.set)
            except trio.RunFinishedError:
                pass
            self._thread.join(10)
