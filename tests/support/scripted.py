"""A raw HTTP/1.1 primary on loopback whose answers are scripted per path, for the tests of
early answers and stream timeouts (tests/serve/test_early_answer.py, test_stream_timeouts.py).

    async with ScriptedPrimary(interval_s=0.1) as primary:   # 127.0.0.1:<free port>
        primary.url, primary.port, primary.requests, primary.connections_total

Routes (the request path's first segment):
    /early_close  answer 413 after reading only the head, then close (unread body: RST)
    /early_open   answer 413 (`Connection: close`) after reading only the head, then hold
                  the connection open without ever reading the body
    /early_discard answer 413 after reading only the head, then read and drop the body
                  and serve the next request (nginx's discard: the connection is reusable)
    /sse          chunked text/event-stream: SSE_EVENTS events, one per `interval_s`
    /stall        chunked head and one chunk, then nothing until the peer closes
    /silent       read the request, never answer (until the peer closes)
    /sink         read the whole body (length or chunked), answer 200 with its length
    anything else 200 "ok" (a request body is read and dropped)

Pacing sleeps are the server's behaviour, never synchronisation; every wait is bounded by
`HOLD_S` or the peer closing.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

SSE_EVENTS = 12
# Longest a scripted server holds a connection open waiting for the peer: far beyond any
# test's own deadline, so a test never waits on it; it only bounds a leaked handler.
HOLD_S = 60.0
EARLY_BODY = b"<html>413 Request Entity Too Large</html>\n"
READ_BYTES = 65536


@dataclass(frozen=True, slots=True)
class Seen:
    method: bytes
    target: bytes
    headers: dict[bytes, bytes]  # lower-case names; the last value wins


class ScriptedPrimary:
    def __init__(self, *, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.requests: list[Seen] = []
        self.connections_total = 0
        self.connections_open = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> ScriptedPrimary:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections_total += 1
        self.connections_open += 1
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass  # __aexit__: asyncio's start_server callback must not see a cancelled task
        finally:
            self.connections_open -= 1
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """One request; True when the connection may carry another."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        lines = head[:-4].split(b"\r\n")
        method, target, _ = lines[0].split(b" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        self.requests.append(Seen(method, target, headers))
        route = target.split(b"?")[0].split(b"/")[1]
        if route == b"early_close":
            writer.write(_response(413, EARLY_BODY, close=True))
            await writer.drain()
            return False
        if route == b"early_open":
            writer.write(_response(413, EARLY_BODY, close=True))
            await writer.drain()
            await asyncio.sleep(HOLD_S)  # never reads the body; the proxy gives up first
            return False
        if route == b"early_discard":
            writer.write(_response(413, EARLY_BODY))
            await writer.drain()
            await _read_body(reader, headers)
            return True
        if route == b"silent":
            await _until_closed(reader)
            return False
        length = await _read_body(reader, headers)
        if route == b"sink":
            writer.write(_response(200, str(length).encode()))
        elif route == b"sse":
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            for i in range(SSE_EVENTS):
                event = b"data: %d\n\n" % i
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                await writer.drain()
                await asyncio.sleep(self.interval_s)  # the stream's pace
            writer.write(b"0\r\n\r\n")
        elif route == b"stall":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            await writer.drain()
            await _until_closed(reader)
            return False
        else:
            writer.write(_response(200, b"ok"))
        await writer.drain()
        return True


def _response(status: int, body: bytes, *, close: bool = False) -> bytes:
    reason = {200: b"OK", 413: b"Request Entity Too Large"}[status]
    head = b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\n" % (status, reason, len(body))
    if close:
        head += b"Connection: close\r\n"
    return head + b"\r\n" + body


async def _read_body(reader: asyncio.StreamReader, headers: dict[bytes, bytes]) -> int:
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        total = 0
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers in these tests
                return total
            await reader.readexactly(size + 2)
            total += size
    length = int(headers.get(b"content-length", b"0"))
    left = length
    while left:
        left -= len(await reader.readexactly(min(left, READ_BYTES)))
    return length


async def _until_closed(reader: asyncio.StreamReader) -> None:
    async with asyncio.timeout(HOLD_S):
        while await reader.read(READ_BYTES):
            pass
