"""One pipelined connection to Redis for the gateway's hot path: the rate limiter's calls.

Every request through the gateway asks Redis once. redis-py spends ~100 us of Python on each
call (connection pool, retry wrapper, response machinery), more than the rest of a forward;
here a call is a packed command appended to the connection's buffer and a future resolved in
order as replies arrive (RESP answers in the order asked). The commands of one loop turn go
out in one write. Packing and parsing are hiredis's, the parser redis-py itself uses.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import hiredis

Reply = Any  # what hiredis parses: int, bytes, list, None, or a hiredis.ReplyError value


class RespPipe:
    """Commands to the server at ``url`` (``redis://``, ``rediss://``, ``unix://``), sent in
    order on one connection that is opened on first use and again after it is lost."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._protocol: _RespProtocol | None = None
        self._connecting: asyncio.Task[_RespProtocol] | None = None
        self._queued: list[tuple[bytes, asyncio.Future[Reply]]] = []

    def call(self, *command: str | int | bytes) -> asyncio.Future[Reply]:
        """The reply to ``command``, as a future (an error reply is a ``hiredis.ReplyError``
        value, not raised); ``ConnectionError`` if the server cannot be reached or is lost."""
        reply: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        protocol = self._protocol
        if protocol is not None and not protocol.lost:
            protocol.send(_pack(command), reply)
            return reply
        if not self._queued:
            self._connecting = asyncio.create_task(self._connect())
            self._connecting.add_done_callback(self._connected)
        self._queued.append((_pack(command), reply))
        return reply

    async def aclose(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        if self._protocol is not None:
            self._protocol.close()

    async def _connect(self) -> _RespProtocol:
        url = urlsplit(self._url)
        loop = asyncio.get_running_loop()
        transport: asyncio.BaseTransport
        if url.scheme == "unix":
            transport, _ = await loop.create_unix_connection(_RespProtocol, url.path)
        elif url.scheme in ("redis", "rediss"):
            tls = ssl.create_default_context() if url.scheme == "rediss" else None
            transport, _ = await loop.create_connection(
                _RespProtocol, url.hostname or "localhost", url.port or 6379, ssl=tls
            )
        else:
            raise ConnectionError(f"not a Redis URL scheme: {url.scheme}")
        protocol = cast(_RespProtocol, transport.get_protocol())
        handshake = []
        if url.password is not None:
            credentials = (unquote(url.username),) if url.username else ()
            handshake.append(("AUTH", *credentials, unquote(url.password)))
        database = url.path.strip("/")
        if database and database != "0":
            handshake.append(("SELECT", database))
        for command in handshake:
            reply: asyncio.Future[Reply] = loop.create_future()
            protocol.send(_pack(command), reply)
            if isinstance(await reply, hiredis.ReplyError):
                protocol.close()
                raise ConnectionError(f"the server refused {command[0]}")
        return protocol

    def _connected(self, task: asyncio.Task[_RespProtocol]) -> None:
        queued, self._queued = self._queued, []
        if task.cancelled() or task.exception() is not None:
            error = ConnectionError("redis unreachable")
            if not task.cancelled():
                error.__cause__ = task.exception()
            for _, reply in queued:
                if not reply.done():
                    reply.set_exception(error)
            return
        self._protocol = protocol = task.result()
        for packed, reply in queued:
            protocol.send(packed, reply)


def _pack(command: tuple[str | int | bytes, ...]) -> bytes:
    # hiredis's stub types its argument as a tuple of one element; any length is packed.
    packed: bytes = hiredis.pack_command(cast(Any, command))
    return packed


class _RespProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader()
        self._waiting: deque[asyncio.Future[Reply]] = deque()
        self._out: list[bytes] = []
        self.lost = False

    def send(self, packed: bytes, reply: asyncio.Future[Reply]) -> None:
        if self.lost or self._transport is None:
            reply.set_exception(ConnectionError("redis connection lost"))
            return
        if not self._out:  # the first of this loop turn: all of them go in one write
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(packed)
        self._waiting.append(reply)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self._transport is not None and not self.lost:
            self._transport.write(b"".join(out))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not False:
                waiting = self._waiting.popleft()
                if not waiting.done():  # its caller may have given up (a timeout)
                    waiting.set_result(reply)
        except (hiredis.ProtocolError, IndexError):  # not RESP, or a reply nobody asked for
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        while self._waiting:
            waiting = self._waiting.popleft()
            if not waiting.done():
                waiting.set_exception(ConnectionError("redis connection lost"))
