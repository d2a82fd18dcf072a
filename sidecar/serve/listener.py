"""Serve an ASGI app with hypercorn's connection handling on our own accept loop.

Why not `hypercorn.asyncio.serve`
---------------------------------
hypercorn's `worker_serve` hands the listening socket to `asyncio.start_server`. Under
uvloop that is libuv's accept path, which since libuv 1.45 accepts ONE connection per
event-loop iteration (libuv/libuv#3696, "unix: don't accept() connections in a loop"). An
iteration of a busy proxy serves hundreds of ready connections, so a burst of new ones
waits in the kernel's accept queue for seconds: `wrk -t1 -c1000` through sidecar gave p50
259 ms but p99 5.7 s, while plain asyncio (which accepts up to `backlog` per readiness)
gave p99 256 ms. Here the listening socket is watched with `add_reader` and up to
`ACCEPT_BATCH` connections are accepted per readiness, each then served by hypercorn's
`TCPServer` (its HTTP/1.1 and HTTP/2 protocols, timeouts and flow control; sidecar's
subclass of it for a config marked by `server.hypercorn_config`, see host_protocol.py)
as `worker_serve` would. The ASGI lifespan protocol is not run: sidecar's apps start and stop
their resources in `serve` itself.

Shutdown mirrors `worker_serve`: when `shutdown_trigger` returns, stop accepting (the
listening socket is closed; connections still in its backlog are reset by the kernel),
tell every connection that the worker is terminating (idle keep-alive connections close, a
busy one closes after its response), wait up to `config.graceful_timeout` for them, then
cancel the rest. `serve()` returns how many connections were cancelled that way.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.utils import wrap_app

from sidecar.serve.host_protocol import connection

log = logging.getLogger("sidecar.listener")

# Connections accepted per readiness of the listening socket. Large enough that a burst of
# a thousand connects is in within a few loop iterations; small enough that one burst adds
# at most a few milliseconds (~30 µs of work each) to the iteration that takes it.
ACCEPT_BATCH = 128
# After EMFILE/ENFILE/ENOBUFS/ENOMEM on accept, stop watching the socket this long: the
# listening socket stays readable, so retrying at once would spin the loop at 100% CPU
# while connections that could free descriptors are starved (asyncio waits 1 s; a proxy
# that frees descriptors every millisecond wants to retry sooner).
ACCEPT_RETRY_DELAY_S = 0.1
# At most one "out of descriptors" warning this often.
ACCEPT_ERROR_LOG_INTERVAL_S = 10.0
# hypercorn's own read buffer limit per connection (asyncio.start_server's default).
STREAM_LIMIT_BYTES = 2**16
# A TLS client has this long to finish its handshake (hypercorn's and asyncio's default is
# 60 s; a client that connects and stays silent should not hold a descriptor that long).
TLS_HANDSHAKE_TIMEOUT_S = 10.0

_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Listener:
    """One listening socket served by hypercorn's connection machinery."""

    def __init__(
        self,
        app: Any,
        config: Any,
        sock: socket.socket,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`ssl_context`: serve TLS on every accepted socket (its ALPN picks h2 or HTTP/1.1:
        hypercorn's connection reads the protocol the handshake chose)."""
        self._app = wrap_app(app, config.wsgi_max_body_size, "asgi")
        self._ssl = ssl_context
        self._config = config
        self._context = WorkerContext(None)
        self._grace_s: float = config.graceful_timeout
        self._init_accepting(sock)

    def _init_accepting(self, sock: socket.socket) -> None:
        """The accept loop's state (shared with host_uvicorn_listener's subclass)."""
        self._sock = sock
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()
        self._accepting = False
        self._retry: asyncio.TimerHandle | None = None
        self._last_error_log = -ACCEPT_ERROR_LOG_INTERVAL_S
        self._refused_since_log = 0

    @property
    def connections(self) -> int:
        """Client connections being served now."""
        return len(self._tasks)

    async def serve(self, shutdown_trigger: Callable[[], Awaitable[Any]]) -> int:
        """Accept and serve until `shutdown_trigger()` returns, then drain; returns the
        number of connections cancelled when `config.graceful_timeout` ran out."""
        self._sock.setblocking(False)
        self._start_accepting()
        try:
            await shutdown_trigger()
        finally:
            self._stop_accepting()
            self._sock.close()
            await self._terminate()
        return await self._drain(self._grace_s)

    async def _terminate(self) -> None:
        """Tell every connection the worker is terminating (hypercorn's context)."""
        await self._context.terminated.set()

    # --- accepting ---------------------------------------------------------------------

    def _start_accepting(self) -> None:
        self._retry = None
        self._accepting = True
        self._loop.add_reader(self._sock.fileno(), self._accept)

    def _stop_accepting(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._accepting:
            self._accepting = False
            self._loop.remove_reader(self._sock.fileno())

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _addr = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in _RESOURCE_ERRNOS:
                    raise
                self._pause_accepting(exc)
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = self._loop.create_task(self._serve_connection(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _pause_accepting(self, exc: OSError) -> None:
        """Out of descriptors (or memory): new connections wait in the backlog meanwhile."""
        self._stop_accepting()
        self._retry = self._loop.call_later(ACCEPT_RETRY_DELAY_S, self._start_accepting)
        self._refused_since_log += 1
        now = time.monotonic()
        if now - self._last_error_log >= ACCEPT_ERROR_LOG_INTERVAL_S:
            log.warning(
                "cannot accept connections: %s (%d times since the last report; %d "
                "connections open); retrying every %gs",
                exc.strerror or exc,
                self._refused_since_log,
                len(self._tasks),
                ACCEPT_RETRY_DELAY_S,
            )
            self._last_error_log = now
            self._refused_since_log = 0

    async def _serve_connection(self, conn: socket.socket) -> None:
        loop = self._loop
        reader = asyncio.StreamReader(limit=STREAM_LIMIT_BYTES, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport = await self._connect(conn, lambda: protocol)
        if transport is None:
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        # sidecar's connection class for a config marked by server.hypercorn_config (prompt
        # close on EOF, lingering close, strict parsing, draining); hypercorn's otherwise.
        await connection(self._app, loop, self._config, self._context, {}, reader, writer)

    async def _connect(
        self, conn: socket.socket, factory: Callable[[], asyncio.BaseProtocol]
    ) -> asyncio.Transport | None:
        """`conn`'s transport to a `factory()` protocol (after the TLS handshake on a TLS
        listener); None when it failed (the socket is closed)."""
        try:
            if self._ssl is None:
                transport, _ = await self._loop.connect_accepted_socket(factory, sock=conn)
            else:  # returns once the handshake is done
                transport, _ = await self._loop.connect_accepted_socket(
                    factory,
                    sock=conn,
                    ssl=self._ssl,
                    ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S,
                )
        except (OSError, TimeoutError) as exc:
            # A failed handshake (plain HTTP on the TLS port, an unknown CA at the client).
            if self._ssl is not None:
                log.debug("TLS handshake with a client failed: %s", exc)
            conn.close()
            return None
        return transport

    # --- shutdown ----------------------------------------------------------------------

    async def _drain(self, grace_s: float) -> int:
        if not self._tasks:
            return 0
        _done, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        return len(pending)
