"""The gateway's client side: keep-alive HTTP/1.1 connections to one upstream, answers parsed
by llhttp (through ``httptools``, the parser of uvicorn and Node.js).

Forwarding needs a small part of an HTTP client: no cookies, redirects, decompression, proxies
or authentication, one request at a time on a connection and the answer read whole. aiohttp's
client does all of that on every call, and on the gateway's hot path it cost more than all the
gateway's own work on a request together; this is the part a proxy needs, and nothing else.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import httptools
from yarl import URL

# Kept shorter than an aiohttp service keeps an idle connection (75 s), so that a reused
# connection is rarely one the service is closing at that very moment.
IDLE_S = 15.0


class UpstreamError(Exception):
    """The upstream could not be reached, or broke off, or answered what is not HTTP/1.1.

    The message is a short reason (an OS error's text or a word), never a URL or a header.
    """


@dataclass(frozen=True, slots=True)
class Answer:
    """An upstream's answer, read whole; ``headers`` as sent, in order."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes


class Pool:
    """Connections to one upstream (``http(s)://host[:port][/prefix]``), at most
    ``connections`` at once, idle ones reused newest first."""

    def __init__(self, base_url: str, *, connections: int, idle_s: float = IDLE_S) -> None:
        url = URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"expected http(s)://host[:port][/prefix], got {base_url!r}")
        self._host, self._port = url.host, url.port or (443 if url.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if url.scheme == "https" else None
        self._authority = url.raw_host if url.is_default_port() else f"{url.raw_host}:{url.port}"
        self._prefix = url.raw_path.rstrip("/")
        self._slots = asyncio.Semaphore(connections)
        self._idle: list[tuple[_Connection, float]] = []
        self._idle_s = idle_s

    async def request(
        self, method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes
    ) -> Answer:
        """One exchange: ``target`` is the path and query as the client encoded them.

        Raises ``UpstreamError``; a cancelled exchange closes its connection (its state is
        unknown), so cancelling is always safe.
        """
        head = self._head(method, target, headers, body)
        async with self._slots:
            connection = self._reusable() or await self._connect()
            try:
                answer = await connection.exchange(head + body, expect_body=method != "HEAD")
            except BaseException:
                connection.close()
                raise
            if connection.reusable:
                self._idle.append((connection, time.monotonic()))
            else:
                connection.close()
            return answer

    async def close(self) -> None:
        """Closes the idle connections (one in use closes when its exchange ends)."""
        for connection, _ in self._idle:
            connection.close()
        self._idle.clear()

    def _head(
        self, method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes
    ) -> bytes:
        lines = [f"{method} {self._prefix}{target} HTTP/1.1", f"Host: {self._authority}"]
        lines += [f"{name}: {value}" for name, value in headers]
        if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
            lines.append(f"Content-Length: {len(body)}")
        text = "\r\n".join(lines) + "\r\n\r\n"
        # A line break inside a name or value would smuggle a header or a second request.
        if text.count("\n") != len(lines) + 1 or text.count("\r") != len(lines) + 1:
            raise ValueError("a header name or value holds a line break")
        # Header text came in as bytes, decoded by aiohttp with surrogateescape: back as sent.
        return text.encode("utf-8", "surrogateescape")

    def _reusable(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection, since = self._idle.pop()
            if not connection.closed and now - since < self._idle_s:
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(
                _Connection,
                self._host,
                self._port,
                ssl=self._ssl,
                server_hostname=self._host if self._ssl else None,
            )
        except OSError as error:
            raise UpstreamError(error.strerror or type(error).__name__) from None
        return connection


class _Connection(asyncio.Protocol):
    """One keep-alive connection; ``httptools`` calls the ``on_*`` methods as it parses."""

    # The answer being parsed (see _reset).
    _reason: bytes
    _headers: list[tuple[str, str]]
    _body: list[bytes]
    _headers_done: bool

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._answer: asyncio.Future[Answer] | None = None
        self._expect_body = True
        self._reset()
        self.closed = False
        self.reusable = False

    async def exchange(self, request: bytes, *, expect_body: bool) -> Answer:
        if self._transport is None or self.closed:
            raise UpstreamError("ConnectionClosed")
        self._answer = asyncio.get_running_loop().create_future()
        self._expect_body, self.reusable = expect_body, False
        self._transport.write(request)
        return await self._answer

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self._answer is None or self._answer.done():
            self.close()  # bytes nobody asked for: the connection cannot be trusted
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail("MalformedAnswer")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        framed = {name.lower() for name, _ in self._headers} & {
            "content-length",
            "transfer-encoding",
        }
        if self._headers_done and not framed:  # a body that ends where the connection does
            self._complete(reusable=False)
        self._fail("ServerDisconnected")

    # httptools callbacks

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append(
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        )

    def on_headers_complete(self) -> None:
        self._headers_done = True
        if not self._expect_body:  # HEAD: the length describes a body that is not sent
            self._complete(reusable=False)  # the parser would wait for it: not reused

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (103 Early Hints): the final one follows
            self._reset()
            return
        self._complete(reusable=self._parser.should_keep_alive())

    def _complete(self, *, reusable: bool) -> None:
        answer = Answer(
            self._parser.get_status_code(),
            self._reason.decode("latin-1"),
            self._headers,
            b"".join(self._body),
        )
        self._reset()
        self.reusable = reusable and not self.closed
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(answer)

    def _fail(self, reason: str) -> None:
        self.close()
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(UpstreamError(reason))

    def _reset(self) -> None:
        self._reason, self._headers, self._body = b"", [], []
        self._headers_done = False
