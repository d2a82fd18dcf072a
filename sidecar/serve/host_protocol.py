"""hypercorn's connection layer, fixed for the proxy listener (and only for it).

How this works
--------------
hypercorn 0.18 serves each client connection with a `TCPServer` (read loop, writes, idle
timer) driving a `ProtocolWrapper` that picks `H11Protocol` or `H2Protocol`. `install()`
replaces the `TCPServer` name in `hypercorn.asyncio.run` (which `serve()` uses per
connection) and in `hypercorn.asyncio.tcp_server` (for code that builds connections
itself) with `connection()`, which returns our `SidecarTCPServer` only when the config
carries a `HostState` (`mark(config)`, done by `server.hypercorn_config(..., proxy=True)`)
and hypercorn's own class otherwise: the admin listener, the servers tests start as
primaries, and any library user's hypercorn keep stock behaviour.

The TCP part (read loop, closing, lingering) is here; the HTTP/1.1 and HTTP/2 protocol
subclasses are in sidecar/serve/host_http.py. What they change, each with the upstream issue
where one exists:

- A client's FIN closes the connection at once. hypercorn passes EOF on as `Closed()`,
  which its H11Protocol ignores when no request is active and its H2Protocol never
  answers, so the connection task waits for the idle keep-alive timer (75 s here) with
  the socket in CLOSE-WAIT (no upstream issue found; #170 is the TLS variant).
- Lingering close. When we close (an error response, `Connection: close`, draining) while
  the client may still be sending, hypercorn's write_eof-then-close leaves unread data in
  the kernel, which answers it with RST, and the client may never read our response.
  Like nginx's lingering_close: after write_eof, read and drop for at most `LINGER_TOTAL_S`,
  `LINGER_IDLE_S` without data, `LINGER_MAX_BYTES`, then close (no upstream issue found).
- Strict parsing (`sidecar/serve/strict_h11.py`) with every refusal answered with a short text
  body and `Connection: close`, counted in `sidecar_refused_requests_total{reason}` and
  `sidecar_requests_total{code}`, and logged at debug (hypercorn answers h11 errors with
  an empty 400/501 that nothing counts; no upstream issue found). HTTP/2 requests go
  through `framing.inspect` the same way.
- Bytes after a request that ends the connection are dropped instead of answered 400
  after the request already ran (https://github.com/pgjones/hypercorn/issues/203).
- The status line carries the standard reason phrase (`HTTP/1.1 200 OK`); hypercorn sends
  none and h2load counts such responses as failed (no upstream issue found).
- Draining (hypercorn's `context.terminated`, set when `serve`'s shutdown trigger fires):
  every HTTP/1.1 response head sent from then on carries `Connection: close` and the
  connection closes after it (https://github.com/pgjones/hypercorn/issues/241); an HTTP/2
  connection gets GOAWAY (NO_ERROR, the last stream it may still finish) at once, a stream
  opened after it is refused with RST_STREAM(REFUSED_STREAM), safe to retry, where
  hypercorn answers RST_STREAM(NO_ERROR) and sends no GOAWAY until idle (no upstream issue
  found).
- A client's WebSocket close code and reason reach the app (hypercorn reports 1006):
  sidecar/serve/host_ws.py, installed with the rest by `install()`.
- Less work per request (issue 20; bench/README.md has what each bought): the keep-alive
  idle timer is one `call_at` timer per connection that re-arms itself only when it fires
  (hypercorn cancels, awaits and re-creates an idle task, with its lock and its
  `wait_for`, twice per request), draining closes idle connections through one watcher
  task per connection, writes skip hypercorn's send lock (the transport keeps the order of
  `write()` calls; asyncio's `drain()` takes several waiters), and reads skip `wait_for`
  when there is no read timeout (hypercorn's default).
- When `graceful_timeout` (--grace) runs out, requests still running are counted in
  `HostState.cut` for server.py's log line, and an HTTP/1.1 client whose response had not
  started gets 503 with a text body instead of hypercorn's empty 500.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from ssl import SSLError
from typing import Any

from hypercorn.asyncio import run as hypercorn_run
from hypercorn.asyncio import tcp_server
from hypercorn.asyncio.task_group import TaskGroup
from hypercorn.events import Closed, RawData, Updated
from hypercorn.protocol import ProtocolWrapper as StockProtocolWrapper
from hypercorn.protocol import h2 as hypercorn_h2
from hypercorn.protocol import h11 as hypercorn_h11
from hypercorn.protocol.h11 import H2CProtocolRequiredError, H2ProtocolAssumedError
from hypercorn.typing import ConnectionState
from hypercorn.utils import parse_socket_addr

from sidecar.serve.host_http import (
    CUT_SCOPE_KEY,
    MARK_ATTR,
    REFUSALS,
    H2Protocol,
    H11Protocol,
    HostState,
    reason_phrase,
)
from sidecar.serve.host_ws import ws_stream

__all__ = ["REFUSALS", "HostState", "connection", "install", "mark", "reason_phrase"]

# Lingering close bounds (nginx: lingering_time 30 s, lingering_timeout 5 s). Long enough
# for a client to finish writing a request body the primary refused early (loopback and LAN
# clients write megabytes per second) and then read our response; short enough that a
# client that never stops sending cannot hold a descriptor: at most 5 s per connection.
LINGER_TOTAL_S = 5.0
LINGER_IDLE_S = 1.0
# And at most this much read and dropped: the rest of an upload the primary refused early
# (the app drains rests up to 8 MiB itself and keeps the connection; larger ones end up
# here). Over a network the time bound binds first (1 Gbit/s moves ~600 MB in 5 s); on
# loopback this caps the CPU one client can make us spend at about half a second.
LINGER_MAX_BYTES = 1024 * 1024 * 1024
# When the grace ran out, a connection's close may wait this long for what is buffered
# toward the client (the 503 of a cut request) to go out, then it is aborted. A TLS close
# otherwise waits for the client to read everything buffered, up to the TLS shutdown
# timeout (30 s): a client that stopped reading held the process's exit that long.
CUT_CLOSE_S = 1.0
# hypercorn's read size per call (its MAX_RECV).
READ_BYTES = tcp_server.MAX_RECV


def mark(config: Any, *, proxy: bool) -> HostState:
    """Make `config` (a hypercorn Config of one of sidecar's listeners) use this layer."""
    install()
    state = HostState(count_refusals=proxy)
    setattr(config, MARK_ATTR, state)
    return state


_installed = False


def install() -> None:
    """Route hypercorn's connections through `connection()` (idempotent).

    `hypercorn.asyncio.run.worker_serve` (behind `hypercorn.asyncio.serve`) looks the
    `TCPServer` name up in its module for every accepted connection, so replacing that
    name is the one place where a connection's classes are chosen; the name in
    `tcp_server` is replaced too for code that builds connections itself (importing it at
    call time). Unmarked configs get hypercorn's own class from `connection()`.
    """
    global _installed
    if _installed:
        return
    hypercorn_run.TCPServer = connection  # type: ignore[attr-defined, assignment]
    tcp_server.TCPServer = connection  # type: ignore[assignment, misc]
    # The WebSocket stream both protocols build (sidecar/serve/host_ws.py), chosen alike.
    hypercorn_h11.WSStream = ws_stream  # type: ignore[attr-defined, assignment]
    hypercorn_h2.WSStream = ws_stream  # type: ignore[attr-defined, assignment]
    _installed = True


_StockTCPServer = tcp_server.TCPServer


def connection(
    app: Any, loop: Any, config: Any, context: Any, state: Any, reader: Any, writer: Any
) -> Any:
    """The connection handler for `config`: ours when marked, hypercorn's otherwise."""
    cls = SidecarTCPServer if hasattr(config, MARK_ATTR) else _StockTCPServer
    return cls(app, loop, config, context, state, reader, writer)


class _CountingApp:
    """hypercorn's app wrapper, counting the requests cancelled when the grace runs out."""

    __slots__ = ("app", "host")

    def __init__(self, app: Any, host: HostState) -> None:
        self.app = app
        self.host = host

    async def __call__(self, scope: Any, *args: Any) -> None:
        try:
            await self.app(scope, *args)
        except asyncio.CancelledError:
            if scope["type"] == "http":
                self.host.cut += 1
                scope[CUT_SCOPE_KEY] = True
            raise


# --- the TCP connection -------------------------------------------------------------------


class SidecarTCPServer(_StockTCPServer):
    """hypercorn's TCPServer with prompt close on EOF and lingering close."""

    protocol: ProtocolWrapper

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.host: HostState = getattr(self.config, MARK_ATTR)
        self._closing = False
        self._lingering = False
        self._linger_deadline = 0.0
        self._linger_read = 0
        self._linger_timer: asyncio.TimerHandle | None = None
        self._cut = False  # the grace ran out: the close is bounded by CUT_CLOSE_S
        # The keep-alive clock: idle since (loop time), None while a request is active.
        self._idle_since: float | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._drain_watch: asyncio.Task[None] | None = None

    async def run(self) -> None:
        # hypercorn's TCPServer.run, with our ProtocolWrapper and the counting app.
        socket = self.writer.get_extra_info("socket")
        try:
            client = parse_socket_addr(socket.family, socket.getpeername())
            server = parse_socket_addr(socket.family, socket.getsockname())
            ssl_object = self.writer.get_extra_info("ssl_object")
            if ssl_object is not None:
                ssl = True
                alpn_protocol = ssl_object.selected_alpn_protocol()
            else:
                ssl = False
                alpn_protocol = "http/1.1"
            async with TaskGroup(self.loop) as task_group:
                self._task_group = task_group
                self.protocol = ProtocolWrapper(
                    _CountingApp(self.app, self.host),
                    self.config,
                    self.context,
                    task_group,
                    ConnectionState(self.state),
                    ssl,
                    client,
                    server,
                    self.protocol_send,
                    alpn_protocol,
                    write_now=self._write_now,
                )
                await self.protocol.initiate()
                self._became_idle()
                self._drain_watch = self.loop.create_task(self._watch_drain())
                try:
                    await self._read_data()
                except asyncio.CancelledError:
                    # The grace ran out: the app tasks are cancelled next and must not
                    # restart the idle timer in the task group being torn down.
                    self._closing = True
                    self._cut = True
                    raise
        except OSError:
            pass
        finally:
            await self._close()
            self._forget()

    def _forget(self) -> None:
        """Drop the finished connection's links to its streams, protocol and task group.

        hypercorn's connection objects (this server, the protocol and its `send`, the task
        group, h2's state machine) refer to each other in cycles that only a full collection
        frees, and that collection is rare (see tune_gc). Without these links the transport
        and its TLS objects and buffers (tens of KB a connection, mostly outside Python's
        heap) are freed by reference counting as the connection ends: RSS grew ~30 MB per
        500 short HTTP/2-over-TLS connections while they waited in the cycle.
        """
        for name in ("reader", "writer", "protocol", "_task_group", "idle_task"):
            self.__dict__.pop(name, None)

    async def protocol_send(self, event: Any) -> None:
        if type(event) is RawData:
            # hypercorn's, without its send lock: writes reach the transport in call order
            # anyway, and concurrent drain() calls are fine (each waits for the buffer).
            data = event.data
            if not data:
                return  # h11's end of a Content-Length body: nothing to write
            writer = self.writer
            if self._cut:
                # The grace ran out: the last frames (503s, RST_STREAM, GOAWAY) are written
                # without waiting for room: an HTTP/2 client that stopped reading kept the
                # cancelled streams, and the exit, waiting in drain(). _close bounds the rest.
                with contextlib.suppress(ConnectionError, RuntimeError):
                    writer.write(data)
                return
            try:
                writer.write(data)
                await writer.drain()
            except (ConnectionError, RuntimeError):
                await self.protocol.handle(Closed())
        elif isinstance(event, Updated):
            if self._closing:
                return  # no idle timer for a connection that is closing
            if event.idle:
                self._became_idle()
            else:
                self._idle_since = None
        elif isinstance(event, Closed):
            await self._close_gracefully()
        else:
            await super().protocol_send(event)

    def _write_now(self, data: bytes) -> None:
        """A write that cannot wait (a held response head, host_http.py): a failure shows
        at the next write or read."""
        if self._closing:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            self.writer.write(data)

    # --- the keep-alive idle timer and draining ------------------------------------------

    def _became_idle(self) -> None:
        """No request active from now on: close after `keep_alive_timeout` of it (at once
        while draining). The timer is armed once and re-armed only when it fires early."""
        if self.context.terminated.is_set():
            self._close_soon()
            return
        now = self.loop.time()
        self._idle_since = now
        if self._idle_timer is None:
            self._idle_timer = self.loop.call_at(
                now + self.config.keep_alive_timeout, self._idle_timer_fired
            )

    def _idle_timer_fired(self) -> None:
        self._idle_timer = None
        since = self._idle_since
        if since is None or self._closing:
            return  # busy: the next _became_idle() arms it again
        deadline = since + self.config.keep_alive_timeout
        if self.loop.time() >= deadline:
            self._close_soon()
        else:  # a request came and went meanwhile: wait for the rest of its idle time
            self._idle_timer = self.loop.call_at(deadline, self._idle_timer_fired)

    async def _watch_drain(self) -> None:
        """hypercorn's idle task also waits for `context.terminated`: an idle connection
        closes as soon as draining starts (a busy one after its response)."""
        await self.context.terminated.wait()
        if self._idle_since is not None:
            self._close_soon()

    def _close_soon(self) -> None:
        if self._closing:
            return
        self._idle_since = None
        group = self._task_group._task_group
        group.create_task(self._initiate_server_close())

    def _stop_timers(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        watch = self._drain_watch
        if watch is not None and watch is not asyncio.current_task():
            watch.cancel()
        self._drain_watch = None

    async def _read_data(self) -> None:
        reader = self.reader
        timeout = self.config.read_timeout
        while not reader.at_eof():
            try:
                if timeout is None:
                    data = await reader.read(READ_BYTES)
                else:
                    data = await asyncio.wait_for(reader.read(READ_BYTES), timeout)
            except (ConnectionError, OSError, TimeoutError, SSLError):
                break
            if self._lingering:
                if not self._keep_lingering(len(data)):
                    break
                continue
            await self.protocol.handle(RawData(data))
        await self.protocol.handle(Closed())

    async def _initiate_server_close(self) -> None:
        # The idle timer (keep-alive timeout, or draining): HTTP/2 says GOAWAY first.
        await self.protocol.before_close()
        await self.protocol.handle(Closed())
        await self._close_gracefully()

    async def _close_gracefully(self) -> None:
        """Close now, or half-close and linger when the client may still be sending."""
        if self._closing:
            return
        self._closing = True
        if self.reader.at_eof() or not self.protocol.wants_linger():
            await self._close()
            return
        try:
            self.writer.write_eof()  # after what is buffered: our response goes out first
        except (NotImplementedError, OSError, RuntimeError):  # TLS: no half-close
            await self._close()
            return
        self._lingering = True
        self._linger_deadline = self.loop.time() + LINGER_TOTAL_S
        self._linger_timer = self.loop.call_later(LINGER_IDLE_S, self.writer.close)
        self._stop_timers()

    def _keep_lingering(self, size: int) -> bool:
        """After `size` more bytes read while lingering: go on reading?"""
        self._linger_read += size
        remaining = self._linger_deadline - self.loop.time()
        if size == 0 or remaining <= 0 or self._linger_read > LINGER_MAX_BYTES:
            return False
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        self._linger_timer = self.loop.call_later(min(LINGER_IDLE_S, remaining), self.writer.close)
        return True

    async def _close(self) -> None:
        self._closing = True
        self._stop_timers()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        transport = self.writer.transport
        abort = self.loop.call_later(CUT_CLOSE_S, transport.abort) if self._cut else None
        try:
            await super()._close()
        except TimeoutError:
            # TLS: the client did not take our close within the TLS shutdown timeout
            # (it stopped reading). Raised out of wait_closed(), which hypercorn does
            # not expect: a traceback, from the idle timer's task, for a routine event.
            transport.abort()
        finally:
            if abort is not None:
                abort.cancel()


# --- protocols ----------------------------------------------------------------------------


class ProtocolWrapper(StockProtocolWrapper):
    """hypercorn's ProtocolWrapper choosing our H11Protocol/H2Protocol (upgrades too)."""

    protocol: H11Protocol | H2Protocol

    def __init__(
        self,
        app: Any,
        config: Any,
        context: Any,
        task_group: Any,
        state: Any,
        ssl: bool,
        client: Any,
        server: Any,
        send: Any,
        alpn_protocol: str | None = None,
        *,
        write_now: Callable[[bytes], None] | None = None,
    ) -> None:
        # Not super().__init__: it would build hypercorn's protocol only to drop it.
        self.app = app
        self.config = config
        self.context = context
        self.task_group = task_group
        self.ssl = ssl
        self.client = client
        self.server = server
        self.send = send
        self.state = state
        self.write_now = write_now
        self.protocol = self._make(H2Protocol if alpn_protocol == "h2" else H11Protocol)

    def _make(self, cls: type[H11Protocol] | type[H2Protocol]) -> H11Protocol | H2Protocol:
        protocol = cls(
            self.app,
            self.config,
            self.context,
            self.task_group,
            self.state,
            self.ssl,
            self.client,
            self.server,
            self.send,
        )
        if isinstance(protocol, H11Protocol):
            protocol.write_now = self.write_now
        return protocol

    async def handle(self, event: Any) -> None:
        try:
            await self.protocol.handle(event)
        except H2ProtocolAssumedError as error:  # HTTP/2 with prior knowledge
            self.protocol = self._make(H2Protocol)
            await self.protocol.initiate()
            if error.data != b"":
                await self.protocol.handle(RawData(data=error.data))
        except H2CProtocolRequiredError as error:  # Upgrade: h2c
            self.protocol = h2 = self._make(H2Protocol)
            assert isinstance(h2, H2Protocol)
            await h2.initiate(error.headers, error.settings)
            if error.data != b"":
                await self.protocol.handle(RawData(data=error.data))

    def wants_linger(self) -> bool:
        return self.protocol.wants_linger()

    async def before_close(self) -> None:
        await self.protocol.before_close()
