"""The lean client against a primary that answers while the upload is still being written
(a 413 from nginx's client_max_body_size): the answer wins over the rest of the upload and
over the reset that closing with unread data causes; writing stops; the connection is not
reused. Real loopback servers on raw sockets; each case repeats to meet the races (the
answer read before or after a write fails on the reset).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator

import pytest

from sidecar.http.client import ConnectionPool
from sidecar.http.connection import open_connection
from sidecar.model.endpoint import Endpoint

ANSWER = b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!"
KEEP_ALIVE_ANSWER = b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nbig!"
CHUNK = b"u" * 65536
MAX_CHUNKS = 256  # a 16 MiB upload at most: far more than the socket buffers hold
REPEATS = 20
STEP_TIMEOUT_S = 5.0
HOLD_S = 30.0  # a holding server's bound; the test closes it long before


class EarlyServer:
    """Reads a request head, answers, then `close` (reset: the body is unread), `hold`
    (never read, never close) or `discard` (read the body, keep serving)."""

    def __init__(self, then: str) -> None:
        self.then = then
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.endpoint = Endpoint(scheme="http", host="127.0.0.1", port=0)

    async def __aenter__(self) -> EarlyServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.endpoint = Endpoint(scheme="http", host="127.0.0.1", port=port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if self.then == "close":
                    writer.write(ANSWER)
                    await writer.drain()
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()  # RST, as closing with unread data gives
                    return
                if self.then == "hold":
                    writer.write(ANSWER)
                    await writer.drain()
                    await asyncio.sleep(HOLD_S)
                    return
                writer.write(KEEP_ALIVE_ANSWER)
                await writer.drain()
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()


async def _upload(sent: list[int]) -> AsyncIterator[bytes]:
    for _ in range(MAX_CHUNKS):
        sent[0] += 1
        yield CHUNK
        await asyncio.sleep(0)  # as a client's chunks arrive: one loop iteration apart


@pytest.mark.parametrize("then", ["close", "hold", "discard"])
async def test_the_answer_wins_and_the_connection_is_not_reused(then: str) -> None:
    async with (
        EarlyServer(then) as server,
        ConnectionPool(server.endpoint, max_connections=1) as pool,
    ):
        for i in range(REPEATS):
            sent = [0]
            headers = [
                (b"host", b"x"),
                (b"content-length", str(MAX_CHUNKS * len(CHUNK)).encode()),
            ]
            async with asyncio.timeout(STEP_TIMEOUT_S):
                resp = await pool.request(b"POST", b"/up", headers, _upload(sent))
                assert resp.status == 413, i
                assert await resp.aread() == b"big!"
            assert sent[0] < MAX_CHUNKS, "the upload went on after the answer"
            assert pool.open_connections == 0, "an early-answered connection was kept"
        assert server.connections == REPEATS


async def test_a_bytes_body_answered_early_and_reset_still_gets_the_answer() -> None:
    """A body sent in one write (large enough to meet the reset): the answer, not a 502."""
    body = CHUNK * 64
    async with (
        EarlyServer("close") as server,
        ConnectionPool(server.endpoint, max_connections=1) as pool,
    ):
        for i in range(REPEATS):
            headers = [(b"host", b"x"), (b"content-length", str(len(body)).encode())]
            async with asyncio.timeout(STEP_TIMEOUT_S):
                resp = await pool.request(b"POST", b"/up", headers, body)
                assert resp.status == 413, i
                assert await resp.aread() == b"big!"
            assert pool.open_connections == 0


async def test_an_answer_already_reset_is_salvaged_from_the_socket() -> None:
    """The worst order, made deterministic: the server answers and resets before our
    request is written, so the write itself fails (asyncio then stops reading the
    transport) while the answer still sits unread in the kernel. The answer must win, not
    a reset error."""
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        port = listener.getsockname()[1]
        endpoint = Endpoint(scheme="http", host="127.0.0.1", port=port)
        conn = await open_connection(endpoint, timeout_s=STEP_TIMEOUT_S, ssl_context=None)
        try:
            server, _ = listener.accept()  # already established: does not block
            server.sendall(ANSWER)
            server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            server.close()  # RST
            body = CHUNK * 4
            headers = [(b"host", b"x"), (b"content-length", str(len(body)).encode())]
            conn.send_request(b"POST", b"/up", headers, body)  # fails on the reset
            async with asyncio.timeout(STEP_TIMEOUT_S):
                head = await conn.receive_head()
                assert head.status_code == 413
                assert await conn.receive_data() == b"big!"
            assert not conn.reusable
        finally:
            conn.close(abort=True)
            await asyncio.wait([conn.closed], timeout=STEP_TIMEOUT_S)
    finally:
        listener.close()
