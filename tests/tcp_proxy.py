"""A TCP proxy in the test's loop that can make its connections go silent.

`blackhole()` is what a NAT or firewall that dropped an idle flow does to a connection:
nothing is closed, nothing arrives any more, in either direction. Connections opened
afterwards pass as usual. `latency` delays what the server sends, as a distant one would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit


class SilenceableProxy:
    def __init__(self, target_host: str, target_port: int, latency: float = 0.0) -> None:
        self.target = (target_host, target_port)
        self.latency = latency
        self.port = 0
        self._server: asyncio.Server | None = None
        self._connections: list[_Connection] = []

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    def blackhole(self) -> None:
        """Silences every connection open now, forever."""
        for connection in self._connections:
            connection.silenced = True

    def cut(self) -> None:
        """Closes every connection open now (both ends see the TCP connection end)."""
        for connection in self._connections:
            connection.close()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in self._connections:
            connection.close()
        for connection in self._connections:
            await connection.done()
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        connection = _Connection(writer, upstream_writer)
        self._connections.append(connection)
        connection.tasks = [
            asyncio.create_task(connection.pipe(reader, upstream_writer)),
            asyncio.create_task(connection.pipe(upstream_reader, writer, self.latency)),
        ]


class _Connection:
    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.writers = (client, upstream)
        self.silenced = False
        self.tasks: list[asyncio.Task[None]] = []

    async def pipe(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, latency: float = 0.0
    ) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await source.read(65536):
                if latency:
                    await asyncio.sleep(latency)
                if not self.silenced:
                    sink.write(data)
                    await sink.drain()
        if not self.silenced:
            self.close()

    def close(self) -> None:
        for writer in self.writers:
            writer.close()

    async def done(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def silenceable_proxy(
    redis_url: str, latency: float = 0.0
) -> AsyncIterator[tuple[SilenceableProxy, str]]:
    """A proxy to the Redis at `redis_url`, and the URL that goes through it."""
    parts = urlsplit(redis_url)
    proxy = SilenceableProxy(parts.hostname or "127.0.0.1", parts.port or 6379, latency)
    await proxy.start()
    try:
        yield proxy, parts._replace(netloc=proxy.host_port).geturl()
    finally:
        await proxy.stop()
