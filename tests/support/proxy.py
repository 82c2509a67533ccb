"""A TCP proxy the tests control: forward, black-hole, slow down or reset connections.

A NAT or firewall that forgets a connection drops its packets silently: no FIN, no RST, and
the peers' sockets stay open while nothing arrives. `TcpProxy.blackhole()` does exactly that to
the connections open through it (bytes in both directions are read and thrown away), while new
connections still work unless `new=True` swallows them too. It runs an asyncio loop in a thread
of the test process, so a test drives it with plain calls.

    proxy = TcpProxy(("127.0.0.1", redis_port)).start()
    ... point the service at proxy.port ...
    proxy.blackhole()            # every open connection goes silent, forever
    proxy.blackhole(new=True)    # and connections opened from now on too
    proxy.silence_new()          # only connections opened from now on (a connect that hangs)
    proxy.heal()                 # new connections work again (black-holed ones stay dead)
    proxy.delay(0.5)             # each chunk is held this long before it is forwarded
    proxy.reset()                # close every connection with an RST
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from dataclasses import dataclass, field

CHUNK = 65536


@dataclass(eq=False)
class _Link:
    """One client connection and its upstream connection."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    dead: bool = False  # black-holed: read and discard, never forward
    tasks: list[asyncio.Task] = field(default_factory=list)


class TcpProxy:
    """Listens on 127.0.0.1:`port` (a free one by default) and forwards to `target`."""

    def __init__(self, target: tuple[str, int], port: int = 0):
        self.target = target
        self.port = port
        self.links: set[_Link] = set()
        self.swallow_new = False
        self.latency = 0.0
        self.accepted = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)

    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    @property
    def url_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def blackhole(self, new: bool = False) -> int:
        """Silence every open connection for good; with `new`, swallow new ones as well.
        Returns how many open connections went silent."""
        return self._call(self._blackhole(new))

    def heal(self) -> None:
        """New connections are forwarded again (black-holed ones stay dead, as after a NAT
        forgot them), and the latency goes back to none."""
        self.swallow_new = False
        self.latency = 0.0

    def silence_new(self) -> None:
        """Swallow connections opened from now on (until `heal`); open ones keep working."""
        self.swallow_new = True

    def delay(self, seconds: float) -> None:
        self.latency = seconds

    def reset(self) -> int:
        """Abort every connection with an RST; returns how many."""
        return self._call(self._reset())

    def open_links(self) -> int:
        return len(self.links)

    # -- inside the loop --

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._reset()
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _blackhole(self, new: bool) -> int:
        self.swallow_new = self.swallow_new or new
        for link in self.links:
            link.dead = True
        return len(self.links)

    async def _reset(self) -> int:
        links = list(self.links)
        for link in links:
            for writer in (link.client, link.upstream):
                if writer is not None:
                    _abort(writer)
            for task in link.tasks:
                task.cancel()
        self.links.clear()
        return len(links)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        link = _Link(writer, dead=self.swallow_new)
        self.links.add(link)
        try:
            if link.dead:  # swallowed: the client's bytes go nowhere, nothing ever comes back
                await _discard(reader)
                return
            up_reader, up_writer = await self._open_upstream()
            link.upstream = up_writer
            link.tasks = [asyncio.current_task()]
            back = asyncio.create_task(self._pipe(up_reader, writer, link))
            link.tasks.append(back)
            await self._pipe(reader, up_writer, link)
            await back
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            if not link.dead:
                self.links.discard(link)
                for w in (writer, link.upstream):
                    if w is not None:
                        w.close()

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The connection to forward a new client connection to (a subclass may choose)."""
        return await asyncio.open_connection(*self.target)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link) -> None:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                if not link.dead:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                await asyncio.Event().wait()  # a black-holed link never tells anyone anything
            if link.dead:
                continue
            if self.latency:
                await asyncio.sleep(self.latency)
            writer.write(data)
            await writer.drain()


async def _discard(reader: asyncio.StreamReader) -> None:
    while await reader.read(CHUNK):
        pass
    await asyncio.Event().wait()


def _abort(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()
