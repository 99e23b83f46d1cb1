"""A TCP proxy that a test can cut and heal, to put a process on the wrong side of a partition.

Point the process at `TcpProxy.port` instead of the real server (its database or broker URL),
then:

- ``cut("blackhole")``: what a real partition looks like. Every connection, open or new, stays
  open and nothing crosses it either way: the peers see silence, not an error, and find out
  only through their own timeouts (keepalives, statement timeouts).
- ``cut("reset")``: every open connection is reset (RST) at once, and each new one is reset as
  soon as it is accepted, like a server that went away.
- `heal`: traffic flows again. As after a short real partition (TCP retransmits for minutes),
  a connection that was open when a blackhole fell carries on, delivering what was held back,
  then the close of a side that gave up meanwhile; a connection accepted during the blackhole
  whose client gave up is dropped unseen (its connect timed out), and one whose client still
  waits is connected to the server then.

The proxy runs its own event loop in its own thread, so that the caller's loop (or a plain
thread) is never blocked by it and `cut`/`heal` take effect before they return. It keeps what
a blackhole holds back in memory: it is for tests, not for traffic of any size.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Literal, Self

CALL_TIMEOUT_S = 10.0
Mode = Literal["blackhole", "reset"]


class _Side(asyncio.Protocol):
    """One socket of a `_Pipe`: the client's (accepted) or the server's (connected)."""

    def __init__(self, pipe: _Pipe) -> None:
        self.pipe = pipe
        self.transport: asyncio.Transport | None = None
        self.held: list[bytes] = []  # read from this side, not yet written to the other
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # noqa: S101  (a stream socket)
        self.transport = transport
        if self is self.pipe.client:
            self.pipe.accepted()

    def data_received(self, data: bytes) -> None:
        other = self.pipe.other(self)
        if self.pipe.proxy.flowing and other.transport is not None:
            other.transport.write(data)
        else:
            self.held.append(data)

    def connection_lost(self, _exc: Exception | None) -> None:
        self.lost = True
        if self.pipe.proxy.flowing:
            self.pipe.flush()

    def reset(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()


class _Pipe:
    """One proxied connection: the client's side, and the server's once connected."""

    def __init__(self, proxy: TcpProxy) -> None:
        self.proxy = proxy
        self.client = _Side(self)
        self.server = _Side(self)
        self.connecting = False

    def other(self, side: _Side) -> _Side:
        return self.server if side is self.client else self.client

    def accepted(self) -> None:
        if self.proxy.mode == "reset":
            self.reset()
        elif self.proxy.flowing:
            self.proxy.spawn(self.connect())

    async def connect(self) -> None:
        self.connecting = True
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: self.server, self.proxy.target_host, self.proxy.target_port)
        except OSError:
            self.reset()  # the server is unreachable: so is the proxy
            return
        finally:
            self.connecting = False
        if self.proxy.flowing:
            self.flush()

    def flush(self) -> None:
        """Deliver what was held back each way, then pass on a close."""
        if self.server.transport is None:
            if self.client.lost:
                self.proxy.pipes.discard(self)  # its client gave up before it reached the server
            elif not self.connecting:
                self.proxy.spawn(self.connect())
            return
        for side in (self.client, self.server):
            other = self.other(side)
            if side.held and other.transport is not None and not other.transport.is_closing():
                other.transport.write(b"".join(side.held))
            side.held.clear()
        if self.client.lost or self.server.lost:
            for side in (self.client, self.server):
                if side.transport is not None:
                    side.transport.close()  # after what was written above
            self.proxy.pipes.discard(self)

    def reset(self) -> None:
        self.client.reset()
        self.server.reset()
        self.proxy.pipes.discard(self)


class TcpProxy:
    """Listens on a free port of `host` and forwards each connection to `target_host`:`target_port`.

    Use it as a context manager: the listening socket exists (`port`) once it is entered."""

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self.port = 0
        #: None while traffic flows.
        self.mode: Mode | None = None
        self.pipes: set[_Pipe] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"proxy-{target_port}", daemon=True)
        self._server: asyncio.Server | None = None
        self._spawned: set[asyncio.Task[None]] = set()

    @property
    def flowing(self) -> bool:
        return self.mode is None

    def __enter__(self) -> Self:
        self._thread.start()
        self._call(self._listen())
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CALL_TIMEOUT_S)
        self._loop.close()

    def cut(self, mode: Mode = "blackhole") -> None:
        """Partition the two sides (see the module docstring for what each mode does)."""
        if mode not in ("blackhole", "reset"):
            raise ValueError(f"unknown mode {mode!r}: 'blackhole' or 'reset'")
        self._call(self._cut(mode))

    def heal(self) -> None:
        """Let traffic flow again."""
        self._call(self._heal())

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` on the proxy's loop, keeping a reference until it is done."""
        task = self._loop.create_task(work)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)

    # -- on the proxy's loop ---------------------------------------------------------
    def _call(self, work: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(work, self._loop).result(CALL_TIMEOUT_S)

    async def _listen(self) -> None:
        self._server = await self._loop.create_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def _accept(self) -> asyncio.Protocol:
        pipe = _Pipe(self)
        self.pipes.add(pipe)
        return pipe.client

    async def _cut(self, mode: Mode) -> None:
        self.mode = mode
        if mode == "reset":
            for pipe in list(self.pipes):
                pipe.reset()

    async def _heal(self) -> None:
        self.mode = None
        for pipe in list(self.pipes):
            pipe.flush()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for pipe in list(self.pipes):
            pipe.reset()
        for task in list(self._spawned):
            task.cancel()
        await asyncio.gather(*self._spawned, return_exceptions=True)
