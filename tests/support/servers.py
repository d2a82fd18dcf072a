"""Real loopback servers for tests (no mocks): a recording canary and a hypercorn host.

`RecordingCanary` is an HTTP/1.1 server (asyncio + h11, keep-alive) that records every
request it receives and answers according to its `behaviour`, which a test may change at any
time:

    async with RecordingCanary() as canary:          # listening on 127.0.0.1:<free port>
        canary.url, canary.endpoint                   # "http://127.0.0.1:PORT", Endpoint
        ...
        req = await canary.wait_for(1)                # first N recorded (poll with deadline)
        req.method, req.target, req.headers, req.body # bytes; headers lower-case pairs
        req.header(b"x-mirror") -> bytes | None       # the single value (or None)

Behaviours (`canary.behaviour = ...`):
    "answer"  reply `status` (default 200) with `response_body` at once (use 503 for 5xx);
    "delay"   reply after `delay_s` seconds (a slow canary);
    "hold"    record, then wait for `canary.release` (an asyncio.Event) before replying;
              never setting it gives a canary that never answers;
    "reset"   record, then abort the TCP connection with RST (SO_LINGER 0);
    "close"   record, then close the connection cleanly without any response.

Counters for resource assertions: `connections_open`, `max_connections_open`,
`connections_total`, `in_flight`, `max_in_flight`. `received` is an asyncio.Event set on
every recorded request (clear it yourself to wait for the next one).

`serve_asgi(app)` runs an ASGI app under a real hypercorn server on loopback and yields its
base URL; it returns after hypercorn shut down.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

import h11

from sidecar.model.endpoint import Endpoint

Behaviour = Literal["answer", "delay", "hold", "reset", "close"]
WAIT_TIMEOUT_S = 10.0  # generous: CI machines are slow; a passing test never waits this long
POLL_INTERVAL_S = 0.005


READ_BYTES = 65536


async def read_request(
    conn: h11.Connection,
    reader: asyncio.StreamReader,
    on_head: Callable[[h11.Request], bool] | None = None,
) -> tuple[h11.Request, bytes] | None:
    """The next request's head and whole body; None when the peer closed first, or when
    `on_head` (called with the head as it arrives) returned False."""
    request: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(READ_BYTES))
            continue
        if isinstance(event, h11.ConnectionClosed):
            return None
        if isinstance(event, h11.Request):
            request = event
            if on_head is not None and not on_head(event):
                return None
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert request is not None
            return request, bytes(body)


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]  # names lower case, in order
    body: bytes
    peer: tuple[str, int]

    def header(self, name: bytes) -> bytes | None:
        values = self.header_all(name)
        assert len(values) <= 1, f"{name!r} appears {len(values)} times"
        return values[0] if values else None

    def header_all(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n == name.lower()]


async def wait_until(
    predicate: Callable[[], bool], timeout: float = WAIT_TIMEOUT_S, what: str = "condition"
) -> None:
    """Poll `predicate` until true; fail the test after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(POLL_INTERVAL_S)


class LoopbackServer:
    """A raw asyncio server on 127.0.0.1 with a free port; subclasses define `_handle`.

    Tracks its connection handler tasks so that closing cancels them all."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class RecordingCanary(LoopbackServer):
    """A loopback HTTP/1.1 canary that records requests (see the module docstring)."""

    def __init__(
        self,
        behaviour: Behaviour = "answer",
        *,
        status: int = 200,
        response_body: bytes = b"canary",
        delay_s: float = 0.0,
    ) -> None:
        self.behaviour: Behaviour = behaviour
        self.status = status
        self.response_body = response_body
        self.delay_s = delay_s
        self.requests: list[RecordedRequest] = []
        self.received = asyncio.Event()
        self.release = asyncio.Event()
        self.connections_open = 0
        self.max_connections_open = 0
        self.connections_total = 0
        self.in_flight = 0
        self.max_in_flight = 0
        super().__init__()

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint.parse(self.url)

    async def start(self) -> RecordingCanary:
        await self._listen()
        return self

    async def aclose(self) -> None:
        self.release.set()
        await self._close()

    async def __aenter__(self) -> RecordingCanary:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def wait_for(self, n: int, timeout: float = WAIT_TIMEOUT_S) -> RecordedRequest:
        """Wait until at least `n` requests were recorded; return the n-th."""
        await wait_until(lambda: len(self.requests) >= n, timeout, f"{n} canary requests")
        return self.requests[n - 1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections_open += 1
        self.connections_total += 1
        self.max_connections_open = max(self.max_connections_open, self.connections_open)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.CancelledError, h11.RemoteProtocolError):
            pass
        finally:
            self.connections_open -= 1
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        peer = writer.get_extra_info("peername")
        while True:
            got = await read_request(conn, reader)
            if got is None:
                return
            request, body = got
            self.requests.append(
                RecordedRequest(
                    method=request.method,
                    target=request.target,
                    headers=[(n.lower(), v) for n, v in request.headers.raw_items()],
                    body=bytes(body),
                    peer=(peer[0], peer[1]),
                )
            )
            self.received.set()
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                behaviour = self.behaviour
                if behaviour == "reset":
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                if behaviour == "close":
                    return
                if behaviour == "hold":
                    await self.release.wait()
                elif behaviour == "delay":
                    await asyncio.sleep(self.delay_s)
            finally:
                self.in_flight -= 1
            payload = self.response_body if request.method != b"HEAD" else b""
            headers = [("content-length", str(len(self.response_body)))]
            out = conn.send(h11.Response(status_code=self.status, headers=headers))
            if payload:
                out += conn.send(h11.Data(data=payload))
            out += conn.send(h11.EndOfMessage())
            writer.write(out)
            await writer.drain()
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()


@contextlib.asynccontextmanager
async def serve_asgi(app: Any) -> AsyncIterator[str]:
    """Serve `app` with hypercorn on 127.0.0.1 (a free port); yield "http://127.0.0.1:PORT"."""
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # already listening: clients may connect before hypercorn runs
    port = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    shutdown = asyncio.Event()
    task = asyncio.create_task(serve(app, config, shutdown_trigger=shutdown.wait))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        shutdown.set()
        await task
        sock.detach()  # hypercorn adopted the descriptor and closed it


def listening_socket(backlog: int = 128) -> socket.socket:
    """A non-blocking socket listening on a free loopback port, for a listener to serve."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock
