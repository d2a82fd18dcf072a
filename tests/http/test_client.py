"""sidecar.http.client against real loopback servers (asyncio + h11, started by each test)."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import shutil
import socket
import ssl
import struct
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from pathlib import Path
from typing import Any, Literal

import h11
import pytest

from sidecar.http.client import (
    ClientError,
    ConnectError,
    ConnectionPool,
    LocalProtocolError,
    ReadError,
    RemoteProtocolError,
)
from sidecar.model.endpoint import Endpoint

READ_BYTES = 65536
POLL_DEADLINE_S = 5.0

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]
# An h11 app: (request, body) -> (status, headers, body chunks)
App = Callable[
    [h11.Request, bytes, "Server"],
    Awaitable[tuple[int, list[tuple[bytes, bytes]], Any]],
]


class Server:
    """A loopback TCP server that counts connections (accepted, open now, peak open)."""

    def __init__(self, handler: Handler, *, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.accepted = 0
        self.current = 0
        self.peak = 0
        self.closed_count = 0
        self.reader: asyncio.StreamReader | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._on_conn, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        scheme: Literal["http", "https"] = "https" if self.tls else "http"
        self.endpoint = Endpoint(scheme=scheme, host="127.0.0.1", port=self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _on_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.accepted += 1
        self.current += 1
        self.peak = max(self.peak, self.current)
        try:
            await self.handler(reader, writer, self)
        except (ConnectionError, h11.RemoteProtocolError, asyncio.CancelledError):
            pass  # a client that went away, or teardown: end the handler quietly
        finally:
            self.current -= 1
            self.closed_count += 1
            writer.close()
            with suppress(Exception):
                await writer.wait_closed()
            self._tasks.discard(task)


async def _next(conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await reader.read(READ_BYTES))


def h11_server(app: App, *, close_after: int | None = None) -> Handler:
    """A keep-alive h11 server; `close_after` N requests it drops the connection silently."""

    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
    ) -> None:
        conn = h11.Connection(h11.SERVER)
        server.reader = reader  # for apps that wait for the client to hang up
        served = 0
        while True:
            event = await _next(conn, reader)
            if isinstance(event, h11.ConnectionClosed):
                return
            assert isinstance(event, h11.Request)
            if close_after is not None and served >= close_after:
                return  # as if our idle timeout fired just as the request arrived
            body = bytearray()
            while not isinstance(ev := await _next(conn, reader), h11.EndOfMessage):
                body += ev.data
            status, headers, chunks = await app(event, bytes(body), server)
            writer.write(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
            if isinstance(chunks, bytes):
                chunks = [chunks]
            if hasattr(chunks, "__aiter__"):
                async for chunk in chunks:
                    writer.write(conn.send(h11.Data(data=chunk)) or b"")
                    await writer.drain()
            else:
                for chunk in chunks:
                    writer.write(conn.send(h11.Data(data=chunk)) or b"")
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()
            served += 1
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()

    return handle


async def echo_sha(req: h11.Request, body: bytes, server: Server) -> Any:
    digest = hashlib.sha256(body).hexdigest().encode()
    return 200, [(b"content-length", str(len(digest)).encode())], digest


async def hello(req: h11.Request, body: bytes, server: Server) -> Any:
    return 200, [(b"content-length", b"5")], b"hello"


def get_headers(server: Server) -> list[tuple[bytes, bytes]]:
    return [(b"host", f"127.0.0.1:{server.port}".encode())]


async def eventually(predicate: Callable[[], bool]) -> None:
    """Poll with a deadline: for states only the event loop can reach (a socket closing)."""
    async with asyncio.timeout(POLL_DEADLINE_S):
        while not predicate():
            await asyncio.sleep(0.005)


# -- round trips -------------------------------------------------------------------------


async def test_get_round_trip() -> None:
    async with (
        Server(h11_server(hello)) as server,
        ConnectionPool(server.endpoint, max_connections=2) as pool,
    ):
        resp = await pool.request(b"GET", b"/", get_headers(server))
        assert resp.status == 200
        assert resp.reason == b""
        assert (b"content-length", b"5") in resp.headers
        assert await resp.aread() == b"hello"
        assert resp.is_closed


@pytest.mark.parametrize("size", [0, 10, 70_000, 1 << 20])
async def test_post_content_length_body(size: int) -> None:
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    async with (
        Server(h11_server(echo_sha)) as server,
        ConnectionPool(server.endpoint, max_connections=2) as pool,
    ):
        headers = [*get_headers(server), (b"content-length", str(len(body)).encode())]
        resp = await pool.request(b"POST", b"/upload", headers, body)
        assert await resp.aread() == hashlib.sha256(body).hexdigest().encode()


async def test_post_chunked_streamed_body() -> None:
    pieces = [b"a" * 1000, b"", b"b" * 70_000, b"c"]

    async def gen() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    async with (
        Server(h11_server(echo_sha)) as server,
        ConnectionPool(server.endpoint, max_connections=2) as pool,
    ):
        headers = [*get_headers(server), (b"transfer-encoding", b"chunked")]
        resp = await pool.request(b"POST", b"/", headers, gen())
        assert await resp.aread() == hashlib.sha256(b"".join(pieces)).hexdigest().encode()
        # a streamed body that ended normally leaves a reusable connection
        assert pool.idle_connections == 1


async def test_streamed_body_with_content_length() -> None:
    async def gen() -> AsyncIterator[bytes]:
        yield b"12345"
        yield b"67890"

    async with (
        Server(h11_server(echo_sha)) as server,
        ConnectionPool(server.endpoint, max_connections=1) as pool,
    ):
        headers = [*get_headers(server), (b"content-length", b"10")]
        resp = await pool.request(b"PUT", b"/", headers, gen())
        assert await resp.aread() == hashlib.sha256(b"1234567890").hexdigest().encode()


async def test_response_streams_chunk_by_chunk() -> None:
    got = [asyncio.Event() for _ in range(3)]

    async def app(req: h11.Request, body: bytes, server: Server) -> Any:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(3):
                yield f"chunk{i}".encode()
                await got[i].wait()  # the next chunk only after the client saw this one

        return 200, [(b"transfer-encoding", b"chunked")], chunks()

    async with (
        Server(h11_server(app)) as server,
        ConnectionPool(server.endpoint, max_connections=1) as pool,
    ):
        resp = await pool.request(b"GET", b"/", get_headers(server))
        seen = []
        async with asyncio.timeout(POLL_DEADLINE_S):
            async for chunk in resp.aiter_bytes():
                seen.append(chunk)
                got[len(seen) - 1].set()
        assert seen == [b"chunk0", b"chunk1", b"chunk2"]
        assert pool.idle_connections == 1


async def test_drain_counts_bytes() -> None:
    async def app(req: h11.Request, body: bytes, server: Server) -> Any:
        return 200, [(b"content-length", b"300000")], [b"z" * 100_000] * 3

    async with (
        Server(h11_server(app)) as server,
        ConnectionPool(server.endpoint, max_connections=1) as pool,
    ):
        resp = await pool.request(b"GET", b"/", get_headers(server))
        assert await resp.drain() == 300_000
        assert pool.idle_connections == 1


# -- pooling -----------------------------------------------------------------------------


async def test_keep_alive_reuse() -> None:
    async with (
        Server(h11_server(hello)) as server,
        ConnectionPool(server.endpoint, max_connections=4) as pool,
    ):
        for _ in range(20):
            resp = await pool.request(b"GET", b"/", get_headers(server))
            assert await resp.aread() == b"hello"
        assert server.accepted == 1
        assert pool.open_connections == 1
        assert pool.idle_connections == 1


async def test_idle_connections_past_the_idle_timeout_are_closed_without_traffic() -> None:
    """After a burst, the idle sockets are closed once idle_timeout passes, although no
    request comes to find them stale (they would otherwise hold descriptors until the
    server closes them, or forever)."""
    async with (
        Server(h11_server(hello)) as server,
        ConnectionPool(server.endpoint, max_connections=8, idle_timeout_s=0.2) as pool,
    ):
        responses = await asyncio.gather(
            *(pool.request(b"GET", b"/", get_headers(server)) for _ in range(8))
        )
        for resp in responses:
            assert await resp.aread() == b"hello"
        assert pool.idle_connections == 8
        await eventually(lambda: pool.open_connections == 0)
        assert pool.idle_connections == 0
        resp = await pool.request(b"GET", b"/", get_headers(server))  # the pool still works
        assert await resp.aread() == b"hello"


async def test_max_connections_never_exceeded() -> None:
    limit = 4
    gate = asyncio.Event()
    in_flight = 0

    async def app(req: h11.Request, body: bytes, server: Server) -> Any:
        nonlocal in_flight
        in_flight += 1
        if in_flight >= limit:
            gate.set()  # every connection is busy at once: the limit is really exercised
        await gate.wait()
        in_flight -= 1
        return 200, [(b"content-length", b"2")], b"ok"

    async with (
        Server(h11_server(app)) as server,
        ConnectionPool(server.endpoint, max_connections=limit) as pool,
    ):
        seen_open: list[int] = []

        async def one() -> bytes:
            resp = await pool.request(b"GET", b"/", get_headers(server))
            seen_open.append(pool.open_connections)
            return await resp.aread()

        async with asyncio.timeout(POLL_DEADLINE_S):
            results = await asyncio.gather(*(one() for _ in range(50)))
        assert results == [b"ok"] * 50
        assert server.peak == limit
        assert server.accepted == limit
        assert max(seen_open) <= limit


async def test_connection_close_response_is_not_reused() -> None:
    async def app(req: h11.Request, body: bytes, server: Server) -> Any:
        return 200, [(b"content-length", b"2"), (b"connection", b"close")], b"ok"

    async with (
        Server(h11_server(app)) as server,
        ConnectionPool(server.endpoint, max_connections=1) as pool,
    ):
        for _ in range(3):
            resp = await pool.request(b"GET", b"/", get_headers(server))
            assert await resp.aread() == b"ok"
            assert pool.open_connections == 0
        assert server.accepted == 3


async def test_idle_connection_closed_by_server_is_replaced() -> None:
    async with (
        Server(h11_server(hello, close_after=1)) as server,
        ConnectionPool(server.endpoint, max_connections=1) as pool,
    ):
        resp = await pool.request(b"GET", b"/", get_headers(server))
        assert await resp.aread() == b"hello"
        # The server drops the idle connection only when the next request arrives, so the
        # pool cannot see it coming: the bytes body makes it retry once on a new connection.
        resp = await pool.request(
            b"PUT", b"/", [*get_headers(server), (b"content-length", b"3")], b"abc"
        )
        assert await resp.aread() == b"hello"
        assert server.accepted == 2


async def test_post_on_a_connection_closed_after_reading_it_is_not_replayed() -> None:
    """The server read the POST before hanging up: it may have acted on it, so no retry."""
    async with (
        Server(h11_server(hello, close_after=1)) as server,
        ConnectionPool(server.endpoint, max_connections=1) as pool,
    ):
        resp = await pool.request(b"GET", b"/", get_headers(server))
        assert await resp.aread() == b"hello"
        headers = [*get_headers(server), (b"content-length", b"3")]
        with pytest.raises(ReadError):
            await pool.request(b"POST", b"/", headers, b"abc")
        assert server.accepted == 1


async def test_idle_connection_seen_closed_at_checkout() -> None:
    async def app(req: h11.Request, body: bytes, server: Server) -> Any:
        return 200, [(b"content-length", b"5")], b"hello"

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        if s.accepted == 1:  # first connection: one request, then hang up while idle
            conn = h11.Connection(h11.SERVER)
            await _next(conn, r)
            await _next(conn, r)
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
            await w.drain()
            return
        await h11_server(app)(r, w, s)

    async with (
        Server(handler) as server,
        ConnectionPool(server.endpoint, max_connections=1) as pool,
    ):
        resp = await pool.request(b"GET", b"/", get_headers(server))
        assert await resp.aread() == b"hello"
        await eventually(lambda: server.closed_count == 1)
        resp = await pool.request(b"GET", b"/", get_headers(server))
        assert await resp.aread() == b"hello"
        assert server.accepted == 2


async def test_streamed_body_is_not_retried() -> None:
    async def gen() -> AsyncIterator[bytes]:
        yield b"abc"

    async with (
        Server(h11_server(hello, close_after=1)) as server,
        ConnectionPool(server.endpoint, max_connections=1) as pool,
    ):
        resp = await pool.request(b"GET", b"/", get_headers(server))
        await resp.aread()
        headers = [*get_headers(server), (b"content-length", b"3")]
        with pytest.raises(ReadError) as info:
            await pool.request(b"POST", b"/", headers, gen())
        assert info.value.reason == "reset"
        assert server.accepted == 1
        assert pool.open_connections == 0


# -- errors ------------------------------------------------------------------------------


async def test_connect_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    endpoint = Endpoint(scheme="http", host="127.0.0.1", port=port)
    async with ConnectionPool(endpoint, max_connections=1) as pool:
        for _ in range(2):  # the slot is freed: the second attempt fails the same way
            with pytest.raises(ConnectError) as info:
                await pool.request(b"GET", b"/", [(b"host", b"x")])
            assert info.value.reason == "connect"
            assert isinstance(info.value, ClientError)
        assert pool.open_connections == 0


@pytest.mark.parametrize("reset", [True, False], ids=["rst", "fin"])
async def test_server_drops_mid_response(reset: bool) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        conn = h11.Connection(h11.SERVER)
        await _next(conn, r)
        await _next(conn, r)
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
        await w.drain()
        if reset:
            sock = w.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    async with (
        Server(handler) as server,
        ConnectionPool(server.endpoint, max_connections=1) as pool,
    ):
        resp = await pool.request(b"GET", b"/", get_headers(server))
        assert resp.status == 200
        with pytest.raises(ReadError) as info:
            await resp.aread()
        assert info.value.reason == "reset"
        assert pool.open_connections == 0


async def test_garbage_response() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        await r.read(READ_BYTES)
        w.write(b"SPDY/99 banana\r\n\r\n")
        await w.drain()
        await r.read(READ_BYTES)  # until the client hangs up

    async with (
        Server(handler) as server,
        ConnectionPool(server.endpoint, max_connections=1) as pool,
    ):
        with pytest.raises(RemoteProtocolError) as info:
            await pool.request(b"GET", b"/", get_headers(server))
        assert info.value.reason == "protocol"
        assert pool.open_connections == 0


async def test_timeout_closes_connection_and_frees_slot() -> None:
    async def app(req: h11.Request, body: bytes, server: Server) -> Any:
        if req.target == b"/hang":
            assert server.reader is not None
            await server.reader.read()  # no answer, ever; returns once the client hangs up
        return 200, [(b"content-length", b"5")], b"hello"

    async with (
        Server(h11_server(app)) as server,
        ConnectionPool(server.endpoint, max_connections=1) as pool,
    ):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await pool.request(b"GET", b"/hang", get_headers(server))
        assert pool.open_connections == 0
        await eventually(lambda: server.current == 0)  # the server saw the close
        resp = await pool.request(b"GET", b"/", get_headers(server))
        assert await resp.aread() == b"hello"


async def test_timeout_during_body_read() -> None:
    async def app(req: h11.Request, body: bytes, server: Server) -> Any:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"first"
            assert server.reader is not None
            await server.reader.read()  # the rest never comes; returns once the client hangs up
            raise ConnectionResetError

        return 200, [(b"transfer-encoding", b"chunked")], chunks()

    async with (
        Server(h11_server(app)) as server,
        ConnectionPool(server.endpoint, max_connections=1) as pool,
    ):
        resp = await pool.request(b"GET", b"/", get_headers(server))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await resp.aread()
        assert resp.is_closed
        assert pool.open_connections == 0
        await eventually(lambda: server.current == 0)


# -- bodiless responses, 1xx, early responses --------------------------------------------


async def test_head_204_304_have_no_body() -> None:
    async def app(req: h11.Request, body: bytes, server: Server) -> Any:
        if req.method == b"HEAD":
            return 200, [(b"content-length", b"1234")], []
        if req.target == b"/204":
            return 204, [], []
        return 304, [(b"etag", b'"x"')], []

    async with (
        Server(h11_server(app)) as server,
        ConnectionPool(server.endpoint, max_connections=1) as pool,
    ):
        cases = [(b"HEAD", b"/", 200), (b"GET", b"/204", 204), (b"GET", b"/304", 304)]
        for method, target, status in cases:
            resp = await pool.request(method, target, get_headers(server))
            assert resp.status == status
            assert await resp.aread() == b""
        assert server.accepted == 1


async def test_informational_responses_are_skipped() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n")
        await w.drain()
        await r.readexactly(3)
        w.write(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok")
        await w.drain()
        await r.read(READ_BYTES)

    async with (
        Server(handler) as server,
        ConnectionPool(server.endpoint, max_connections=1) as pool,
    ):
        headers = [*get_headers(server), (b"content-length", b"3"), (b"expect", b"100-continue")]
        resp = await pool.request(b"POST", b"/", headers, b"abc")
        assert resp.status == 201
        assert await resp.aread() == b"ok"


async def test_early_response_during_streamed_upload() -> None:
    stuck = asyncio.Event()
    finished = asyncio.Event()

    async def upload() -> AsyncIterator[bytes]:
        try:
            yield b"x" * 1000
            await stuck.wait()  # the client's upload stalls; the server answers anyway
            yield b"never sent"
        finally:
            finished.set()

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.write(
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 3\r\nconnection: close\r\n\r\nbig"
        )
        await w.drain()

    async with (
        Server(handler) as server,
        ConnectionPool(server.endpoint, max_connections=1) as pool,
    ):
        headers = [*get_headers(server), (b"transfer-encoding", b"chunked")]
        async with asyncio.timeout(POLL_DEADLINE_S):
            resp = await pool.request(b"POST", b"/", headers, upload())
            assert resp.status == 413
            assert await resp.aread() == b"big"
            await finished.wait()  # the upload iterator was stopped, not leaked
        assert pool.open_connections == 0


@pytest.mark.parametrize("error", [ValueError, ConnectionResetError])
async def test_body_iterator_error_propagates_unchanged(error: type[Exception]) -> None:
    never = asyncio.Event()

    async def app(req: h11.Request, body: bytes, server: Server) -> Any:
        await never.wait()
        return 200, [], b""

    async def upload() -> AsyncIterator[bytes]:
        yield b"part"
        raise error("client went away")

    async with (
        Server(h11_server(app)) as server,
        ConnectionPool(server.endpoint, max_connections=1) as pool,
    ):
        headers = [*get_headers(server), (b"transfer-encoding", b"chunked")]
        with pytest.raises(error, match="client went away"):
            await pool.request(b"POST", b"/", headers, upload())
        assert pool.open_connections == 0
        await eventually(lambda: server.current == 0)


async def test_pool_aclose_closes_busy_and_idle() -> None:
    async with Server(h11_server(hello)) as server:
        pool = ConnectionPool(server.endpoint, max_connections=2)
        idle = await pool.request(b"GET", b"/", get_headers(server))
        await idle.aread()
        busy = await pool.request(b"GET", b"/", get_headers(server))
        busy2 = await pool.request(b"GET", b"/", get_headers(server))
        assert pool.open_connections == 2
        await pool.aclose()
        assert pool.open_connections == 0
        await eventually(lambda: server.current == 0)
        with pytest.raises(ClientError) as info:
            await pool.request(b"GET", b"/", get_headers(server))
        assert info.value.reason == "closed"
        await busy.aclose()
        await busy2.aclose()


async def test_unread_body_closes_connection() -> None:
    async def app(req: h11.Request, body: bytes, server: Server) -> Any:
        return 200, [(b"content-length", b"200000")], [b"y" * 100_000] * 2

    async with (
        Server(h11_server(app)) as server,
        ConnectionPool(server.endpoint, max_connections=1) as pool,
    ):
        resp = await pool.request(b"GET", b"/", get_headers(server))
        try:
            async for _chunk in resp.aiter_bytes():
                break  # stop after the first chunk: the rest is never read
        finally:
            await resp.aclose()
        assert resp.is_closed
        assert pool.open_connections == 0
        # the slot was freed: max_connections=1 still lets the next request through
        resp = await pool.request(b"GET", b"/", get_headers(server))
        assert await resp.drain() == 200_000
        assert server.accepted == 2


async def test_idle_timeout_closes_old_connections() -> None:
    async with (
        Server(h11_server(hello)) as server,
        ConnectionPool(server.endpoint, max_connections=1, idle_timeout_s=0.0) as pool,
    ):
        for _ in range(3):
            resp = await pool.request(b"GET", b"/", get_headers(server))
            assert await resp.aread() == b"hello"
        assert server.accepted == 3  # every idle connection was too old to reuse
        assert pool.open_connections == 1


async def test_invalid_request_header_is_a_client_error() -> None:
    async with (
        Server(h11_server(hello)) as server,
        ConnectionPool(server.endpoint, max_connections=1) as pool,
    ):
        with pytest.raises(LocalProtocolError):
            await pool.request(b"GET", b"/", [*get_headers(server), (b"x-bad", b"a\r\nb")])
        assert pool.open_connections == 0
        resp = await pool.request(b"GET", b"/", get_headers(server))
        assert await resp.aread() == b"hello"


# -- the same behaviours on uvloop, which the proxy and the pools run on -------------------

UVLOOP_SCENARIOS: list[Callable[[], Awaitable[None]]] = [
    test_get_round_trip,
    functools.partial(test_post_content_length_body, 1 << 20),
    test_post_chunked_streamed_body,
    test_response_streams_chunk_by_chunk,
    test_keep_alive_reuse,
    test_max_connections_never_exceeded,
    test_idle_connection_closed_by_server_is_replaced,
    test_connect_refused,
    functools.partial(test_server_drops_mid_response, True),
    test_garbage_response,
    test_timeout_closes_connection_and_frees_slot,
    test_early_response_during_streamed_upload,
    functools.partial(test_body_iterator_error_propagates_unchanged, OSError),
]


@pytest.mark.parametrize(
    "scenario",
    UVLOOP_SCENARIOS,
    ids=[getattr(s, "func", s).__name__.removeprefix("test_") for s in UVLOOP_SCENARIOS],
)
def test_on_uvloop(scenario: Callable[[], Awaitable[None]]) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        await scenario()

    uvloop.run(main())


async def test_https_round_trip(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a throwaway certificate")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    async with Server(h11_server(echo_sha), tls=server_ctx) as server:
        headers = [*get_headers(server), (b"content-length", b"3")]
        async with ConnectionPool(
            server.endpoint, max_connections=1, ssl_context=client_ctx
        ) as pool:
            for _ in range(2):
                resp = await pool.request(b"POST", b"/", headers, b"abc")
                assert await resp.aread() == hashlib.sha256(b"abc").hexdigest().encode()
            assert server.accepted == 1
        # the default context verifies against the system CAs: our throwaway CA is refused
        async with ConnectionPool(server.endpoint, max_connections=1) as pool:
            with pytest.raises(ConnectError) as info:
                await pool.request(b"POST", b"/", headers, b"abc")
            assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)


async def test_connection_slots_are_fifo_and_survive_cancelled_waiters() -> None:
    from sidecar.http.client import _Slots

    slots = _Slots(1)
    assert slots.take()
    assert not slots.take()
    order: list[str] = []

    async def waiter(name: str) -> None:
        await slots.wait()
        order.append(name)

    a = asyncio.create_task(waiter("a"))
    b = asyncio.create_task(waiter("b"))
    c = asyncio.create_task(waiter("c"))
    await asyncio.sleep(0)
    b.cancel()  # cancelled while queued: skipped, not handed a slot
    await asyncio.sleep(0)
    slots.release()  # -> a
    assert not slots.take()  # a newcomer does not jump the queue
    await a
    slots.release()  # -> c (b is gone)
    await c
    assert order == ["a", "c"]
    slots.release()
    assert slots.take()  # the one slot is free again: nothing leaked

    # Handed a slot just as it is cancelled: the slot passes on instead of leaking.
    d = asyncio.create_task(waiter("d"))
    e = asyncio.create_task(waiter("e"))
    await asyncio.sleep(0)
    slots.release()  # resolves d's future...
    d.cancel()  # ...but d is cancelled before it runs
    await e
    assert order == ["a", "c", "e"]
    assert b.cancelled() and d.cancelled()

    # A waiter that gives up is removed at once, not left for a release() to skip.
    f = asyncio.create_task(waiter("f"))
    await asyncio.sleep(0)
    assert len(slots._waiters) == 1
    f.cancel()
    with pytest.raises(asyncio.CancelledError):
        await f
    assert not slots._waiters
