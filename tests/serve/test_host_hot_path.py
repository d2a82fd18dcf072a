"""The per-request savings of sidecar/serve/host_protocol.py and host_http.py (issue 20), on
real loopback sockets with an in-process `Listener`: a small response is one write, a
response head is never held behind a body that is not there yet, the keep-alive idle timer
(one timer per connection instead of an idle task per request) still closes an idle
connection after `keep_alive_timeout` and never a busy one, and draining still closes an
idle connection at once."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from sidecar.serve.listener import Listener
from sidecar.serve.sockets import hypercorn_config

DEADLINE_S = 10.0
REQUESTS = 20  # sequential requests on one keep-alive connection
KEEP_ALIVE_S = 0.5  # the idle timeout of the idle-timer tests
STEP_S = 0.2  # a request this often keeps the connection busy past KEEP_ALIVE_S
STEPS = 6  # 1.2 s of requests: longer than KEEP_ALIVE_S


class _App:
    """`/` answers `hello` (head and body in one step); `/stream` sends its head, then
    waits for `release` before the body."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b"hello\n"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())],
            }
        )
        if scope["path"] == "/stream":
            await self.release.wait()
        await send({"type": "http.response.body", "body": body})


class _Served:
    def __init__(self, keep_alive_s: float) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self.app = _App()
        self.stop = asyncio.Event()
        config = hypercorn_config(grace_s=5.0, proxy=False)  # sidecar's connection layer
        config.keep_alive_timeout = keep_alive_s
        self.task = asyncio.create_task(Listener(self.app, config, sock).serve(self.stop.wait))


@asynccontextmanager
async def _serving(keep_alive_s: float = 75.0) -> AsyncIterator[_Served]:
    served = _Served(keep_alive_s)
    try:
        yield served
    finally:
        served.stop.set()
        served.app.release.set()
        await asyncio.wait_for(served.task, DEADLINE_S)


async def _get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str = "/"
) -> bytes:
    writer.write(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_S)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
    return await asyncio.wait_for(reader.readexactly(len(b"hello\n")), DEADLINE_S)


# struct tcp_info (linux/tcp.h): the u32 tcpi_segs_in, segments received, at this offset.
_TCPI_SEGS_IN = 140


def _segments_in(writer: asyncio.StreamWriter) -> int:
    """TCP segments the client's socket has received (Linux TCP_INFO): one per server
    write on loopback (TCP_NODELAY), plus any pure ACK."""
    sock = writer.get_extra_info("socket")
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int(struct.unpack_from("<I", info, _TCPI_SEGS_IN)[0])


async def _eof_after(reader: asyncio.StreamReader) -> float:
    """Seconds until the server closes the connection (EOF), at most DEADLINE_S."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await asyncio.wait_for(reader.read(), DEADLINE_S) == b""
    return loop.time() - start


async def test_a_small_response_is_one_write() -> None:
    async with _serving() as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        try:
            for _ in range(REQUESTS):  # warm: past TCP's quick-ACK start
                assert await _get(reader, writer) == b"hello\n"
            before = _segments_in(writer)
            for _ in range(REQUESTS):
                assert await _get(reader, writer) == b"hello\n"
            segments = _segments_in(writer) - before
        finally:
            writer.close()
            await writer.wait_closed()
    # hypercorn alone writes the head and the body separately: 2 segments per response.
    assert REQUESTS <= segments < REQUESTS + REQUESTS // 2, segments


async def test_a_head_is_not_held_behind_a_body_that_is_not_there_yet() -> None:
    async with _serving() as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        try:
            writer.write(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
            # The app is still waiting for `release`: the head must arrive on its own.
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_S)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
            served.app.release.set()
            body = await asyncio.wait_for(reader.readexactly(len(b"hello\n")), DEADLINE_S)
            assert body == b"hello\n"
            served.app.release.clear()
            assert await _get(reader, writer) == b"hello\n"  # and the connection goes on
        finally:
            writer.close()
            await writer.wait_closed()


async def test_idle_timer_closes_an_idle_connection_and_never_a_busy_one() -> None:
    async with _serving(keep_alive_s=KEEP_ALIVE_S) as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        try:
            # Requests on one connection for longer than the idle timeout: the timer armed
            # after the first one fires while the connection was idle only briefly.
            for _ in range(STEPS):
                assert await _get(reader, writer) == b"hello\n"
                await asyncio.sleep(STEP_S)
            assert await _get(reader, writer) == b"hello\n"
            closed_after = await _eof_after(reader)
        finally:
            writer.close()
            await writer.wait_closed()
    assert closed_after >= KEEP_ALIVE_S * 0.9, closed_after  # timer resolution: not early
    assert closed_after < KEEP_ALIVE_S + 2.0, closed_after


@pytest.mark.parametrize("requests", [0, 1])
async def test_draining_closes_an_idle_connection_at_once(requests: int) -> None:
    async with _serving() as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        try:
            for _ in range(requests):
                assert await _get(reader, writer) == b"hello\n"
            served.stop.set()
            closed_after = await _eof_after(reader)
            assert await asyncio.wait_for(served.task, DEADLINE_S) == 0  # none cut
        finally:
            writer.close()
            await writer.wait_closed()
    assert closed_after < 2.0, closed_after  # not the 75 s keep-alive timeout
