"""The primary's two clocks through a real `sidecar serve`: `timeout` runs until the
response head, `idle_timeout` bounds each pause in either body. A stream that keeps moving
outlives both (server-sent events, a slow upload); a stalled one is cut; no head in time
is still a 504. Both clocks are 300 ms here; the streams pause 100 ms at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.support.scripted import SSE_EVENTS, ScriptedPrimary
from tests.support.serve import ServeProcess, metric, serve_proxy

pytestmark = pytest.mark.asyncio(loop_scope="module")

TIMEOUT_S = 0.3  # both clocks
PACE_S = 0.1  # a moving stream's pause: a third of the idle timeout
SLACK_S = 2.0  # a loaded CI machine's scheduling; far below the streams' own length
READ_TIMEOUT_S = 10.0  # a passing test never comes near it
UPLOAD_CHUNKS = 12  # 12 x 100 ms: four times the timeout


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def proxy(tmp_path_factory: pytest.TempPathFactory, host: str) -> AsyncIterator[ServeProcess]:
    async with ScriptedPrimary(interval_s=PACE_S) as primary:
        rules = f"primary {primary.url} {{\n    timeout 300ms\n    idle_timeout 300ms\n}}\n"
        async with serve_proxy(tmp_path_factory.mktemp("streams"), rules) as served:
            yield served
            assert "Traceback" not in served.log(), served.log()


@contextlib.asynccontextmanager
async def connection(
    proxy: ServeProcess,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    host, port = proxy.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def read_chunked(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    """A chunked body's data and whether it ended with the last chunk (False: the proxy
    closed the connection before)."""
    data = b""
    async with asyncio.timeout(READ_TIMEOUT_S):
        while True:
            try:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    return data, True
                data += (await reader.readexactly(size + 2))[:-2]
            except asyncio.IncompleteReadError:
                return data, False


async def test_sse_stream_outlives_both_timeouts(proxy: ServeProcess) -> None:
    async with connection(proxy) as (reader, writer):
        t0 = time.monotonic()
        writer.write(b"GET /sse HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        async with asyncio.timeout(READ_TIMEOUT_S):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"text/event-stream" in head
        data, ended = await read_chunked(reader)
        elapsed = time.monotonic() - t0
        assert ended, data
        assert data == b"".join(b"data: %d\n\n" % i for i in range(SSE_EVENTS))
        assert elapsed > 3 * TIMEOUT_S  # it really ran past the old whole-exchange cap
        # The connection is still good for the next request.
        writer.write(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(READ_TIMEOUT_S):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")


async def test_stalled_response_is_cut_and_the_connection_closed(proxy: ServeProcess) -> None:
    before = metric(await proxy.metrics(), "sidecar_requests_total", code="2xx")
    async with connection(proxy) as (reader, writer):
        writer.write(b"GET /stall HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(READ_TIMEOUT_S):
            head = await reader.readuntil(b"\r\n\r\n")
        t0 = time.monotonic()
        assert head.startswith(b"HTTP/1.1 200"), head
        data, ended = await read_chunked(reader)
        elapsed = time.monotonic() - t0
    assert data == b"first"
    assert not ended, "a cut-off body must not look complete"
    assert TIMEOUT_S * 0.9 <= elapsed < TIMEOUT_S + SLACK_S
    assert "stalled" in proxy.log(), proxy.log()
    # Counted with the status the client got, as nginx logs it.
    after = metric(await proxy.metrics(), "sidecar_requests_total", code="2xx")
    assert after == before + 1


async def test_no_head_within_the_timeout_is_504(proxy: ServeProcess) -> None:
    async with connection(proxy) as (reader, writer):
        t0 = time.monotonic()
        writer.write(b"GET /silent HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(READ_TIMEOUT_S):
            head = await reader.readuntil(b"\r\n\r\n")
        elapsed = time.monotonic() - t0
    assert head.startswith(b"HTTP/1.1 504"), head
    assert TIMEOUT_S * 0.9 <= elapsed < TIMEOUT_S + SLACK_S


async def test_slow_upload_that_keeps_moving_is_forwarded_whole(proxy: ServeProcess) -> None:
    """An upload taking four times the timeout, a chunk every 100 ms: the primary gets all
    of it and answers (the head's clock starts when the upload ends)."""
    chunk = b"u" * 1000
    async with connection(proxy) as (reader, writer):
        writer.write(b"POST /sink HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(UPLOAD_CHUNKS):
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
            await asyncio.sleep(PACE_S)  # the client's pace (behaviour, not synchronisation)
        writer.write(b"0\r\n\r\n")
        async with asyncio.timeout(READ_TIMEOUT_S):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            assert await reader.readexactly(length) == str(UPLOAD_CHUNKS * len(chunk)).encode()


async def test_stalled_upload_is_408_and_closed(proxy: ServeProcess) -> None:
    """The client stops sending mid-body: after idle_timeout it gets a 408 and the
    connection is closed (the primary did nothing wrong: not a 504)."""
    async with connection(proxy) as (reader, writer):
        writer.write(b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        writer.write(b"s" * 1000)
        await writer.drain()
        t0 = time.monotonic()
        async with asyncio.timeout(READ_TIMEOUT_S):
            head = await reader.readuntil(b"\r\n\r\n")
            elapsed = time.monotonic() - t0
            assert head.startswith(b"HTTP/1.1 408"), head
            assert b"connection: close" in head.lower()
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            assert await reader.read(1) == b""
    assert TIMEOUT_S * 0.9 <= elapsed < TIMEOUT_S + SLACK_S
