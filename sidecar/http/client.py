"""A lean pooled HTTP/1.1 client for the hot path (the primary and the canary workers).

How this works
--------------
A `ConnectionPool` talks to one `Origin` (an `Endpoint`). A semaphore of `max_connections` permits bounds the
exchanges in flight; each permit holder owns at most one connection, and a new connection is
opened only when no idle one is left, so idle + busy + connecting never exceeds the limit.
Idle connections sit on a LIFO stack (the most recently used is the one most likely still open
and warm); on checkout, one that is too old or that the server closed meanwhile is dropped.

`request()` returns a `Response` as soon as the head is in; the response keeps its permit and
connection until the body has been read to the end (then the connection goes back on the stack,
if both sides are complete and keep-alive) or until `aclose()` (then it is closed unless it
was complete). Any exception on the way, including cancellation by the caller's
`asyncio.timeout`, aborts the connection, frees the permit and propagates unchanged.

A reused connection can turn out to be closed by the server only when we write to it; if no
response byte arrived and the body is bytes (so it can be sent again), the request is retried
once on a fresh connection, unless it is non-idempotent (POST, PATCH, LOCK: nginx's list)
and was written whole, so the server may have acted on it. A streamed body is never retried.

The wire work (the protocol, the error tree and its translation) is in `client_conn`; the
HTTP/1.1 wire format (request head, response parser) in `http1`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable

from sidecar.http.connection import (
    ClientError,
    ConnectError,
    Connection,
    LocalProtocolError,
    ReadError,
    RemoteProtocolError,
    WriteError,
    open_connection,
    open_stream,
)
from sidecar.http.syntax import Origin
from sidecar.http.tls import client_context

__all__ = [
    "ClientError",
    "ConnectError",
    "ConnectionPool",
    "LocalProtocolError",
    "ReadError",
    "RemoteProtocolError",
    "Response",
    "WriteError",
]

DEFAULT_CONNECT_TIMEOUT_S = 5.0
# Requests that must not reach a server twice; as nginx's proxy_next_upstream sees them.
NON_IDEMPOTENT_METHODS = frozenset({b"POST", b"PATCH", b"LOCK"})
# Servers commonly drop idle keep-alive connections after 60-75 s (nginx 75 s, hypercorn 5 s);
# 30 s keeps us under most of them, and a stale one is detected and retried anyway.
DEFAULT_IDLE_TIMEOUT_S = 30.0
# aclose() waits this long for aborted sockets to be closed by the event loop (one iteration
# in practice); the bound only keeps a misbehaving transport from hanging shutdown.
CLOSE_WAIT_S = 1.0


class Response:
    """A response whose body has not been read yet; it holds a pool slot until read or closed."""

    __slots__ = ("_conn", "_pool", "headers", "http_version", "reason", "status")

    def __init__(
        self,
        pool: ConnectionPool,
        conn: Connection,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        http_version: bytes,
    ) -> None:
        self._pool = pool
        self._conn: Connection | None = conn
        self.status = status
        self.reason = reason
        self.headers = headers  # names lower-case, as ASGI has them
        self.http_version = http_version

    @property
    def is_closed(self) -> bool:
        return self._conn is None

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """Body chunks as they arrive; the connection is released after the last one."""
        conn = self._conn
        if conn is None:
            return
        try:
            while (chunk := await conn.receive_data()) is not None:
                yield chunk
        except BaseException:
            self._release(conn, complete=False)
            raise
        self._release(conn, complete=True)

    async def aread(self) -> bytes:
        conn = self._conn
        if conn is None:
            return b""
        chunks: list[bytes] = []
        try:
            await conn.receive_body(chunks)
        except BaseException:
            self._release(conn, complete=False)
            raise
        self._release(conn, complete=True)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def drain(self) -> int:
        """Read the body to the end, discarding it; returns its length in bytes."""
        conn = self._conn
        if conn is None:
            return 0
        try:
            size = await conn.receive_body(None)
        except BaseException:
            self._release(conn, complete=False)
            raise
        self._release(conn, complete=True)
        return size

    async def aclose(self) -> None:
        """Give the slot back; an unread body means the connection is closed, not reused."""
        conn = self._conn
        if conn is not None:
            self._release(conn, complete=conn.reusable)

    def _release(self, conn: Connection, *, complete: bool) -> None:
        if self._conn is None:
            return
        self._conn = None
        self._pool._release(conn, reuse=complete)


class ConnectionPool:
    """Keep-alive connections to one endpoint, at most `max_connections` at any time."""

    def __init__(
        self,
        endpoint: Origin,
        *,
        max_connections: int,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        ssl_context: ssl.SSLContext | None = None,
        server_name: str | None = None,
        on_connect: Callable[[], None] | None = None,
    ) -> None:
        """`ssl_context` is for https endpoints only; the default verifies against system CAs.
        `server_name`: the SNI sent and the name checked, instead of the endpoint's host.
        Pass one context for all pools of a server: building one loads the trust store.
        `on_connect`: called after each new connection is open (TLS included)."""
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.endpoint = endpoint
        self.max_connections = max_connections
        self._connect_timeout_s = connect_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._slots = _Slots(max_connections)
        self._idle: list[Connection] = []  # LIFO: append on release, pop on checkout
        # Closes idle connections past the idle timeout even when no request comes to find
        # them (after a burst of 1,000 clients, ~1,000 idle sockets would otherwise hold
        # descriptors until the server closes them, or forever if it never does).
        self._reaper: asyncio.TimerHandle | None = None
        self._conns: set[Connection] = set()  # every open connection, idle or busy
        self._ssl: ssl.SSLContext | None = None
        self._server_name = server_name
        if endpoint.scheme == "https":
            self._ssl = ssl_context or client_context()
        self._closed = False
        self._on_connect = on_connect

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    async def request(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes | AsyncIterable[bytes] = b"",
    ) -> Response:
        """Send the request; return once the final response head is in (see module doc).

        The caller must read the body to the end (`aread`, `drain`, `aiter_bytes`) or call
        `aclose()`, else the slot stays taken. If the response head arrives while a streamed
        `body` is still being sent, sending stops: the pending `__anext__` of the body iterator
        is cancelled and the connection is closed after the response instead of being reused.
        An exception raised by the body iterator propagates unchanged.
        """
        if self._closed:
            raise ClientError("connection pool is closed", reason="closed")
        slots = self._slots
        if not slots.take():
            await slots.wait()
        conn: Connection | None = None
        try:
            conn = self._checkout()
            reused = conn is not None
            if conn is None:
                conn = await self._connect()
            try:
                conn.send_request(method, target, headers, body)
                head = await conn.receive_head()
            except (ReadError, WriteError) as exc:
                replayable = isinstance(exc, WriteError) or method not in NON_IDEMPOTENT_METHODS
                if not (reused and isinstance(body, bytes) and not conn.received_any):
                    raise
                if not replayable:
                    raise  # the server may have acted on it: never send a POST twice
                # The server closed the idle connection as we reused it: once more, fresh.
                self._discard(conn, abort=True)
                conn = None
                conn = await self._connect()
                conn.send_request(method, target, headers, body)
                head = await conn.receive_head()
        except BaseException:
            if conn is not None:
                self._discard(conn, abort=True)
            self._slots.release()
            raise
        return Response(self, conn, head.status_code, head.reason, head.headers, head.http_version)

    async def open_stream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection of its own to the endpoint, outside the pool (not counted, never
        reused): for a WebSocket session, which takes the connection over for its life."""
        return await open_stream(
            self.endpoint,
            timeout_s=self._connect_timeout_s,
            ssl_context=self._ssl,
            server_name=self._server_name,
        )

    async def aclose(self) -> None:
        """Close every connection, idle or busy, and wait until their sockets are closed."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        conns = list(self._conns)
        self._conns.clear()
        self._idle.clear()
        for conn in conns:
            conn.close(abort=True)
        if conns:
            await asyncio.wait([conn.closed for conn in conns], timeout=CLOSE_WAIT_S)

    async def __aenter__(self) -> ConnectionPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- internals ----------------------------------------------------------------------

    def _checkout(self) -> Connection | None:
        idle = self._idle
        if not idle:
            return None
        now = idle[-1].loop.time()  # (not get_running_loop(): a getpid call on 3.11)
        while idle:
            conn = idle.pop()
            if now - conn.idle_since < self._idle_timeout_s and not conn.is_stale:
                return conn
            self._discard(conn, abort=False)
        return None

    async def _connect(self) -> Connection:
        conn = await open_connection(
            self.endpoint,
            timeout_s=self._connect_timeout_s,
            ssl_context=self._ssl,
            server_name=self._server_name,
        )
        if self._closed:  # aclose() ran while we were connecting
            conn.close(abort=True)
            raise ClientError("connection pool is closed", reason="closed")
        self._conns.add(conn)
        if self._on_connect is not None:
            self._on_connect()
        return conn

    def _release(self, conn: Connection, *, reuse: bool) -> None:
        if reuse and not self._closed and conn.reusable:
            loop = conn.loop
            conn.start_next_cycle(loop.time())
            self._idle.append(conn)
            if self._reaper is None:
                self._reaper = loop.call_later(self._idle_timeout_s, self._reap)
        else:
            self._discard(conn, abort=not reuse)
        self._slots.release()

    def _reap(self) -> None:
        """Close the idle connections past the idle timeout (the oldest are at the bottom of
        the stack); re-arm for the oldest that remains."""
        self._reaper = None
        idle = self._idle
        if self._closed or not idle:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() - self._idle_timeout_s
        stale = 0
        while stale < len(idle) and idle[stale].idle_since <= deadline:
            stale += 1
        for conn in idle[:stale]:
            self._discard(conn, abort=False)
        del idle[:stale]
        if idle:
            due = idle[0].idle_since + self._idle_timeout_s
            self._reaper = loop.call_at(due, self._reap)

    def _discard(self, conn: Connection, *, abort: bool) -> None:
        self._conns.discard(conn)
        conn.close(abort=abort)


class _Slots:
    """A FIFO counting semaphore whose uncontended acquire is one comparison.

    (asyncio.Semaphore.acquire scans its waiters through a generator on every call, about
    as much as the rest of a pooled request's checkout.) `take()` gets a slot at once or
    returns False; then `await wait()` queues for one. `release()` hands the slot straight
    to the oldest waiter, so a newcomer's `take()` cannot jump the queue.
    """

    __slots__ = ("_free", "_waiters")

    def __init__(self, n: int) -> None:
        self._free = n
        self._waiters: deque[asyncio.Future[None]] = deque()

    def take(self) -> bool:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        return False

    async def wait(self) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.cancelled():
                with contextlib.suppress(ValueError):  # a release() may have skipped it
                    self._waiters.remove(fut)  # gave up while queued: not left behind
            elif fut.done():
                self.release()  # handed a slot just as we were cancelled: pass it on
            raise

    def release(self) -> None:
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():  # a cancelled waiter leaves a cancelled future behind
                fut.set_result(None)
                return
        self._free += 1
